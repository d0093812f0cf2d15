"""DROP scoring as in the official ``drop_eval.py``: answers are bags of spans, F1 aligns the bags.

An answer (gold or predicted) is one string or a list of spans. Each span is normalised token by
token (lowercase; punctuation removed unless the token is a number; numbers rewritten through
``float`` so '2' == '2.0'; articles removed) and becomes a set of tokens. EM needs the same
normalised spans; F1 pairs gold and predicted spans one to one (Hungarian assignment) and a pair
whose gold numbers are absent from the predicted span scores 0.
"""
from __future__ import annotations

import re

import numpy as np
from scipy.optimize import linear_sum_assignment

from harness.openicl.evaluators.base import as_list, check_inputs, percentage
from harness.openicl.evaluators.squad import _ARTICLES, _ASCII_PUNCTUATION  # the same normalisation tables
from harness.registry import EVALUATORS


def is_number(text: str) -> bool:
    """Whether ``float`` accepts the text (so '1e3' and 'nan' count, as in the official script)."""
    try:
        float(text)
    except ValueError:
        return False
    return True


def _normalize_token(token: str) -> str:
    lowered = token.lower()
    if not is_number(lowered):
        lowered = "".join(char for char in lowered if char not in _ASCII_PUNCTUATION)
    if is_number(lowered):
        lowered = str(float(lowered))
    return " ".join(_ARTICLES.sub(" ", lowered).split())


def normalize_span(text: str) -> str:
    """One span normalised: tokens split on spaces and hyphens, each normalised, blanks dropped."""
    tokens = (_normalize_token(token) for token in re.split(" |-", text))
    return " ".join(token for token in tokens if token.strip()).strip()


def answer_to_bags(answer) -> tuple[list[str], list[set[str]]]:
    """The normalised spans of an answer and each span's set of tokens."""
    spans = [normalize_span(str(span)) for span in as_list(answer)]
    return spans, [set(span.split()) for span in spans]


def bag_f1(predicted: set[str], gold: set[str]) -> float:
    """Token-set F1; an empty side counts as precision (or recall) 1, as in the official script."""
    overlap = len(gold & predicted)
    precision = overlap / len(predicted) if predicted else 1.0
    recall = overlap / len(gold) if gold else 1.0
    if precision == 0.0 and recall == 0.0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def numbers_match(gold: set[str], predicted: set[str]) -> bool:
    """True when the gold span has no number or shares at least one with the predicted span."""
    gold_numbers = {token for token in gold if is_number(token)}
    predicted_numbers = {token for token in predicted if is_number(token)}
    return not gold_numbers or bool(gold_numbers & predicted_numbers)


def aligned_f1s(predicted: list[set[str]], gold: list[set[str]]) -> np.ndarray:
    """Per gold span, the F1 of the predicted span the optimal one-to-one alignment gives it.

    The array has max(len(gold), len(predicted)) entries, so extra predicted spans lower the mean.
    """
    scores = np.zeros((len(gold), len(predicted)))
    for g, gold_bag in enumerate(gold):
        for p, predicted_bag in enumerate(predicted):
            if numbers_match(gold_bag, predicted_bag):
                scores[g, p] = bag_f1(predicted_bag, gold_bag)
    rows, columns = linear_sum_assignment(-scores)
    best = np.zeros(max(len(gold), len(predicted)))
    for row, column in zip(rows, columns):
        best[row] = max(best[row], scores[row, column])
    return best


def drop_metrics(predicted, gold) -> tuple[float, float]:
    """(EM, F1) of one predicted answer against one gold answer; F1 rounded to 2 places officially."""
    predicted_spans, predicted_bags = answer_to_bags(predicted)
    gold_spans, gold_bags = answer_to_bags(gold)
    same_spans = set(predicted_spans) == set(gold_spans) and len(predicted_spans) == len(gold_spans)
    f1 = round(float(np.mean(aligned_f1s(predicted_bags, gold_bags))), 2)
    return float(same_spans), f1


def _is_blank_gold(gold) -> bool:
    """The official script skips golds whose first span is blank."""
    spans = as_list(gold)
    return not spans or not str(spans[0]).strip()


@EVALUATORS.register_module(name="DropEvaluator")
class DropEvaluator:
    """Official DROP EM and F1, each the max over the gold answers; ``{'em', 'f1'}``.

    A reference is a list of gold answers (each a string or a list of spans) or a single string.
    """

    needs_references = True  # a dataset without output_column is refused before the model loads

    def score(self, predictions: list, references: list) -> dict[str, float]:
        check_inputs("DropEvaluator", predictions, references)
        ems, f1s = [], []
        for prediction, reference in zip(predictions, references):
            best_em, best_f1 = 0.0, 0.0
            for gold in as_list(reference):
                if _is_blank_gold(gold):
                    continue
                em, f1 = drop_metrics(prediction, gold)
                best_em, best_f1 = max(best_em, em), max(best_f1, f1)
            ems.append(best_em)
            f1s.append(best_f1)
        return {"em": percentage(ems), "f1": percentage(f1s)}
