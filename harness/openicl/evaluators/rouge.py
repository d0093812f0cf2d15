"""ROUGE-1/2/L with Google's ``rouge-score`` package (offline; no Hugging Face ``evaluate``)."""
from __future__ import annotations

from rouge_score import rouge_scorer

from harness.openicl.evaluators.base import check_inputs, percentage
from harness.registry import EVALUATORS

_ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


@EVALUATORS.register_module(name="RougeEvaluator")
class RougeEvaluator:
    """Mean ROUGE F-measure x 100 with Porter stemming; ``{'rouge1', 'rouge2', 'rougeL'}``."""

    needs_references = True  # a dataset without output_column is refused before the model loads

    def __init__(self, use_stemmer: bool = True):
        self.scorer = rouge_scorer.RougeScorer(list(_ROUGE_TYPES), use_stemmer=use_stemmer)

    def score(self, predictions: list, references: list) -> dict[str, float]:
        check_inputs("RougeEvaluator", predictions, references)
        per_item = [self.scorer.score(str(ref), str(pred)) for pred, ref in zip(predictions, references)]
        return {name: percentage([scores[name].fmeasure for scores in per_item]) for name in _ROUGE_TYPES}
