"""Scoring many requests in few rows with no padding between them ("packed" scoring).

An item's labels share a context; the model needs the context once and each continuation after
it. A *unit* is one context and the continuations scored after it; a row holds several units, one
after another (``context A, continuation A1, A2, ..., context B, continuation B1, ...``, each
continuation without its last token, whose logits predict nothing), right-padded to the batch's
width. The model gets:

- position ids that restart at 0 for every unit and at ``len(context)`` for every continuation,
  so each token sits where it would in its own sequence;
- an attention mask in which a token sees only earlier tokens of its own unit's context and of its
  own continuation: never another unit, never another continuation (block diagonal per unit);
- ``logits_to_keep`` as a boolean mask, so the LM head runs only on positions whose next-token
  distribution is read.

Each token then computes exactly what it would in its own sequence; only the floating-point
summation order of batched matmuls differs. How the mask reaches attention depends on the
implementation (``packing_mode``):

- ``mask``: sdpa and eager take a dense (B, 1, L, L) mask (bool, or additive for eager). Its size
  is bounded by the caller (``MASK_LIMIT`` entries per forward, see ``HFCausalLM``).
- ``flex``: flex attention takes a ``BlockMask`` built from per-token unit and segment ids, so
  the mask costs O(L) memory plus one bit per 128 x 128 block.
- ``varlen``: flash attention takes no custom mask. Every request then becomes its own sequence
  (its context repeated per continuation) and sequences are told apart by restarting position ids
  alone, which transformers turns into ``cu_seqlens`` for the varlen kernels.

A sliding window shorter than the sequences is not expressed in these masks; ``packing_mode``
returns None there and the model wrapper falls back to its KV-cache path.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

# entries of a dense (B, 1, L, L) mask one forward may build (64 Mi bool entries: 64 MiB)
MASK_LIMIT = 1 << 26


@dataclass
class Unit:
    """Requests that share ``prefix`` (their first ``len(prefix)`` tokens)."""

    prefix: list[int]
    requests: list  # ScoreRequest: tokens, score_from


def unit_length(unit: Unit, layout: str = "mask") -> int:
    """Tokens the unit occupies in a packed row (``varlen``: its context once per request)."""
    p = len(unit.prefix)
    if layout == "varlen":
        return sum(len(r.tokens) - 1 for r in unit.requests)
    return p + sum(len(r.tokens) - 1 - p for r in unit.requests)


@dataclass
class PackedBatch:
    """Model inputs of a packed batch and where each request's token scores are read."""

    input_ids: torch.Tensor  # (B, L)
    position_ids: torch.Tensor  # (B, L)
    unit_ids: torch.Tensor  # (B, L): which unit of the row a token belongs to (-1: padding)
    segments: torch.Tensor  # (B, L): 0 for a unit's context, j > 0 for its continuation j
    keep: torch.Tensor  # (B, L) bool: positions whose logits are computed
    # per request (row-major, unit order): for each target position t = 1 .. len(tokens) - 1, the
    # index of the kept logits row that predicts token t, or -1 where that score is never read
    reads: list[list[int]]
    layout: str = "mask"

    @property
    def allowed(self) -> torch.Tensor:
        """(B, 1, L, L) bool: query may attend key (see ``attention_allowed``)."""
        return attention_allowed(self.unit_ids, self.segments)

    def attention_mask(self, implementation: str, dtype: torch.dtype):
        """The mask in the form the attention implementation takes: sdpa a bool tensor, eager an
        additive one, flex attention a ``BlockMask``, the varlen layout none."""
        if self.layout == "varlen":
            return None
        if implementation == "flex_attention":
            return block_mask(self.unit_ids, self.segments)
        allowed = self.allowed
        if implementation == "sdpa":
            return allowed
        additive = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
        return additive.masked_fill_(~allowed, torch.finfo(dtype).min)


def packing_mode(config, longest: int) -> str | None:
    """How packed rows reach this model's attention (``mask``, ``flex``, ``varlen``), or None when
    a packed batch would not compute what separate sequences do (a short sliding window)."""
    window = getattr(config, "sliding_window", None)
    if getattr(config, "use_sliding_window", True) is False:
        window = None
    if window is not None and longest > int(window):
        return None
    implementation = getattr(config, "_attn_implementation", None) or ""
    if implementation in ("sdpa", "eager"):
        return "mask"
    if implementation == "flex_attention":
        return "flex"
    if "flash" in implementation:
        return "varlen"
    return None


def packing_supported(config, longest: int) -> bool:
    """Whether this model config can score packed rows at all (any layout)."""
    return packing_mode(config, longest) is not None


