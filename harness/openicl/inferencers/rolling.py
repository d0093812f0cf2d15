"""Rolling perplexity inferencer: the log-likelihood of every token of each document of a corpus.

Each document (the prompt template filled with its row, ``'{text}'``; no meta template, since a
corpus is scored as raw text) is encoded without the model's special tokens and scored through
``LanguageModel.score_rolling``: windows of at most ``max_seq_len`` tokens, every token scored
once, the first conditioned on the model's prefix token (end-of-text), as lm-eval's
``loglikelihood_rolling`` does. ``stride`` (default ``max_seq_len - 1``: disjoint windows, lm-eval's
rule) is how many new tokens each later window scores; a smaller stride gives each token more
left context for more forwards.

A record per document holds its log-likelihood and the token, word and byte counts the
``PerplexityEvaluator`` weighs by (words and bytes as lm-eval counts them), so results can be
recomputed from the predictions file alone.
"""
from __future__ import annotations

import re

from harness.errors import HarnessError
from harness.io import PredictionStore
from harness.models.api import RollingRequest
from harness.openicl.inferencers.base import Inferencer, PromptInputs, fingerprint, progress
from harness.registry import INFERENCERS


def count_words(text: str) -> int:
    """lm-eval's word count (``Task.count_words``): pieces between whitespace runs."""
    return len(re.split(r"\s+", text))


def count_bytes(text: str) -> int:
    """lm-eval's byte count: UTF-8 bytes of the document."""
    return len(text.encode("utf-8"))


@INFERENCERS.register_module(name="RollingPPLInferencer")
class RollingPPLInferencer(Inferencer):
    """Scores whole documents in rolling windows; see the module docstring."""

    mode = "rolling"

    def __init__(self, stride: int | None = None, batch_size: int | None = None):
        if stride is not None and (isinstance(stride, bool) or not isinstance(stride, int) or stride < 1):
            raise HarnessError(f"RollingPPLInferencer stride={stride!r} must be a positive integer (or None)")
        super().__init__(batch_size)
        self.stride = stride

    def build_items(self, inputs: PromptInputs) -> list[str]:
        """The text of every document: the template filled with the row (no meta template)."""
        texts = []
        for row in inputs.rows:
            text = inputs.template.render(row)
            if not isinstance(text, str):
                raise HarnessError(f"dataset {inputs.abbr}: a RollingPPLInferencer template must be a plain string "
                                   "such as '{text}'")
            texts.append(text)
        return texts

    def check_model(self, model) -> int:
        """The stride used with this model; a stride that no window of ``max_seq_len`` tokens can
        take is refused (before anything is written)."""
        window = int(model.max_seq_len)
        if window < 2:
            raise HarnessError(f"model max_seq_len={window}: rolling perplexity needs windows of at least 2 tokens")
        if self.stride is None:
            return window - 1
        if self.stride > window - 1:
            raise HarnessError(f"RollingPPLInferencer stride={self.stride} is larger than a window allows "
                               f"(max_seq_len {window} - 1 = {window - 1}); lower the stride or raise max_seq_len")
        return self.stride

    def tokens(self, model, text: str) -> list[int]:
        """The document's tokens without the special tokens ``encode`` adds (lm-eval's encoding)."""
        special = model.encode("")
        tokens = model.encode(text)
        if special and tokens[: len(special)] == special:
            tokens = tokens[len(special):]
        if not tokens:
            raise HarnessError(f"a document encodes to no tokens: {text[:40]!r}")
        return tokens

    def fingerprint(self, model, texts: list[str]) -> str:
        return fingerprint("rolling", model.identity, self.check_model(model), model.prefix_token_id, texts)

    def infer(self, model, texts: list[str], store: PredictionStore, desc: str = "", select=None) -> None:
        stride = self.check_model(model)
        requests = self.cached_requests(model, texts, lambda text: RollingRequest(self.tokens(model, text)))
        todo, total = self.unfinished([len(r.tokens) for r in requests], store, select)
        on_batch, bar = progress(store, todo, total, desc, lambda i, score: self.record(texts[i], score))
        with bar:
            model.score_rolling([requests[i] for i in todo], stride=stride, on_batch=on_batch,
                                batch_size=self.batch_size)

    @staticmethod
    def record(text: str, score) -> dict:
        """One document's prediction: what the evaluator sums (see the module docstring)."""
        return {"origin_prompt": text, "prediction": {
            "loglikelihood": score.logprob, "num_tokens": score.num_tokens,
            "num_words": count_words(text), "num_bytes": count_bytes(text)}}
