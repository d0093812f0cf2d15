"""Sparsity settings and mask math on one (out, in) weight, as small pure functions.

A mask is a bool tensor of the weight's shape, True where a weight is pruned (set to zero).
Unstructured: each output row prunes ``int(in * sparsity)`` weights (Wanda's per-row rule).
N:M: in each group of M consecutive input columns of a row, N weights stay and M - N are pruned
(the 2:4 pattern of sparse tensor cores keeps 2 of every 4).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from harness.errors import HarnessError


@dataclass(frozen=True)
class Sparsity:
    """What to prune: an unstructured ratio, or an N:M pattern (N kept of every M)."""

    ratio: float | None = None
    n: int | None = None
    m: int | None = None

    @property
    def is_nm(self) -> bool:
        return self.n is not None

    @property
    def fraction(self) -> float:
        """The fraction of weights pruned."""
        return 1.0 - self.n / self.m if self.is_nm else float(self.ratio)

    def describe(self) -> dict:
        return {"pattern": f"{self.n}:{self.m}"} if self.is_nm else {"sparsity": self.ratio}

    def check_width(self, width: int, what: str) -> None:
        """N:M needs the input width to split into whole groups of M."""
        if self.is_nm and width % self.m:
            raise HarnessError(f"--pattern {self.n}:{self.m}: {what} has {width} input columns, not a multiple of "
                               f"{self.m}; pick an M that divides it")


def unstructured(ratio: float) -> Sparsity:
    ratio = float(ratio)
    if not 0.0 < ratio < 1.0:
        raise HarnessError(f"--sparsity {ratio} must be strictly between 0 and 1 (e.g. 0.5)")
    return Sparsity(ratio=ratio)


def parse_pattern(text: str) -> Sparsity:
    """``'2:4'`` -> N=2 kept of every M=4; one-line errors for anything else."""
    parts = str(text).split(":")
    try:
        n, m = (int(p) for p in parts)
    except ValueError:
        raise HarnessError(f"--pattern {text!r} is not N:M with whole numbers (e.g. 2:4 or 4:8)") from None
    if n < 1 or m < 1:
        raise HarnessError(f"--pattern {text}: N and M must be positive (e.g. 2:4)")
    if n > m:
        raise HarnessError(f"--pattern {text}: N = {n} exceeds M = {m}; N weights are kept of every M (e.g. 2:4)")
    if n == m:
        raise HarnessError(f"--pattern {text} keeps every weight; pick N < M (e.g. 2:4)")
    return Sparsity(n=n, m=m)


def row_mask(score: torch.Tensor, ratio: float) -> torch.Tensor:
    """Prune the ``int(in * ratio)`` lowest scores of every row."""
    count = int(score.shape[1] * ratio)
    mask = torch.zeros_like(score, dtype=torch.bool)
    if count:
        lowest = torch.topk(score, count, dim=1, largest=False).indices
        mask.scatter_(1, lowest, True)
    return mask


def nm_mask(score: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """In every group of ``m`` consecutive columns of a row, prune the ``m - n`` lowest scores."""
    rows, cols = score.shape
    groups = score.reshape(rows, cols // m, m)
    lowest = torch.topk(groups, m - n, dim=2, largest=False).indices
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(2, lowest, True)
    return mask.reshape(rows, cols)


def mask_for(score: torch.Tensor, sparsity: Sparsity) -> torch.Tensor:
    """The pruning mask of ``score`` under ``sparsity`` (per row, or per group of M)."""
    if sparsity.is_nm:
        return nm_mask(score, sparsity.n, sparsity.m)
    return row_mask(score, sparsity.ratio)


def zero_fraction(weight: torch.Tensor) -> float:
    return float((weight == 0).sum()) / max(weight.numel(), 1)
