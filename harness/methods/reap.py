"""REAP (Cerebras): saliency S_j = mean over the tokens whose top-k holds j of g_j(x) * ||f_j(x)||_2;
per MoE layer keep the B most salient experts (router rows sliced, top-k unchanged).

g_j is the family's own final routing weight (renormalised over the top-k where the model
renormalises, as REAP does; DeepSeek's constant ``routed_scaling_factor`` included, which does not
change the ranking). An expert never routed to has saliency 0.
"""
from __future__ import annotations

from harness.compress.plan import CompressionPlan
from harness.methods.base import Method, MethodInputs
from harness.methods.frequency import top_experts
from harness.registry import METHODS


def saliency(stats, layer: int):
    return stats.reap_sum[layer] / stats.counts[layer].clamp(min=1).double()


@METHODS.register_module(name="reap")
class Reap(Method):
    needs_calibration = True

    def build(self, inputs: MethodInputs) -> CompressionPlan:
        stats = inputs.stats
        kept = {layer: top_experts(saliency(stats, layer), inputs.budget) for layer in stats.counts}
        return CompressionPlan.from_kept(kept, inputs.shape.num_experts, num_layers=inputs.shape.num_layers,
                                         metadata={"calibration": stats.source})
