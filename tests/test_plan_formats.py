"""Plan formats: the harness safetensors format, EEP .pth files (real, from ../shared), JSON masks,
CompressionPlan's methods and validation, and the safe torch loader."""
from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import struct

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from harness.compress.formats import (
    FORMAT_VERSION,
    HEADER_KEY,
    detect_format,
    eep_key_for_layer,
    load_plan,
    plan_from_eep,
    save_plan,
    write_harness_plan,
)
from harness.compress.plan import CompressionPlan, LayerPlan
from harness.errors import HarnessError
from harness.safe_load import safe_torch_load

FOUR_GROUP = ("boolq", "cb", "squad", "wic", "wsc")
PER_LAYER = ("drop", "record", "rte")
BUDGET_6 = ("arc-c", "arc-e", "gsm8k", "hellaswag", "obqa", "winogrande")
EEP_FILES = [f"{d}_budget_{b}" for d in FOUR_GROUP + PER_LAYER for b in (2, 4)] + [f"{d}_budget_6" for d in BUDGET_6]


@pytest.fixture(scope="module")
def coeff_dir(shared_dir):
    return shared_dir / "eep" / "searched_coeff"


def raw_eep(path) -> dict:
    """The file as released, read independently of the harness (torch's own safe loader)."""
    return torch.load(path, weights_only=True)


def expected_eep_keys(name: str, layer: int) -> tuple[str, str]:
    """Hand-written key resolution for the released files (see ../shared/eep/README.md)."""
    if name.split("_")[0] in FOUR_GROUP:
        group = layer // 8
        if group < 3:
            span = f"[{8 * group}-{8 * group + 7}]"
            return f"layers.{span}", f"transfer.{span}"
        return "others", "others_transfer"
    if layer <= 30:
        return f"layers.{layer}", f"transfer.{layer}"
    return "others", "others_transfer"


def rows_one_hot(matrix: torch.Tensor) -> bool:
    return all(sorted(row.tolist()) == [0.0] * (len(row) - 1) + [1.0] for row in matrix)


# ----------------------------------------------------------------------------------------------
# The released EEP files.


def test_there_are_22_eep_files(coeff_dir):
    assert sorted(p.stem for p in coeff_dir.glob("*.pth")) == sorted(EEP_FILES)


@pytest.mark.parametrize("name", EEP_FILES)
def test_eep_file_loads_validates_and_resolves_keys(coeff_dir, name):
    path = coeff_dir / f"{name}.pth"
    raw = raw_eep(path)
    plan = load_plan(path)
    budget = int(name.rsplit("_", 1)[1])
    assert (plan.num_layers, plan.num_experts) == (32, 8)
    assert plan.validate(num_layers=32, num_experts=8) is plan
    assert plan.metadata["source"] == str(path)
    assert plan.uniform_budget == budget
    assert sorted(plan.layers) == list(range(32))
    for layer in range(32):
        merge_key, router_key = expected_eep_keys(name, layer)
        lp = plan.layers[layer]
        assert torch.equal(lp.merge, raw[merge_key]), (name, layer)
        assert torch.equal(lp.router, raw[router_key]), (name, layer)
        assert lp.mode == "routed" and lp.top_k is None and plan.budget(layer) == budget
    key_pairs = {expected_eep_keys(name, layer) for layer in range(32)}
    pure = all(rows_one_hot(raw[m]) and torch.equal(raw[m], raw[r]) for m, r in key_pairs)
    assert plan.is_pure_pruning == pure


