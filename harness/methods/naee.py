"""NAEE, "Not All Experts are Equal" (Lu et al.): expert pruning by output reconstruction, and
dynamic skipping.

Pruning, per MoE layer: every kept set S of size B is scored by ||Z - Z_hat_S||_F over the cached
tokens, where Z_hat_S routes each token as the pruned model would (dropped experts' logits to -inf,
the family's scoring, top-k, renormalisation and scaling); the argmin is kept. ``layerwise`` reads X
and Z of the original model's calibration pass; ``progressive`` reruns the calibration samples with
the earlier layers already pruned, so X_l is what layer l will see (Z: the unpruned layer l on it).
Above ``max_combinations`` kept sets (fine-grained MoEs: C(64, 48) is astronomical) a seeded sample
of that many distinct sets is scored, recorded in the metadata (HC-SMoE sampled 10^5 for Qwen).

The enumeration never reruns the MoE layer: each expert's output on each cached token is computed
once, and with D_S = W_S - W (per-token dense routing weights of the pruned and the original
router) the loss is sqrt(sum_n D_S[n]^T G[n] D_S[n]), G[n] the Gram matrix of the experts' outputs
on token n: one batched tensor operation over all kept sets. Shared experts cancel out of Z - Z_hat.
Group-limited routing (DeepSeek n_group > 1) is scored by running the pruned layer itself per set
(``reconstruction_loss_by_model``), the reference's way, because the groups of a pruned layer
follow apply_plan's rule.

Dynamic skipping: beta_l = median over calibration tokens of w(2)/w(1) (the top-2 routing weights
of the model as it will run: the pruned router when pruning), written as the plan's
``skip_threshold``; the second expert is skipped when w2 < beta * w1. Usable alone or with pruning.

Deviation: the reference sums per-batch Frobenius norms over its batches of 8 samples; here the
norm runs over all cached tokens at once (independent of batching), as the metadata records.
"""
from __future__ import annotations

import itertools
import math
import random

import torch

from harness.compress.adapters import resolve
from harness.compress.apply import apply_plan, reset_plan, snapshot_experts
from harness.compress.plan import CompressionPlan, LayerPlan, one_hot_rows
from harness.errors import HarnessError
from harness.methods.base import Method, MethodInputs
from harness.methods.calibration import DEFAULT_CACHE_TOKENS, expert_outputs, moe_io
from harness.registry import METHODS

MODES = ("layerwise", "progressive")


def kept_sets(num_experts: int, budget: int, cap: int, seed: int) -> tuple[list[tuple[int, ...]], bool]:
    """Every kept set of size ``budget`` in lexicographic order, or a seeded sample of ``cap`` distinct
    sets (sorted) when there are more; (sets, sampled)."""
    total = math.comb(num_experts, budget)
    if total <= cap:
        return list(itertools.combinations(range(num_experts), budget)), False
    rng = random.Random(seed)
    chosen: set[tuple[int, ...]] = set()
    while len(chosen) < cap:
        chosen.add(tuple(sorted(rng.sample(range(num_experts), budget))))
    return sorted(chosen), True


def dense_weights(indices: torch.Tensor, weights: torch.Tensor, num_experts: int) -> torch.Tensor:
    """(..., k) picks and weights as (..., E) with zeros elsewhere."""
    out = torch.zeros(*indices.shape[:-1], num_experts, dtype=torch.float64, device=indices.device)
    return out.scatter_add_(-1, indices, weights.double())


def pruned_routing(moe, router, logits: torch.Tensor, keep: torch.Tensor, top_k: int) -> torch.Tensor:
    """(C, N, E) routing weights of the pruned routers (``keep``: (C, E) bool) for (N, E) logits, by
    the family's rule over the kept experts (no groups).

    Masking dropped logits does not change the order of the kept experts' selection scores, so each
    token's experts are ranked once and a set's top-k are its first k kept experts in that order."""
    logits = logits.double()
    if moe.adapter.scoring == "sigmoid":
        scores = logits.sigmoid()
        choice = scores
        bias = getattr(router, moe.adapter.correction_bias_attr, None) if moe.adapter.correction_bias_attr else None
        if bias is not None:
            choice = scores + bias.double()
    else:
        scores = (logits - logits.max(dim=-1, keepdim=True).values).exp()  # softmax numerators
        choice = logits
    ranks = choice.argsort(dim=-1, descending=True, stable=True)  # (N, E)
    kept_ranked = keep[:, ranks]  # (C, N, E): is the token's r-th expert kept in set c
    chosen_ranked = kept_ranked & (kept_ranked.cumsum(dim=-1) <= top_k)
    chosen = torch.zeros_like(chosen_ranked).scatter_(-1, ranks.expand_as(chosen_ranked), chosen_ranked)
    weights = scores.unsqueeze(0) * chosen
    if moe.adapter.scoring != "sigmoid":  # softmax over the kept experts only
        weights = weights / (keep.double() @ scores.T).unsqueeze(-1)
    if moe.renormalize:
        weights = weights / (weights.sum(dim=-1, keepdim=True) + moe.adapter.renormalize_eps)
    return weights * moe.scaling


