"""apply_plan against a direct reference of the formulas, on tiny random models of every family.

The reference (``reference_block``) is written from the EEP README and transformers' routing
rules, token by token in float64, reading the *original* weights; it shares no code with
harness.compress. Layers are compared by hooking each MoE sub-layer's input and output.
"""
from __future__ import annotations

import copy

import pytest
import torch

from harness.compress import apply_plan, reset_plan, snapshot_experts
from harness.compress.plan import CompressionPlan, LayerPlan
from harness.errors import HarnessError
from tests.tiny import tiny_config

ARCH_OVERRIDES = {
    "mixtral": dict(num_local_experts=8, num_experts_per_tok=2),
    "qwen2_moe": dict(
        num_hidden_layers=3, num_experts=8, num_experts_per_tok=2, moe_intermediate_size=16,
        shared_expert_intermediate_size=24, mlp_only_layers=[1],
    ),
    "qwen3_moe": dict(num_experts=8, num_experts_per_tok=2, moe_intermediate_size=16, norm_topk_prob=True, head_dim=8),
    "olmoe": dict(num_experts=8, num_experts_per_tok=2),
    "deepseek_v2": dict(
        num_hidden_layers=3, n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=16, n_shared_experts=1,
        first_k_dense_replace=1, topk_method="group_limited_greedy", n_group=4, topk_group=2,
        routed_scaling_factor=1.5, kv_lora_rank=16, q_lora_rank=None, qk_nope_head_dim=8, qk_rope_head_dim=8,
        v_head_dim=8, num_key_value_heads=4,
    ),
    "deepseek_v3": dict(
        num_hidden_layers=3, n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=16, n_shared_experts=1,
        first_k_dense_replace=1, n_group=2, topk_group=1, routed_scaling_factor=2.5, norm_topk_prob=True,
        kv_lora_rank=16, q_lora_rank=24, qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=8, num_key_value_heads=4,
    ),
}
ARCHS = list(ARCH_OVERRIDES)


def build_model(arch: str, seed: int = 0, **overrides):
    """A tiny random fp32 model whose routers have well-separated logits (no near-ties)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = tiny_config(arch, **{**ARCH_OVERRIDES.get(arch, {}), **overrides})
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    with torch.no_grad():
        for index in moe_layers(model):
            gate = model.model.layers[index].mlp.gate
            gate.weight.normal_(0.0, 0.6)
            if hasattr(gate, "e_score_correction_bias"):
                gate.e_score_correction_bias.normal_(0.0, 0.1)
    return model


def moe_layers(model) -> list[int]:
    return [i for i, layer in enumerate(model.model.layers) if hasattr(layer.mlp, "experts")]


def routing_rules(config) -> dict:
    """Each family's routing, written out by hand from transformers' router code."""
    t = config.model_type
    if t == "mixtral":
        return dict(score="softmax", renorm=True, scale=1.0, groups=None)
    if t in ("qwen2_moe", "qwen3_moe", "olmoe"):
        return dict(score="softmax", renorm=bool(config.norm_topk_prob), scale=1.0, groups=None)
    if t == "deepseek_v2":
        grouped = config.topk_method == "group_limited_greedy"
        return dict(score="softmax", renorm=False, scale=config.routed_scaling_factor, groups="max" if grouped else None)
    if t == "deepseek_v3":
        return dict(score="sigmoid", renorm=bool(config.norm_topk_prob), scale=config.routed_scaling_factor,
                    groups="top2_sum" if (config.n_group or 1) > 1 else None)
    raise ValueError(t)


def capture_block_io(model, layer_indices):
    """Register hooks recording each listed layer's MLP input and output; returns (store, handles)."""
    store, handles = {}, []
    for index in layer_indices:
        def hook(module, args, output, index=index):
            store[index] = (args[0].detach().clone(), output.detach().clone())
        handles.append(model.model.layers[index].mlp.register_forward_hook(hook))
    return store, handles


