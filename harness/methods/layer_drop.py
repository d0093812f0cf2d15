"""Layer Drop (Unified MoE compression): drop the n MoE sub-layers whose input h and output
h + MoE(norm(h)) are most similar (mean cosine over the calibration tokens, one shot on the
unpruned model). The whole sub-layer goes, shared experts included, as the paper does; dense
layers are never candidates."""
from __future__ import annotations

from harness.compress.plan import CompressionPlan, LayerPlan
from harness.errors import HarnessError
from harness.methods.base import Method, MethodInputs
from harness.registry import METHODS


def moe_similarities(stats) -> dict[int, float]:
    return {layer: float(stats.mean("moe_cos_sum", layer)) for layer in sorted(stats.moe_cos_sum)}


@METHODS.register_module(name="layer_drop")
class LayerDrop(Method):
    needs_calibration = True
    needs_budget = False
    needs_drop_n = True

    def check(self, inputs: MethodInputs) -> None:
        layers = len(inputs.shape.moe_layers)
        if inputs.drop_n is None or not 1 <= inputs.drop_n < layers:
            raise HarnessError(f"--drop_n {inputs.drop_n} must be between 1 and {layers - 1} (the model has "
                               f"{layers} MoE layers; at least one stays)")

    def build(self, inputs: MethodInputs) -> CompressionPlan:
        similarity = moe_similarities(inputs.stats)
        order = sorted(similarity, key=lambda layer: (-similarity[layer], layer))
        dropped = sorted(order[: inputs.drop_n])
        return CompressionPlan(num_layers=inputs.shape.num_layers, num_experts=inputs.shape.num_experts,
                               layers={layer: LayerPlan(mode="dropped") for layer in dropped},
                               metadata={"calibration": inputs.stats.source, "drop_n": inputs.drop_n,
                                         "similarity": {str(k): round(v, 6) for k, v in similarity.items()}})
