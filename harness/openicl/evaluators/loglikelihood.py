"""Log-likelihood tasks without choices (LAMBADA-style): one context and its true continuation.

There is nothing to rank and no reference column: the PPL inferencer's prediction of such an item
is ``{'loglikelihood', 'is_greedy', 'num_tokens'}`` of the continuation. The metrics are lm-eval's
``lambada_openai`` ones:

- ``accuracy``: percentage of items whose continuation is the greedy one (every token the argmax);
  higher is better.
- ``perplexity``: ``exp(-mean(loglikelihood per item))``, the mean over items of the continuation's
  summed log-likelihood (not a per-token perplexity); lower is better, not a percentage.
"""
from __future__ import annotations

import math

from harness.errors import HarnessError
from harness.openicl.evaluators.base import percentage
from harness.registry import EVALUATORS


@EVALUATORS.register_module(name="LoglikelihoodEvaluator")
class LoglikelihoodEvaluator:
    """Greedy accuracy and perplexity of single-continuation items; references are not read."""

    needs_references = False

    def score(self, predictions: list, references: list | None = None) -> dict[str, float]:
        if not predictions:
            raise HarnessError("LoglikelihoodEvaluator: got no predictions to score; check test_range and subset")
        bad = next((i for i, p in enumerate(predictions) if not _is_loglikelihood(p)), None)
        if bad is not None:
            raise HarnessError(
                f"LoglikelihoodEvaluator: item {bad} is not a single-continuation score ({predictions[bad]!r}); "
                "use it with PPLInferencer(mode='loglikelihood') and one continuation per item"
            )
        loglikelihoods = [float(p["loglikelihood"]) for p in predictions]
        return {
            "accuracy": percentage([float(bool(p["is_greedy"])) for p in predictions]),
            "perplexity": math.exp(-sum(loglikelihoods) / len(loglikelihoods)),
        }

    def details(self, predictions: list, references: list | None = None) -> list[dict]:
        return [{"loglikelihood": p["loglikelihood"], "correct": bool(p["is_greedy"])} for p in predictions]


def _is_loglikelihood(prediction) -> bool:
    return isinstance(prediction, dict) and "loglikelihood" in prediction and "is_greedy" in prediction
