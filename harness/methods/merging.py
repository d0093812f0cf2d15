"""What M-SMoE and HC-SMoE share once each layer's experts are grouped: the plan of a merge.

A layer's groups (lists of original expert ids, one list per slot) become a routed-after-top-k
``LayerPlan``: ``expert_to_slot`` sends each original expert's picks to its group's slot, and each
slot is the usage-frequency-weighted average of its members (optionally neuron-aligned to the
group's most used member first). Where a layer has fewer slots than the model's top-k, its top-k is
lowered to the slot count (HC-SMoE does so; the plan type needs top-k <= B).
"""
from __future__ import annotations

import torch

from harness.compress.adapters import resolve
from harness.compress.plan import CompressionPlan, LayerPlan
from harness.errors import HarnessError
from harness.methods.alignment import group_permutations


def slot_map(groups: list[list[int]], num_experts: int) -> torch.Tensor:
    """(E,) int64: the slot (group position) of every original expert."""
    mapping = torch.full((num_experts,), -1, dtype=torch.long)
    for slot, members in enumerate(groups):
        mapping[members] = slot
    if (mapping < 0).any():
        raise HarnessError(f"expert grouping left experts {(mapping < 0).nonzero().flatten().tolist()} without a group")
    return mapping


def frequency_merge(groups: list[list[int]], counts: torch.Tensor) -> torch.Tensor:
    """(B, E) float32: row i averages group i's members weighted by their usage counts.

    A group none of whose members was ever picked averages them uniformly (the weighted average is
    undefined there; MC-SMoE's code divides by zero).
    """
    counts = counts.detach().double().cpu()
    merge = torch.zeros(len(groups), len(counts), dtype=torch.float64)
    for slot, members in enumerate(groups):
        weights = counts[members]
        merge[slot, members] = weights / weights.sum() if weights.sum() > 0 else 1.0 / len(members)
    return merge.float()


def dominant(members: list[int], counts: torch.Tensor) -> int:
    """The most used member of a group (ties: the lower id): the alignment reference."""
    return min(members, key=lambda e: (-int(counts[e]), e))


def adaptive_group_counts(counts: dict[int, torch.Tensor], budget: int) -> dict[int, int]:
    """MC-SMoE's global rule: per-layer group counts that add up to ``budget`` per layer on average.

    Each layer's counts are divided by that layer's maximum, all layers' values are pooled, and the
    ``budget * L`` largest are kept; a layer gets as many groups as it has kept values. Every
    layer keeps its most used expert first (its value 1 could otherwise lose a tie at 1 to other
    layers' values, leaving it no group). Ties are broken by layer, then expert id, so the total is
    exact (the reference thresholds at one value, so ties there can exceed it).
    """
    firsts, rest = [], []
    for layer, layer_counts in sorted(counts.items()):
        values = layer_counts.double()
        values = values / values.max() if values.max() > 0 else torch.ones_like(values)
        ranked = sorted((-float(v), layer, e) for e, v in enumerate(values))
        firsts.append(ranked[0])
        rest += ranked[1:]
    chosen = firsts + sorted(rest)[: budget * len(counts) - len(firsts)]
    per_layer = {layer: 0 for layer in counts}
    for _, layer, _ in chosen:
        per_layer[layer] += 1
    return per_layer


def merge_layer_plan(groups: list[list[int]], counts: torch.Tensor, top_k: int,
                     permutations: torch.Tensor | None = None) -> LayerPlan:
    slots = len(groups)
    return LayerPlan(merge=frequency_merge(groups, counts), expert_to_slot=slot_map(groups, len(counts)),
                     permutations=permutations, top_k=slots if slots < top_k else None)


def expert_weights(model, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The uncompressed (E, 2I, H) gate_up and (E, H, I) down tensors of MoE layer ``layer``."""
    if model is None:
        raise HarnessError("neuron alignment needs the model's expert weights; the runner passes none (align=False)")
    if getattr(model, "compression_plan", None) is not None:
        raise HarnessError("merging reads the uncompressed experts; reset the model's plan first")
    moe = resolve(model)
    experts = moe.experts(moe.block(layer))
    return experts.gate_up_proj.detach(), experts.down_proj.detach()


def merge_plan(shape, groups: dict[int, list[list[int]]], counts: dict[int, torch.Tensor], align: bool,
               model=None, metadata: dict | None = None) -> CompressionPlan:
    """The whole-model plan of per-layer ``groups`` (see the module docstring)."""
    layers = {}
    for layer, layer_groups in sorted(groups.items()):
        permutations = None
        if align:
            gate_up, down = expert_weights(model, layer)
            references = [dominant(members, counts[layer]) for members in layer_groups]
            permutations = group_permutations(gate_up, down, layer_groups, references)
        layers[layer] = merge_layer_plan(layer_groups, counts[layer], shape.top_k, permutations)
    return CompressionPlan(num_layers=shape.num_layers, num_experts=shape.num_experts, layers=layers,
                           metadata=dict(metadata or {}))


def layer_budgets(counts: dict[int, torch.Tensor], budget: int, rule: str, argument: str) -> dict[int, int]:
    """Groups per layer: ``uniform`` (B everywhere) or ``frequency`` (``adaptive_group_counts``)."""
    if rule == "uniform":
        return {layer: budget for layer in counts}
    if rule == "frequency":
        return adaptive_group_counts(counts, budget)
    raise HarnessError(f"{argument} {rule!r} is unknown; choose uniform or frequency")


def check_merge_budget(inputs) -> None:
    """Merging takes any B in [1, E] (top-k is lowered where B is below it)."""
    budget, experts = getattr(inputs, "budget", None), inputs.shape.num_experts
    if isinstance(budget, bool) or not isinstance(budget, int) or not 1 <= budget <= experts:
        raise HarnessError(f"--budget {budget!r} must be an int between 1 and the model's {experts} experts")


def layer_stat(stats, name: str, layer: int, method: str) -> torch.Tensor:
    """One per-layer calibration statistic, or a one-line error naming what is missing."""
    values = getattr(stats, name, None)
    if not isinstance(values, dict) or layer not in values:
        raise HarnessError(f"method {method!r} needs calibration statistic {name!r} for MoE layer {layer}; "
                           "the calibration pass did not gather it")
    return values[layer]
