"""Fitting a layer's router: a linear map from the MLP input to a ranking of the routed experts.

Target: the share of the routed output mass each expert holds for the token (soft labels); loss:
cross-entropy of the router's softmax against them, full-batch Adam on cached hidden states (cheap
on CPU). Only the ranking is used for selection; ``fit_scale`` then picks the logit scale whose
top-k weights (x E, see ``convert``) reconstruct the dense MLP output best.
"""
from __future__ import annotations

import torch


def fit_router(hidden: torch.Tensor, mass: torch.Tensor, steps: int = 300, lr: float = 1e-2,
               seed: int = 0) -> torch.Tensor:
    """Router weight (E, H) from inputs ``hidden`` (N, H) and expert masses ``mass`` (N, E)."""
    gen = torch.Generator().manual_seed(seed)
    x = hidden.float()
    target = mass.float() / mass.float().sum(1, keepdim=True).clamp_min(1e-12)
    weight = (torch.randn(mass.shape[1], x.shape[1], generator=gen) * 1e-3).requires_grad_()
    opt = torch.optim.Adam([weight], lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        logits = x @ weight.T
        loss = -(target * torch.log_softmax(logits, 1)).sum(1).mean()
        loss.backward()
        opt.step()
    return weight.detach()


def routed_weights(logits: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices, weights) of Qwen2-MoE's routing with ``norm_topk_prob=False``: softmax, top-k."""
    probs = torch.softmax(logits.float(), -1)
    values, idx = torch.topk(probs, top_k, dim=-1)
    return idx, values


def fit_scale(logits: torch.Tensor, expert_out: torch.Tensor, target: torch.Tensor, top_k: int,
              grid: tuple[float, ...] = (0.01, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0)) -> tuple[float, float]:
    """(scale, relative error): the logit scale s minimising ||sum_topk E * p_e(s z) y_e - t||.

    ``expert_out`` (N, E, H): each routed expert's output at weight 1; ``target`` (N, H): what the
    routed experts should add (dense MLP output minus the shared expert's). A small s gives every
    selected expert a weight of about 1 (MoEfication's plain sum) while keeping the ranking (s = 0
    would tie all experts), a larger s lets confident tokens weigh their first expert more."""
    num_experts = expert_out.shape[1]
    best = (0.0, float("inf"))
    denom = target.pow(2).sum().clamp_min(1e-12)
    for s in grid:
        idx, w = routed_weights(logits * s, top_k)
        picked = torch.gather(expert_out, 1, idx[..., None].expand(-1, -1, expert_out.shape[2]))
        out = (picked * (w * num_experts)[..., None]).sum(1)
        err = float((out - target).pow(2).sum() / denom)
        if err < best[1] - 1e-9:
            best = (s, err)
    return best
