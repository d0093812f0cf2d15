"""Plan files as identities: content fingerprints, byte-stable saving, bounded reading."""
from __future__ import annotations

import copy
import json
import re
import struct
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from harness.compress import apply_plan, reset_plan, snapshot_experts
from harness.compress.formats import MAX_JSON_DEPTH, MAX_MASK_BYTES, load_plan, save_plan
from harness.compress.plan import MAX_LAYERS, CompressionPlan, LayerPlan
from harness.errors import HarnessError
from tests.test_apply import build_model, one_hot
from tests.test_plan_formats import mixed_plan

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import describe_plan as describe_tool  # noqa: E402


def reordered(plan: CompressionPlan, negative_zeros: bool = False) -> CompressionPlan:
    """The same plan with its dicts built in reverse order and float64, non-contiguous tensors
    (and, if asked, -0.0 for every 0.0)."""
    layers = {}
    for index in reversed(sorted(plan.layers)):
        lp = copy.deepcopy(plan.layers[index])
        for name in ("merge", "router"):
            value = getattr(lp, name)
            if value is not None:
                twin = value.double()
                if negative_zeros:
                    twin = twin.where(value != 0, torch.tensor(-0.0, dtype=torch.float64))
                setattr(lp, name, twin.t().contiguous().t())
        layers[index] = lp
    metadata = dict(reversed(list(plan.metadata.items())))
    return CompressionPlan(plan.num_layers, plan.num_experts, layers=layers, skip_blocks=list(reversed(plan.skip_blocks)),
                           hidden_size=plan.hidden_size, metadata=metadata)


# ----------------------------------------------------------------------------------------------
# fingerprint()


def test_fingerprint_is_16_hex_and_pinned():
    plan = CompressionPlan.from_kept({0: [1, 2]}, num_experts=4, num_layers=2)
    assert re.fullmatch(r"[0-9a-f]{16}", plan.fingerprint())
    # Pinned: changing how fingerprints are computed changes every cached prediction's identity.
    assert plan.fingerprint() == "f80b51d10b90e7a4"


def test_fingerprint_ignores_metadata_order_dtype_and_layout():
    plan = mixed_plan()
    twin = reordered(plan, negative_zeros=True)
    assert twin.layers[0].merge.dtype == torch.float64 and not twin.layers[0].merge.is_contiguous()
    assert list(twin.layers) == [3, 2, 1, 0] and str(twin.layers[1].merge[0, 0].item()) == "-0.0"
    assert twin.fingerprint() == plan.fingerprint()
    twin.metadata = {"source": "elsewhere.pth", "method": "other"}
    assert twin.fingerprint() == plan.fingerprint()


def test_no_op_layer_entries_count_as_absent():
    base = CompressionPlan.from_kept({0: [1, 2]}, num_experts=4, num_layers=3)
    padded = copy.deepcopy(base)
    padded.layers[1] = LayerPlan()
    padded.layers[2] = LayerPlan(merge=torch.eye(4))
    assert padded.fingerprint() == base.fingerprint()


def changed_plans():
    """Each differs from mixed_plan() in one thing that changes a model's outputs."""
    def edit(fn):
        plan = mixed_plan()
        fn(plan)
        return plan

    def nudge(plan):
        plan.layers[0].merge[0, 0] = torch.nextafter(plan.layers[0].merge[0, 0], torch.tensor(10.0))

    yield "one ulp of a merge weight", edit(nudge)
    yield "router", edit(lambda p: p.layers[0].router.mul_(2))
    yield "top_k", edit(lambda p: setattr(p.layers[1], "top_k", 2))
    yield "skip threshold", edit(lambda p: setattr(p.layers[1], "skip_threshold", 0.31))
    yield "condensed weights", edit(lambda p: p.layers[2].condensed_weights.mul_(0.5))
    yield "mode", edit(lambda p: p.layers.__setitem__(2, LayerPlan(merge=p.layers[2].merge, router=p.layers[2].merge.clone())))
    yield "skip blocks", edit(lambda p: setattr(p, "skip_blocks", [4]))
    yield "layer dropped", edit(lambda p: p.layers.__setitem__(4, LayerPlan(mode="dropped")))
    yield "layer index", edit(lambda p: p.layers.__setitem__(4, p.layers.pop(3)))
    yield "num_layers", edit(lambda p: setattr(p, "num_layers", 7))
    yield "hidden size", edit(lambda p: setattr(p, "hidden_size", 32))
    yield "router absent", edit(lambda p: setattr(p.layers[1], "router", torch.eye(8)[[1, 4, 6]]))


