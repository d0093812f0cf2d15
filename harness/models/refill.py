"""Greedy generation that refills a finished row with the next prompt (continuous batching).

A plain ``generate`` batch decodes until its longest output is done: rows that finished early
keep being computed, and on CPU a decode step costs about as much again for its fixed part
(weights read, Python overhead) as for its rows. Here at most ``rows`` prompts are in flight;
a row that finishes (end-of-text, a stop string, ``max_out_len``) leaves the KV cache at once
and the next prompt of the queue is prefilled and joins it, its cache left-padded to the
running width. Positions are counted per row from its own first token and padding is masked,
so every row sees what it would see alone: greedy outputs equal ``generate`` item by item
(tested on every MoE family in ``tests/test_gen_refill.py``).

The queue is the collator's order of *all* the call's requests, so a row freed while batch k
finishes is already filled from batch k+1; ``run(batch)`` returns as soon as batch k is done and
the rows in flight carry over to the next call. Only greedy decoding without logits processors
and a cache of plain ``DynamicLayer``s (full attention) qualify (``greedy_compatible``,
``plain_cache``); anything else goes through ``generate``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from harness.models.api import GenerationRequest
from harness.models.kv_cache import cache_argument, output_cache

# generation_config fields that change a greedy choice; a model that sets any goes through generate
_PROCESSOR_FIELDS = {
    "repetition_penalty": (None, 1.0), "no_repeat_ngram_size": (None, 0), "bad_words_ids": (None,),
    "suppress_tokens": (None,), "begin_suppress_tokens": (None,), "sequence_bias": (None,),
    "forced_bos_token_id": (None,), "forced_eos_token_id": (None,), "min_length": (None, 0),
    "min_new_tokens": (None, 0), "num_beams": (None, 1), "exponential_decay_length_penalty": (None,),
    "guidance_scale": (None, 1.0), "encoder_repetition_penalty": (None, 1.0), "penalty_alpha": (None,),
    "watermarking_config": (None,),
}


def greedy_compatible(generation_config, kwargs: dict) -> bool:
    """Whether ``generate(**kwargs)`` with this model's generation config is plain greedy search."""
    if any(key != "do_sample" for key in kwargs) or kwargs.get("do_sample", False):
        return False
    return all(getattr(generation_config, name, None) in allowed for name, allowed in _PROCESSOR_FIELDS.items())


def plain_cache(cache) -> bool:
    """A DynamicCache of full-attention layers only: rows can be padded, joined and dropped."""
    from transformers.cache_utils import DynamicCache, DynamicLayer

    return type(cache) is DynamicCache and all(type(layer) is DynamicLayer for layer in cache.layers)


class NotRefillable(Exception):
    """The model's cache cannot be refilled (sliding windows, linear attention): use generate."""


@dataclass
class _Row:
    request: GenerationRequest
    key: int  # the request's index in the queue
    tokens: list[int] = field(default_factory=list)  # generated so far; the last one not yet fed


