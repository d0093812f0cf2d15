"""Exact-match scoring of short answers: the SQuAD-normalised one and the EEP protocol's substring one."""
from __future__ import annotations

from harness.openicl.evaluators.base import as_list, check_inputs, percentage
from harness.openicl.evaluators.squad import exact_match
from harness.openicl.postprocessors import general_postprocess
from harness.registry import EVALUATORS


@EVALUATORS.register_module(name="EMEvaluator")
class EMEvaluator:
    """Right when the prediction equals any acceptable answer after SQuAD normalisation; ``{'em': x}``."""

    needs_references = True  # a dataset without output_column is refused before the model loads

    def score(self, predictions: list, references: list) -> dict[str, float]:
        check_inputs("EMEvaluator", predictions, references)
        hits = [float(any(exact_match(str(prediction), str(gold)) for gold in as_list(reference)))
                for prediction, reference in zip(predictions, references)]
        return {"em": percentage(hits)}


def eep_em_correct(prediction: str, answers: list) -> bool:
    """The protocol's rule: any answer, raw or general-postprocessed, is a substring of the prediction.

    Case-sensitive; '14.2' matches 14.8 (both cut to '14'), and an answer that cleans to '' matches
    anything. Kept as is so scores compare with the protocol's.
    """
    processed = general_postprocess(str(prediction))
    raw = [str(answer) for answer in answers]
    candidates = set(raw) | {general_postprocess(answer) for answer in raw}
    return any(candidate in processed for candidate in candidates)


@EVALUATORS.register_module(name="EEPEMEvaluator")
class EEPEMEvaluator:
    """The EEP protocol's EMEvaluator (DROP, ReCoRD): substring match, ``{'score': x}``."""

    needs_references = True  # a dataset without output_column is refused before the model loads

    def score(self, predictions: list, references: list) -> dict[str, float]:
        check_inputs("EEPEMEvaluator", predictions, references)
        hits = [float(eep_em_correct(pred, as_list(ref))) for pred, ref in zip(predictions, references)]
        return {"score": percentage(hits)}
