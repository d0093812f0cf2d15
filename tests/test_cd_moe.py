"""CD-MoE against independent computations written here: the condensed layer equals the direct
weighted sum of the original experts; expert weights equal a per-token loop over router logits; a
candidate's divergence (fast path on cached inputs) equals two full-model forwards with
``output_hidden_states``; greedy expert and layer searches equal brute-force greedy loops of
full-model forwards on tiny models.
"""
from __future__ import annotations

import copy

import pytest
import torch

from harness.compress import apply_plan, reset_plan, snapshot_experts
from harness.compress.plan import CompressionPlan, LayerPlan
from harness.methods import cd_moe
from tests.test_apply import ARCHS, build_model, moe_layers

EPS = 1e-10


def documents(seed: int = 1, lengths=(7, 5, 9, 3, 6)) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(4, 300, (n,), generator=generator).tolist() for n in lengths]


def direct_js(original: torch.Tensor, condensed: torch.Tensor, mask: torch.Tensor) -> list[float]:
    """Per document: mean over its real tokens of JS(softmax(original), softmax(condensed)), float64."""
    values = []
    for row in range(mask.shape[0]):
        tokens = mask[row].bool()
        p = torch.softmax(original[row][tokens].double(), -1)
        q = torch.softmax(condensed[row][tokens].double(), -1)
        m = 0.5 * (p + q)
        kl_pm = ((p + EPS) * ((p + EPS) / (m + EPS)).log()).sum(-1)
        kl_qm = ((q + EPS) * ((q + EPS) / (m + EPS)).log()).sum(-1)
        values.append(float((0.5 * (kl_pm + kl_qm)).mean()))
    return values


def plan_of(model, layers: dict[int, list[int]], weights: dict[int, torch.Tensor]) -> CompressionPlan:
    """Written here, not with cd_moe.condensed_plan: one-hot rows of the kept experts and their weights."""
    E = model.config.num_local_experts if hasattr(model.config, "num_local_experts") else (
        getattr(model.config, "n_routed_experts", None) or model.config.num_experts)
    entries = {}
    for index, ids in layers.items():
        merge = torch.zeros(len(ids), E)
        merge[torch.arange(len(ids)), torch.tensor(ids)] = 1.0
        entries[index] = LayerPlan(mode="condensed", merge=merge, condensed_weights=weights[index][ids].float())
    return CompressionPlan(num_layers=model.config.num_hidden_layers, num_experts=E, layers=entries)


def hidden_states(model, batches) -> list[tuple]:
    with torch.no_grad():
        return [model(input_ids=b.input_ids, attention_mask=b.attention_mask, output_hidden_states=True).hidden_states
                for b in batches]


def brute_divergence(model, snapshot, batches, plan, position: int, originals) -> float:
    """Mean document divergence of ``hidden_states[position]``: full model with the plan vs without
    (``originals``: the uncompressed model's hidden states per batch)."""
    apply_plan(model, plan)
    try:
        condensed = hidden_states(model, batches)
    finally:
        reset_plan(model, snapshot)
    values = []
    for batch, before, after in zip(batches, originals, condensed):
        values += direct_js(before[position], after[position], batch.attention_mask)
    return sum(values) / len(values)


def expert_by_routing(block, x: torch.Tensor, e: int) -> torch.Tensor:
    """Expert e of the original block through transformers' own experts forward (routing all tokens to e)."""
    tokens = x.shape[0]
    return block.experts(x, torch.full((tokens, 1), e, dtype=torch.long), torch.ones(tokens, 1, dtype=x.dtype))


def shared_direct(block, x):
    if hasattr(block, "shared_expert"):
        return torch.sigmoid(block.shared_expert_gate(x)) * block.shared_expert(x)
    if hasattr(block, "shared_experts"):
        return block.shared_experts(x)
    return torch.zeros_like(x)


def peaked(model):
    """float64 (no near-ties decided by rounding) with stronger experts, so the hidden-state softmaxes
    move well above eps when a layer is condensed."""
    model = model.double()
    model.config._experts_implementation = "batched_mm"  # the fused grouped GEMM has no float64 kernel
    with torch.no_grad():
        model.model.embed_tokens.weight.mul_(10)
        for index in moe_layers(model):
            model.model.layers[index].mlp.experts.down_proj.mul_(30)
    return model


@pytest.fixture(scope="module", params=ARCHS)
def arch_model(request):
    return build_model(request.param)


