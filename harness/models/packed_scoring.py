"""Scoring several label continuations of one context in a single row ("packed" scoring).

An item's labels share a context; the model needs the context once and each continuation after
it. Packing lays one row out as ``context, continuation 1, continuation 2, ...`` (each
continuation without its last token, whose logits predict nothing) and gives the model:

- position ids that restart at ``len(context)`` for every continuation, so each continuation sits
  where it would in its own sequence;
- a 4D attention mask in which a continuation token sees the context and the earlier tokens of its
  own continuation, never another continuation's;
- ``logits_to_keep`` as a boolean mask, so the LM head runs only on positions whose next-token
  distribution is read.

One forward per batch then scores every label with no padding between continuations, no per-label
copy of the context and no KV-cache juggling. Each token computes exactly what it would in its own
sequence; only the floating-point summation order of batched matmuls differs.

The layout needs an attention implementation that takes a custom 4D mask (``sdpa`` and ``eager``;
flash attention takes none) and no sliding window shorter than the sequences;
``packing_supported`` says when, and the model wrapper falls back to its KV-cache path otherwise.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

PACKABLE_ATTENTION = ("sdpa", "eager")


@dataclass
class Unit:
    """Requests that share ``prefix`` (their first ``len(prefix)`` tokens)."""

    prefix: list[int]
    requests: list  # ScoreRequest: tokens, score_from


@dataclass
class PackedBatch:
    """Model inputs of a packed batch and where each request's token scores are read."""

    input_ids: torch.Tensor  # (B, L)
    position_ids: torch.Tensor  # (B, L)
    allowed: torch.Tensor  # (B, 1, L, L) bool: query may attend key
    keep: torch.Tensor  # (B, L) bool: positions whose logits are computed
    # per request (in unit order): for each target position t = 1 .. len(tokens) - 1, the index of
    # the kept logits row that predicts token t, or -1 where that score is never read
    reads: list[list[int]]

    def attention_mask(self, implementation: str, dtype: torch.dtype) -> torch.Tensor:
        """The mask in the form the attention implementation takes (sdpa: bool; eager: additive)."""
        if implementation == "sdpa":
            return self.allowed
        additive = torch.zeros(self.allowed.shape, dtype=dtype, device=self.allowed.device)
        return additive.masked_fill_(~self.allowed, torch.finfo(dtype).min)


def packing_supported(config, longest: int) -> bool:
    """Whether a packed batch computes what separate sequences would for this model config."""
    if getattr(config, "_attn_implementation", None) not in PACKABLE_ATTENTION:
        return False
    window = getattr(config, "sliding_window", None)
    if getattr(config, "use_sliding_window", True) is False:
        window = None
    return window is None or longest <= int(window)


def pack(units: list[Unit], pad_token_id: int, device=None) -> PackedBatch:
    """Lay ``units`` out one per row (see the module docstring); rows are right-padded."""
    rows, positions, segments, needed, reads = [], [], [], [], []
    for unit in units:
        p = len(unit.prefix)
        tokens, pos, seg = list(unit.prefix), list(range(p)), [0] * p
        prefix_read = any(r.score_from < p for r in unit.requests)  # some target lies inside the prefix
        need = [prefix_read] * (p - 1) + [True]
        unit_reads = []
        for j, request in enumerate(unit.requests, start=1):
            body = request.tokens[p:-1]
            start = len(tokens)
            tokens += body
            pos += range(p, p + len(body))
            seg += [j] * len(body)
            need += [True] * len(body)
            # target t is predicted at row index t - 1 (inside the prefix) or start + t - 1 - p
            unit_reads.append([t - 1 if t <= p else start + t - 1 - p for t in range(1, len(request.tokens))])
        rows.append(tokens)
        positions.append(pos)
        segments.append(seg)
        needed.append(need)
        reads.append(unit_reads)

    width = max(len(r) for r in rows)
    shape = (len(rows), width)
    input_ids = torch.full(shape, pad_token_id, dtype=torch.long)
    position_ids = torch.zeros(shape, dtype=torch.long)
    segment = torch.full(shape, -1, dtype=torch.long)
    keep = torch.zeros(shape, dtype=torch.bool)
    for i, (tokens, pos, seg, need) in enumerate(zip(rows, positions, segments, needed)):
        n = len(tokens)
        input_ids[i, :n] = torch.tensor(tokens)
        position_ids[i, :n] = torch.tensor(pos)
        segment[i, :n] = torch.tensor(seg)
        keep[i, :n] = torch.tensor(need)

    # kept logits come back flattened in row-major order: row index -> kept index (-1: not kept)
    kept_index = (keep.flatten().cumsum(0).view(shape) - 1).masked_fill(~keep, -1).tolist()
    flat_reads = [[kept_index[i][r] for r in request_reads]
                  for i, unit_reads in enumerate(reads) for request_reads in unit_reads]

    allowed = attention_allowed(segment)
    return PackedBatch(input_ids.to(device), position_ids.to(device), allowed.to(device), keep.to(device), flat_reads)


def attention_allowed(segment: torch.Tensor) -> torch.Tensor:
    """(B, 1, L, L) bool from per-token segments (0: shared prefix, j > 0: continuation j, -1: pad).

    A query sees earlier-or-same keys of the prefix or of its own segment; a pad query sees itself
    (a row with nothing to attend would turn into NaN in some kernels).
    """
    width = segment.shape[1]
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    query, key = segment[:, :, None], segment[:, None, :]
    allowed = causal & (query != -1) & (key != -1) & ((key == 0) | (key == query))
    allowed |= torch.eye(width, dtype=torch.bool)
    return allowed[:, None]
