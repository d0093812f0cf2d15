"""M-SMoE and HC-SMoE: grouping, merging coefficients and neuron alignment, against direct computations."""
from __future__ import annotations

import copy
import itertools
from types import SimpleNamespace

import pytest
import torch
from scipy.cluster.hierarchy import fcluster, linkage

from harness.compress import apply_plan
from harness.errors import HarnessError
from harness.methods.alignment import align_neurons, group_permutations, matching_objective
from harness.methods.base import MethodInputs, ModelShape, build_plan
from harness.methods.hc_smoe import cluster_experts
from harness.methods.m_smoe import group_by_dominants
from harness.methods.merging import adaptive_group_counts, frequency_merge
from tests.test_apply import build_model, moe_layers

E, H, I = 8, 6, 5


def swiglu(gate_up, down, x):
    gate, up = (x @ gate_up.T).chunk(2, dim=-1)
    return (torch.nn.functional.silu(gate) * up) @ down.T


def random_expert(generator, intermediate=I):
    return torch.randn(2 * intermediate, H, generator=generator), torch.randn(H, intermediate, generator=generator)


def permuted(gate_up, down, order):
    """The same expert with its neurons re-ordered: new neuron a is old neuron order[a]."""
    width = down.shape[-1]
    return torch.cat([gate_up[:width][order], gate_up[width:][order]]), down[:, order]


# ----------------------------------------------------------------------------------------------
# Neuron alignment


def test_a_permuted_copy_aligns_back_exactly():
    g = torch.Generator().manual_seed(0)
    gate_up, down = random_expert(g, intermediate=32)
    shuffle = torch.randperm(32, generator=g)
    member = permuted(gate_up, down, shuffle)
    order = align_neurons(gate_up, down, *member)
    assert torch.equal(shuffle[order], torch.arange(32))  # the inverse of the shuffle
    back = permuted(*member, order)
    assert torch.equal(back[0], gate_up) and torch.equal(back[1], down)


def test_permuting_neurons_leaves_the_expert_function_unchanged():
    g = torch.Generator().manual_seed(1)
    gate_up, down = random_expert(g)
    x = torch.randn(4, H, generator=g)
    other = permuted(gate_up, down, torch.randperm(I, generator=g))
    assert torch.allclose(swiglu(*other, x), swiglu(gate_up, down, x), atol=1e-6)


def test_alignment_finds_the_best_pairing_and_improves_on_the_identity():
    g = torch.Generator().manual_seed(2)
    reference, member = random_expert(g), random_expert(g)
    order = align_neurons(*reference, *member)
    found = matching_objective(*reference, *member, order)

    def objective(perm):  # written out: gate rows, up rows and down columns paired a <-> perm[a]
        total = 0.0
        for a, b in enumerate(perm):
            total += float(reference[0][a] @ member[0][b] + reference[0][I + a] @ member[0][I + b])
            total += float(reference[1][:, a] @ member[1][:, b])
        return total

    best = max(objective(p) for p in itertools.permutations(range(I)))
    assert found == pytest.approx(best, rel=1e-5)
    assert found >= objective(range(I)) - 1e-6


def test_group_permutations_leave_references_and_singletons_in_order():
    g = torch.Generator().manual_seed(3)
    experts = [random_expert(g) for _ in range(4)]
    gate_up, down = torch.stack([e[0] for e in experts]), torch.stack([e[1] for e in experts])
    orders = group_permutations(gate_up, down, [[0, 2, 3], [1]], references=[2, 1])
    assert torch.equal(orders[2], torch.arange(I)) and torch.equal(orders[1], torch.arange(I))
    for e in (0, 3):
        assert torch.equal(orders[e], align_neurons(gate_up[2], down[2], gate_up[e], down[e]))


