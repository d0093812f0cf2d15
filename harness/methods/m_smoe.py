"""M-SMoE (MC-SMoE's merging step, "Merge, Then Compress"): group around the most used experts.

Per MoE layer: the B experts most often in a token's top-k on the calibration data are the
dominant ones (ties: the lower id); every other expert joins the dominant expert it is most
similar to; each group becomes one slot, the usage-frequency-weighted average of its members
(neuron-aligned to the dominant expert first with ``align=True``), and routing stays the model's
own over the E originals, each pick sent to its group's slot after the top-k.

Similarity (``similarity``): ``router_logits`` (the reference's default: cosine of two experts'
router-logit columns over all calibration tokens, mapped to (cos + 1) / 2, from the logit Gram
matrix), ``expert_outputs`` (cosine of the experts' mean outputs over all calibration tokens) or
``weights`` (cosine of the flattened expert weights). ``globally_group=True`` sets per-layer group
counts by MC-SMoE's adaptive rule (``merging.adaptive_group_counts``) instead of B in every layer.

Registered as ``m_smoe`` and, the same class, ``msmoe``.
"""
from __future__ import annotations

import torch

from harness.compress.plan import CompressionPlan
from harness.errors import HarnessError
from harness.methods.base import Method, MethodInputs
from harness.methods.frequency import top_experts
from harness.methods.merging import check_merge_budget, expert_weights, layer_budgets, layer_stat, merge_plan
from harness.registry import METHODS

SIMILARITIES = ("router_logits", "expert_outputs", "weights")
DEVIATIONS = (
    "groups whose members were never picked are averaged uniformly (the reference divides by zero); "
    "ties in usage go to the lower expert id, in similarity to the lower slot; "
    "global grouping keeps exactly budget * L groups (ties broken by layer, then expert id); "
    "top-k is lowered to the group count where a layer has fewer groups than the model's top-k; "
    "neuron alignment matches gate, up and down projections of SwiGLU experts (never released by the reference)"
)


def cosine_matrix(vectors: torch.Tensor) -> torch.Tensor:
    """(E, E) float64 cosines of the rows of ``vectors`` (a zero row is orthogonal to everything)."""
    unit = torch.nn.functional.normalize(vectors.double(), dim=1)
    return unit @ unit.T


def gram_cosines(gram: torch.Tensor) -> torch.Tensor:
    """Cosines of the columns whose Gram matrix is ``gram``: G_ij / sqrt(G_ii G_jj)."""
    gram = gram.double()
    norms = gram.diagonal().clamp_min(0).sqrt()
    return gram / (norms[:, None] * norms[None, :]).clamp_min(torch.finfo(torch.float64).tiny)


def group_by_dominants(counts: torch.Tensor, similarity: torch.Tensor, budget: int) -> list[list[int]]:
    """Groups (slot order = dominant id order): each non-dominant expert with its most similar dominant."""
    dominants = top_experts(counts, budget)
    groups = [[d] for d in dominants]
    for e in range(len(counts)):
        if e in dominants:
            continue
        scores = [float(similarity[e, d]) for d in dominants]
        best = max(range(len(dominants)), key=lambda slot: (scores[slot], -slot))
        groups[best].append(e)
    return [sorted(g) for g in groups]


@METHODS.register_module(name=["m_smoe", "msmoe"])  # msmoe: the and MC-SMoE's spelling
class MSMoE(Method):
    needs_calibration = True

    def __init__(self, similarity: str = "router_logits", globally_group: bool = False, align: bool = False):
        if similarity not in SIMILARITIES:
            raise HarnessError(f"m_smoe similarity {similarity!r} is unknown; choose one of {', '.join(SIMILARITIES)}")
        self.similarity = similarity
        self.globally_group = bool(globally_group)
        self.align = bool(align)

    def layer_similarity(self, inputs: MethodInputs, layer: int) -> torch.Tensor:
        stats = inputs.stats
        if self.similarity == "router_logits":
            return (gram_cosines(layer_stat(stats, "logit_gram", layer, "m_smoe")) + 1) / 2
        if self.similarity == "expert_outputs":
            return cosine_matrix(layer_stat(stats, "expert_output_sum", layer, "m_smoe"))
        gate_up, down = expert_weights(getattr(inputs, "model", None), layer)
        return cosine_matrix(torch.cat([gate_up.flatten(1), down.flatten(1)], dim=1).float().cpu())

    def check_budget(self, inputs: MethodInputs) -> None:
        check_merge_budget(inputs)

    def build(self, inputs: MethodInputs) -> CompressionPlan:
        counts = {layer: layer_stat(inputs.stats, "counts", layer, "m_smoe") for layer in inputs.shape.moe_layers}
        budgets = layer_budgets(counts, inputs.budget, "frequency" if self.globally_group else "uniform", "grouping")
        groups = {layer: group_by_dominants(counts[layer], self.layer_similarity(inputs, layer), budgets[layer])
                  for layer in inputs.shape.moe_layers}
        metadata = {"calibration": getattr(inputs.stats, "source", ""), "routing": "after_top_k",
                    "similarity": self.similarity, "globally_group": self.globally_group, "align": self.align,
                    "merge": "usage-frequency-weighted average", "reference": "UNITES-Lab/MC-SMoE (M-SMoE)",
                    "deviations": DEVIATIONS}
        return merge_plan(inputs.shape, groups, counts, self.align, getattr(inputs, "model", None), metadata)
