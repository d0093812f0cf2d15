"""Corpus perplexity from the rolling inferencer's per-document log-likelihoods.

Metrics (lm-evaluation-harness's definitions, pooled over the corpus, not averaged per document):
    loss              -sum(loglikelihood) / sum(tokens)        nats per token
    token_perplexity  exp(loss)
    word_perplexity   exp(-sum(loglikelihood) / sum(words))    words: re.split(r'\\s+', doc)
    byte_perplexity   exp(-sum(loglikelihood) / sum(bytes))    bytes: UTF-8
    bits_per_byte     -sum(loglikelihood) / sum(bytes) / ln 2
Lower is better for all of them, and none is a percentage, so the results file names
``token_perplexity`` as its primary metric and ``tools/summarize.py`` keeps it out of the accuracy
average.
"""
from __future__ import annotations

import math

from harness.errors import HarnessError
from harness.openicl.evaluators.base import check_inputs
from harness.registry import EVALUATORS

PERPLEXITY_METRICS = ("loss", "token_perplexity", "word_perplexity", "byte_perplexity", "bits_per_byte")
KEYS = ("loglikelihood", "num_tokens", "num_words", "num_bytes")


def _checked(predictions: list) -> list[dict]:
    for k, p in enumerate(predictions):
        if not isinstance(p, dict) or any(key not in p for key in KEYS):
            raise HarnessError(f"PerplexityEvaluator: prediction {k} is not a RollingPPLInferencer record "
                               f"(needs {KEYS}); score it with infer_cfg.inferencer=dict(type='RollingPPLInferencer')")
    return predictions


@EVALUATORS.register_module(name="PerplexityEvaluator")
class PerplexityEvaluator:
    """Pooled loss and perplexities of a corpus (see the module docstring); references are unused."""

    def score(self, predictions: list, references: list) -> dict:
        check_inputs("PerplexityEvaluator", predictions, references)
        records = _checked(predictions)
        nll = -sum(r["loglikelihood"] for r in records)
        tokens = sum(r["num_tokens"] for r in records)
        words = sum(r["num_words"] for r in records)
        num_bytes = sum(r["num_bytes"] for r in records)
        loss = nll / tokens
        return {
            "loss": loss,
            "token_perplexity": math.exp(loss),
            "word_perplexity": math.exp(nll / words),
            "byte_perplexity": math.exp(nll / num_bytes),
            "bits_per_byte": nll / num_bytes / math.log(2),
            "num_tokens": tokens,
            "num_documents": len(records),
            "primary_metric": "token_perplexity",
        }

    def details(self, predictions: list, references: list) -> list[dict]:
        """Per document: its token count, loss and token perplexity."""
        out = []
        for r in _checked(predictions):
            loss = -r["loglikelihood"] / r["num_tokens"]
            out.append({"num_tokens": r["num_tokens"], "loss": loss, "token_perplexity": math.exp(loss)})
        return out