def reference_block(original_block, config, lp: LayerPlan, h: torch.Tensor):
    """The compressed MoE sub-layer's output for inputs ``h`` (..., H), from the formulas.

    Also returns each token's conditioning ``sum|q_S| / |sum q_S|`` of the renormalisation (1 when
    the selected q are positive): with EEP's signed router mappings the sum can come close to 0,
    and fp32 rounding is then amplified by about its square.
    """
    shape = h.shape
    x = h.reshape(-1, shape[-1]).double()
    if lp.mode == "dropped":
        return torch.zeros(shape, dtype=torch.float64), torch.ones(shape[:-1], dtype=torch.float64)
    rules = routing_rules(config)
    gate = original_block.gate
    W = gate.weight.detach().double()
    bias = getattr(gate, "e_score_correction_bias", None)
    bias = torch.zeros(W.shape[0], dtype=torch.float64) if bias is None else bias.detach().double()
    E = W.shape[0]
    M = (lp.merge if lp.merge is not None else torch.eye(E)).double()
    B = M.shape[0]
    dominant_rows = (lp.router if lp.router is not None else M).double()
    if lp.router is None:  # slice the gate rows: scores over the kept experts' logits only
        W, bias, R = M @ W, M @ bias, torch.eye(B, dtype=torch.float64)
    else:
        R = lp.router.double()
    top_k = lp.top_k or config.num_experts_per_tok
    gate_up = torch.einsum("be,eoh->boh", M, original_block.experts.gate_up_proj.detach().double())
    down = torch.einsum("be,ehi->bhi", M, original_block.experts.down_proj.detach().double())
    inter = down.shape[-1]

    # Groups of slots (DeepSeek): a slot's group is its dominant original expert's group.
    slot_group, n_group = None, 1
    if rules["groups"] is not None:
        n_group = config.n_group
        slot_group = dominant_rows.abs().argmax(dim=1) // (E // n_group)
        counts = torch.bincount(slot_group, minlength=n_group)
        if not (counts == counts[0]).all() or counts[0] == 0:
            slot_group = None  # groups cannot be kept: plain top-k

    out = torch.zeros_like(x)
    conditioning = torch.ones(x.shape[0], dtype=torch.float64)
    for t in range(x.shape[0]):
        logits = W @ x[t]
        p = torch.softmax(logits, 0) if rules["score"] == "softmax" else torch.sigmoid(logits)
        if lp.mode == "condensed":
            slots = list(range(B))
            weights = [float(w) for w in lp.condensed_weights]
        else:
            q = R @ p
            choice = R @ (p + bias)
            if slot_group is not None:
                scores = []
                for g in range(n_group):
                    members = sorted((float(choice[i]) for i in range(B) if slot_group[i] == g), reverse=True)
                    scores.append(members[0] if rules["groups"] == "max" else sum(members[:2]))
                best = sorted(range(n_group), key=lambda g: -scores[g])[: config.topk_group]
                choice = torch.tensor([float(choice[i]) if int(slot_group[i]) in best else -float("inf") for i in range(B)])
            slots = sorted(range(B), key=lambda i: -float(choice[i]))[:top_k]
            weights = [float(q[i]) for i in slots]
            if lp.skip_threshold is not None:
                weights = [w if j == 0 or w >= lp.skip_threshold * weights[0] else 0.0 for j, w in enumerate(weights)]
            if rules["renorm"]:
                total = sum(weights)
                conditioning[t] = max(1.0, sum(abs(w) for w in weights) / abs(total))
                weights = [w / total for w in weights]
            weights = [w * rules["scale"] for w in weights]
        for i, w in zip(slots, weights):
            proj = gate_up[i] @ x[t]
            hidden = torch.nn.functional.silu(proj[:inter]) * proj[inter:]
            out[t] += w * (down[i] @ hidden)
    out = out.reshape(shape)
    shared = _shared_output(original_block, h)
    out = out + shared.double() if shared is not None else out
    return out, conditioning.reshape(shape[:-1])


