"""The space searched by the pruning/merging runners: per-group coefficient matrices.

Layers are split into groups that share one merging matrix M (B x E) and one router mapping R
(B x E), as in EEP (4 groups of consecutive layers, one group per layer, or any grouping). A
candidate is the stack of every group's M and R; pure pruning has one-hot rows and R == M.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from harness.compress.plan import CompressionPlan, LayerPlan, is_one_hot
from harness.errors import HarnessError


def layer_groups(num_layers: int, groups: str | int | list) -> list[list[int]]:
    """Group the MoE layers: ``4`` (EEP's default: [0-7], [8-15], [16-23], the rest, scaled to
    the model's depth), ``'layer'`` (one group per layer), an int n (n consecutive chunks), or an
    explicit list of layer lists."""
    if isinstance(groups, (list, tuple)):
        covered = sorted(layer for group in groups for layer in group)
        if covered != list(range(num_layers)):
            raise HarnessError(f"--groups lists must cover layers 0..{num_layers - 1} exactly once, got {groups}")
        return [list(g) for g in groups]
    if groups in ("layer", "layers") or str(groups) == str(num_layers):
        return [[layer] for layer in range(num_layers)]
    try:
        count = int(groups)
    except (TypeError, ValueError):
        raise HarnessError(f"--groups must be 4, 32, 'layer' or a list of layer lists, got {groups!r}") from None
    if not 1 <= count <= num_layers:
        raise HarnessError(f"--groups {count} must be between 1 and the model's {num_layers} MoE layers")
    size = -(-num_layers // count)
    chunks = [list(range(start, min(start + size, num_layers))) for start in range(0, num_layers, size)]
    return [c for c in chunks if c]


@dataclass
class Candidate:
    """Coefficients of every group: merge and router, each (G, B, E)."""

    merge: torch.Tensor
    router: torch.Tensor
    top_k: int | None = None

    @property
    def is_pruning(self) -> bool:
        rows = self.merge.reshape(-1, self.merge.shape[-1])
        return is_one_hot(rows) and torch.equal(self.merge, self.router)

    def to_dict(self) -> dict:
        return {"merge": self.merge.tolist(), "router": self.router.tolist(), "top_k": self.top_k}

    @classmethod
    def from_dict(cls, data: dict) -> "Candidate":
        return cls(torch.tensor(data["merge"], dtype=torch.float32),
                   torch.tensor(data["router"], dtype=torch.float32), data.get("top_k"))


@dataclass
class PlanSpace:
    """Maps candidates to CompressionPlans for a model with ``moe_layers`` MoE layers."""

    moe_layers: list[int]  # decoder-layer indices of the MoE layers, in order
    num_layers: int  # decoder layers of the model
    num_experts: int
    budget: int
    groups: list[list[int]]  # positions into moe_layers

    @classmethod
    def for_model(cls, moe_layers: list[int], num_layers: int, num_experts: int, budget: int, groups="4"):
        if not 1 <= budget <= num_experts:
            raise HarnessError(f"--budget {budget} must be between 1 and the model's {num_experts} experts")
        return cls(list(moe_layers), num_layers, num_experts, budget, layer_groups(len(moe_layers), groups))

    def pruning(self, kept_per_group: list[list[int]], top_k: int | None = None) -> Candidate:
        """The candidate keeping the given experts (sorted) in each group; R == M."""
        merge = torch.zeros(len(self.groups), self.budget, self.num_experts)
        for g, kept in enumerate(kept_per_group):
            for row, expert in enumerate(sorted(kept)):
                merge[g, row, expert] = 1.0
        return Candidate(merge, merge.clone(), top_k)

    def to_plan(self, candidate: Candidate, metadata: dict | None = None) -> CompressionPlan:
        """One LayerPlan per MoE layer. Pure pruning slices the gate rows (router None), which is
        what a materialised smaller checkpoint does; otherwise R maps the routing probabilities."""
        pruning = candidate.is_pruning
        layers = {}
        for g, group in enumerate(self.groups):
            for position in group:
                layers[self.moe_layers[position]] = LayerPlan(
                    merge=candidate.merge[g].clone(),
                    router=None if pruning else candidate.router[g].clone(),
                    top_k=candidate.top_k,
                )
        return CompressionPlan(self.num_layers, self.num_experts, layers, metadata=dict(metadata or {}))