def test_key_resolution_spot_checks(coeff_dir):
    four = raw_eep(coeff_dir / "boolq_budget_2.pth")
    assert eep_key_for_layer(four, 5) == "layers.[0-7]"
    assert eep_key_for_layer(four, 5, "router") == "transfer.[0-7]"
    assert eep_key_for_layer(four, 30) == "others"
    assert eep_key_for_layer(four, 30, "router") == "others_transfer"
    per_layer = raw_eep(coeff_dir / "rte_budget_4.pth")
    assert eep_key_for_layer(per_layer, 31) == "others"
    assert eep_key_for_layer(per_layer, 7) == "layers.7"
    plan = load_plan(coeff_dir / "boolq_budget_2.pth")
    assert torch.equal(plan.layers[5].merge, four["layers.[0-7]"])
    assert torch.equal(plan.layers[30].merge, four["others"])


def test_first_matching_key_wins():
    m = {k: torch.full((2, 4), float(i)) for i, k in enumerate(["layers.[0-3]", "layers.2", "others"])}
    assert eep_key_for_layer(m, 2) == "layers.[0-3]"
    assert eep_key_for_layer(m, 4) == "others"
    plan = plan_from_eep(m, num_layers=6)
    assert plan.layers[2].merge[0, 0] == 0.0 and plan.layers[5].merge[0, 0] == 2.0
    assert all(lp.router is None for lp in plan.layers.values())  # no transfer keys at all


def test_arc_e_budget_6_is_pure_pruning(coeff_dir):
    raw = raw_eep(coeff_dir / "arc-e_budget_6.pth")
    plan = load_plan(coeff_dir / "arc-e_budget_6.pth")
    assert plan.is_pure_pruning and plan.uniform_budget == 6
    for layer in range(32):
        key = expected_eep_keys("arc-e_budget_6", layer)[0]
        expected = [row.tolist().index(1.0) for row in raw[key]]
        assert plan.kept_experts(layer) == expected
    assert not load_plan(coeff_dir / "boolq_budget_2.pth").is_pure_pruning
    assert load_plan(coeff_dir / "boolq_budget_2.pth").kept_experts(0) is None


def test_eep_num_layers_inference_and_range_errors(tmp_path):
    block = torch.eye(4)[:2].contiguous()
    assert plan_from_eep({"layers.40": block, "layers.[0-39]": block}).num_layers == 41
    with pytest.raises(HarnessError, match="pass num_layers"):
        plan_from_eep({"layers.40": block, "others": block}, source="x.pth")
    assert plan_from_eep({"layers.40": block, "others": block}, num_layers=48).num_layers == 48
    path = tmp_path / "wide.pth"
    torch.save({"layers.[0-7]": block, "layers.[8-40]": block, "others": block}, path)
    with pytest.raises(HarnessError) as err:
        load_plan(path, num_layers=32)
    assert str(path) in str(err.value) and "layers.[8-40]" in str(err.value) and "40" in str(err.value)


@pytest.mark.parametrize(
    "coeffs, fragment",
    [
        ({"layers.0": torch.ones(2, 8), "blocks.1": torch.ones(2, 8)}, "blocks.1"),
        ({"layers.[5-2]": torch.ones(2, 8)}, "empty"),
        ({"layers.0": torch.ones(2, 8), "layers.1": torch.ones(2, 6)}, "expert count"),
        ({"layers.0": torch.ones(8)}, "layers.0"),
        ({"layers.0": [[1.0, 0.0]]}, "layers.0"),
        ({}, "not an EEP"),
    ],
)
def test_bad_eep_dicts(tmp_path, coeffs, fragment):
    path = tmp_path / "bad.pth"
    torch.save(coeffs, path)
    with pytest.raises(HarnessError) as err:
        load_plan(path)
    assert str(path) in str(err.value) and fragment in str(err.value)


def test_eep_num_experts_mismatch_names_file(coeff_dir):
    with pytest.raises(HarnessError, match=r"boolq_budget_2\.pth.*num_experts=16"):
        load_plan(coeff_dir / "boolq_budget_2.pth", num_experts=16)


# ----------------------------------------------------------------------------------------------
# Round trips.