class RefillDecoder:
    """Greedy decoding of ``queue`` with at most ``rows()`` prompts in flight (module docstring)."""

    def __init__(self, model, tokenizer, queue: Sequence[GenerationRequest], rows: Callable[[], int],
                 pad_token_id: int, eos_token_ids: Sequence[int], stop_hit: Callable, finish: Callable):
        self.model = model
        self.tokenizer = tokenizer
        self.queue = list(queue)
        self.index = {id(r): k for k, r in enumerate(self.queue)}
        self.rows = rows
        self.pad = pad_token_id
        self.eos = set(int(t) for t in eos_token_ids)
        self.stop_hit = stop_hit  # (tokens, stop_strings) -> bool, as StopOnStrings decides
        self.finish = finish  # (tokens, stop_strings) -> the returned text
        self.results: dict[int, str] = {}
        self.next = 0  # queue position of the next prompt to admit
        self._reset()

    def _reset(self) -> None:
        self.active: list[_Row] = []
        self.cache = None
        self.mask = None  # (rows, width) long: 1 where the cache holds a real token

    def serves(self, batch: Sequence[GenerationRequest]) -> bool:
        return all(id(r) in self.index for r in batch)

    @torch.no_grad()
    def run(self, batch: Sequence[GenerationRequest]) -> list[str]:
        """The texts of ``batch``: decode, admitting prompts as rows free up, until all of it is done."""
        keys = [self.index[id(r)] for r in batch]
        try:
            while any(k not in self.results for k in keys):
                self._admit(keys)
                self._step()
        except BaseException:
            # out of memory or interrupted: drop the rows in flight; they start again if asked for
            self.next = min([self.next] + [row.key for row in self.active])
            self._reset()
            raise
        return [self.results.pop(k) for k in keys]

    def _admit(self, keys: list[int]) -> None:
        """Prefill the next prompts into the free rows: the batch's own first, then the queue's."""
        free = self.rows() - len(self.active)
        if free <= 0:
            return
        started = set(self.results) | {row.key for row in self.active}
        new = [k for k in keys if k not in started][:free]
        while len(new) < free and self.next < len(self.queue):
            if self.next not in started and self.next not in new:
                new.append(self.next)
            self.next += 1
        if not new:
            return
        rows = [_Row(self.queue[k], k) for k in new]
        ids, mask = _left_pad([r.request.tokens for r in rows], self.pad, self.model.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                         logits_to_keep=1)
        cache = output_cache(out)
        if not plain_cache(cache):
            raise NotRefillable(type(cache).__name__)
        self._choose(rows, out.logits[:, -1])
        self._join(rows, cache, mask)

    def _step(self) -> None:
        """One decode step of every row in flight."""
        if not self.active:
            return
        ids = torch.tensor([[row.tokens[-1]] for row in self.active], device=self.mask.device)
        positions = self.mask.sum(-1, keepdim=True)
        self.mask = torch.cat([self.mask, torch.ones_like(self.mask[:, :1])], dim=1)
        out = self.model(input_ids=ids, attention_mask=self.mask, position_ids=positions, use_cache=True,
                         **{cache_argument(self.model): self.cache})
        self._choose(self.active, out.logits[:, -1])
        self._drop_finished()

    def _choose(self, rows: list[_Row], logits: torch.Tensor) -> None:
        """Append each row's greedy token; end-of-text stays barred until ``min_out_len``."""
        logits = logits.float()
        for i, row in enumerate(rows):
            if row.request.min_out_len and len(row.tokens) < row.request.min_out_len and self.eos:
                logits[i, list(self.eos)] = float("-inf")
        for row, token in zip(rows, logits.argmax(-1).tolist()):
            row.tokens.append(int(token))

    def _done(self, row: _Row) -> bool:
        return (row.tokens[-1] in self.eos or len(row.tokens) >= row.request.max_out_len
                or self.stop_hit(row.tokens, row.request.stop_strings))

    def _join(self, rows: list[_Row], cache, mask: torch.Tensor) -> None:
        """Rows that are already done leave at once; the others join the running cache."""
        keep = [i for i, row in enumerate(rows) if not self._finish_if_done(row)]
        if not keep:
            return
        if len(keep) < len(rows):
            index = torch.tensor(keep, device=mask.device)
            cache.batch_select_indices(index)
            mask = mask[index]
            mask, cache = _trim(mask, cache)
        rows = [rows[i] for i in keep]
        if self.cache is None:
            self.cache, self.mask, self.active = cache, mask, rows
            return
        width = max(self.mask.shape[1], mask.shape[1])
        for mine, theirs in zip(self.cache.layers, cache.layers):
            for name in ("keys", "values"):
                a, b = getattr(mine, name), getattr(theirs, name)
                setattr(mine, name, torch.cat([_pad_seq(a, width), _pad_seq(b, width)], dim=0))
        self.mask = torch.cat([_pad_seq(self.mask, width, dim=1), _pad_seq(mask, width, dim=1)], dim=0)
        self.active += rows

    def _drop_finished(self) -> None:
        keep = [i for i, row in enumerate(self.active) if not self._finish_if_done(row)]
        if len(keep) == len(self.active):
            return
        if not keep:
            self._reset()
            return
        index = torch.tensor(keep, device=self.mask.device)
        self.cache.batch_select_indices(index)
        self.mask, self.cache = _trim(self.mask[index], self.cache)
        self.active = [self.active[i] for i in keep]

    def _finish_if_done(self, row: _Row) -> bool:
        if not self._done(row):
            return False
        self.results[row.key] = self.finish(row.tokens, row.request.stop_strings)
        return True



def _pad_seq(tensor: torch.Tensor, width: int, dim: int = -2) -> torch.Tensor:
    """Zeros on the left of ``dim`` up to ``width`` (masked out, so their values never count)."""
    missing = width - tensor.shape[dim]
    if missing <= 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


def _trim(mask: torch.Tensor, cache):
    """Drop the leading columns no row uses any more (left by rows that left)."""
    used = mask.any(0).nonzero()
    first = int(used[0]) if len(used) else 0
    if first == 0:
        return mask, cache
    for layer in cache.layers:
        layer.keys = layer.keys[..., first:, :]
        layer.values = layer.values[..., first:, :]
    return mask[:, first:], cache


def _left_pad(seqs: list[list[int]], pad: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s):] = torch.tensor(s, dtype=torch.long)
        mask[i, width - len(s):] = 1
    return ids.to(device), mask.to(device)
