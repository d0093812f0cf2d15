"""harness/tasks/condense.py end to end: on the committed toy MoE the plan holds the searched layers,
the first K of each saved expert order and their saved weights; the memory in efficiency.json equals
a count from the config; a rerun searches nothing again; a real subprocess killed with SIGKILL
part-way resumes without re-searching finished layers to the plan of an uninterrupted run (tiny
Qwen2-MoE, 64 experts, beam 2, calibrated on the first C4 documents of ../shared); bad input is one line
before anything is written.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.compress import load_plan
from harness.tasks import condense
from tests.tiny import build_tiny_model, build_tiny_tokenizer, require_shared

REPO = Path(__file__).resolve().parents[1]
TOY = REPO / "models" / "toy-moe"
EVAL = "dataset_cfgs/toy-moe_sort_ppl.py"
C4 = Path(condense.DEFAULT_CALIB)


@pytest.fixture(autouse=True)
def at_repo_root(monkeypatch):
    monkeypatch.chdir(REPO)  # the configs' ./data and ./models paths are relative to the repository root


def read(path: Path) -> dict:
    return json.loads(path.read_text())


def toy_args(work: Path, n: int = 2, k: int = 2) -> list[str]:
    return [EVAL, "--max_num", "4", "--condense_layers", str(n), "--condense_experts", str(k), "--calib_cfg",
            "dataset_cfgs/toy-moe_sort_train.py", "--calib_samples", "8", "--calib_seq_len", "32",
            "--calib_batch_size", "4", "--work_dir", str(work)]


def test_toy_plan_matches_the_saved_search_and_memory_matches_the_config(tmp_path, capsys):
    work = tmp_path / "cd"
    assert condense.main(toy_args(work)) == 0
    folder = work / "cd_moe"
    orders, weights = read(folder / "expert_orders.json")["layers"], read(folder / "expert_weights.json")["layers"]
    layers = read(folder / "layer_order.e2.beam1.json")
    plan = load_plan(str(work / "plan.safetensors"))
    assert sorted(orders) == ["0", "1", "2", "3"] and all(len(o["experts"]) == 2 for o in orders.values())
    assert layers["order"] == plan.metadata["layer_order"] and len(layers["order"]) == 2
    assert sorted(plan.layers) == sorted(layers["order"])
    for index, lp in plan.layers.items():
        kept = orders[str(index)]["experts"]
        assert lp.mode == "condensed" and lp.merge.argmax(1).tolist() == kept
        assert lp.condensed_weights.tolist() == pytest.approx([weights[str(index)]["weights"][e] for e in kept])
    # the greedy layer search: step 1 evaluated all 4 layers, step 2 the 3 others; the order is each step's minimum
    evaluated = {tuple(e["layers"]): e["divergence"] for e in layers["evaluated"]}
    assert len(layers["evaluated"]) == 4 + 3 == len(evaluated)
    first = min(range(4), key=lambda i: (evaluated[(i,)], i))
    second = min((i for i in range(4) if i != first), key=lambda i: (evaluated[(first, i)], i))
    assert layers["order"] == [first, second]
    assert any("left-pads" in d for d in plan.metadata["deviations"])

    # memory: each condensed layer loses its router (E x H) and E - K experts (3 x H x I each) and gains
    # its K fixed weights (a buffer), float32
    config = read(TOY / "config.json")
    H, I, E = config["hidden_size"], config["intermediate_size"], config["num_local_experts"]
    eff = read(work / "results" / "toy-moe" / "efficiency.json")
    full = eff["details"]["reference"]["model_bytes"]
    assert full - eff["model_bytes"] == 2 * 4 * ((E - 2) * 3 * H * I + E * H - 2)
    assert eff["condensed_expert_bytes"] == 2 * 2 * 3 * H * I * 4
    assert eff["memory_ratio"] == pytest.approx(eff["model_bytes"] / full)
    summary = read(folder / "summary.json")
    assert summary["efficiency"]["memory_ratio"] == eff["memory_ratio"] and summary["layer_order"] == layers["order"]
    assert (work / "results" / "toy-moe" / "toy_sort_ppl.json").is_file()

    # a rerun evaluates nothing again and writes the same plan
    capsys.readouterr()
    assert condense.main(toy_args(work)) == 0
    assert "layer 0: experts" not in capsys.readouterr().err
    assert read(folder / "layer_order.e2.beam1.json")["evaluated"] == layers["evaluated"]
    assert load_plan(str(work / "plan.safetensors")).fingerprint() == plan.fingerprint()


def test_k0_keeps_shared_experts_only(tmp_path):
    """K=0 on the toy (Mixtral, no shared experts): a condensed layer holds no expert at all."""
    work = tmp_path / "k0"
    assert condense.main(toy_args(work, n=1, k=0) + ["--skip_efficiency"]) == 0
    plan = load_plan(str(work / "plan.safetensors"))
    (index, lp), = plan.layers.items()
    assert lp.mode == "condensed" and lp.condensed_weights.tolist() == [0.0]
    assert read(work / "cd_moe" / "summary.json")["experts"] == {str(index): []}
    assert not (work / "results" / "toy-moe" / "efficiency.json").exists()


# ------------------------------------------------------------------------------ kill -9 and resume


@pytest.fixture(scope="module")
def tiny_qwen(tmp_path_factory):
    """A tiny Qwen2-MoE with 64 experts (top-4, gated shared expert, one dense layer) and a tokenizer,
    its embeddings and experts scaled up so that condensing a layer moves the hidden-state softmax
    well above the divergence's eps (a plain random init leaves divergences at rounding level)."""
    import torch

    path = tmp_path_factory.mktemp("qwen64")
    model = build_tiny_model(path, "qwen2_moe", num_hidden_layers=4, num_experts=64, num_experts_per_tok=4,
                             moe_intermediate_size=8, shared_expert_intermediate_size=16, mlp_only_layers=[1],
                             hidden_size=32)
    with torch.no_grad():
        model.model.embed_tokens.weight.mul_(10)
        for layer in model.model.layers:
            if hasattr(layer.mlp, "experts"):
                layer.mlp.experts.down_proj.mul_(30)
                layer.mlp.gate.weight.normal_(0.0, 0.6)
    model.save_pretrained(path)
    build_tiny_tokenizer(path)
    return path


