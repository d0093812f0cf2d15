"""Refitting a MoEfied MLP's down projections by ridge regression, given its routing.

With the router and the neuron split fixed, the block's output is linear in its down projections:
out = sum_e w_e(x) D_e a_e(x) + g D_s a_s(x) (w_e the routing weight of a selected expert, zero for
the others; g = sigmoid(0) = 1/2 the shared gate). So the down projections that best reproduce the
dense MLP's output on the calibration tokens have a closed form; it lets the selected experts (and
the shared one) absorb part of what the unselected experts would have added. The ridge pulls toward
the converted weights (``initial``), not toward zero, so a weak fit falls back to plain MoEfication;
its strength is picked on held-out tokens.
"""
from __future__ import annotations

import torch

SHARED_GATE = 0.5  # sigmoid(0): the zero shared_expert_gate of the converted block


def routed_features(act: torch.Tensor, shared: torch.Tensor, experts: list[torch.Tensor],
                    idx: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(N, I) the inputs of the stored down projections: each neuron's activation times the weight
    its expert gets for the token (0 when not selected; the shared gate for shared neurons)."""
    feats = torch.zeros_like(act)
    feats[:, shared] = act[:, shared] * SHARED_GATE
    for e, ids in enumerate(experts):
        w = (weights * (idx == e)).sum(1, keepdim=True)  # (N, 1): the token's weight for expert e
        feats[:, ids] = act[:, ids] * w
    return feats


def ridge(feats: torch.Tensor, target: torch.Tensor, initial: torch.Tensor, lam: float) -> torch.Tensor:
    """argmin_D ||feats D^T - target||^2 + lam * s * ||D - initial||^2, s = mean diagonal of feats^T feats.

    ``feats`` (N, I), ``target`` (N, H), ``initial`` (H, I); returns D (H, I). Solved in float64."""
    f, t, d0 = feats.double(), target.double(), initial.double()
    gram = f.T @ f
    reg = lam * float(gram.diagonal().mean().clamp_min(1e-12))
    lhs = gram + reg * torch.eye(gram.shape[0], dtype=gram.dtype)
    rhs = f.T @ t + reg * d0.T
    return torch.linalg.solve(lhs, rhs).T.to(initial.dtype)


def relative_error(feats: torch.Tensor, down: torch.Tensor, target: torch.Tensor) -> float:
    return float((feats @ down.T - target).pow(2).sum() / target.pow(2).sum().clamp_min(1e-12))


def refit_down(feats: torch.Tensor, target: torch.Tensor, initial: torch.Tensor, train: torch.Tensor,
               test: torch.Tensor, grid: tuple[float, ...]) -> tuple[torch.Tensor, float, float]:
    """(down (H, I), chosen lam, held-out relative error): the ridge fit on ``train`` rows whose
    error on ``test`` rows is lowest, ``initial`` itself (lam = inf) if no fit beats it."""
    best = (initial, float("inf"), relative_error(feats[test], initial, target[test]))
    for lam in grid:
        down = ridge(feats[train], target[train], initial, lam)
        err = relative_error(feats[test], down, target[test])
        if err < best[2] - 1e-9:
            best = (down, lam, err)
    return best
