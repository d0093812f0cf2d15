"""One batching rule for every model path: longest first, adaptive batch size, dataset order back.

Longest first means an out-of-memory batch shows up at the start, not after an hour. A batch that
runs out of accelerator memory is halved and retried, and the size that fit is remembered for
every later call (scoring, generation and rolling perplexity share one limit per model).
"""
from __future__ import annotations

import logging
from typing import Callable, Sequence

import torch

from harness.errors import HarnessError

log = logging.getLogger(__name__)


class Collator:
    def __init__(self, batch_size: int):
        if int(batch_size) < 1:
            raise HarnessError(f"batch_size must be at least 1, got {batch_size}")
        self.batch_size = int(batch_size)  # the configured size
        self.fits: int | None = None  # the largest size known to fit, after an out-of-memory

    def current(self, requested: int | None = None) -> int:
        size = int(requested or self.batch_size)
        return min(size, self.fits) if self.fits is not None else size

    def run(
        self,
        items: Sequence,
        lengths: Sequence[int],
        run_batch: Callable[[list], list],
        on_batch: Callable[[list[int], list], None] | None = None,
        batch_size: int | None = None,
        same_batch: Callable[[object], object] | None = None,
    ) -> list:
        """``run_batch`` over ``items`` longest first; results come back in the items' order.

        ``on_batch(positions, results)`` is called after every batch. ``same_batch(item)`` gives a
        key; only items with equal keys share a batch (e.g. generation settings).
        """
        order = sorted(range(len(items)), key=lambda i: -lengths[i])
        if same_batch is not None:  # stable: keeps longest-first inside each key
            keys = {}
            for i in order:
                keys.setdefault(same_batch(items[i]), []).append(i)
            order = [i for group in keys.values() for i in group]
        results: list = [None] * len(items)
        start = 0
        while start < len(order):
            size = self.current(batch_size)
            positions = order[start : start + size]
            if same_batch is not None:
                key = same_batch(items[positions[0]])
                positions = [i for i in positions if same_batch(items[i]) == key]
            try:
                out = run_batch([items[i] for i in positions])
            except torch.OutOfMemoryError:
                self._shrink(len(positions))
                continue
            for i, result in zip(positions, out):
                results[i] = result
            if on_batch is not None:
                on_batch(positions, out)
            start += len(positions)
        return results

    def _shrink(self, failed: int) -> None:
        if failed <= 1:
            raise HarnessError(
                "out of memory with batch size 1; lower max_seq_len or use more devices (device_map='auto')"
            ) from None
        self.fits = max(1, failed // 2)
        log.warning("out of memory: batch size lowered to %d", self.fits)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
