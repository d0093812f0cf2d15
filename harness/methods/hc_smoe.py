"""HC-SMoE: hierarchical clustering of experts by their mean outputs, then frequency-weighted merging.

Per MoE layer the features are each expert's output averaged over all calibration tokens (not only
the ones routed to it): an (E, H) matrix. ``scipy.cluster.hierarchy.linkage`` clusters them
(Euclidean; ``average`` linkage by default, ``single``, ``complete`` or ``ward``) and the tree is
cut into B clusters (``group_counts='frequency'``: per-layer counts by MC-SMoE's adaptive rule).
Each cluster is one slot, the usage-frequency-weighted average of its members (neuron-aligned to
the most used member with ``align=True``); routing stays the model's own over the E originals,
each pick sent to its cluster's slot after the top-k, which is lowered to the number of clusters
where it exceeds it.

The reference's shipped scripts pass ``--cluster="hirarchical"`` (a typo) and so silently run
K-means; this method runs the hierarchical clustering it names and records it in the plan.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.cluster.hierarchy import cut_tree, linkage

from harness.compress.plan import CompressionPlan
from harness.errors import HarnessError
from harness.methods.base import Method, MethodInputs
from harness.methods.merging import check_merge_budget, layer_budgets, layer_stat, merge_plan
from harness.registry import METHODS

LINKAGES = ("average", "single", "complete", "ward")
DEVIATIONS = (
    "hierarchical clustering as named (the reference's scripts misspell it and run K-means); "
    "usage counts follow the model's own top-k (the reference hard-codes top-2); "
    "clusters never picked are averaged uniformly; "
    "neuron alignment matches gate, up and down projections of SwiGLU experts"
)


def cluster_experts(features: torch.Tensor, num_clusters: int, method: str = "average") -> list[list[int]]:
    """Groups of expert ids (ordered by their lowest member) from agglomerative clustering."""
    if method not in LINKAGES:
        raise HarnessError(f"hc_smoe linkage {method!r} is unknown; choose one of {', '.join(LINKAGES)}")
    points = features.detach().double().cpu().numpy()
    if num_clusters >= len(points):
        return [[e] for e in range(len(points))]
    tree = linkage(points, method=method, metric="euclidean")
    labels = cut_tree(tree, n_clusters=num_clusters).ravel()
    groups: dict[int, list[int]] = {}
    for expert, label in enumerate(np.asarray(labels).tolist()):
        groups.setdefault(label, []).append(expert)
    return sorted(groups.values())


@METHODS.register_module(name="hc_smoe")
class HCSMoE(Method):
    needs_calibration = True

    def __init__(self, linkage: str = "average", group_counts: str = "uniform", align: bool = False):
        if linkage not in LINKAGES:
            raise HarnessError(f"hc_smoe linkage {linkage!r} is unknown; choose one of {', '.join(LINKAGES)}")
        if group_counts not in ("uniform", "frequency"):
            raise HarnessError(f"hc_smoe group_counts {group_counts!r} is unknown; choose uniform or frequency")
        self.linkage = linkage
        self.group_counts = group_counts
        self.align = bool(align)

    def check_budget(self, inputs: MethodInputs) -> None:
        check_merge_budget(inputs)

    def build(self, inputs: MethodInputs) -> CompressionPlan:
        stats = inputs.stats
        layers = inputs.shape.moe_layers
        counts = {layer: layer_stat(stats, "counts", layer, "hc_smoe") for layer in layers}
        budgets = layer_budgets(counts, inputs.budget, self.group_counts, "hc_smoe group_counts")
        tokens = max(int(getattr(stats, "num_tokens", 0) or 0), 1)
        groups = {}
        for layer in layers:
            features = layer_stat(stats, "expert_output_sum", layer, "hc_smoe").double() / tokens
            groups[layer] = cluster_experts(features, budgets[layer], self.linkage)
        metadata = {"calibration": getattr(stats, "source", ""), "routing": "after_top_k",
                    "clustering": "hierarchical (scipy.cluster.hierarchy.linkage + cut_tree)",
                    "linkage": self.linkage, "metric": "euclidean", "features": "mean expert output, all tokens",
                    "group_counts": self.group_counts, "align": self.align,
                    "merge": "usage-frequency-weighted average", "reference": "wazenmai/HC-SMoE",
                    "deviations": DEVIATIONS}
        return merge_plan(inputs.shape, groups, counts, self.align, getattr(inputs, "model", None), metadata)