def _shared_output(block, h):
    with torch.no_grad():
        if hasattr(block, "shared_expert"):
            return torch.sigmoid(block.shared_expert_gate(h)) * block.shared_expert(h)
        if hasattr(block, "shared_experts"):
            return block.shared_experts(h)
    return None


def assert_layers_match(original_model, compressed_model, plan, ids, atol=1e-5):
    """Run ``compressed_model`` on ``ids`` and compare every planned layer with the reference."""
    indices = sorted(plan.layers)
    store, handles = capture_block_io(compressed_model, indices)
    try:
        with torch.no_grad():
            compressed_model(ids)
    finally:
        for handle in handles:
            handle.remove()
    for index in indices:
        h, y = store[index]
        block = original_model.model.layers[index].mlp
        expected, conditioning = reference_block(block, original_model.config, plan.layers[index], h)
        err = (y.double() - expected).abs().amax(dim=-1)
        tolerance = atol * conditioning**2
        assert (err <= tolerance).all(), f"layer {index}: errors {err.tolist()} above {tolerance.tolist()}"


# ----------------------------------------------------------------------------------------------
# helpers


def plan_for(model, layers=None, **kwargs) -> CompressionPlan:
    E = routed_expert_count(model)
    return CompressionPlan(num_layers=model.config.num_hidden_layers, num_experts=E, layers=layers or {}, **kwargs)


def routed_expert_count(model) -> int:
    return model.model.layers[moe_layers(model)[0]].mlp.experts.num_experts


def one_hot(kept, E=8) -> torch.Tensor:
    return torch.eye(E)[list(kept)]


def random_mixing(B, E, generator) -> torch.Tensor:
    """EEP-like rows: one dominant entry near 1, small entries of either sign elsewhere."""
    m = torch.randn(B, E, generator=generator) * 0.1
    dominant = torch.randperm(E, generator=generator)[:B]
    m[torch.arange(B), dominant] += 1.0
    return m


def logits_of(model, ids):
    with torch.no_grad():
        return model(ids).logits


def state_snapshot(model) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


IDS = torch.tensor([[5, 17, 42, 99, 7, 250, 30, 64, 128, 11]])  # no special tokens (1, 2, 3 = pad)


@pytest.fixture(scope="module", params=ARCHS)
def arch_model(request):
    return build_model(request.param)


# ----------------------------------------------------------------------------------------------
# exactness


def test_empty_and_identity_plans_are_bit_identical(arch_model):
    model = copy.deepcopy(arch_model)
    expected = logits_of(model, IDS)
    E = routed_expert_count(model)
    identity = {i: LayerPlan(merge=torch.eye(E)) for i in moe_layers(model)}
    for plan in (plan_for(model), plan_for(model, identity)):
        snap = snapshot_experts(model)
        apply_plan(model, plan)
        assert torch.equal(logits_of(model, IDS), expected)
        reset_plan(model, snap)


def test_pruning_keeps_only_the_kept_experts_and_matches_reference(arch_model):
    model = copy.deepcopy(arch_model)
    before = sum(p.numel() for p in model.parameters())
    kept = [0, 1, 4, 5]  # two per group of every grouped family, in group order
    plan = plan_for(model, {i: LayerPlan(merge=one_hot(kept)) for i in moe_layers(model)})
    apply_plan(model, plan)
    assert_layers_match(arch_model, model, plan, IDS)
    after = sum(p.numel() for p in model.parameters())
    per_expert = arch_model.model.layers[moe_layers(model)[0]].mlp.experts.gate_up_proj[0].numel() * 3 // 2
    assert before - after >= len(moe_layers(model)) * 4 * per_expert
    for index in moe_layers(model):
        experts = model.model.layers[index].mlp.experts
        assert experts.gate_up_proj.shape[0] == experts.down_proj.shape[0] == experts.num_experts == 4
        original = arch_model.model.layers[index].mlp.experts
        assert torch.equal(experts.down_proj, original.down_proj[kept])  # one-hot rows copy bit-exactly