def test_different_plans_have_different_fingerprints():
    reference = mixed_plan().fingerprint()
    seen = {reference: "reference"}
    for what, plan in changed_plans():
        plan.validate()
        fingerprint = plan.fingerprint()
        assert fingerprint not in seen, f"{what} collides with {seen.get(fingerprint)}"
        seen[fingerprint] = what


def test_fingerprint_survives_every_file_format(tmp_path, shared_dir):
    plan = mixed_plan()
    assert load_plan(save_plan(plan, tmp_path / "mixed.safetensors")).fingerprint() == plan.fingerprint()
    eep = load_plan(shared_dir / "eep" / "searched_coeff" / "boolq_budget_4.pth")
    for name, fmt in (("e.safetensors", "harness"), ("e.pth", "eep")):
        assert load_plan(save_plan(eep, tmp_path / name, format=fmt)).fingerprint() == eep.fingerprint()
    mask = tmp_path / "mask.json"
    mask.write_text(json.dumps({"num_experts": 8, "kept": {"2": [7, 0, 3], "0": [1, 2, 4]}, "num_layers": 4}))
    from_mask = load_plan(mask)
    in_memory = CompressionPlan.from_kept({0: [1, 2, 4], 2: [0, 3, 7]}, num_experts=8, num_layers=4)
    assert from_mask.fingerprint() == in_memory.fingerprint()
    assert load_plan(save_plan(from_mask, tmp_path / "m.safetensors")).fingerprint() == in_memory.fingerprint()


def test_apply_installs_the_plan_and_reset_removes_it():
    model = build_model("mixtral")
    snap = snapshot_experts(model)
    assert getattr(model, "compression_plan", None) is None
    plan = CompressionPlan.from_kept({0: [0, 3, 5]}, num_experts=8, num_layers=2)
    apply_plan(model, plan)
    assert model.compression_plan is plan
    reset_plan(model, snap)
    assert model.compression_plan is None
    reset_plan(model, snap)  # nothing installed: nothing to undo
    assert model.compression_plan is None


# ----------------------------------------------------------------------------------------------
# Byte-stable files


@pytest.mark.parametrize("fmt, suffix", [("harness", ".safetensors"), ("eep", ".pth")])
def test_the_same_plan_saves_to_the_same_bytes(tmp_path, fmt, suffix):
    torch.manual_seed(0)
    plan = mixed_plan() if fmt == "harness" else CompressionPlan(  # what EEP files hold: merge and router everywhere
        num_layers=3, num_experts=8, metadata={"a": 1, "b": 2}, layers={
            0: LayerPlan(merge=torch.randn(3, 8), router=torch.randn(3, 8)),
            1: LayerPlan(merge=torch.eye(8), router=torch.eye(8)),
            2: LayerPlan(merge=one_hot([1, 4]), router=one_hot([1, 4]))})
    first = save_plan(plan, tmp_path / f"one{suffix}", format=fmt).read_bytes()
    again = save_plan(plan, tmp_path / f"two{suffix}", format=fmt).read_bytes()
    twin = save_plan(reordered(plan), tmp_path / f"twin{suffix}", format=fmt).read_bytes()
    assert first == again == twin
    back = load_plan(tmp_path / f"one{suffix}", num_layers=plan.num_layers)  # EEP files do not record the depth
    assert back.fingerprint() == plan.fingerprint()
    if fmt == "eep":  # EEP's own reader: torch.load, records under torch's fixed archive name
        raw = torch.load(tmp_path / f"one{suffix}", weights_only=True)
        assert torch.equal(raw["layers.0"], plan.layers[0].merge) and torch.equal(raw["transfer.2"], one_hot([1, 4]))
        assert {name.split("/")[0] for name in zipfile.ZipFile(tmp_path / f"one{suffix}").namelist()} == {"archive"}


def test_harness_file_is_a_standard_safetensors_file(tmp_path):
    from safetensors.torch import load_file

    plan = mixed_plan()
    path = save_plan(plan, tmp_path / "p.safetensors")
    tensors = load_file(str(path))
    assert torch.equal(tensors["layers.0.router"], plan.layers[0].router)
    assert torch.equal(tensors["layers.2.condensed_weights"], plan.layers[2].condensed_weights)
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    assert (8 + length) % 8 == 0
    header = json.loads(data[8:8 + length])
    assert list(header) == sorted(header)
    assert list(json.loads(header["__metadata__"]["harness_plan"])["metadata"]) == sorted(plan.metadata)