def mixed_plan() -> CompressionPlan:
    """Every field in use: merging with a router mapping, pruning with top-k and NAEE, condensed, dropped."""
    torch.manual_seed(0)
    merged = torch.randn(3, 8)
    return CompressionPlan(
        num_layers=6,
        num_experts=8,
        hidden_size=64,
        skip_blocks=[5],
        layers={
            0: LayerPlan(merge=merged, router=torch.randn(3, 8)),
            1: LayerPlan(merge=torch.eye(8)[[1, 4, 6]], top_k=1, skip_threshold=0.3),
            2: LayerPlan(mode="condensed", merge=merged.clone(), condensed_weights=torch.tensor([0.5, 0.25, 0.25])),
            3: LayerPlan(mode="dropped"),
        },
        metadata={"method": "test", "command": "pytest tests/test_plan_formats.py", "seed": 7},
    )


def assert_same_plan(a: CompressionPlan, b: CompressionPlan) -> None:
    assert (a.num_layers, a.num_experts, a.hidden_size, a.skip_blocks) == (b.num_layers, b.num_experts, b.hidden_size, b.skip_blocks)
    assert sorted(a.layers) == sorted(b.layers)
    for index, la in a.layers.items():
        lb = b.layers[index]
        assert (la.mode, la.top_k, la.skip_threshold) == (lb.mode, lb.top_k, lb.skip_threshold), index
        for name in ("merge", "router", "condensed_weights"):
            va, vb = getattr(la, name), getattr(lb, name)
            assert (va is None) == (vb is None), (index, name)
            if va is not None:
                assert vb.dtype == torch.float32 and torch.equal(va.float(), vb), (index, name)


def test_harness_format_round_trip(tmp_path):
    plan = mixed_plan()
    path = save_plan(plan, tmp_path / "plan.safetensors")
    loaded = load_plan(path)
    assert_same_plan(plan, loaded)
    assert loaded.metadata["method"] == "test" and loaded.metadata["seed"] == 7
    assert loaded.metadata["source"] == str(path) and loaded.metadata["format"] == "harness"
    assert [p.name for p in tmp_path.iterdir()] == ["plan.safetensors"]  # no temporary file left


def test_harness_file_layout_read_independently(tmp_path):
    path = save_plan(mixed_plan(), tmp_path / "plan.safetensors")
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    assert data[8:9] == b"{" and 8 + length <= len(data)
    with safe_open(str(path), framework="pt") as fh:
        header = json.loads(fh.metadata()[HEADER_KEY])
        names = set(fh.keys())
    assert header["format_version"] == 1 and FORMAT_VERSION == 2  # nothing of version 2's: still written as 1
    assert (header["num_layers"], header["num_experts"], header["hidden_size"], header["skip_blocks"]) == (6, 8, 64, [5])
    assert header["layers"]["1"] == {"mode": "routed", "top_k": 1, "skip_threshold": 0.3}
    assert header["layers"]["3"]["mode"] == "dropped"
    assert header["metadata"]["command"] == "pytest tests/test_plan_formats.py"
    assert names == {"layers.0.merge", "layers.0.router", "layers.1.merge", "layers.2.merge", "layers.2.condensed_weights"}


def test_real_eep_plan_round_trips_in_both_formats(tmp_path, coeff_dir):
    plan = load_plan(coeff_dir / "squad_budget_4.pth")
    assert_same_plan(plan, load_plan(save_plan(plan, tmp_path / "p.safetensors")))
    loaded = load_plan(tmp_path / "p.safetensors")
    assert loaded.metadata["derived_from"] == str(coeff_dir / "squad_budget_4.pth")
    eep_path = save_plan(plan, tmp_path / "p.pth", format="eep")
    assert_same_plan(plan, load_plan(eep_path))
    raw = raw_eep(eep_path)
    assert set(raw) == {f"{kind}.{i}" for kind in ("layers", "transfer") for i in range(32)}


