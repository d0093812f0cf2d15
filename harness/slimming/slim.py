"""Slim a loaded model in place: gather each layer's input statistics, prune its targets.

Sequential (the default, as the Wanda and SparseGPT reference code): decoder layer by layer, the
statistics of layer i are taken on the model whose layers before i are already pruned, and only
one layer's statistics are held at a time (SparseGPT's Hessians of all experts of a real model
would not fit at once). ``sequential=False`` takes every layer's statistics from one pass of the
unpruned model (one pass instead of one per layer; memory for all layers at once).
"""
from __future__ import annotations

import logging

import torch

from harness.errors import HarnessError
from harness.slimming.masks import Sparsity
from harness.slimming.sparsegpt import BLOCKSIZE, DAMP, sparsegpt_prune
from harness.slimming.stats import gather
from harness.slimming.targets import model_targets
from harness.slimming.wanda import wanda_mask

log = logging.getLogger("harness.slimming")
METHODS = ("wanda", "sparsegpt")


def check(model, method: str, sparsity: Sparsity, kinds: tuple[str, ...]) -> dict:
    """Refuse a method, pattern or target set that cannot apply, before any weight changes."""
    if method not in METHODS:
        raise HarnessError(f"--method {method!r} is not one of {', '.join(METHODS)}")
    found = model_targets(model, kinds)
    if not found:
        raise HarnessError(f"--targets {','.join(kinds)}: the model has no such weights; use routed, shared or attention")
    for targets in found.values():
        for t in targets:
            sparsity.check_width(t.weight().shape[1], t.name)
    return found


def prune_target(target, method: str, sparsity: Sparsity, stats, blocksize: int, damp: float) -> None:
    weight = target.weight()
    if method == "wanda":
        mask = wanda_mask(weight, stats.column_sq[target.name], sparsity)
        target.set(weight.masked_fill(mask, 0))
    else:
        target.set(sparsegpt_prune(weight, stats.gram[target.name], sparsity, blocksize, damp))


@torch.no_grad()
def slim(model, samples: list[list[int]], method: str, sparsity: Sparsity, kinds: tuple[str, ...] = ("routed",),
         pad_token_id: int = 0, batch_size: int = 8, sequential: bool = True, blocksize: int = BLOCKSIZE,
         damp: float = DAMP) -> dict:
    """Prune ``model``'s targets in place; returns per-layer tokens seen (routed experts: per expert)."""
    found = check(model, method, sparsity, kinds)
    order = sorted(found)
    groups = [[i] for i in order] if sequential else [order]
    seen: dict[str, dict] = {}
    for group in groups:
        targets = [t for i in group for t in found[i]]
        stats = gather(model, samples, targets, method == "sparsegpt", max(group), pad_token_id, batch_size)
        for t in targets:
            prune_target(t, method, sparsity, stats, blocksize, damp)
        for i in group:
            seen[str(i)] = _tokens_seen(found[i], stats)
        log.info("slimmed decoder layer(s) %s (%d weights)", group, len(targets))
    return seen


def _tokens_seen(targets, stats) -> dict:
    routed = sorted({t.expert: stats.tokens[t.name] for t in targets if t.kind == "routed"}.items())
    out = {"routed_tokens_per_expert": [n for _, n in routed]} if routed else {}
    if routed:
        out["experts_without_tokens"] = [e for e, n in routed if n == 0]
    others = {t.name: stats.tokens[t.name] for t in targets if t.kind != "routed"}
    if others:
        out["tokens"] = max(others.values())
    return out
