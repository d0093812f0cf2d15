"""Accuracy by exact string match (classification letters) and by numeric value (GSM8K)."""
from __future__ import annotations

from harness.openicl.evaluators.base import check_inputs, percentage
from harness.registry import EVALUATORS


@EVALUATORS.register_module(name="AccEvaluator")
class AccEvaluator:
    """Share of predictions whose ``str`` equals the reference's ``str``; ``{'accuracy': x}``."""

    needs_references = True  # a dataset without output_column is refused before the model loads

    def score(self, predictions: list, references: list) -> dict[str, float]:
        check_inputs("AccEvaluator", predictions, references)
        hits = [float(str(pred) == str(ref)) for pred, ref in zip(predictions, references)]
        return {"accuracy": percentage(hits)}

    def details(self, predictions: list, references: list) -> list[dict]:
        """Per item: what was compared and whether it counted (saved beside the predictions)."""
        return [{"prediction": pred, "reference": ref, "correct": str(pred) == str(ref)}
                for pred, ref in zip(predictions, references)]


def numbers_agree(prediction, reference) -> bool:
    """Equal strings, or equal numbers within 1e-6; anything that is not a number is simply wrong."""
    if prediction == reference:
        return True
    try:
        return abs(float(prediction) - float(reference)) < 1e-6
    except (TypeError, ValueError, OverflowError):
        return False


@EVALUATORS.register_module(name="Gsm8kEvaluator")
class Gsm8kEvaluator:
    """GSM8K accuracy on extracted numbers ('NULL' predictions count wrong); ``{'accuracy': x}``."""

    needs_references = True  # a dataset without output_column is refused before the model loads

    def score(self, predictions: list, references: list) -> dict[str, float]:
        check_inputs("Gsm8kEvaluator", predictions, references)
        hits = [float(numbers_agree(pred, ref)) for pred, ref in zip(predictions, references)]
        return {"accuracy": percentage(hits)}

    def details(self, predictions: list, references: list) -> list[dict]:
        return [{"prediction": pred, "reference": ref, "correct": numbers_agree(pred, ref)}
                for pred, ref in zip(predictions, references)]