def test_eep_export_fills_router_with_merge(tmp_path):
    plan = CompressionPlan.from_kept({0: [2, 5], 1: [0, 1]}, num_experts=8, num_layers=3)
    coeffs = plan.to_eep_dict()
    assert torch.equal(coeffs["transfer.0"], torch.eye(8)[[2, 5]])
    assert torch.equal(coeffs["layers.0"], coeffs["transfer.0"])
    assert torch.equal(coeffs["layers.2"], torch.eye(8))  # layer the plan leaves unchanged
    path = save_plan(plan, tmp_path / "p.pth", format="eep")
    assert detect_format(path) == "eep"
    back = load_plan(path)
    assert back.kept_experts(0) == [2, 5] and back.is_pure_pruning


@pytest.mark.parametrize(
    "layer",
    [LayerPlan(mode="dropped"), LayerPlan(merge=torch.eye(8)[:4], top_k=1), LayerPlan(merge=torch.eye(8)[:4], skip_threshold=0.1)],
)
def test_eep_export_refuses_what_eep_cannot_hold(tmp_path, layer):
    plan = CompressionPlan(num_layers=2, num_experts=8, layers={1: layer}, metadata={"source": "p.safetensors"})
    with pytest.raises(HarnessError, match=r"p\.safetensors: layer 1: .*format='harness'"):
        save_plan(plan, tmp_path / "p.pth", format="eep")
    assert not (tmp_path / "p.pth").exists()


def test_unknown_save_format(tmp_path):
    with pytest.raises(HarnessError, match="harness, eep"):
        save_plan(mixed_plan(), tmp_path / "p.x", format="onnx")


# ----------------------------------------------------------------------------------------------
# Versions and format detection.


def write_with_header(path, header: dict, tensors=None):
    save_file(tensors or {}, str(path), metadata={HEADER_KEY: json.dumps(header)})
    return path


def test_newer_and_unknown_versions_are_refused(tmp_path):
    header = {"format_version": 3, "num_layers": 2, "num_experts": 8, "layers": {}}
    newer = write_with_header(tmp_path / "newer.safetensors", header)
    with pytest.raises(HarnessError, match=r"newer.safetensors has format_version 3, newer than this harness reads \(2\)"):
        load_plan(newer)
    for version in (0, "1", None):
        bad = write_with_header(tmp_path / "bad.safetensors", {**header, "format_version": version})
        with pytest.raises(HarnessError, match=r"bad.safetensors: format_version .* unknown"):
            load_plan(bad)