def test_an_aligned_permuted_copy_merges_to_its_reference_in_the_model():
    """Mixtral layer 0: expert 1 := expert 0 with shuffled neurons; m_smoe-style group {0, 1} aligned."""
    from harness.methods.merging import merge_layer_plan

    model = build_model("mixtral")
    experts = model.model.layers[0].mlp.experts
    width = experts.down_proj.shape[-1]
    shuffle = torch.randperm(width, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        experts.gate_up_proj[1], experts.down_proj[1] = permuted(experts.gate_up_proj[0], experts.down_proj[0], shuffle)
    groups = [[0, 1], [2], [3], [4], [5], [6], [7]]
    counts = torch.tensor([30, 10, 5, 5, 5, 5, 5, 5])
    orders = group_permutations(experts.gate_up_proj.detach(), experts.down_proj.detach(), groups, [0, 2, 3, 4, 5, 6, 7])
    aligned = merge_layer_plan(groups, counts, top_k=2, permutations=orders)
    plain = merge_layer_plan(groups, counts, top_k=2)
    from harness.compress.plan import CompressionPlan

    results = {}
    for name, lp in (("aligned", aligned), ("plain", plain)):
        merged = apply_plan(copy.deepcopy(model), CompressionPlan(num_layers=2, num_experts=E, layers={0: lp}))
        results[name] = merged.model.layers[0].mlp.experts
    assert torch.allclose(results["aligned"].gate_up_proj[0], experts.gate_up_proj[0], atol=1e-6)
    assert torch.allclose(results["aligned"].down_proj[0], experts.down_proj[0], atol=1e-6)
    assert not torch.allclose(results["plain"].gate_up_proj[0], experts.gate_up_proj[0], atol=1e-3)


# ----------------------------------------------------------------------------------------------
# Merging coefficients


def test_merged_weights_equal_a_direct_frequency_weighted_average():
    model = build_model("olmoe")
    groups = [[0, 5], [1, 2, 3], [4], [6, 7]]
    counts = torch.tensor([9, 1, 2, 3, 4, 3, 0, 0])  # the last group was never picked: uniform
    from harness.compress.plan import CompressionPlan
    from harness.methods.merging import merge_layer_plan

    index = moe_layers(model)[0]
    original = model.model.layers[index].mlp.experts
    expected_up = {slot: sum(float(counts[e]) * original.gate_up_proj[e].double() for e in g) / sum(float(counts[e]) for e in g)
                   for slot, g in enumerate(groups[:3])}
    expected_up[3] = (original.gate_up_proj[6].double() + original.gate_up_proj[7].double()) / 2
    plan = CompressionPlan(num_layers=2, num_experts=E, layers={index: merge_layer_plan(groups, counts, top_k=2)})
    merged = apply_plan(copy.deepcopy(model), plan).model.layers[index].mlp.experts
    for slot, want in expected_up.items():
        assert torch.allclose(merged.gate_up_proj[slot].double(), want, atol=1e-6)
    assert torch.allclose(frequency_merge(groups, counts).sum(dim=1), torch.ones(4))


def test_adaptive_group_counts_by_hand():
    counts = {0: torch.tensor([10, 5, 0, 0]), 1: torch.tensor([4, 4, 4, 2]), 2: torch.tensor([0, 0, 0, 0])}
    # normalised: layer 0 [1, .5, 0, 0], layer 1 [1, 1, 1, .5], layer 2 unused -> [1, 1, 1, 1];
    # budget 2 x 3 layers = the 6 largest: the 1s (1 + 3 + 4 = 8 > 6) by layer then id: 1, 3, 2 -> ties decide
    assert adaptive_group_counts(counts, 2) == {0: 1, 1: 3, 2: 2}
    assert sum(adaptive_group_counts(counts, 3).values()) == 9


# ----------------------------------------------------------------------------------------------
# Grouping


def test_m_smoe_groups_each_expert_with_its_most_similar_dominant():
    g = torch.Generator().manual_seed(5)
    counts = torch.tensor([3, 50, 7, 40, 1, 2, 60, 5])
    similarity = torch.rand(E, E, generator=g)
    groups = group_by_dominants(counts, similarity, 3)
    dominants = [1, 3, 6]  # the three most used, in id order = slot order
    expected = {d: [d] for d in dominants}
    for e in range(E):
        if e not in dominants:
            expected[max(dominants, key=lambda d: float(similarity[e, d]))].append(e)
    assert groups == [sorted(expected[d]) for d in dominants]


def naive_average_linkage(points: torch.Tensor, clusters: int) -> list[list[int]]:
    """Merge the two clusters with the smallest mean pairwise Euclidean distance until ``clusters`` remain."""
    groups = [[e] for e in range(len(points))]
    dist = torch.cdist(points.double(), points.double())
    while len(groups) > clusters:
        pairs = itertools.combinations(range(len(groups)), 2)
        a, b = min(pairs, key=lambda p: float(dist[groups[p[0]]][:, groups[p[1]]].mean()))
        groups[a] = sorted(groups[a] + groups.pop(b))
    return sorted(groups)


@pytest.mark.parametrize("clusters", [2, 3, 5])
def test_hc_smoe_average_linkage_equals_the_direct_computation(clusters):
    points = torch.randn(E, H, generator=torch.Generator().manual_seed(6))
    assert cluster_experts(points, clusters, "average") == naive_average_linkage(points, clusters)


@pytest.mark.parametrize("method", ["single", "complete", "ward"])
def test_hc_smoe_other_linkages_equal_scipy_fcluster(method):
    points = torch.randn(E, H, generator=torch.Generator().manual_seed(7)).double()
    labels = fcluster(linkage(points.numpy(), method=method, metric="euclidean"), t=3, criterion="maxclust")
    expected = sorted(sorted(int(e) for e in (labels == label).nonzero()[0]) for label in set(labels))
    assert cluster_experts(points, 3, method) == expected


# ----------------------------------------------------------------------------------------------
# The registered methods on explicit statistics


def explicit_stats(seed=8, layers=(0, 1)):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(200, E, generator=g)
    return SimpleNamespace(
        counts={layer: torch.randint(0, 100, (E,), generator=g) for layer in layers},
        logit_gram={layer: logits.T @ logits for layer in layers},
        expert_output_sum={layer: torch.randn(E, H, generator=g) * 200 for layer in layers},
        num_tokens=200, source="explicit")


def inputs_for(budget, stats=None, model=None, top_k=2):
    inputs = MethodInputs(ModelShape(num_layers=2, moe_layers=(0, 1), num_experts=E, top_k=top_k), budget)
    inputs.stats = stats or explicit_stats()
    inputs.model = model
    return inputs


def test_m_smoe_plan_from_explicit_statistics():
    stats = explicit_stats()
    plan = build_plan("m_smoe", inputs_for(3, stats)).validate()
    gram = stats.logit_gram[0].double()
    cos = gram / (gram.diagonal().sqrt()[:, None] * gram.diagonal().sqrt()[None, :])
    assert plan.layers[0].groups() == group_by_dominants(stats.counts[0], (cos + 1) / 2, 3)
    assert plan.metadata["similarity"] == "router_logits" and plan.metadata["routing"] == "after_top_k"
    assert plan.layers[0].top_k is None and torch.equal(plan.layers[0].merge, frequency_merge(plan.layers[0].groups(), stats.counts[0]))
    globally = build_plan("m_smoe", inputs_for(3, stats), globally_group=True)
    assert sum(globally.budget(layer) for layer in (0, 1)) == 6


def test_hc_smoe_plan_lowers_top_k_and_records_the_clustering():
    stats = explicit_stats()
    plan = build_plan("hc_smoe", inputs_for(1, stats), linkage="ward").validate()
    assert plan.layers[0].groups() == [list(range(E))] and plan.layers[0].top_k == 1
    plan = build_plan("hc_smoe", inputs_for(4, stats))
    mean = stats.expert_output_sum[1].double() / stats.num_tokens
    assert plan.layers[1].groups() == naive_average_linkage(mean, 4)
    assert (plan.metadata["linkage"], plan.metadata["metric"]) == ("average", "euclidean")
    assert "hierarchical" in plan.metadata["clustering"] and "K-means" in plan.metadata["deviations"]


def test_methods_with_alignment_store_permutations_of_the_model_experts():
    model = build_model("mixtral")
    plan = build_plan("hc_smoe", inputs_for(4, model=model), align=True).validate()
    lp = plan.layers[0]
    experts = model.model.layers[0].mlp.experts
    for members in lp.groups():
        reference = min(members, key=lambda e: (-int(inputs_for(4).stats.counts[0][e]), e))
        for e in members:
            want = torch.arange(48) if e == reference else align_neurons(
                experts.gate_up_proj[reference], experts.down_proj[reference], experts.gate_up_proj[e], experts.down_proj[e])
            assert torch.equal(lp.permutations[e], want)


@pytest.mark.parametrize("name, settings, budget, message", [
    ("m_smoe", {}, 0, r"--budget 0 must be an int between 1 and the model's 8 experts"),
    ("hc_smoe", {}, 9, r"--budget 9 must be"),
    ("m_smoe", {"similarity": "jaccard"}, 2, r"similarity 'jaccard' is unknown"),
    ("hc_smoe", {"linkage": "centroid"}, 2, r"linkage 'centroid' is unknown"),
    ("hc_smoe", {"group_counts": "random"}, 2, r"group_counts 'random' is unknown"),
    ("m_smoe", {"align": True}, 2, r"neuron alignment needs the model"),
])
def test_bad_settings_are_one_line_errors(name, settings, budget, message):
    with pytest.raises(HarnessError, match=message) as info:
        build_plan(name, inputs_for(budget), **settings)
    assert "\n" not in str(info.value)


def test_missing_statistics_are_named():
    stats = explicit_stats()
    del stats.logit_gram
    with pytest.raises(HarnessError, match="needs calibration statistic 'logit_gram' for MoE layer 0"):
        build_plan("m_smoe", inputs_for(2, stats))


# ----------------------------------------------------------------------------------------------
# The spelling, the similarity options and the per-layer group counts


def test_msmoe_is_the_same_method_as_m_smoe():
    stats = explicit_stats()
    one, two = build_plan("msmoe", inputs_for(3, stats)), build_plan("m_smoe", inputs_for(3, stats))
    assert two.metadata["method"] == "m_smoe" and one.metadata["method"] == "msmoe"
    for layer in (0, 1):
        assert one.layers[layer].groups() == two.layers[layer].groups()
        assert torch.equal(one.layers[layer].merge, two.layers[layer].merge)


def loop_cosines(rows: torch.Tensor) -> torch.Tensor:
    """cos(rows[i], rows[j]) written out with sums, in float64."""
    rows = rows.double()
    out = torch.zeros(len(rows), len(rows), dtype=torch.float64)
    for i in range(len(rows)):
        for j in range(len(rows)):
            dot = sum(float(a) * float(b) for a, b in zip(rows[i], rows[j]))
            out[i, j] = dot / (float((rows[i] ** 2).sum()) ** 0.5 * float((rows[j] ** 2).sum()) ** 0.5)
    return out


def test_m_smoe_expert_output_similarity_groups_by_direct_cosines():
    stats = explicit_stats(seed=9)
    plan = build_plan("m_smoe", inputs_for(3, stats), similarity="expert_outputs")
    for layer in (0, 1):
        want = group_by_dominants(stats.counts[layer], loop_cosines(stats.expert_output_sum[layer]), 3)
        assert plan.layers[layer].groups() == want
    assert plan.metadata["similarity"] == "expert_outputs"


def test_m_smoe_weight_similarity_groups_by_direct_cosines_of_the_flattened_experts():
    model = build_model("mixtral")
    plan = build_plan("m_smoe", inputs_for(3, model=model), similarity="weights")
    counts = explicit_stats().counts
    for layer in (0, 1):
        experts = model.model.layers[layer].mlp.experts
        rows = torch.stack([torch.cat([experts.gate_up_proj[e].flatten(), experts.down_proj[e].flatten()])
                            for e in range(E)]).detach()
        assert plan.layers[layer].groups() == group_by_dominants(counts[layer], loop_cosines(rows), 3)
    # another option changes the groups on this model (the options are really different)
    by_logits = build_plan("m_smoe", inputs_for(3, model=model))
    assert any(by_logits.layers[layer].groups() != plan.layers[layer].groups() for layer in (0, 1))


def test_adaptive_counts_never_leave_a_layer_without_a_group():
    # layer 0 was never used (all its normalised values are 1): pooled naively its four 1s would take
    # both of budget 1 x 2 layers' groups and leave layer 1 none
    counts = {0: torch.zeros(4), 1: torch.tensor([4, 1, 0, 0])}
    assert adaptive_group_counts(counts, 1) == {0: 1, 1: 1}
    assert adaptive_group_counts(counts, 2) == {0: 3, 1: 1}


def skewed_stats():
    """Layer 0's usage is spread, layer 1's concentrated: the adaptive rule gives layer 0 more groups."""
    stats = explicit_stats(seed=10)
    stats.counts = {0: torch.tensor([50, 48, 46, 44, 42, 40, 38, 36]), 1: torch.tensor([100, 90, 10, 5, 4, 3, 2, 1])}
    return stats


def test_m_smoe_global_grouping_uses_the_adaptive_counts():
    # normalised: layer 0 [1 .96 .92 .88 .84 .80 .76 .72], layer 1 [1 .9 .1 .05 ...]; the 6 largest of
    # 16 (budget 3 x 2 layers): 1, 1, .96, .92, .9, .88 -> layer 0 keeps 4, layer 1 keeps 2
    stats = skewed_stats()
    plan = build_plan("m_smoe", inputs_for(3, stats), globally_group=True)
    assert [len(plan.layers[layer].groups()) for layer in (0, 1)] == [4, 2]
    gram = stats.logit_gram[1].double()
    cos = gram / (gram.diagonal().sqrt()[:, None] * gram.diagonal().sqrt()[None, :])
    assert plan.layers[1].groups() == group_by_dominants(stats.counts[1], (cos + 1) / 2, 2)
    assert plan.metadata["globally_group"] is True


def test_hc_smoe_frequency_counts_cluster_each_layer_to_its_adaptive_count():
    stats = skewed_stats()
    plan = build_plan("hc_smoe", inputs_for(3, stats, top_k=3), group_counts="frequency").validate()
    for layer, clusters in ((0, 4), (1, 2)):
        mean = stats.expert_output_sum[layer].double() / stats.num_tokens
        assert plan.layers[layer].groups() == naive_average_linkage(mean, clusters)
    assert plan.layers[0].top_k is None and plan.layers[1].top_k == 2  # 2 clusters < top-3
    assert plan.metadata["group_counts"] == "frequency"


def test_m_smoe_lowers_top_k_where_a_layer_has_fewer_groups():
    plan = build_plan("m_smoe", inputs_for(1)).validate()
    assert all(plan.layers[layer].top_k == 1 and plan.layers[layer].groups() == [list(range(E))] for layer in (0, 1))


def test_merging_a_bfloat16_model_accumulates_in_float32_and_stays_bfloat16():
    """Eight bf16 experts averaged: the result is the fp32 sum rounded once, not a chain of bf16 adds."""
    from harness.compress.plan import CompressionPlan
    from harness.methods.merging import merge_layer_plan

    model = build_model("mixtral").to(torch.bfloat16)
    experts = model.model.layers[0].mlp.experts
    counts = torch.tensor([7, 1, 3, 2, 5, 1, 1, 4])
    groups = [list(range(E))]
    weights = [float(c) / float(counts.sum()) for c in counts]
    want = sum(w * experts.gate_up_proj[e].double() for e, w in zip(range(E), weights)).to(torch.bfloat16)
    chained = experts.gate_up_proj[0] * torch.tensor(weights[0], dtype=torch.bfloat16)
    for e in range(1, E):
        chained = chained + experts.gate_up_proj[e] * torch.tensor(weights[e], dtype=torch.bfloat16)
    plan = CompressionPlan(num_layers=2, num_experts=E, layers={0: merge_layer_plan(groups, counts, top_k=2)})
    merged = apply_plan(copy.deepcopy(model), plan).model.layers[0].mlp.experts
    assert merged.gate_up_proj.dtype == torch.bfloat16
    # fp32 accumulation of the float32-rounded weights: within one bf16 rounding of the exact average
    assert torch.allclose(merged.gate_up_proj[0].double(), want.double(), rtol=2 ** -7, atol=1e-6)
    assert (merged.gate_up_proj[0] - want).abs().max() < (chained - want).abs().max()