@pytest.mark.parametrize("kept, weights", [([2, 5, 7], [0.5, -0.2, 0.9]), ([], [])])
def test_condensed_layer_is_the_weighted_sum_of_its_experts_plus_shared(arch_model, kept, weights):
    model = copy.deepcopy(arch_model)
    layers = moe_layers(model)
    originals = {i: model.model.layers[i].mlp for i in layers}
    E = 8
    w = torch.zeros(E)
    w[kept] = torch.tensor(weights)
    plan = cd_moe.condensed_plan(model, {i: kept for i in layers}, {i: w for i in layers})
    ids = torch.tensor([[1, 17, 40, 99, 250, 7]])
    snapshot = snapshot_experts(model)
    with torch.no_grad():
        before = model(ids).logits
    apply_plan(model, plan)
    seen = {}
    hooks = [model.model.layers[i].mlp.register_forward_hook(lambda m, a, o, i=i: seen.__setitem__(i, (a[0], o)))
             for i in layers]
    with torch.no_grad():
        model(ids)
    for hook in hooks:
        hook.remove()
    for i in layers:
        module = model.model.layers[i].mlp
        assert not hasattr(module, "gate")  # no router
        assert module.experts.gate_up_proj.shape[0] == len(kept)  # only the K experts are held
        x, out = seen[i]
        flat = x.reshape(-1, x.shape[-1])
        with torch.no_grad():
            expected = sum((wk * expert_by_routing(originals[i], flat, e) for e, wk in zip(kept, weights)),
                           torch.zeros_like(flat)) + shared_direct(originals[i], flat)
        assert torch.allclose(out.reshape(flat.shape), expected, atol=1e-5)
    reset_plan(model, snapshot)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, before)


@pytest.mark.parametrize("arch", ["mixtral", "qwen2_moe"])
@pytest.mark.parametrize("rule", ["gate", "routed"])
def test_expert_weights_are_mean_gate_weights_given_selection(arch, rule):
    model = build_model(arch)
    batches = cd_moe.make_batches(documents(), 3, 2, "cpu")
    calib = cd_moe.calibrate(model, batches, rule)
    top_k = model.config.num_experts_per_tok
    for index in moe_layers(model):
        block = model.model.layers[index].mlp
        inputs = []
        hook = block.register_forward_hook(lambda m, a, o: inputs.append(a[0]))
        with torch.no_grad():
            for batch in batches:
                model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
        hook.remove()
        sums, counts = torch.zeros(8, dtype=torch.float64), torch.zeros(8)
        for x, batch in zip(inputs, batches):
            for row, col in batch.attention_mask.nonzero().tolist():
                p = torch.softmax(block.gate.weight.detach().double() @ x[row, col].double(), -1)
                chosen = torch.topk(p, top_k).indices.tolist()
                renorm = rule == "routed" and (arch == "mixtral" or model.config.norm_topk_prob)
                total = float(p[chosen].sum()) if renorm else 1.0
                for e in chosen:
                    sums[e] += float(p[e]) / total
                    counts[e] += 1
        expected = torch.where(counts > 0, sums / counts.clamp(min=1), torch.zeros(8))
        assert torch.allclose(calib.weights[index].double(), expected, atol=1e-5)
        assert torch.equal(calib.counts[index], counts.long())


@pytest.mark.parametrize("arch", ARCHS)  # every family of the adapter table
def test_candidate_divergence_equals_two_full_forwards(arch):
    model = peaked(build_model(arch))
    batches = cd_moe.make_batches(documents(lengths=(7, 5, 9)), 3, 3, "cpu")
    calib = cd_moe.calibrate(model, batches)
    snapshot, originals = snapshot_experts(model), hidden_states(model, batches)
    for index in moe_layers(model):  # DeepSeek: decoder layers 1 and 2 (layer 0 is dense); the last is normed
        cache = cd_moe.LayerCache(model, calib, index, cache_bytes=1 << 30)
        fast = cache.divergences([1], calib.weights[index], [0, 3, 6])
        for value, candidate in zip(fast.tolist(), [0, 3, 6]):
            plan = plan_of(model, {index: [1, candidate]}, calib.weights)
            assert value == pytest.approx(brute_divergence(model, snapshot, batches, plan, index + 1, originals), rel=1e-6)


def brute_force_expert_order(model, batches, weights, index, k):
    snapshot, originals = snapshot_experts(model), hidden_states(model, batches)
    order = []
    for _ in range(k):
        scores = {e: brute_divergence(model, snapshot, batches, plan_of(model, {index: order + [e]}, weights), index + 1,
                                      originals)
                  for e in range(8) if e not in order}
        order.append(min(scores, key=lambda e: (scores[e], e)))
    return order


