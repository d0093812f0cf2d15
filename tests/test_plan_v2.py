"""Routing after top-k (``expert_to_slot``) and neuron permutations in the plan type, on every family.

The reference (``aliased_reference``) is written out per token in float64 from the routing rules
(the original router's scores and top-k over the E original experts, the family's renormalisation
and scaling), then each picked expert's weight goes to its slot; the slots' weights are merged here
directly from the original tensors, permutations applied by indexing. It shares no code with
harness.compress.
"""
from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors import safe_open

from harness.compress import apply_plan, load_plan, reset_plan, save_plan, snapshot_experts
from harness.compress.describe import describe_plan
from harness.compress.formats import HEADER_KEY, read_harness_plan
from harness.compress.plan import CompressionPlan, LayerPlan
from harness.errors import HarnessError
from tests.test_apply import ARCHS, IDS, _shared_output, build_model, capture_block_io, moe_layers, routing_rules

E = 8
GROUPS = [[0, 3], [1], [2, 5, 7], [4, 6]]  # four slots; the map sends 0,3 -> 0, 1 -> 1, ...


def slot_map(groups) -> torch.Tensor:
    mapping = torch.empty(sum(len(g) for g in groups), dtype=torch.long)
    for slot, members in enumerate(groups):
        mapping[members] = slot
    return mapping


def averaging(groups, weights=None) -> torch.Tensor:
    """(B, E) merge rows: each group's members weighted by ``weights`` (default 1), normalised."""
    weights = torch.ones(E) if weights is None else weights
    merge = torch.zeros(len(groups), E)
    for slot, members in enumerate(groups):
        merge[slot, members] = weights[members] / weights[members].sum()
    return merge


def random_permutations(intermediate, generator) -> torch.Tensor:
    return torch.stack([torch.randperm(intermediate, generator=generator) for _ in range(E)])


def aliased_layer(groups=GROUPS, permutations=None, top_k=None) -> LayerPlan:
    weights = torch.arange(1, E + 1, dtype=torch.float32)
    return LayerPlan(merge=averaging(groups, weights), expert_to_slot=slot_map(groups), permutations=permutations,
                     top_k=top_k)


def plan_of(model, layers) -> CompressionPlan:
    return CompressionPlan(num_layers=model.config.num_hidden_layers, num_experts=E, layers=layers)


