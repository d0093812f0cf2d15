"""SQuAD scoring: the official v1.1 and v2.0 scripts' EM/F1, and the EEP protocol's substring rule."""
from __future__ import annotations

import re
import string
from collections import Counter

from harness.errors import HarnessError
from harness.openicl.evaluators.base import as_list, check_inputs, percentage
from harness.openicl.postprocessors import general_postprocess, squad_postprocess
from harness.registry import EVALUATORS

_ASCII_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)


def normalize_answer(text: str) -> str:
    """The official SQuAD normalisation: lowercase, drop ASCII punctuation, articles, extra spaces."""
    lowered = str(text).lower()
    no_punctuation = "".join(char for char in lowered if char not in _ASCII_PUNCTUATION)
    no_articles = _ARTICLES.sub(" ", no_punctuation)
    return " ".join(no_articles.split())


def exact_match(prediction: str, gold: str) -> float:
    """1.0 when both normalise to the same string."""
    return float(normalize_answer(prediction) == normalize_answer(gold))


def _overlap_f1(prediction_tokens: list[str], gold_tokens: list[str]) -> float:
    common = Counter(prediction_tokens) & Counter(gold_tokens)
    shared = sum(common.values())
    if shared == 0:
        return 0.0
    precision = shared / len(prediction_tokens)
    recall = shared / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def token_f1_v1(prediction: str, gold: str) -> float:
    """SQuAD v1.1 token F1 (bag-of-words overlap); two empty answers score 0 as in that script."""
    return _overlap_f1(normalize_answer(prediction).split(), normalize_answer(gold).split())


def token_f1_v2(prediction: str, gold: str) -> float:
    """SQuAD v2.0 token F1: when either side is empty, 1.0 only if both are."""
    prediction_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(gold).split()
    if not prediction_tokens or not gold_tokens:
        return float(prediction_tokens == gold_tokens)
    return _overlap_f1(prediction_tokens, gold_tokens)


@EVALUATORS.register_module(name="SQuADEvaluator")
class SQuADEvaluator:
    """Official SQuAD v1.1 EM and F1, each the max over the gold answers; ``{'em', 'f1'}``."""

    needs_references = True  # a dataset without output_column is refused before the model loads

    def score(self, predictions: list, references: list) -> dict[str, float]:
        check_inputs("SQuADEvaluator", predictions, references)
        ems, f1s = [], []
        for position, (prediction, reference) in enumerate(zip(predictions, references)):
            golds = [str(gold) for gold in as_list(reference)]
            if not golds:
                raise HarnessError(
                    f"SQuADEvaluator: reference {position} has no gold answer; "
                    "use SQuAD20Evaluator for unanswerable questions"
                )
            ems.append(max(exact_match(str(prediction), gold) for gold in golds))
            f1s.append(max(token_f1_v1(str(prediction), gold) for gold in golds))
        return {"em": percentage(ems), "f1": percentage(f1s)}


@EVALUATORS.register_module(name="SQuAD20Evaluator")
class SQuAD20Evaluator:
    """Official SQuAD v2.0 EM and F1, overall and split by answerable (HasAns) or not (NoAns).

    An unanswerable question has an empty gold list or the gold ''; the right prediction is ''.
    """

    needs_references = True  # a dataset without output_column is refused before the model loads

    def score(self, predictions: list, references: list) -> dict[str, float]:
        check_inputs("SQuAD20Evaluator", predictions, references)
        groups: dict[str, tuple[list[float], list[float]]] = {"HasAns": ([], []), "NoAns": ([], [])}
        ems, f1s = [], []
        for prediction, reference in zip(predictions, references):
            raw_golds = [str(gold) for gold in as_list(reference)]
            # the official script scores against the golds that survive normalisation, else ''
            golds = [gold for gold in raw_golds if normalize_answer(gold)] or [""]
            em = max(exact_match(str(prediction), gold) for gold in golds)
            f1 = max(token_f1_v2(str(prediction), gold) for gold in golds)
            ems.append(em)
            f1s.append(f1)
            group_ems, group_f1s = groups["HasAns" if any(raw_golds) else "NoAns"]
            group_ems.append(em)
            group_f1s.append(f1)
        result = {"em": percentage(ems), "f1": percentage(f1s)}
        for name, (group_ems, group_f1s) in groups.items():
            if group_ems:
                result[f"{name}_em"] = percentage(group_ems)
                result[f"{name}_f1"] = percentage(group_f1s)
        return result


def eep_squad_prediction(prediction: str) -> str:
    """The protocol's prediction text: first line, lowercased, after the last 'answer is', cut at '.'/','."""
    first_line = str(prediction).split("\n")[0].lower()
    if "answer is" in first_line:
        first_line = first_line.split("answer is")[-1]
    return general_postprocess(first_line)


@EVALUATORS.register_module(name="EEPSQuAD20Evaluator")
class EEPSQuAD20Evaluator:
    """The EEP protocol's SQuAD 2.0 score: right when any processed gold is a substring of the answer.

    The prediction is cut at the first '.' or ',' but the golds are not, so a gold such as
    'Paris, France' can never be matched; this quirk is kept to reproduce the protocol's numbers.
    """

    needs_references = True  # a dataset without output_column is refused before the model loads

    def score(self, predictions: list, references: list) -> dict[str, float]:
        check_inputs("EEPSQuAD20Evaluator", predictions, references)
        hits = []
        for prediction, reference in zip(predictions, references):
            processed = eep_squad_prediction(prediction)
            golds = [squad_postprocess(str(gold)).lower() for gold in as_list(reference)]
            hits.append(float(any(gold in processed for gold in golds)))
        return {"score": percentage(hits)}