def qwen_args(model: Path, work: Path) -> list[str]:
    return [EVAL, "--model_path", str(model), "--max_num", "2", "--condense_layers", "3", "--condense_experts", "4",
            "--beam", "2", "--calib_data", str(C4), "--calib_samples", "16", "--calib_seq_len", "32",
            "--skip_efficiency", "--work_dir", str(work)]


def log_sizes(work: Path) -> dict[Path, int]:
    return {path: path.stat().st_size for path in (work / "logs").glob("*.log")}


def new_log_text(work: Path, before: dict[Path, int]) -> str:
    """What the run folder's log files gained since ``before`` (a rerun within the same second appends)."""
    text = ""
    for path in sorted((work / "logs").glob("*.log")):
        with open(path, encoding="utf-8") as handle:
            handle.seek(before.get(path, 0))
            text += handle.read()
    return text


def logged_steps(text: str) -> list[tuple[int, int]]:
    """(layer, experts so far) of every expert-search step a run logged."""
    return [(int(m[1]), len(m[2].split(","))) for m in re.finditer(r"layer (\d+): experts \[([^\]]*)\]", text)]


def test_a_sigkilled_run_resumes_without_searching_finished_layers_to_the_same_plan(tiny_qwen, tmp_path):
    require_shared(C4)
    reference = tmp_path / "whole"
    assert condense.main(qwen_args(tiny_qwen, reference)) == 0

    work = tmp_path / "killed"
    orders_file = work / "cd_moe" / "expert_orders.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "harness/tasks/condense.py", *qwen_args(tiny_qwen, work)]
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    saved = {}
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            try:
                saved = read(orders_file)["layers"]
            except (OSError, ValueError):  # not written yet (an atomic write never leaves half a file)
                saved = {}
            if any(len(entry["experts"]) == 4 for entry in saved.values()):  # the first layer is finished
                break
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    at_kill = read(orders_file)["layers"]  # what the killed run left
    finished = [int(i) for i, entry in at_kill.items() if len(entry["experts"]) == 4]
    assert finished and len(finished) < 3 and not (work / "plan.safetensors").exists()

    before = log_sizes(work)
    rerun = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    steps = logged_steps(new_log_text(work, before))
    assert steps, "the rerun logged no expert-search step"
    assert not [s for s in steps if s[0] in finished], "a finished layer was searched again"
    assert all(n > len(at_kill.get(str(layer), {}).get("experts", [])) for layer, n in steps)  # saved steps not redone

    for name in ("expert_orders.json", "layer_order.e4.beam2.json"):
        assert read(work / "cd_moe" / name) == read(reference / "cd_moe" / name), name
    whole, resumed = load_plan(str(reference / "plan.safetensors")), load_plan(str(work / "plan.safetensors"))
    assert resumed.fingerprint() == whole.fingerprint()
    assert resumed.metadata["layer_order"] == whole.metadata["layer_order"]
    assert 1 not in resumed.layers  # the dense layer is never condensed


