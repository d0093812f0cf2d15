"""harness/tasks/efficiency.py on a tiny Mixtral, with and without a pruning plan: counts checked
against arithmetic on the tiny config written out here; ratios against the same run's full model;
bad lengths refused before anything is written. No timing is asserted."""
from __future__ import annotations

import json

import pytest

from harness.compress import save_plan
from harness.compress.plan import CompressionPlan
from harness.tasks import efficiency

H, I, V, LAYERS, E = 32, 48, 300, 2, 8  # tests/tiny.py's mixtral
PER_EXPERT = 3 * H * I  # gate_up_proj (2I x H) + down_proj (H x I)
ARGS = ["--context_lengths", "8,16", "--batch_sizes", "1,2", "--decode_context", "4", "--decode_tokens", "2",
        "--repeats", "1", "--warmup", "0"]


def read(work_dir):
    return json.loads((work_dir / "results" / "tiny_mixtral0" / "efficiency.json").read_text())


@pytest.fixture(scope="module")
def runs(tiny_mixtral_path, tmp_path_factory):
    root = tmp_path_factory.mktemp("efficiency")
    plan = root / "budget4.safetensors"
    save_plan(CompressionPlan.from_kept({0: [0, 1, 2, 3], 1: [1, 3, 5, 7]}, E, num_layers=LAYERS), plan)
    full, pruned = root / "full", root / "pruned"
    assert efficiency.main(["--model_path", str(tiny_mixtral_path), "--work_dir", str(full), *ARGS]) == 0
    assert efficiency.main(["--model_path", str(tiny_mixtral_path), "--coeff_path", str(plan),
                            "--work_dir", str(pruned), *ARGS]) == 0
    return read(full), read(pruned)


def test_full_model_counts_and_unit_ratios(runs):
    full, _ = runs
    attention = 2 * (H * H + 2 * H * 16 + H * H)  # q, k, v (2 kv heads of 8), o
    params = V * H * 2 + LAYERS * (attention // 2 + E * PER_EXPERT + E * H + 2 * H) + H  # embed, head, norms
    assert full["params"] == params
    assert full["active_params"] == params - LAYERS * (E - 2) * PER_EXPERT  # top-2 of 8 experts
    assert 4 * params < full["model_bytes"] <= 4 * params + 64  # fp32, plus the rotary inv_freq buffers
    assert full["expert_bytes"] == 4 * LAYERS * E * PER_EXPERT
    ffn = 2 * H * E + 2 * 6 * H * I  # router + two experts
    assert full["flops_per_token"] == LAYERS * (attention + 4 * 4 * 16 * 8 + ffn) + 2 * H * V  # context 16
    assert full["memory_ratio"] == full["speedup"] == full["flops_ratio"] == 1.0
    assert set(full["details"]["model"]["prefill_tokens_per_s"]) == {"8", "16"}


def test_a_pruning_plan_against_the_full_model_of_the_same_run(runs):
    full, pruned = runs
    removed = LAYERS * (4 * PER_EXPERT + 4 * H)  # 4 experts and their router rows per layer
    assert pruned["params"] == full["params"] - removed
    assert pruned["active_params"] == full["active_params"] - LAYERS * 4 * H  # still two experts a token
    assert full["model_bytes"] - pruned["model_bytes"] == 4 * removed
    assert pruned["memory_ratio"] == pytest.approx(pruned["model_bytes"] / full["model_bytes"])
    assert pruned["expert_memory_ratio"] == pytest.approx(0.5)
    assert pruned["flops_per_token"] == full["flops_per_token"] - LAYERS * 2 * H * 4  # smaller router only
    reference = pruned["details"]["reference"]
    assert reference["model_bytes"] == full["model_bytes"]
    assert pruned["speedup"] == pytest.approx(pruned["details"]["model"]["decode_tokens_per_s"]["1"]
                                              / reference["decode_tokens_per_s"]["1"])


@pytest.mark.parametrize("extra, message", [
    (["--context_lengths", "8,4096"], "--context_lengths [4096] exceed the model's maximum of 512 positions"),
    (["--decode_context", "510", "--decode_tokens", "8"], "exceed the model's maximum of 512 positions"),
])
def test_lengths_beyond_the_model_are_refused_before_writing(tiny_mixtral_path, tmp_path, capsys, extra, message):
    work_dir = tmp_path / "out"
    assert efficiency.main(["--model_path", str(tiny_mixtral_path), "--work_dir", str(work_dir), *ARGS, *extra]) == 2
    assert message in capsys.readouterr().err
    assert not work_dir.exists()


def test_a_missing_plan_file_is_refused(tiny_mixtral_path, tmp_path, capsys):
    assert efficiency.main(["--model_path", str(tiny_mixtral_path), "--coeff_path", str(tmp_path / "no.pth"),
                            "--work_dir", str(tmp_path / "out"), *ARGS]) == 2
    assert "--coeff_path" in capsys.readouterr().err and not (tmp_path / "out").exists()
