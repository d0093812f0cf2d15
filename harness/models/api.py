"""What an inferencer may ask of a model: request and result types, and the backend protocol.

Modelled on lm-evaluation-harness's ``LM`` class. Inferencers build requests from rows and
templates and hand them to a backend; they never touch a backend's tokenizer or weights. A backend
(``HFCausalLM`` today; a vLLM server for materialised checkpoints would be one more module under
``harness/models/``) implements :class:`LanguageModel`:

- ``score(groups)``: log-likelihood of a chosen tail of each token sequence. The requests of one
  group (an item's label continuations) usually share a prefix, which a backend may run once.
- ``score_rolling(requests)``: log-likelihood of every token of a long text, in windows of at most
  ``max_seq_len`` tokens (perplexity of a corpus); :func:`rolling_windows` is the window rule.
- ``generate(requests)``: a continuation per prompt, greedy unless the request samples.
- ``encode`` / ``encode_prompt``: the tokenisation these requests are built with.
- ``identity``: what a cached prediction depends on (weights, dtype, tokenisation, installed plan).

Every batched method takes ``on_batch(positions, results)``, called after each batch with the
request positions it finished, so an inferencer can persist progress as it comes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence, runtime_checkable

OnBatch = Callable[[list[int], list], None]


@dataclass(frozen=True)
class ScoreRequest:
    """One sequence to score: token ids, and the first position whose token is scored (>= 1)."""

    tokens: list[int]
    score_from: int


@dataclass(frozen=True)
class Score:
    """Sum of log-probabilities of the scored tokens, how many there were, and whether each
    scored token was the model's greedy choice."""

    logprob: float
    num_tokens: int
    is_greedy: bool


@dataclass(frozen=True)
class RollingRequest:
    """A whole text to score token by token (its tokens, without the prefix token)."""

    tokens: list[int]


@dataclass(frozen=True)
class GenerationRequest:
    """One prompt (tokens from ``encode_prompt``) and how to continue it."""

    tokens: list[int]
    max_out_len: int
    stop_strings: tuple[str, ...] = ()
    min_out_len: int | None = None
    generation_kwargs: dict = field(default_factory=dict)

    def settings_key(self) -> str:
        """Requests with equal keys can share a batch."""
        return repr((self.max_out_len, self.stop_strings, self.min_out_len, sorted(self.generation_kwargs.items())))


@runtime_checkable
class LanguageModel(Protocol):
    """The protocol every backend implements (see the module docstring)."""

    abbr: str
    meta_template: dict | None
    batch_size: int
    max_seq_len: int
    max_out_len: int
    stop_strings: list[str]

    @property
    def identity(self) -> dict: ...

    @property
    def prefix_token_id(self) -> int:
        """The token a context-free continuation is conditioned on (end-of-text, as lm-eval)."""
        ...

    def encode(self, text: str) -> list[int]: ...

    def encode_prompt(self, text: str, max_out_len: int | None = None) -> list[int]: ...

    def score(self, groups: list[list[ScoreRequest]], on_batch: OnBatch | None = None,
              batch_size: int | None = None) -> list[list[Score]]: ...

    def score_rolling(self, requests: list[RollingRequest], stride: int | None = None,
                      on_batch: OnBatch | None = None, batch_size: int | None = None) -> list[Score]: ...

    def generate(self, requests: Sequence[GenerationRequest], on_batch: OnBatch | None = None,
                 batch_size: int | None = None) -> list[str]: ...


def rolling_windows(tokens: list[int], max_len: int, prefix_token: int, stride: int | None = None) -> list[ScoreRequest]:
    """Windows that score every token of ``tokens`` exactly once, each with as much left context
    as a window of ``max_len`` tokens allows.

    The sequence is ``[prefix_token] + tokens`` (the first token is conditioned on the prefix
    token, as lm-eval's ``loglikelihood_rolling`` does). ``stride`` (default ``max_len - 1``, i.e.
    disjoint scored spans, lm-eval's rule) is how many new tokens each later window scores; a
    smaller stride gives every scored token more context at the cost of more forwards.
    """
    if max_len < 2:
        raise ValueError("rolling windows need max_len >= 2")
    stride = max_len - 1 if stride is None else int(stride)
    if not 1 <= stride <= max_len - 1:
        raise ValueError(f"stride must be between 1 and max_len - 1 = {max_len - 1}, got {stride}")
    sequence = [prefix_token] + list(tokens)
    windows: list[ScoreRequest] = []
    scored = 1  # tokens of ``sequence`` scored so far are sequence[1:scored]
    while scored < len(sequence):
        step = (max_len - 1) if not windows else stride
        end = min(len(sequence), scored + step)
        start = max(0, end - max_len)
        windows.append(ScoreRequest(sequence[start:end], scored - start))
        scored = end
    return windows