def aliased_reference(block, config, lp: LayerPlan, h: torch.Tensor) -> torch.Tensor:
    """The MoE sub-layer's output, token by token in float64, from the original weights."""
    rules = routing_rules(config)
    x = h.reshape(-1, h.shape[-1]).double()
    W = block.gate.weight.detach().double()
    bias = getattr(block.gate, "e_score_correction_bias", None)
    bias = torch.zeros(E, dtype=torch.float64) if bias is None else bias.detach().double()
    gate_up = block.experts.gate_up_proj.detach().double()
    down = block.experts.down_proj.detach().double()
    inter = down.shape[-1]
    if lp.permutations is not None:  # expert e's neuron a becomes its neuron permutations[e, a]
        perms = lp.permutations
        gate_up = torch.stack([torch.cat([gate_up[e, :inter][perms[e]], gate_up[e, inter:][perms[e]]]) for e in range(E)])
        down = torch.stack([down[e][:, perms[e]] for e in range(E)])
    merged_gate_up = torch.einsum("be,eoh->boh", lp.merge.double(), gate_up)
    merged_down = torch.einsum("be,ehi->bhi", lp.merge.double(), down)
    top_k = lp.top_k or config.num_experts_per_tok
    out = torch.zeros_like(x)
    for t in range(x.shape[0]):
        logits = W @ x[t]
        p = torch.softmax(logits, 0) if rules["score"] == "softmax" else torch.sigmoid(logits)
        choice = p + bias
        if rules["groups"] is not None:
            size = E // config.n_group
            scores = []
            for g in range(config.n_group):
                members = sorted((float(choice[e]) for e in range(g * size, (g + 1) * size)), reverse=True)
                scores.append(members[0] if rules["groups"] == "max" else sum(members[:2]))
            best = sorted(range(config.n_group), key=lambda g: -scores[g])[: config.topk_group]
            choice = torch.tensor([float(choice[e]) if e // size in best else -float("inf") for e in range(E)])
        picked = sorted(range(E), key=lambda e: -float(choice[e]))[:top_k]
        weights = [float(p[e]) for e in picked]
        if rules["renorm"]:
            weights = [w / sum(weights) for w in weights]
        slot_weight = {}
        for e, w in zip(picked, weights):
            slot = int(lp.expert_to_slot[e])
            slot_weight[slot] = slot_weight.get(slot, 0.0) + w * rules["scale"]
        for slot, w in slot_weight.items():
            proj = merged_gate_up[slot] @ x[t]
            out[t] += w * (merged_down[slot] @ (torch.nn.functional.silu(proj[:inter]) * proj[inter:]))
    out = out.reshape(h.shape)
    shared = _shared_output(block, h)
    return out + shared.double() if shared is not None else out


def assert_matches_reference(original, model, plan, atol=1e-5):
    store, handles = capture_block_io(model, sorted(plan.layers))
    try:
        with torch.no_grad():
            model(IDS)
    finally:
        for handle in handles:
            handle.remove()
    for index in plan.layers:
        h, y = store[index]
        expected = aliased_reference(original.model.layers[index].mlp, original.config, plan.layers[index], h)
        assert torch.allclose(y.double(), expected, atol=atol), f"layer {index}: {(y.double() - expected).abs().max()}"


@pytest.fixture(scope="module", params=ARCHS)
def arch_model(request):
    return build_model(request.param)


def intermediate_of(model) -> int:
    return model.model.layers[moe_layers(model)[0]].mlp.experts.down_proj.shape[-1]


# ----------------------------------------------------------------------------------------------
# The forward


def test_routing_after_top_k_matches_the_per_token_reference(arch_model):
    g = torch.Generator().manual_seed(0)
    model = copy.deepcopy(arch_model)
    layers = {}
    for n, index in enumerate(moe_layers(model)):
        perms = random_permutations(intermediate_of(model), g) if n % 2 == 0 else None
        layers[index] = aliased_layer(permutations=perms, top_k=1 if n == 1 else None)
    plan = plan_of(model, layers)
    before = sum(p.numel() for p in model.parameters())
    apply_plan(model, plan)
    assert_matches_reference(arch_model, model, plan)
    for index in layers:  # only the B merged experts stay; the router keeps its E rows
        block = model.model.layers[index].mlp
        assert block.experts.gate_up_proj.shape[0] == block.experts.down_proj.shape[0] == block.experts.num_experts == 4
        assert block.gate.weight.shape[0] == E
        assert isinstance(block.gate, type(arch_model.model.layers[index].mlp.gate))
    expert = arch_model.model.layers[moe_layers(model)[0]].mlp.experts
    per_expert = expert.gate_up_proj[0].numel() + expert.down_proj[0].numel()
    assert before - sum(p.numel() for p in model.parameters()) == len(layers) * 4 * per_expert


def test_two_picks_in_one_slot_add_up():
    """Mixtral, top-2, every expert in one slot: the layer is that one merged expert at weight 1."""
    original = build_model("mixtral")
    model = copy.deepcopy(original)
    lp = LayerPlan(merge=torch.full((1, E), 1.0 / E), expert_to_slot=torch.zeros(E, dtype=torch.long), top_k=1)
    two = LayerPlan(merge=lp.merge, expert_to_slot=lp.expert_to_slot, top_k=None)
    index = moe_layers(model)[0]
    with pytest.raises(HarnessError, match="top_k"):  # B=1 < top-k 2: the plan must lower top-k
        apply_plan(copy.deepcopy(original), plan_of(model, {index: two}))
    plan = plan_of(model, {index: lp})
    apply_plan(model, plan)
    assert_matches_reference(original, model, plan)


def test_eager_and_grouped_experts_agree_with_duplicate_slots():
    original = build_model("qwen3_moe")
    model = apply_plan(copy.deepcopy(original), plan_of(original, {i: aliased_layer() for i in moe_layers(original)}))
    results = {}
    for impl in ("eager", "grouped_mm", "batched_mm"):
        model.config._experts_implementation = impl
        with torch.no_grad():
            results[impl] = model(IDS).logits
    assert torch.allclose(results["eager"], results["grouped_mm"], atol=1e-5)
    assert torch.allclose(results["eager"], results["batched_mm"], atol=1e-5)


def test_a_permuted_expert_alone_computes_what_it_did(arch_model):
    """Permutations change nothing when every expert keeps its own slot (identity merge and map)."""
    g = torch.Generator().manual_seed(1)
    model = copy.deepcopy(arch_model)
    groups = [[e] for e in range(E)]
    layers = {i: LayerPlan(merge=torch.eye(E), expert_to_slot=slot_map(groups),
                           permutations=random_permutations(intermediate_of(model), g)) for i in moe_layers(model)}
    with torch.no_grad():
        expected = arch_model(IDS).logits
        snap = snapshot_experts(model)
        apply_plan(model, plan_of(model, layers))
        assert torch.allclose(model(IDS).logits, expected, atol=1e-5)
        reset_plan(model, snap)
        assert torch.equal(model(IDS).logits, expected)


# ----------------------------------------------------------------------------------------------
# Files, fingerprints, descriptions


def v2_plan(model=None, permutations=True) -> CompressionPlan:
    g = torch.Generator().manual_seed(2)
    perms = random_permutations(48, g) if permutations else None
    return CompressionPlan(num_layers=2, num_experts=E, layers={0: aliased_layer(permutations=perms), 1: aliased_layer()},
                           metadata={"method": "test"})


def test_version_2_file_round_trips_exactly(tmp_path):
    plan = v2_plan()
    path = save_plan(plan, tmp_path / "plan.safetensors")
    again = load_plan(path)
    header = json.loads(safe_open(str(path), "pt").metadata()[HEADER_KEY])
    assert header["format_version"] == 2
    for index, lp in plan.layers.items():
        back = again.layers[index]
        assert back.expert_to_slot.dtype == torch.int64 and torch.equal(back.expert_to_slot, lp.expert_to_slot)
        assert torch.equal(back.merge, lp.merge)
        assert (back.permutations is None) == (lp.permutations is None)
        if lp.permutations is not None:
            assert torch.equal(back.permutations, lp.permutations)
    assert again.fingerprint() == plan.fingerprint()
    again.metadata = dict(plan.metadata)  # loading records the source file
    assert save_plan(again, tmp_path / "again.safetensors").read_bytes() == path.read_bytes()


def test_plans_without_the_new_fields_stay_version_1(tmp_path):
    plan = CompressionPlan.from_kept({0: [0, 1, 2, 3]}, E, num_layers=2)
    path = save_plan(plan, tmp_path / "v1.safetensors")
    header = json.loads(safe_open(str(path), "pt").metadata()[HEADER_KEY])
    assert header["format_version"] == 1
    assert read_harness_plan(path).fingerprint() == plan.fingerprint()


def test_a_version_1_file_written_without_the_harness_still_loads(tmp_path):
    """A version-1 file as the pre-v2 writer laid it out, written here with safetensors itself."""
    from safetensors.torch import save_file

    merge = torch.zeros(4, E)
    merge[[0, 1, 2, 3], [1, 3, 5, 7]] = 1.0
    merge[0, 0] = merge[0, 1] = 0.5
    router = merge.clone()
    header = {"format_version": 1, "num_layers": 2, "num_experts": E, "hidden_size": None, "skip_blocks": [],
              "layers": {"1": {"mode": "routed", "top_k": None, "skip_threshold": None}}, "metadata": {"method": "old"}}
    path = tmp_path / "old.safetensors"
    save_file({"layers.1.merge": merge, "layers.1.router": router}, str(path),
              metadata={HEADER_KEY: json.dumps(header), "format": "pt"})
    plan = load_plan(path)
    lp = plan.layers[1]
    assert torch.equal(lp.merge, merge) and torch.equal(lp.router, router)
    assert lp.expert_to_slot is None and lp.permutations is None and plan.metadata["method"] == "old"
    again = save_plan(plan, tmp_path / "again.safetensors")
    assert json.loads(safe_open(str(again), "pt").metadata()[HEADER_KEY])["format_version"] == 1


def test_fingerprint_covers_the_slot_map_and_permutations():
    base = v2_plan()
    other_map = copy.deepcopy(base)
    other_map.layers[1].expert_to_slot = slot_map([[0, 3], [1], [2, 5], [4, 6, 7]])
    other_perm = copy.deepcopy(base)
    other_perm.layers[0].permutations = other_perm.layers[0].permutations.flip(1)
    no_perm = copy.deepcopy(base)
    no_perm.layers[0].permutations = None
    identity_perm = copy.deepcopy(no_perm)
    identity_perm.layers[0].permutations = torch.arange(48).expand(E, 48).clone()
    prints = {p.fingerprint() for p in (base, other_map, other_perm, no_perm)}
    assert len(prints) == 4
    assert identity_perm.fingerprint() == no_perm.fingerprint()  # in-order neurons permute nothing
    plain = CompressionPlan(num_layers=2, num_experts=E, layers={0: LayerPlan(merge=base.layers[1].merge)})
    alias = CompressionPlan(num_layers=2, num_experts=E, layers={0: base.layers[1]})
    assert plain.fingerprint() != alias.fingerprint()


def test_eep_format_refuses_routing_after_top_k(tmp_path):
    with pytest.raises(HarnessError, match="layer 0: routing after top-k .*format='harness'"):
        save_plan(v2_plan(), tmp_path / "plan.pth", format="eep")


def test_describe_shows_the_groups():
    text = describe_plan(v2_plan())
    assert "after top-k" in text
    assert "{0,3} {1} {2,5,7} {4,6}" in text
    assert "aligned" in text


# ----------------------------------------------------------------------------------------------
# Bad input: one line naming the file and the layer, before anything changes


def write_raw(path, layer: LayerPlan):
    """A v2 file written around CompressionPlan.validate, as a hand-edited file would be."""
    from harness.compress.formats import plan_header, safetensors_bytes

    plan = CompressionPlan(num_layers=2, num_experts=E, layers={1: layer})
    tensors = {f"layers.1.{name}": getattr(layer, name) for name in ("merge", "expert_to_slot", "permutations")
               if getattr(layer, name) is not None}
    header = json.dumps(plan_header(plan), sort_keys=True)
    path.write_bytes(safetensors_bytes(tensors, {HEADER_KEY: header, "format": "pt"}))
    return path


@pytest.mark.parametrize("change, message", [
    (lambda lp: setattr(lp, "expert_to_slot", torch.tensor([0, 1, 2, 3, 4, 0, 1, 2])), r"slots \[4\], out of range"),
    (lambda lp: setattr(lp, "expert_to_slot", torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])), r"no expert to slots \[3\]"),
    (lambda lp: setattr(lp, "expert_to_slot", torch.tensor([0, 1, 2, 3])), r"expert_to_slot must be an int tensor of shape \(8,\)"),
    (lambda lp: setattr(lp, "expert_to_slot", torch.tensor([0, -1, 2, 3, 0, 1, 2, 3])), r"slots \[-1\]"),
    (lambda lp: setattr(lp, "permutations", torch.zeros(E, 48, dtype=torch.long)), r"permutations rows \[0, 1, 2, 3, 4\] are not"),
    (lambda lp: setattr(lp, "permutations", torch.arange(48).expand(4, 48).clone()), r"shape \(8, I\)"),
])
def test_bad_v2_files_are_one_line_errors_naming_file_and_layer(tmp_path, change, message):
    lp = aliased_layer()
    change(lp)
    path = write_raw(tmp_path / "bad.safetensors", lp)
    with pytest.raises(HarnessError, match=f"bad.safetensors: layer 1: .*{message}") as info:
        load_plan(path)
    assert "\n" not in str(info.value)