def test_router_mapping_and_merging_match_reference(arch_model):
    g = torch.Generator().manual_seed(1)
    model = copy.deepcopy(arch_model)
    layers = {}
    for n, index in enumerate(moe_layers(model)):
        B = 6 - 2 * (n % 2)
        layers[index] = LayerPlan(merge=random_mixing(B, 8, g), router=random_mixing(B, 8, g))
    plan = plan_for(model, layers)
    apply_plan(model, plan)
    assert_layers_match(arch_model, model, plan, IDS)


def test_top_k_override_and_dynamic_skip_match_reference(arch_model):
    g = torch.Generator().manual_seed(2)
    model = copy.deepcopy(arch_model)
    first, *rest = moe_layers(model)
    layers = {first: LayerPlan(merge=one_hot([0, 1, 4, 5, 6, 7]), top_k=3, skip_threshold=0.6)}
    for index in rest:
        layers[index] = LayerPlan(merge=random_mixing(4, 8, g), router=random_mixing(4, 8, g), top_k=1)
    plan = plan_for(model, layers)
    apply_plan(model, plan)
    assert_layers_match(arch_model, model, plan, IDS)
    # top-k 3 in the first layer, 1 in the others (6 and 4 experts kept): no single value to record,
    # so the config keeps the original model's
    assert {model.model.layers[i].mlp.gate.top_k for i in layers} == {3, 1}
    assert model.config.num_experts_per_tok == arch_model.config.num_experts_per_tok == 2
    count_key = {"mixtral": "num_local_experts", "deepseek_v2": "n_routed_experts", "deepseek_v3": "n_routed_experts"}
    assert getattr(model.config, count_key.get(model.config.model_type, "num_experts")) == 8  # 6 and 4 kept


def test_dynamic_skip_really_skips_and_renormalises():
    """A hand-checked Mixtral token: weights (0.7, 0.3) with beta 0.5 -> (1.0, 0.0)."""
    from harness.compress.apply import RoutingRule, finish_weights

    rule = RoutingRule("softmax", False, True, 0.0, False, 1.0, None, 1, 1)
    out = finish_weights(torch.tensor([[0.7, 0.3], [0.5, 0.4]]), rule, 0.5)
    assert torch.allclose(out, torch.tensor([[1.0, 0.0], [0.5 / 0.9, 0.4 / 0.9]]))


def test_dropped_condensed_and_routed_layers_together(arch_model):
    model = copy.deepcopy(arch_model)
    first, *rest = moe_layers(model)
    layers = {first: LayerPlan(mode="dropped")}
    for index in rest:
        layers[index] = LayerPlan(mode="condensed", merge=one_hot([2, 5, 7]), condensed_weights=torch.tensor([0.5, -0.2, 0.9]))
    plan = plan_for(model, layers)
    before = sum(p.numel() for p in model.parameters())
    apply_plan(model, plan)
    assert_layers_match(arch_model, model, plan, IDS)
    assert sum(p.numel() for p in model.parameters()) < before
    store, handles = capture_block_io(model, [first])
    logits_of(model, IDS)
    handles[0].remove()
    assert torch.equal(store[first][1], torch.zeros_like(store[first][1]))


def test_skip_blocks_pass_hidden_states_through_and_generation_with_cache_agrees(arch_model):
    model = copy.deepcopy(arch_model)
    plan = plan_for(model, skip_blocks=[0, 2] if model.config.num_hidden_layers > 2 else [0])
    apply_plan(model, plan)
    seen = {}
    handles = [
        model.model.layers[i].register_forward_hook(lambda m, a, k, o, i=i: seen.__setitem__(i, (k.get("hidden_states", a[0] if a else None), o)), with_kwargs=True)
        for i in plan.skip_blocks
    ]
    logits_of(model, IDS)
    for h in handles:
        h.remove()
    for i in plan.skip_blocks:
        assert torch.equal(seen[i][0], seen[i][1])
    # Greedy decoding with the KV cache == recomputing the whole sequence without a cache.
    with torch.no_grad():
        generated = model.generate(IDS, attention_mask=torch.ones_like(IDS), max_new_tokens=5, do_sample=False, pad_token_id=3)
        ids = IDS
        for _ in range(5):
            next_id = model(ids, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, next_id], dim=1)
    assert generated.shape[1] >= IDS.shape[1] + 2  # stops early only at </s>
    assert torch.equal(generated, ids[:, : generated.shape[1]])


