"""Keep-first: keep experts 0..B-1 of every MoE layer (a data-free sanity baseline)."""
from __future__ import annotations

from harness.compress.plan import CompressionPlan
from harness.methods.base import Method, MethodInputs
from harness.registry import METHODS


@METHODS.register_module(name="keep_first")
class KeepFirst(Method):
    def build(self, inputs: MethodInputs) -> CompressionPlan:
        kept = {layer: list(range(inputs.budget)) for layer in inputs.shape.moe_layers}
        return CompressionPlan.from_kept(kept, inputs.shape.num_experts, num_layers=inputs.shape.num_layers)