def test_float_slot_map_in_a_file_is_refused(tmp_path):
    lp = aliased_layer()
    lp.expert_to_slot = lp.expert_to_slot.float()
    path = write_raw(tmp_path / "float.safetensors", lp)
    with pytest.raises(HarnessError, match="float.safetensors: layer 1: expert_to_slot must hold integers"):
        load_plan(path)


def test_bad_alias_plans_fail_before_any_weight_changes():
    model = build_model("mixtral")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    wrong_width = aliased_layer(permutations=torch.arange(7).expand(E, 7).clone())
    with_router = aliased_layer()
    with_router.router = with_router.merge.clone()
    not_perm = aliased_layer(permutations=torch.zeros(E, 48, dtype=torch.long))
    out_of_range = aliased_layer()
    out_of_range.expert_to_slot = torch.tensor([0, 1, 2, 3, 4, 0, 1, 2])
    for lp, message in ((wrong_width, "layer 1: permutations order 7 neurons but the experts have 48"),
                        (with_router, "layer 1: expert_to_slot .* no router mapping"),
                        (not_perm, r"layer 1: permutations rows \[0, 1, 2, 3, 4\] are not permutations"),
                        (out_of_range, r"layer 1: .*slots \[4\], out of range")):
        with pytest.raises(HarnessError, match=message):
            apply_plan(model, plan_of(model, {0: aliased_layer(), 1: lp}))
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
        assert getattr(model, "compression_plan", None) is None