def test_safetensors_without_plan_header_is_refused(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(HarnessError, match="model.safetensors .*not a compression plan"):
        load_plan(path)


def test_harness_file_with_stray_tensor_is_refused(tmp_path):
    header = {"format_version": 1, "num_layers": 2, "num_experts": 8, "layers": {"0": {"mode": "routed"}}}
    path = write_with_header(tmp_path / "p.safetensors", header, {"layers.1.merge": torch.eye(8)[:2].contiguous()})
    with pytest.raises(HarnessError, match="p.safetensors: tensor 'layers.1.merge' has no entry for layer 1"):
        load_plan(path)


def test_format_is_detected_by_content_not_extension(tmp_path, coeff_dir):
    harness_as_pth = save_plan(mixed_plan(), tmp_path / "ours.pth")
    assert detect_format(harness_as_pth) == "harness"
    assert_same_plan(mixed_plan(), load_plan(harness_as_pth))
    eep_as_safetensors = tmp_path / "eep.safetensors"
    shutil.copyfile(coeff_dir / "cb_budget_2.pth", eep_as_safetensors)
    assert detect_format(eep_as_safetensors) == "eep"
    assert torch.equal(load_plan(eep_as_safetensors).layers[0].merge, raw_eep(coeff_dir / "cb_budget_2.pth")["layers.[0-7]"])
    mask_as_bin = tmp_path / "mask.bin"
    mask_as_bin.write_text(json.dumps({"num_experts": 4, "kept": {"0": [1, 2]}}))
    assert detect_format(mask_as_bin) == "mask"
    assert load_plan(mask_as_bin).kept_experts(0) == [1, 2]


# ----------------------------------------------------------------------------------------------
# Masks.


def test_mask_dict_form(tmp_path):
    path = tmp_path / "mask.json"
    path.write_text(json.dumps({"num_experts": 8, "kept": {"0": [7, 0, 3, 5], "2": [1, 2, 4, 6]}, "num_layers": 4, "top_k": 2}))
    plan = load_plan(path)
    assert (plan.num_layers, plan.num_experts) == (4, 8)
    assert torch.equal(plan.layers[0].merge, torch.eye(8)[[0, 3, 5, 7]])  # sorted slot order
    assert plan.layers[0].router is None and plan.layers[2].top_k == 2
    assert plan.kept_experts(0) == [0, 3, 5, 7] and plan.kept_experts(1) == list(range(8))
    assert plan.is_pure_pruning and plan.uniform_budget == 4 and plan.metadata["method"] == "mask"


def test_mask_list_form_needs_num_experts(tmp_path):
    path = tmp_path / "mask.json"
    path.write_text(json.dumps([[0, 1], [2, 3], [1, 3]]))
    with pytest.raises(HarnessError, match=r"mask\.json: a plain list .*num_experts"):
        load_plan(path)
    plan = load_plan(path, num_experts=4)
    assert plan.num_layers == 3 and [plan.kept_experts(i) for i in range(3)] == [[0, 1], [2, 3], [1, 3]]
    assert torch.equal(plan.layers[2].merge, torch.tensor([[0.0, 1, 0, 0], [0, 0, 0, 1]]))


@pytest.mark.parametrize(
    "content, fragment",
    [
        ({"num_experts": 8, "kept": {"0": [0, 0, 1]}}, "layer 0: kept experts [0, 0, 1] list an expert twice"),
        ({"num_experts": 8, "kept": {"1": [3, 8]}}, "layer 1: expert ids [8]"),
        ({"num_experts": 8, "kept": {"0": []}}, "layer 0: keeps no experts"),
        ({"num_experts": 8, "kept": {"40": [1]}, "num_layers": 32}, "layer 40 is out of range"),
        ({"num_experts": 8, "kept": {"0": [1, 2]}, "top_k": 3}, "layer 0: top_k 3"),
        ({"num_experts": 8, "kept": {"x": [1]}}, "'x'"),
        ({"num_experts": 8, "keep": {"0": [1]}}, "unknown keys ['keep']"),
        ({"kept": {"0": [1]}}, "needs 'num_experts'"),
        ({"num_experts": 8, "kept": {}}, "non-empty"),
        ("{not json at all", "not valid JSON"),
    ],
)
def test_bad_masks(tmp_path, content, fragment):
    path = tmp_path / "mask.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(HarnessError) as err:
        load_plan(path)
    assert str(path) in str(err.value) and fragment in str(err.value)


# ----------------------------------------------------------------------------------------------
# CompressionPlan methods.


def test_identity_plan():
    plan = CompressionPlan.identity(4, 8)
    assert plan.layers == {} and plan.uniform_budget == 8 and plan.is_pure_pruning
    assert [plan.budget(i) for i in range(4)] == [8] * 4 and plan.kept_experts(3) == list(range(8))
    assert plan.validate(num_layers=4, num_experts=8) is plan


def test_from_kept_and_budgets():
    plan = CompressionPlan.from_kept([[3, 1], [0, 1, 2]], num_experts=4)
    assert plan.num_layers == 2 and plan.kept_experts(0) == [1, 3] and plan.budget(1) == 3
    assert plan.uniform_budget is None and plan.is_pure_pruning
    assert CompressionPlan.from_kept({2: [0]}, num_experts=4).num_layers == 3
    merged = CompressionPlan(num_layers=1, num_experts=4, layers={0: LayerPlan(merge=torch.tensor([[0.5, 0.5, 0, 0]]), router=torch.eye(4)[:1])})
    assert merged.kept_experts(0) is None and not merged.is_pure_pruning
    remapped = CompressionPlan(num_layers=1, num_experts=4, layers={0: LayerPlan(merge=torch.eye(4)[:2], router=torch.eye(4)[[1, 0]])})
    assert remapped.kept_experts(0) == [0, 1] and not remapped.is_pure_pruning  # router differs from merge
    dropped = CompressionPlan(num_layers=2, num_experts=4, layers={0: LayerPlan(mode="dropped"), 1: LayerPlan(merge=torch.eye(4)[:2])})
    assert dropped.budget(0) == 0 and dropped.kept_experts(0) == [] and dropped.uniform_budget == 2


BAD_LAYERS = [
    (LayerPlan(merge=torch.eye(7)[:2]), "merge has shape (2, 7): 7 expert columns but the plan has E=8"),
    (LayerPlan(merge=torch.eye(8).repeat(2, 1)[:9]), "keeps B=9 experts"),
    (LayerPlan(merge=torch.zeros(0, 8)), "B=0"),
    (LayerPlan(merge=torch.eye(8)[:2], router=torch.eye(8)[:3]), "router shape (3, 8) differs from merge shape (2, 8)"),
    (LayerPlan(merge=torch.eye(8)[:2], router=torch.eye(8)[:2] * float("nan")), "router contains NaN or inf"),
    (LayerPlan(merge=torch.eye(8)[:2] * float("inf"), router=torch.eye(8)[:2]), "merge contains NaN or inf"),
    (LayerPlan(merge=torch.eye(8)[:2], top_k=3), "top_k 3 must be an int in [1, B=2]"),
    (LayerPlan(merge=torch.eye(8)[:2], top_k=0), "top_k 0"),
    (LayerPlan(mode="pruned", merge=torch.eye(8)[:2]), "mode 'pruned' is not one of"),
    (LayerPlan(mode="condensed", merge=torch.eye(8)[:2], condensed_weights=torch.ones(3)), "condensed_weights of shape (2,)"),
    (LayerPlan(merge=torch.eye(8)[:2], condensed_weights=torch.ones(2)), "condensed_weights is set but mode is 'routed'"),
    (LayerPlan(merge=torch.full((2, 8), 0.125)), "not one-hot"),
    (LayerPlan(router=torch.eye(8)[:2]), "router has 2 rows but merge is None"),
    (LayerPlan(merge=torch.eye(8)[:2], skip_threshold=-1.0), "skip_threshold -1.0"),
]


@pytest.mark.parametrize("layer, fragment", BAD_LAYERS)
def test_validate_names_source_layer_and_mismatch(layer, fragment):
    plan = CompressionPlan(num_layers=4, num_experts=8, layers={3: layer}, metadata={"source": "plans/bad.safetensors"})
    with pytest.raises(HarnessError) as err:
        plan.validate()
    message = str(err.value)
    assert message.startswith("plans/bad.safetensors: layer 3: ") and fragment in message, message


@pytest.mark.parametrize("layer, fragment", BAD_LAYERS)
def test_bad_plan_files_fail_on_load_naming_the_file(tmp_path, layer, fragment):
    path = tmp_path / "bad.safetensors"
    write_harness_plan(CompressionPlan(num_layers=4, num_experts=8, layers={3: layer}), path)  # bypasses validation
    with pytest.raises(HarnessError) as err:
        load_plan(path)
    assert str(err.value).startswith(f"{path}: layer 3: ") and fragment in str(err.value)


def test_plan_level_errors(tmp_path):
    where = {"source": "p.safetensors"}
    with pytest.raises(HarnessError, match=r"p\.safetensors: layer 4 is out of range: the plan has 4 layers"):
        CompressionPlan(num_layers=4, num_experts=8, layers={4: LayerPlan()}, metadata=where).validate()
    with pytest.raises(HarnessError, match=r"p\.safetensors: skip_blocks entry 9 is not a decoder layer in \[0, 4\)"):
        CompressionPlan(num_layers=4, num_experts=8, skip_blocks=[9], metadata=where).validate()
    with pytest.raises(HarnessError, match=r"p\.safetensors: plan has num_experts=8 but the model has 16"):
        CompressionPlan(num_layers=4, num_experts=8, metadata=where).validate(num_experts=16)
    with pytest.raises(HarnessError, match="hidden_size=64 but the model has 32"):
        CompressionPlan(num_layers=4, num_experts=8, hidden_size=64).validate(hidden_size=32)
    path = save_plan(mixed_plan(), tmp_path / "p.safetensors")
    with pytest.raises(HarnessError, match=rf"{re.escape(str(path))}: plan has num_layers=6 but the model has 32"):
        load_plan(path, num_layers=32)


def test_save_refuses_invalid_plan(tmp_path):
    bad = CompressionPlan(num_layers=2, num_experts=8, layers={1: LayerPlan(merge=torch.eye(8)[:2], top_k=5)})
    with pytest.raises(HarnessError, match="layer 1: top_k 5"):
        save_plan(bad, tmp_path / "p.safetensors")
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------------------------
# Broken and hostile files.


def test_truncated_files(tmp_path, coeff_dir):
    real = (coeff_dir / "boolq_budget_4.pth").read_bytes()
    half = tmp_path / "half.pth"
    half.write_bytes(real[: len(real) // 2])
    with pytest.raises(HarnessError, match=re.escape(str(half))):
        load_plan(half)
    ours = save_plan(mixed_plan(), tmp_path / "ours.safetensors").read_bytes()
    for cut in (len(ours) // 2, len(ours) - 3):
        cut_file = tmp_path / f"cut{cut}.safetensors"
        cut_file.write_bytes(ours[:cut])
        with pytest.raises(HarnessError, match=re.escape(str(cut_file))):
            load_plan(cut_file)


@pytest.mark.parametrize("content", [b"", b"\x00\x01garbage bytes here", b"\x89PNG\r\n\x1a\n....."])
def test_empty_and_unknown_files(tmp_path, content):
    path = tmp_path / "plan.pth"
    path.write_bytes(content)
    with pytest.raises(HarnessError, match=re.escape(str(path))):
        load_plan(path)


def test_missing_file(tmp_path):
    with pytest.raises(HarnessError, match="not found"):
        load_plan(tmp_path / "nope.safetensors")


class _Malicious:
    marker = None

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


@pytest.mark.parametrize("writer", ["torch", "pickle"])
def test_malicious_pickle_is_refused_without_running(tmp_path, writer):
    marker = tmp_path / "pwned"
    _Malicious.marker = marker
    path = tmp_path / "evil.pth"
    payload = {"layers.0": _Malicious()}
    if writer == "torch":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    with pytest.raises(HarnessError, match=rf"{re.escape(str(path))} holds Python objects .*refused"):
        load_plan(path)
    assert not marker.exists()


# ----------------------------------------------------------------------------------------------
# The protocol's index files (numpy scalars inside a torch zip).


@pytest.mark.parametrize(
    "folder, count, first, low, high",
    [("BoolQ", 500, [7, 11, 12, 21, 35], 7, 3262), ("ReCoRD", 250, None, None, None),
     ("SQuAD2.0", 500, None, None, None), ("drop", 375, None, None, None)],
)
def test_safe_torch_load_reads_protocol_index_files(shared_dir, folder, count, first, low, high):
    values = safe_torch_load(shared_dir / "eep" / "data" / folder / "random_index.pth")
    ints = [int(v) for v in values]
    assert len(ints) == count and ints == sorted(set(ints)) and all(int(v) == v for v in values)
    if first is not None:
        assert ints[:5] == first and (min(ints), max(ints)) == (low, high)
