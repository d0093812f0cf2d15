"""One batching rule for every model path: longest first, adaptive batch size, dataset order back.

Longest first means an out-of-memory batch shows up at the start, not after an hour. A batch that
runs out of accelerator memory is halved and retried, and the size that fit is remembered for
every later call (scoring, generation and rolling perplexity share one limit per model).

``run`` batches a number of items (generation, calibration, the KV-cache scoring path);
``run_packed`` fills rows with several items each up to a token budget per batch (packed
scoring), so a batch computes real tokens, not padding. There an out-of-memory halves the token
budget, and the budget that fit is remembered the same way.
"""
from __future__ import annotations

import bisect
import logging
from typing import Callable, Sequence

import torch

from harness.errors import HarnessError

log = logging.getLogger(__name__)


def check_token_budget(max_tokens) -> int | None:
    """``max_batch_tokens`` as an int (None: unset); not positive is a one-line error."""
    if max_tokens is None:
        return None
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise HarnessError(f"max_batch_tokens must be a positive integer, got {max_tokens!r}")
    return max_tokens


class Collator:
    def __init__(self, batch_size: int):
        if int(batch_size) < 1:
            raise HarnessError(f"batch_size must be at least 1, got {batch_size}")
        self.batch_size = int(batch_size)  # the configured size
        self.fits: int | None = None  # the largest size known to fit, after an out-of-memory
        self.fits_tokens: int | None = None  # the largest token budget known to fit (run_packed)

    def current(self, requested: int | None = None) -> int:
        size = int(requested or self.batch_size)
        return min(size, self.fits) if self.fits is not None else size

    @staticmethod
    def order(items: Sequence, lengths: Sequence[int], same_batch: Callable[[object], object] | None = None) -> list[int]:
        """The order ``run`` takes items in: longest first, grouped by ``same_batch`` key if given."""
        order = sorted(range(len(items)), key=lambda i: -lengths[i])
        if same_batch is not None:  # stable: keeps longest-first inside each key
            keys = {}
            for i in order:
                keys.setdefault(same_batch(items[i]), []).append(i)
            order = [i for group in keys.values() for i in group]
        return order

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
        order = self.order(items, lengths, same_batch)
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

    def run_packed(
        self,
        items: Sequence,
        lengths: Sequence[int],
        run_rows: Callable[[list[list]], list[list]],
        max_tokens: int,
        on_batch: Callable[[list[int], list], None] | None = None,
        attention_cost: float = 0.0,
    ) -> list:
        """``run_rows`` over batches of rows, each row several items of at most ``width`` tokens
        together, each batch at most ``max_tokens`` tokens (rows x width); results come back in
        the items' order.

        ``run_rows(rows)`` takes a list of rows (lists of items) and returns the results the same
        way. ``attention_cost`` is the cost of a token per unit of row width relative to the rest
        of a forward (about 1 / (6 * hidden size)): wide rows pad less but attend further, and
        the width is chosen between the two (``choose_width``). An item longer than the budget runs
        alone in its batch, with a warning.
        """
        budget = check_token_budget(int(max_tokens))
        results: list = [None] * len(items)
        remaining = sorted(range(len(items)), key=lambda i: -lengths[i])
        oversize = [i for i in remaining if lengths[i] > budget]
        if oversize:
            log.warning("%d item(s) of up to %d tokens exceed max_batch_tokens=%d; each runs alone in its batch",
                        len(oversize), lengths[oversize[0]], budget)
        while remaining:
            budget = min(budget, self.fits_tokens) if self.fits_tokens is not None else budget
            alone = [i for i in remaining if lengths[i] > budget]
            fitting = [i for i in remaining if lengths[i] <= budget]
            batches = [[[i]] for i in alone]
            if fitting:
                width = choose_width([lengths[i] for i in fitting], budget, attention_cost)
                rows = plan_rows(fitting, lengths, width)
                per_batch = max(1, budget // width)
                batches += [rows[k : k + per_batch] for k in range(0, len(rows), per_batch)]
            for rows in batches:
                try:
                    out = run_rows([[items[i] for i in row] for row in rows])
                except torch.OutOfMemoryError:
                    self._shrink_tokens(rows, lengths)
                    break  # plan what is left again with the smaller budget
                positions = [i for row in rows for i in row]
                flat = [result for row_out in out for result in row_out]
                for i, result in zip(positions, flat):
                    results[i] = result
                if on_batch is not None:
                    on_batch(positions, flat)
                done = set(positions)
                remaining = [i for i in remaining if i not in done]
        return results

    def _shrink_tokens(self, rows: list[list[int]], lengths: Sequence[int]) -> None:
        if len(rows) == 1 and len(rows[0]) == 1:
            raise HarnessError(
                f"out of memory with one item of {lengths[rows[0][0]]} tokens alone; lower max_seq_len or use more "
                "devices (device_map='auto')"
            ) from None
        tokens = sum(lengths[i] for row in rows for i in row)
        self.fits_tokens = max(1, tokens // 2)
        log.warning("out of memory: max_batch_tokens lowered to %d", self.fits_tokens)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _shrink(self, failed: int) -> None:
        if failed <= 1:
            raise HarnessError(
                "out of memory with batch size 1; lower max_seq_len or use more devices (device_map='auto')"
            ) from None
        self.fits = max(1, failed // 2)
        log.warning("out of memory: batch size lowered to %d", self.fits)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def plan_rows(positions: Sequence[int], lengths: Sequence[int], width: int) -> list[list[int]]:
    """Rows of at most ``width`` tokens (best fit, longest first): each row starts with the longest
    item left and takes the longest that still fits until none does. Rows come out longest first,
    so an out-of-memory shows up in the first batch."""
    pool = sorted(positions, key=lambda i: (lengths[i], -i))  # ascending; ties: earlier item last
    keys = [lengths[i] for i in pool]
    rows = []
    while pool:
        first = pool.pop()
        keys.pop()
        row, space = [first], width - lengths[first]
        while pool and keys[0] <= space:
            k = bisect.bisect_right(keys, space) - 1  # the longest item that fits
            row.append(pool.pop(k))
            space -= keys.pop(k)
        rows.append(row)
    return rows


def choose_width(lengths: Sequence[int], budget: int, attention_cost: float) -> int:
    """The row width with the least estimated cost: padded tokens x (1 + width x attention_cost).

    Candidates run from the longest item (rows of one item each where items are alike) up to the
    budget (one row per batch: no padding, but attention over the whole row where the mask is
    dense). The cost counts padding within rows; a batch's last rows are not rounded up to
    the batch (they run as a smaller batch)."""
    longest = max(lengths)
    candidates = sorted({min(budget, int(longest * f)) for f in (1, 1.25, 1.5, 2, 3, 4, 6, 8)} | {budget})
    candidates = [w for w in candidates if w >= longest]
    total = sum(lengths)
    best, best_cost = longest, None
    for width in candidates:
        rows = _count_rows(lengths, width) if width < total else 1
        cost = rows * min(width, total) * (1 + min(width, total) * attention_cost)
        if best_cost is None or cost < best_cost:
            best, best_cost = width, cost
    return best


def _count_rows(lengths: Sequence[int], width: int) -> int:
    return len(plan_rows(range(len(lengths)), lengths, width))