def pack(rows: list[list[Unit]], pad_token_id: int, device=None, layout: str = "mask") -> PackedBatch:
    """Lay out ``rows`` (each a list of units, see the module docstring); rows are right-padded.

    ``layout='varlen'`` gives every request its own copy of its unit's context, so no token needs
    to see part of a sequence (only restarting positions separate sequences); padding then runs
    as a sequence of its own, with positions from 0.
    """
    if layout == "varlen":
        rows = [[Unit(unit.prefix, [request]) for unit in row for request in unit.requests] for row in rows]
    tokens_rows, position_rows, unit_rows, segment_rows, need_rows, reads = [], [], [], [], [], []
    for row_index, row in enumerate(rows):
        tokens, pos, unit_of, seg, need = [], [], [], [], []
        for u, unit in enumerate(row):
            offset, p = len(tokens), len(unit.prefix)
            tokens += unit.prefix
            pos += range(p)
            unit_of += [u] * p
            seg += [0] * p
            prefix_read = any(r.score_from < p for r in unit.requests)  # some target lies inside the prefix
            need += [prefix_read] * (p - 1) + [True]
            for j, request in enumerate(unit.requests, start=1):
                body = request.tokens[p:-1]
                start = len(tokens)
                tokens += body
                pos += range(p, p + len(body))
                unit_of += [u] * len(body)
                seg += [j] * len(body)
                need += [True] * len(body)
                # target t is predicted at position offset + t - 1 (inside the prefix) or start + t - 1 - p
                reads.append((row_index, [offset + t - 1 if t <= p else start + t - 1 - p
                                          for t in range(1, len(request.tokens))]))
        tokens_rows.append(tokens)
        position_rows.append(pos)
        unit_rows.append(unit_of)
        segment_rows.append(seg)
        need_rows.append(need)

    width = max(len(r) for r in tokens_rows)
    shape = (len(tokens_rows), width)
    input_ids = torch.full(shape, pad_token_id, dtype=torch.long)
    position_ids = torch.zeros(shape, dtype=torch.long)
    unit_ids = torch.full(shape, -1, dtype=torch.long)
    segments = torch.zeros(shape, dtype=torch.long)
    keep = torch.zeros(shape, dtype=torch.bool)
    for i, (tokens, pos, unit_of, seg, need) in enumerate(
            zip(tokens_rows, position_rows, unit_rows, segment_rows, need_rows)):
        n = len(tokens)
        input_ids[i, :n] = torch.tensor(tokens)
        position_ids[i, :n] = torch.tensor(pos)
        position_ids[i, n:] = torch.arange(width - n)  # padding: a sequence of its own
        unit_ids[i, :n] = torch.tensor(unit_of)
        segments[i, :n] = torch.tensor(seg)
        keep[i, :n] = torch.tensor(need)

    # kept logits come back flattened in row-major order: flat position -> kept index (-1: not kept)
    kept_index = (keep.flatten().cumsum(0) - 1).masked_fill(~keep.flatten(), -1).tolist()
    flat_reads = [[kept_index[row * width + q] for q in positions] for row, positions in reads]
    return PackedBatch(input_ids.to(device), position_ids.to(device), unit_ids.to(device), segments.to(device),
                       keep.to(device), flat_reads, layout)


def attention_allowed(unit_ids: torch.Tensor, segments: torch.Tensor) -> torch.Tensor:
    """(B, 1, L, L) bool from per-token unit ids (-1: padding) and segments (0: the unit's shared
    context, j > 0: its continuation j).

    A query sees earlier-or-same keys of its own unit that are context or its own continuation.
    Padding forms one unit of its own, so every query row has a key (an all-masked row would turn
    into NaN in some kernels) and real tokens never see padding.
    """
    width = unit_ids.shape[1]
    causal = torch.ones(width, width, dtype=torch.bool, device=unit_ids.device).tril()
    same_unit = unit_ids[:, :, None] == unit_ids[:, None, :]
    key_seg, query_seg = segments[:, None, :], segments[:, :, None]
    return (causal & same_unit & ((key_seg == 0) | (key_seg == query_seg)))[:, None]


def block_mask(unit_ids: torch.Tensor, segments: torch.Tensor):
    """The same rule as ``attention_allowed`` as a flex-attention ``BlockMask`` (no L x L tensor)."""
    from torch.nn.attention.flex_attention import create_block_mask

    def allowed(b, h, q, k):
        same_unit = unit_ids[b, q] == unit_ids[b, k]
        visible = (segments[b, k] == 0) | (segments[b, k] == segments[b, q])
        return (k <= q) & same_unit & visible

    batch, width = unit_ids.shape
    return create_block_mask(allowed, batch, None, width, width, device=unit_ids.device)