# ----------------------------------------------------------------------------------------------
# Materialise and reload


@pytest.mark.parametrize("arch", ["mixtral", "deepseek_v3"])
def test_apply_equals_materialise_and_reload(tmp_path, arch):
    from harness.compress.materialize import load_compressed, materialize

    g = torch.Generator().manual_seed(3)
    original = build_model(arch)
    layers = {i: aliased_layer(permutations=random_permutations(intermediate_of(original), g)) for i in moe_layers(original)}
    plan = plan_of(original, layers)
    applied = apply_plan(copy.deepcopy(original), plan)
    result = materialize(copy.deepcopy(original), plan, tmp_path / "out")
    assert result.kind == "compressed"
    loaded = load_compressed(tmp_path / "out")
    for index in layers:
        assert loaded.model.layers[index].mlp.experts.gate_up_proj.shape[0] == 4
        assert torch.equal(loaded.model.layers[index].mlp.gate.expert_to_slot, layers[index].expert_to_slot)
    with torch.no_grad():
        assert torch.equal(loaded(IDS).logits, applied(IDS).logits)


def test_the_tools_describe_and_materialise_a_merged_plan(tmp_path, capsys):
    from harness.compress.materialize import load_compressed
    from tools.describe_plan import main as describe_main
    from tools.materialize import main as materialize_main

    original = build_model("mixtral")
    original.save_pretrained(tmp_path / "model")
    plan = v2_plan()
    save_plan(plan, tmp_path / "plan.safetensors")
    assert describe_main(["--coeff_path", str(tmp_path / "plan.safetensors"), "--model_path", str(tmp_path / "model")]) == 0
    assert "groups after top-k: {0,3} {1} {2,5,7} {4,6}" in capsys.readouterr().out
    assert materialize_main(["--model_path", str(tmp_path / "model"), "--coeff_path", str(tmp_path / "plan.safetensors"),
                             "--out", str(tmp_path / "out")]) == 0
    assert "compressed" in capsys.readouterr().out
    loaded = load_compressed(tmp_path / "out")
    assert all(loaded.model.layers[i].mlp.experts.gate_up_proj.shape[0] == 4 for i in (0, 1))
    with torch.no_grad():
        assert torch.equal(loaded(IDS).logits, apply_plan(copy.deepcopy(original), plan)(IDS).logits)
