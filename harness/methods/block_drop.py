"""Block Drop (Unified MoE compression): drop decoder blocks whose input and output hidden states are
most similar (mean cosine over the calibration tokens).

``discrete`` (the paper's default): cos(h_i, h_{i+1}) per block, drop the n most similar.
``consecutive``: the run of n blocks i..i+n-1 with the most similar cos(h_i, h_{i+n}). The reference
compares h_i with h_{i+n+1} while dropping n blocks (off by one); this compares the run's own input
and output, as the paper describes, and says so in the plan's metadata.
"""
from __future__ import annotations

from harness.compress.plan import CompressionPlan
from harness.errors import HarnessError
from harness.methods.base import Method, MethodInputs
from harness.registry import METHODS

MODES = ("discrete", "consecutive")


def span_similarity(stats, start: int, length: int) -> float:
    """Mean cosine of the input of block ``start`` and the output of block ``start + length - 1``."""
    return float(stats.hidden_cos_sum[start, start + length]) / max(stats.num_tokens, 1)


@METHODS.register_module(name="block_drop")
class BlockDrop(Method):
    needs_calibration = True
    needs_budget = False
    needs_drop_n = True
    needs_experts = False  # dense blocks are candidates too

    def __init__(self, mode: str = "discrete"):
        if mode not in MODES:
            raise HarnessError(f"block_drop mode {mode!r} is not one of {', '.join(MODES)}; fix the method config")
        self.mode = mode

    def check(self, inputs: MethodInputs) -> None:
        layers = inputs.shape.num_layers
        if inputs.drop_n is None or not 1 <= inputs.drop_n < layers:
            raise HarnessError(f"--drop_n {inputs.drop_n} must be between 1 and {layers - 1} (the model has "
                               f"{layers} decoder blocks; at least one stays)")

    def build(self, inputs: MethodInputs) -> CompressionPlan:
        stats, n, layers = inputs.stats, inputs.drop_n, inputs.shape.num_layers
        meta = {"calibration": stats.source, "drop_n": n, "mode": self.mode}
        if self.mode == "discrete":
            similarity = {i: span_similarity(stats, i, 1) for i in range(layers)}
            dropped = sorted(sorted(similarity, key=lambda i: (-similarity[i], i))[:n])
        else:
            similarity = {i: span_similarity(stats, i, n) for i in range(layers - n + 1)}
            start = min(similarity, key=lambda i: (-similarity[i], i))
            dropped = list(range(start, start + n))
            meta["deviation"] = ("compares h_i with h_{i+n} (the dropped run's own input and output); the reference "
                                 "compares h_i with h_{i+n+1}")
        meta["similarity"] = {str(k): round(v, 6) for k, v in similarity.items()}
        return CompressionPlan(num_layers=layers, num_experts=inputs.shape.num_experts, skip_blocks=dropped,
                               metadata=meta)