def test_eager_and_grouped_mm_experts_agree(arch_model):
    g = torch.Generator().manual_seed(3)
    model = copy.deepcopy(arch_model)
    layers = {i: LayerPlan(merge=random_mixing(5, 8, g), router=random_mixing(5, 8, g)) for i in moe_layers(model)}
    apply_plan(model, plan_for(model, layers))
    results = {}
    for impl in ("eager", "grouped_mm", "batched_mm"):
        model.config._experts_implementation = impl
        results[impl] = logits_of(model, IDS)
    assert torch.allclose(results["eager"], results["grouped_mm"], atol=1e-5)
    assert torch.allclose(results["eager"], results["batched_mm"], atol=1e-5)


def test_snapshot_reset_then_another_plan_equals_fresh_model_with_that_plan(arch_model):
    g = torch.Generator().manual_seed(4)
    plan_a = plan_for(arch_model, {i: LayerPlan(merge=random_mixing(3, 8, g), router=random_mixing(3, 8, g)) for i in moe_layers(arch_model)}, skip_blocks=[0])
    plan_b = plan_for(arch_model, {i: LayerPlan(merge=one_hot([1, 2, 5, 6]), top_k=1) for i in moe_layers(arch_model)})
    for device in (None, "cpu"):
        model = copy.deepcopy(arch_model)
        snap = snapshot_experts(model, device=device)
        apply_plan(model, plan_a)
        reset_plan(model, snap)
        assert torch.equal(logits_of(model, IDS), logits_of(arch_model, IDS))
        apply_plan(model, plan_b)
        fresh = apply_plan(copy.deepcopy(arch_model), plan_b)
        assert torch.equal(logits_of(model, IDS), logits_of(fresh, IDS))
        assert model.config.num_experts_per_tok == 1


# ----------------------------------------------------------------------------------------------
# DeepSeek expert groups after compression


def test_deepseek_v3_groups_kept_when_balanced_and_disabled_otherwise():
    from harness.compress.apply import MappedRouter

    original = build_model("deepseek_v3")  # 8 experts, n_group 2 (experts 0-3 | 4-7), topk_group 1
    index = moe_layers(original)[0]
    balanced = LayerPlan(merge=one_hot([5, 0, 6, 1]))  # 2 per group, not in group order -> mapped router
    unbalanced = LayerPlan(merge=one_hot([0, 1, 2, 4]))  # 3 + 1 -> plain top-k over the 4 slots
    for lp, grouped in ((balanced, True), (unbalanced, False)):
        model = copy.deepcopy(original)
        plan = plan_for(model, {index: lp})
        apply_plan(model, plan)
        router = model.model.layers[index].mlp.gate
        if isinstance(router, MappedRouter):
            assert (router.rule.group_rule is not None) == grouped
        else:
            assert (router.num_group > 1) == grouped
        assert_layers_match(original, model, plan, IDS)


# ----------------------------------------------------------------------------------------------
# errors before any weight changes


