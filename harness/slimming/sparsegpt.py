"""SparseGPT (Frantar & Alistarh 2023): prune with optimal-brain-surgeon updates of the kept weights.

Follows the reference ``fasterprune`` (IST-DASLab/sparsegpt): H = X^T X over the tokens the weight
saw, damped by ``damp`` times its mean diagonal, inverted through Cholesky; columns are processed
in blocks of ``blocksize``; the unstructured mask is chosen per block from w^2 / [H^-1]_jj^2 (the
block's lowest ``int(numel * sparsity)``), the N:M mask per group of M columns when the group's
first column is reached; every pruned weight's error is spread over the later columns.

Differences from the reference, on purpose: inputs never seen (zero diagonal) get a unit diagonal
but their weights are kept, not zeroed (the reference zeroes them, which would wipe a whole
expert that received no token); the block's count of pruned weights is exact (the reference's
``<= threshold`` prunes every tie). An expert with no routed token has H = 0 and so the identity
Hessian: magnitude pruning per block.
"""
from __future__ import annotations

import torch

from harness.slimming.masks import Sparsity

BLOCKSIZE = 128
DAMP = 0.01


def _inverse_cholesky(hessian: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor of the damped inverse Hessian (the reference's Hinv)."""
    h = hessian.clone().double()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    h += torch.eye(h.shape[0], dtype=h.dtype, device=h.device) * (damp * torch.diag(h).mean())
    h = torch.cholesky_inverse(torch.linalg.cholesky(h))
    return torch.linalg.cholesky(h, upper=True)


def sparsegpt_prune(weight: torch.Tensor, hessian: torch.Tensor | None, sparsity: Sparsity,
                    blocksize: int = BLOCKSIZE, damp: float = DAMP) -> torch.Tensor:
    """The pruned and updated weight (float32, the input's shape); exactly zero where pruned."""
    w = weight.detach().float().clone()
    rows, cols = w.shape
    if hessian is None or not bool((torch.diag(hessian) > 0).any()):
        hessian = torch.eye(cols, dtype=torch.float64, device=w.device)
    hinv = _inverse_cholesky(hessian.to(w.device), damp).float()  # on the weight's device (a GPU when there is one)
    pruned = torch.zeros_like(w, dtype=torch.bool)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        w1 = w[:, i1:i2].clone()
        q1 = torch.zeros_like(w1)
        err1 = torch.zeros_like(w1)
        h1 = hinv[i1:i2, i1:i2]
        d1 = torch.diag(h1).reshape(1, -1)
        mask1 = torch.zeros_like(w1, dtype=torch.bool)
        if not sparsity.is_nm:
            score = (w1 ** 2 / d1 ** 2).flatten()
            count = int(score.numel() * sparsity.ratio)
            if count:
                mask1.view(-1)[torch.topk(score, count, largest=False).indices] = True
        for i in range(i2 - i1):
            if sparsity.is_nm and i % sparsity.m == 0:
                score = w1[:, i: i + sparsity.m] ** 2 / d1[:, i: i + sparsity.m] ** 2
                lowest = torch.topk(score, sparsity.m - sparsity.n, dim=1, largest=False).indices
                mask1.scatter_(1, i + lowest, True)
            col = w1[:, i]
            q = col.clone()
            q[mask1[:, i]] = 0
            q1[:, i] = q
            err = (col - q) / h1[i, i]
            w1[:, i:] -= err.unsqueeze(1) @ h1[i, i:].unsqueeze(0)
            err1[:, i] = err
        w[:, i1:i2] = q1
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
        pruned[:, i1:i2] = mask1
    w[pruned] = 0.0  # exact zeros (the updates never touch a column already processed)
    return w