# ------------------------------------------------------------------------------ bad input


def bad_cases(tmp_path: Path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"text": ""}\n{"other": 1}\n')
    return [
        (["--condense_experts", "9"], "--condense_experts 9 is more than the model's 8 experts per layer"),
        (["--condense_experts", "-1"], "--condense_experts"),
        (["--condense_layers", "5"], "--condense_layers 5 is more than the model's 4 MoE layers"),
        (["--condense_layers", "0"], "--condense_layers"),
        (["--calib_seq_len", "65"], "--calib_seq_len 65 exceeds the model's max_seq_len 64"),
        (["--calib_cfg", "--calib_data", str(empty)], f"--calib_data {empty}: no text to calibrate on"),
        (["--calib_cfg", "--calib_data", str(tmp_path / "missing.jsonl")], "missing.jsonl"),
    ]


def run_bad(argv: list[str], capsys) -> str:
    try:
        status = condense.main(argv)
    except SystemExit as exc:  # argparse's own refusals (a negative count) exit 2 with a usage line
        status = exc.code
    assert status == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


def with_overrides(base: list[str], extra: list[str]) -> list[str]:
    """``base`` with the flags of ``extra`` replaced (a bare flag in extra drops that flag and its value)."""
    argv, i = list(base), 0
    while i < len(extra):
        flag = extra[i]
        value = extra[i + 1] if i + 1 < len(extra) and not extra[i + 1].startswith("--") else None
        if flag in argv:
            at = argv.index(flag)
            del argv[at:at + 2]
        if value is not None:
            argv += [flag, value]
        i += 2 if value is not None else 1
    return argv


def test_bad_input_is_one_line_before_anything_is_written(tmp_path, capsys):
    for extra, message in bad_cases(tmp_path):
        work = tmp_path / "bad"
        line = run_bad(with_overrides(toy_args(work), extra), capsys)
        assert message in line, (extra, line)
        assert not (work / "cd_moe").exists() and not (work / "plan.safetensors").exists(), extra


def test_models_without_moe_layers_are_refused(tmp_path, capsys):
    dense_qwen = tmp_path / "dense_qwen"
    build_tiny_model(dense_qwen, "qwen2_moe", num_experts=4, num_experts_per_tok=2, moe_intermediate_size=8,
                     shared_expert_intermediate_size=8, mlp_only_layers=[0, 1])
    build_tiny_tokenizer(dense_qwen)
    llama = tmp_path / "llama"
    build_tiny_model(llama, "llama")
    build_tiny_tokenizer(llama)
    for model, message in ((dense_qwen, "has no MoE layers; CD-MoE needs routed experts"),
                           (llama, "unsupported architecture 'llama'")):
        work = tmp_path / f"w_{model.name}"
        line = run_bad(toy_args(work) + ["--model_path", str(model)], capsys)
        assert message in line, line
        assert not (work / "cd_moe").exists()
