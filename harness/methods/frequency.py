"""Frequency pruning: keep, per MoE layer, the B experts most often among a token's top-k on the
calibration data (ties: the lower expert id)."""
from __future__ import annotations

import torch

from harness.compress.plan import CompressionPlan
from harness.methods.base import Method, MethodInputs
from harness.registry import METHODS


def top_experts(scores: torch.Tensor, budget: int) -> list[int]:
    """The ``budget`` experts with the highest scores (counts, saliencies), ties to the lower id,
    sorted by id."""
    order = sorted(range(len(scores)), key=lambda e: (-float(scores[e]), e))
    return sorted(order[:budget])


@METHODS.register_module(name="frequency")
class Frequency(Method):
    needs_calibration = True

    def build(self, inputs: MethodInputs) -> CompressionPlan:
        kept = {layer: top_experts(c, inputs.budget) for layer, c in inputs.stats.counts.items()}
        return CompressionPlan.from_kept(kept, inputs.shape.num_experts, num_layers=inputs.shape.num_layers,
                                         metadata={"calibration": inputs.stats.source})
