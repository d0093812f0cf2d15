"""tools/describe_plan.py without --model_path (issue 19): the layer count is the plan file's own,
"uniform budget" only when every expert layer keeps that many, a method only when the file says."""
import json
import re
import sys
from pathlib import Path

import pytest
import torch

from harness.compress import save_plan
from harness.compress.plan import CompressionPlan, LayerPlan

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
import describe_plan  # noqa: E402


def describe(capsys, *argv) -> str:
    assert describe_plan.main(list(argv)) == 0
    return capsys.readouterr().out


def table_layers(text: str) -> list[int]:
    return [int(m) for m in re.findall(r"^\|\s+(\d+) \|", text, flags=re.M)]


@pytest.mark.parametrize("task", ["sort", "count", "copy", "reverse"])
def test_committed_toy_plans_read_as_the_toy_models_four_layers_without_a_method_label(capsys, task):
    path = str(REPO / f"searched_coeff/toy-moe_{task}_budget_4.pth")
    layers = json.loads((REPO / "models/toy-moe/config.json").read_text())["num_hidden_layers"]
    text = describe(capsys, "--coeff_path", path)
    assert table_layers(text) == list(range(layers)) == [0, 1, 2, 3]
    assert f"{layers} decoder layers x 8 experts" in text and "uniform budget: 4" in text
    assert "the file names layers 0-3" in text
    assert "method" not in text.splitlines()[0]  # an EEP .pth records no method
    with_model = describe(capsys, "--coeff_path", path, "--model_path", str(REPO / "models/toy-moe"))
    assert table_layers(with_model) == table_layers(text)


def test_an_eep_file_with_others_is_read_as_32_layers_and_says_so(capsys, tmp_path):
    coeffs = {"layers.0": torch.eye(8)[:4], "transfer.0": torch.eye(8)[:4], "others": torch.eye(8)[2:6]}
    torch.save(coeffs, tmp_path / "p.pth")
    text = describe(capsys, "--coeff_path", str(tmp_path / "p.pth"))
    assert table_layers(text) == list(range(32)) and "read as EEP's 32-layer Mixtral" in text


def test_uniform_budget_is_not_claimed_when_unchanged_layers_keep_every_expert(capsys, tmp_path):
    mask = tmp_path / "m.json"
    mask.write_text(json.dumps({"num_experts": 8, "kept": {"0": [0, 1, 2, 3]}, "num_layers": 4}))
    text = describe(capsys, "--coeff_path", str(mask))
    assert "uniform budget" not in text
    assert "not uniform: 4 experts in the 1 layer the plan changes, all 8 in the 3 it leaves unchanged" in text
    assert text.count("| unchanged |") == 3
    every = tmp_path / "all.json"
    every.write_text(json.dumps({"num_experts": 8, "kept": {str(i): [0, 1, 2, 3] for i in range(4)}}))
    assert "uniform budget: 4" in describe(capsys, "--coeff_path", str(every))


def test_a_method_recorded_in_the_plan_is_shown(capsys, tmp_path):
    plan = CompressionPlan(num_layers=2, num_experts=4, metadata={"method": "eep_search"},
                           layers={i: LayerPlan(merge=torch.eye(4)[:2]) for i in range(2)})
    save_plan(plan, tmp_path / "p.safetensors")
    assert "(method: eep_search)" in describe(capsys, "--coeff_path", str(tmp_path / "p.safetensors")).splitlines()[0]