@pytest.mark.parametrize(
    "make_plan, message",
    [
        (lambda m: CompressionPlan(num_layers=7, num_experts=8), "decoder layers"),
        (lambda m: plan_for(m, hidden_size=999), "hidden size"),
        (lambda m: CompressionPlan(num_layers=m.config.num_hidden_layers, num_experts=6), "experts per layer"),
        (lambda m: plan_for(m, {0: LayerPlan(merge=torch.eye(8)[:2]), 1: LayerPlan(merge=torch.ones(2, 7))}), "layer 1"),
        (lambda m: plan_for(m, {1: LayerPlan(merge=torch.full((2, 8), float("nan")))}), "NaN"),
        (lambda m: plan_for(m, {1: LayerPlan(merge=one_hot([0, 1]), router=torch.rand(3, 8))}), "layer 1.*router"),
        (lambda m: plan_for(m, {1: LayerPlan(merge=torch.rand(2, 8))}), "not one-hot"),
        (lambda m: plan_for(m, {1: LayerPlan(merge=one_hot([0, 1]), top_k=3)}), "top_k"),
        (lambda m: plan_for(m, {1: LayerPlan(merge=one_hot([0]))}), "set top_k"),
        (lambda m: plan_for(m, {1: LayerPlan(mode="condensed", merge=one_hot([0, 1]))}), "condensed_weights"),
        (lambda m: plan_for(m, {1: LayerPlan(mode="halved")}), "mode"),
        (lambda m: plan_for(m, {9: LayerPlan()}), "layer 9"),
        (lambda m: plan_for(m, skip_blocks=[5]), "skip_blocks"),
    ],
)
def test_bad_plans_fail_before_any_weight_changes(make_plan, message):
    model = build_model("mixtral")
    before = state_snapshot(model)
    with pytest.raises(HarnessError, match=message):
        apply_plan(model, make_plan(model))
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert getattr(model, "compression_plan", None) is None


def test_plan_entry_for_a_dense_layer_is_an_error_naming_it():
    model = build_model("deepseek_v2")  # layer 0 is dense (first_k_dense_replace=1)
    before = state_snapshot(model)
    with pytest.raises(HarnessError, match="layer 0.*dense"):
        apply_plan(model, plan_for(model, {0: LayerPlan(merge=one_hot([0, 1])), 1: LayerPlan(merge=one_hot([0, 1]))}))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_unsupported_architecture_is_named():
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(tiny_config("llama"))
    with pytest.raises(HarnessError, match="unsupported architecture 'llama'; supported: deepseek_v2"):
        apply_plan(model, CompressionPlan(num_layers=2, num_experts=8))


def test_applying_twice_needs_a_reset():
    model = build_model("mixtral")
    apply_plan(model, plan_for(model))
    with pytest.raises(HarnessError, match="reset_plan"):
        apply_plan(model, plan_for(model))


# ----------------------------------------------------------------------------------------------
# EEP: a Mixtral-layout model with 32 layers x 8 experts


@pytest.fixture(scope="module")
def eep_model():
    return build_model(
        "mixtral", seed=5, num_hidden_layers=32, hidden_size=16, intermediate_size=32,
        num_attention_heads=1, num_key_value_heads=1,
    )


EEP_IDS = torch.tensor([[9, 40, 77, 120, 31]])


def test_eep_random_merge_and_router_matrices_match_reference(eep_model):
    g = torch.Generator().manual_seed(6)
    groups = [(random_mixing(4, 8, g), random_mixing(4, 8, g)) for _ in range(4)]
    layers = {i: LayerPlan(merge=groups[i // 8][0], router=groups[i // 8][1]) for i in range(32)}
    model = copy.deepcopy(eep_model)
    apply_plan(model, plan_for(model, layers))
    assert_layers_match(eep_model, model, plan_for(model, layers), EEP_IDS)
    assert all(model.model.layers[i].mlp.experts.gate_up_proj.shape[0] == 4 for i in range(32))
    assert (groups[0][0] < 0).any() and (groups[0][1] < 0).any()


def test_every_searched_eep_file_matches_reference(eep_model, shared_dir):
    from harness.compress import formats

    files = sorted((shared_dir / "eep" / "searched_coeff").glob("*.pth"))
    assert len(files) == 22
    model = copy.deepcopy(eep_model)
    snap = snapshot_experts(model)
    for path in files:
        plan = formats.load_plan(path)
        apply_plan(model, plan)
        assert all(i in plan.layers for i in range(32)), path.name
        assert_layers_match(eep_model, model, plan, EEP_IDS)
        reset_plan(model, snap)