def original_routing(router, hidden: torch.Tensor, num_experts: int) -> torch.Tensor:
    """(N, E) the model's own routing weights (its router module's forward)."""
    _, weights, indices = router(hidden)
    return dense_weights(indices, weights, num_experts)


def reconstruction_losses(moe, block, hidden: torch.Tensor, sets: list[tuple[int, ...]], top_k: int,
                          chunk: int | None = None) -> torch.Tensor:
    """(C,) ||Z - Z_hat_S||_F of each kept set, from each expert's output computed once per token."""
    router, experts = moe.router(block), moe.experts(block)
    e = moe.num_experts
    outputs = expert_outputs(experts, hidden, e).double()  # (E, N, H)
    gram = torch.einsum("enh,fnh->nef", outputs, outputs)  # (N, E, E)
    reference = original_routing(router, hidden, e)  # (N, E)
    logits = router(hidden)[0]
    keep_all = torch.zeros(len(sets), e, dtype=torch.bool, device=hidden.device)
    for row, kept in enumerate(sets):
        keep_all[row, list(kept)] = True
    chunk = chunk or max(1, (1 << 26) // max(1, hidden.shape[0] * e))
    losses = []
    for start in range(0, len(sets), chunk):
        diff = pruned_routing(moe, router, logits, keep_all[start: start + chunk], top_k) - reference  # (C, N, E)
        squared = (torch.einsum("cne,nef->cnf", diff, gram) * diff).sum(dim=(1, 2))
        losses.append(squared.clamp(min=0).sqrt())
    return torch.cat(losses).cpu()


def reconstruction_loss_by_model(model, layer: int, kept, hidden: torch.Tensor, target: torch.Tensor,
                                 snapshot=None) -> float:
    """||Z - Z_hat||_F with the pruned layer itself: apply the plan keeping ``kept`` in ``layer``, run
    its MoE block on ``hidden`` (N, H), undo (the reference's per-combination recomputation)."""
    moe = resolve(model)
    snapshot = snapshot or snapshot_experts(model)
    plan = CompressionPlan.from_kept({layer: list(kept)}, moe.num_experts, num_layers=moe.num_layers)
    apply_plan(model, plan)
    try:
        with torch.no_grad():
            out = moe.block(layer)(hidden.unsqueeze(0))
        out = out[0] if isinstance(out, tuple) else out
        return float((target.double() - out.reshape(target.shape).double()).norm())
    finally:
        reset_plan(model, snapshot)


def skip_beta(moe, block, hidden: torch.Tensor, kept) -> float:
    """Median of w(2)/w(1) over ``hidden``'s tokens under the router that keeps ``kept``."""
    router = moe.router(block)
    keep = torch.zeros(1, moe.num_experts, dtype=torch.bool, device=hidden.device)
    keep[0, list(kept)] = True
    weights = pruned_routing(moe, router, router(hidden)[0], keep, moe.top_k)[0]
    ranked = weights.sort(dim=-1, descending=True).values
    return float((ranked[:, 1] / ranked[:, 0]).median())


@METHODS.register_module(name="naee")
class NAEE(Method):
    needs_calibration = True

    def __init__(self, mode: str = "layerwise", prune: bool = True, dynamic_skip: bool = False,
                 max_combinations: int = 100_000, cache_tokens: int | None = None):
        if mode not in MODES:
            raise HarnessError(f"naee mode {mode!r} is not one of {', '.join(MODES)}; fix the method config")
        if not prune and not dynamic_skip:
            raise HarnessError("naee with prune=False needs dynamic_skip=True (otherwise it does nothing); fix the method config")
        if int(max_combinations) < 1:
            raise HarnessError(f"naee max_combinations {max_combinations} must be at least 1; fix the method config")
        self.mode, self.prune, self.dynamic_skip = mode, bool(prune), bool(dynamic_skip)
        self.max_combinations = int(max_combinations)
        self.cache_tokens = cache_tokens
        self.needs_budget = self.prune

    def check(self, inputs: MethodInputs) -> None:
        super().check(inputs)
        if inputs.model is None:
            raise HarnessError("naee needs the loaded model (MethodInputs.model) to compute expert outputs")
        if self.dynamic_skip and inputs.shape.top_k < 2:
            raise HarnessError(f"naee dynamic_skip needs top-k >= 2; this model routes to {inputs.shape.top_k}")
        if self.prune and self.mode == "progressive" and not inputs.samples:
            raise HarnessError("naee progressive mode needs the calibration samples (MethodInputs.samples)")

    def build(self, inputs: MethodInputs) -> CompressionPlan:
        model, stats, shape = inputs.model, inputs.stats, inputs.shape
        moe = resolve(model)
        meta = {"calibration": stats.source, "mode": self.mode, "prune": self.prune, "dynamic_skip": self.dynamic_skip,
                "loss": "Frobenius norm over all cached tokens (the reference sums per-batch norms)"}
        layers: dict[int, LayerPlan] = {}
        kept: dict[int, list[int]] = {}
        snapshot = snapshot_experts(model)
        sampled_layers = {}
        cap = self.cache_tokens or int(stats.settings.get("cache_tokens", DEFAULT_CACHE_TOKENS))
        device = next(model.parameters()).device
        for layer in sorted(stats.counts):
            block = moe.block(layer)
            hidden, target = stats.moe_inputs[layer], stats.moe_outputs[layer]
            if self.prune:
                if self.mode == "progressive" and kept:
                    hidden, target = self._progressive_io(model, kept, layer, inputs.samples, cap, snapshot)
                hidden = hidden.to(device, next(model.parameters()).dtype)
                sets, sampled = kept_sets(shape.num_experts, inputs.budget, self.max_combinations, inputs.seed + layer)
                if sampled:
                    sampled_layers[str(layer)] = len(sets)
                if moe.group_limited:
                    losses = torch.tensor([reconstruction_loss_by_model(model, layer, s, hidden, target.to(device), snapshot)
                                           for s in sets])
                else:
                    with torch.no_grad():
                        losses = reconstruction_losses(moe, block, hidden, sets, moe.top_k)
                best = int(torch.argmin(losses))  # first minimum: the lexicographically first set on ties
                kept[layer] = list(sets[best])
                meta.setdefault("loss_per_layer", {})[str(layer)] = round(float(losses[best]), 6)
            if self.dynamic_skip:
                if self.prune:
                    with torch.no_grad():
                        beta = skip_beta(moe, block, hidden.to(device, next(model.parameters()).dtype), kept[layer])
                else:
                    beta = float(stats.skip_ratios[layer].float().median())
                meta.setdefault("skip_threshold", {})[str(layer)] = round(beta, 6)
            merge = one_hot_rows(kept[layer], shape.num_experts) if self.prune else None
            layers[layer] = LayerPlan(merge=merge, skip_threshold=beta if self.dynamic_skip else None)
        if sampled_layers:
            meta["sampled_kept_sets"] = {"per_layer": sampled_layers, "of": math.comb(shape.num_experts, inputs.budget),
                                         "seed": f"seed + layer index, seed={inputs.seed}"}
        if moe.group_limited and self.prune:
            meta["group_limited"] = "scored by running the pruned layer per kept set (groups follow apply_plan)"
        return CompressionPlan(num_layers=shape.num_layers, num_experts=shape.num_experts, layers=layers, metadata=meta)

    @staticmethod
    def _progressive_io(model, kept, layer, samples, cap, snapshot):
        """X and Z of ``layer`` with the layers chosen so far pruned (the model is restored after)."""
        moe = resolve(model)
        plan = CompressionPlan.from_kept(kept, moe.num_experts, num_layers=moe.num_layers)
        apply_plan(model, plan)
        try:
            pad = int(getattr(model.config, "pad_token_id", None) or 0)
            return moe_io(model, samples, layer, cap, pad_token_id=pad)
        finally:
            reset_plan(model, snapshot)
