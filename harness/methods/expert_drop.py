"""Expert Drop (Unified MoE compression): score each expert by its mean routing weight on the
calibration tokens and drop the lowest.

Scores follow the reference: the softmax over all E experts for Mixtral, Qwen and OLMoE; for
DeepSeek the top-k weights with zeros elsewhere (the family's final gate weights). ``layerwise``
drops E - B per layer; ``global`` (the reference's default) pools every layer's scores and drops
the globally lowest (E - B) * L, so per-layer budgets differ. Each layer keeps at least its top-k
experts (its own k best are never pooled), so routing stays valid; the reference has no such
floor, which the metadata records.

``preserve_gate``: the E-way router is kept; a token's top-k is chosen over all E experts as
before, a pick of a dropped expert contributes nothing, and the renormalisation still counts it
(all E slots routed after top-k, the dropped ones zero experts; see ``preserve_gate_layer``).
"""
from __future__ import annotations

import torch

from harness.compress.plan import CompressionPlan, LayerPlan
from harness.errors import HarnessError
from harness.methods.base import Method, MethodInputs
from harness.methods.frequency import top_experts
from harness.registry import METHODS

MODES = ("global", "layerwise")


def routing_scores(stats, layer: int, model_type: str) -> torch.Tensor:
    """Mean routing weight per expert, as the reference scores it for the family."""
    name = "gate_sum" if model_type.startswith("deepseek") else "score_sum"
    return stats.mean(name, layer)


def global_kept(scores: dict[int, torch.Tensor], budget: int, top_k: int) -> dict[int, list[int]]:
    """Drop the globally lowest (E - B) * L scores, each layer keeping at least its ``top_k`` best."""
    num_experts = len(next(iter(scores.values())))
    to_drop = (num_experts - budget) * len(scores)
    kept = {layer: set(top_experts(s, top_k)) for layer, s in scores.items()}
    pool = sorted(((float(s[e]), layer, e) for layer, s in scores.items() for e in range(num_experts)
                   if e not in kept[layer]), key=lambda t: (t[0], -t[1], -t[2]))
    survivors = pool[to_drop:]
    for _, layer, e in survivors:
        kept[layer].add(e)
    return {layer: sorted(ids) for layer, ids in kept.items()}


def preserve_gate_layer(kept: list[int], num_experts: int) -> LayerPlan:
    """All E slots stay, routed after the E-way router's own top-k (``expert_to_slot`` the identity);
    a dropped expert's slot is a zero expert (a zero merge row), so its picks add nothing while the
    renormalisation still counts them. transformers' "no expert" sentinel index would express this
    with B slots, but its grouped_mm path leaves sentinel rows uninitialised outside expert
    parallelism, so zero experts are used: correct under every experts implementation, at the
    memory of E slots (the metadata lists the kept experts)."""
    merge = torch.zeros(num_experts, num_experts)
    merge[kept, kept] = 1.0
    return LayerPlan(merge=merge, expert_to_slot=torch.arange(num_experts))


@METHODS.register_module(name="expert_drop")
class ExpertDrop(Method):
    needs_calibration = True

    def __init__(self, mode: str = "global", preserve_gate: bool = False):
        if mode not in MODES:
            raise HarnessError(f"expert_drop mode {mode!r} is not one of {', '.join(MODES)}; fix the method config")
        self.mode = mode
        self.preserve_gate = bool(preserve_gate)

    def build(self, inputs: MethodInputs) -> CompressionPlan:
        stats, shape = inputs.stats, inputs.shape
        model_type = getattr(getattr(inputs.model, "config", None), "model_type", "") or ""
        scores = {layer: routing_scores(stats, layer, model_type) for layer in sorted(stats.counts)}
        if self.mode == "layerwise":
            kept = {layer: top_experts(s, inputs.budget) for layer, s in scores.items()}
        else:
            kept = global_kept(scores, inputs.budget, shape.top_k)
        meta = {"calibration": stats.source, "mode": self.mode, "preserve_gate": self.preserve_gate,
                "score": "top-k gate weights" if model_type.startswith("deepseek") else "softmax over all experts",
                "kept_per_layer": {str(layer): len(ids) for layer, ids in kept.items()}}
        if self.mode == "global":
            meta["deviation"] = f"every layer keeps at least top-k={shape.top_k} experts (the reference has no floor)"
        if self.preserve_gate:
            layers = {layer: preserve_gate_layer(ids, shape.num_experts) for layer, ids in kept.items()}
            meta["kept"] = {str(layer): ids for layer, ids in kept.items()}
            return CompressionPlan(num_layers=shape.num_layers, num_experts=shape.num_experts, layers=layers,
                                   metadata=meta)
        return CompressionPlan.from_kept(kept, shape.num_experts, num_layers=shape.num_layers, metadata=meta)