# ----------------------------------------------------------------------------------------------
# Bounded reading


def one_line_error(exc_info) -> str:
    message = str(exc_info.value)
    assert "\n" not in message
    return message


def test_deeply_nested_json_is_one_line_error(tmp_path, capsys):
    path = tmp_path / "deep.json"
    path.write_text("[" * 1_000_000 + "]" * 1_000_000)  # 2 MB; json.loads alone raises RecursionError
    with pytest.raises(HarnessError) as err:
        load_plan(path)
    assert str(path) in one_line_error(err) and "deep" in str(err.value)
    assert describe_tool.main(["--coeff_path", str(path)]) == 2
    printed = capsys.readouterr().err
    assert printed.startswith("error: ") and printed.count("\n") == 1
    shallow_enough = {"num_experts": 8, "kept": {"0": [1]}, "metadata": {"x": json.loads("[" * 20 + "]" * 20)}}
    path.write_text(json.dumps(shallow_enough))
    assert load_plan(path).kept_experts(0) == [1]
    path.write_text(json.dumps({**shallow_enough, "metadata": {"x": json.loads("[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH)}}))
    with pytest.raises(HarnessError, match="nests JSON more than"):
        load_plan(path)


def test_deep_json_in_a_harness_header_is_one_line_error(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "deep.safetensors"
    save_file({}, str(path), metadata={"harness_plan": "[" * 100_000 + "]" * 100_000})
    with pytest.raises(HarnessError) as err:
        load_plan(path)
    assert str(path) in one_line_error(err)


def test_files_larger_than_any_plan_are_refused_before_reading(tmp_path, monkeypatch):
    mask = tmp_path / "mask.json"
    mask.write_text(json.dumps({"num_experts": 8, "kept": {"0": [1, 2]}}))
    assert load_plan(mask).kept_experts(0) == [1, 2]
    with pytest.raises(HarnessError) as err:
        load_plan(mask, max_bytes=mask.stat().st_size - 1)
    assert str(mask) in one_line_error(err) and "more than any real mask plan" in str(err.value)
    big = tmp_path / "big.json"
    with open(big, "wb") as fh:  # valid JSON just over the default bound
        fh.write(b'{"num_experts": 8, "kept": {"0": [1]}}' + b" " * MAX_MASK_BYTES)
    monkeypatch.setattr(json, "loads", lambda *a, **k: pytest.fail("parsed a file over the size bound"))
    with pytest.raises(HarnessError, match=re.escape(str(big))):
        load_plan(big)
    pth = save_plan(CompressionPlan.from_kept({0: [1]}, num_experts=4), tmp_path / "p.pth", format="eep")
    with pytest.raises(HarnessError, match="more than any real eep plan"):
        load_plan(pth, max_bytes=100)


def test_more_layers_than_any_model_are_refused_before_building(tmp_path, monkeypatch):
    import harness.compress.plan as plan_module

    calls = []
    monkeypatch.setattr(plan_module, "one_hot_rows", lambda *a: calls.append(a) or pytest.fail("built a layer"))
    mask = tmp_path / "mask.json"
    mask.write_text(json.dumps({"num_experts": 8, "kept": {str(i): [1] for i in range(MAX_LAYERS + 10)}}))
    with pytest.raises(HarnessError) as err:
        load_plan(mask)
    assert str(mask) in one_line_error(err) and f"{MAX_LAYERS + 10:,} entries" in str(err.value)
    mask.write_text(json.dumps([[1]] * (MAX_LAYERS + 10)))
    with pytest.raises(HarnessError, match="more than any real model"):
        load_plan(mask, num_experts=8)
    mask.write_text(json.dumps({"num_experts": 8, "kept": {"0": [1]}, "num_layers": 10**9}))
    with pytest.raises(HarnessError, match=r"num_layers=1000000000 is more than any real model has"):
        load_plan(mask)
    assert calls == []
    monkeypatch.undo()
    eep = tmp_path / "wide.pth"
    torch.save({"layers.[0-4999]": torch.eye(4)[:2].contiguous()}, eep)
    with pytest.raises(HarnessError, match=r"names layer 4999, more than any real model has"):
        load_plan(eep)
    with pytest.raises(HarnessError, match="num_experts=5000 is more than"):
        CompressionPlan(num_layers=2, num_experts=5000).validate()
