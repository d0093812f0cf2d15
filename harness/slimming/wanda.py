"""Wanda (Sun et al. 2023): score |W_ij| * ||X_j||_2, prune the lowest scores of each output row.

X_j is input column j over the calibration tokens the weight actually saw; for a routed expert,
the tokens routed to it. An expert that saw no token has no activation norms, so its weights are
ranked by magnitude alone (recorded as ``experts_without_tokens``).
"""
from __future__ import annotations

import torch

from harness.slimming.masks import Sparsity, mask_for


def wanda_score(weight: torch.Tensor, column_sq_sum: torch.Tensor) -> torch.Tensor:
    """|W| * ||X_j||_2 (the sum of squares over tokens, square-rooted; the reference's mean only
    rescales every column alike, which no row ranking sees)."""
    return weight.abs().float() * column_sq_sum.float().sqrt().reshape(1, -1)


def wanda_mask(weight: torch.Tensor, column_sq_sum: torch.Tensor | None, sparsity: Sparsity) -> torch.Tensor:
    """The pruning mask (True = pruned); ``column_sq_sum`` None or all zero: magnitude."""
    if column_sq_sum is None or not bool((column_sq_sum > 0).any()):
        score = weight.abs().float()
    else:
        score = wanda_score(weight, column_sq_sum)
    return mask_for(score, sparsity)