# the last layer; DeepSeek's first MoE layer (decoder layer 1); Qwen2-MoE's gated shared expert, layer 0
@pytest.mark.parametrize("arch, index, k", [("mixtral", 1, 3), ("deepseek_v2", 1, 2), ("qwen2_moe", 0, 2)])
def test_greedy_expert_search_equals_brute_force_loop(arch, index, k):
    model = peaked(build_model(arch))
    batches = cd_moe.make_batches(documents(lengths=(7, 5, 9)), 3, 3, "cpu")
    calib = cd_moe.calibrate(model, batches)
    order, values = cd_moe.search_experts(model, calib, index, k, cache_bytes=0)  # no cache: recomputed per step
    assert order == brute_force_expert_order(model, batches, calib.weights, index, k)
    assert len(values) == k and all(v > 1e-6 for v in values)


def test_expert_search_resumes_from_a_saved_prefix():
    model = build_model("mixtral")
    batches = cd_moe.make_batches(documents(), 3, 2, "cpu")
    calib = cd_moe.calibrate(model, batches)
    full, full_values = cd_moe.search_experts(model, calib, 1, 4)
    steps = []
    resumed, values = cd_moe.search_experts(model, calib, 1, 4, done=full[:2], divergences=full_values[:2],
                                            on_step=lambda o, v: steps.append(o))
    assert (resumed, values) == (full, full_values) and steps == [full[:3], full]
    assert cd_moe.search_experts(model, calib, 1, 2, done=full, divergences=full_values) == (full[:2], full_values[:2])


def test_greedy_layer_search_equals_brute_force_and_its_cached_runs_equal_full_forwards():
    model = peaked(build_model("qwen2_moe", num_hidden_layers=4, mlp_only_layers=[1]))  # MoE layers 0, 2, 3
    batches = cd_moe.make_batches(documents(lengths=(7, 5, 9)), 3, 2, "cpu")
    calib = cd_moe.calibrate(model, batches)
    experts = {0: [1, 4], 2: [0, 2], 3: [7, 3]}
    results = {}
    steps = cd_moe.search_layers(model, calib, experts, 3, on_result=lambda s, v: results.__setitem__(s, v))
    snapshot, originals = snapshot_experts(model), hidden_states(model, batches)
    final = model.config.num_hidden_layers
    # every evaluated sequence (later steps start from inputs cached under the earlier choice) equals full forwards
    for sequence, value in results.items():
        plan = plan_of(model, {i: experts[i] for i in sequence}, calib.weights)
        assert value == pytest.approx(brute_divergence(model, snapshot, batches, plan, final, originals), rel=1e-6)
    order = []
    for _ in range(3):
        scores = {i: results[(*order, i)] for i in experts if i not in order}
        order.append(min(scores, key=lambda i: (scores[i], i)))
    assert [s[0]["layers"] for s in steps] == [order[:1], order[:2], order]
    assert len(results) == 3 + 2 + 1
    # beam 2 keeps the two best single layers at the first step
    wide = cd_moe.search_layers(model, calib, experts, 1, beam=2, known=results)
    singles = sorted((results[(i,)], i) for i in experts)
    assert [b["layers"] for b in wide[0]] == [[singles[0][1]], [singles[1][1]]]


@pytest.mark.parametrize("arch", ["deepseek_v2", "deepseek_v3"])
def test_deepseek_expert_weights_are_the_unscaled_score_of_the_selected_experts(arch):
    """DeepSeek: the selection is the router's own (group-limited, V3's correction bias); the weight is
    softmax (V2) / sigmoid (V3) of the logits, before renormalisation and routed_scaling_factor."""
    model = build_model(arch)
    batches = cd_moe.make_batches(documents(), 3, 2, "cpu")
    calib = cd_moe.calibrate(model, batches)
    for index in moe_layers(model):
        gate = model.model.layers[index].mlp.gate
        seen = []
        hook = gate.register_forward_hook(lambda m, a, o: seen.append((a[0].reshape(-1, a[0].shape[-1]), o[2])))
        with torch.no_grad():
            for batch in batches:
                model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
        hook.remove()
        sums, counts = torch.zeros(8, dtype=torch.float64), torch.zeros(8)
        for (x, indices), batch in zip(seen, batches):
            real = batch.attention_mask.reshape(-1).bool()
            logits = x[real].double() @ gate.weight.detach().double().T
            scores = torch.sigmoid(logits) if arch == "deepseek_v3" else torch.softmax(logits, -1)
            for row, chosen in zip(scores, indices[real].tolist()):
                for e in chosen:
                    sums[e] += float(row[e])
                    counts[e] += 1
        expected = torch.where(counts > 0, sums / counts.clamp(min=1), torch.zeros(8))
        assert torch.allclose(calib.weights[index].double(), expected, atol=1e-5)
        assert torch.equal(calib.counts[index], counts.long())
