"""The one-shot methods against brute force written here, and compress.py's reuse and refusals."""
from __future__ import annotations

import itertools
import json
import math

import pytest
import torch

from harness.compress import apply_plan, load_plan, reset_plan, snapshot_experts
from harness.compress.plan import CompressionPlan
from harness.errors import HarnessError
from harness.methods.base import MethodInputs, ModelShape, build_plan
from harness.methods.calibration import calibrate
from harness.methods.naee import kept_sets
from harness.tasks import compress, prune_baseline
from tests.test_apply import ARCHS, build_model
from tests.test_search import REPO, toy_config

SAMPLES = [[5, 17, 42, 99, 120, 7, 230, 31, 64, 11, 250, 8], [9, 44, 180, 13, 77, 201, 150], [66, 21, 290, 14, 5, 91]]


@pytest.mark.parametrize("arch", ARCHS)
def test_naee_choice_equals_a_brute_force_loop_over_every_kept_set(arch):
    model = build_model(arch)
    stats = calibrate(model, SAMPLES, batch_size=2)
    plan = build_plan("naee", MethodInputs(ModelShape.of(model), 4, model=model, stats=stats))
    snapshot = snapshot_experts(model)
    for layer in stats.counts:
        x, z = stats.moe_inputs[layer], stats.moe_outputs[layer]
        losses = {}
        for kept in itertools.combinations(range(8), 4):  # the plain model, pruned, per kept set
            apply_plan(model, CompressionPlan.from_kept({layer: list(kept)}, 8, num_layers=len(model.model.layers)))
            with torch.no_grad():
                out = model.model.layers[layer].mlp(x.unsqueeze(0))[0]
            reset_plan(model, snapshot)
            losses[kept] = float((z.double() - out.double()).norm())
        assert plan.kept_experts(layer) == list(min(losses, key=losses.get))


def test_naee_progressive_and_dynamic_skip():
    model = build_model("mixtral", num_hidden_layers=3)
    stats = calibrate(model, SAMPLES, batch_size=3)
    shape = ModelShape.of(model)
    layerwise = build_plan("naee", MethodInputs(shape, 4, model=model, stats=stats))
    progressive = build_plan("naee", MethodInputs(shape, 4, model=model, stats=stats, samples=SAMPLES), mode="progressive")
    assert progressive.kept_experts(0) == layerwise.kept_experts(0)  # the first layer sees the same inputs
    skip = build_plan("naee", MethodInputs(shape, None, model=model, stats=stats), prune=False, dynamic_skip=True)
    for layer in range(3):
        ratios = []  # w(2)/w(1) of the sorted softmax, per token, from the router weight directly
        logits = stats.moe_inputs[layer].double() @ model.model.layers[layer].mlp.gate.weight.double().T
        top = logits.softmax(-1).topk(2, dim=-1).values
        ratios = (top[:, 1] / top[:, 0]).float()
        assert skip.layers[layer].skip_threshold == pytest.approx(float(ratios.median()), abs=1e-5)
        assert skip.layers[layer].merge is None


def test_naee_samples_kept_sets_above_the_cap():
    sets, sampled = kept_sets(64, 48, cap=50, seed=3)
    assert sampled and len(set(sets)) == 50 and all(len(s) == 48 and list(s) == sorted(s) for s in sets)
    assert kept_sets(64, 48, cap=50, seed=3)[0] == sets
    every, sampled = kept_sets(8, 4, cap=100, seed=0)
    assert not sampled and len(every) == math.comb(8, 4)


def test_reap_and_expert_drop_rank_the_direct_scores():
    model = build_model("qwen3_moe")
    stats = calibrate(model, SAMPLES, batch_size=3)
    shape = ModelShape.of(model)
    reap = build_plan("reap", MethodInputs(shape, 5, stats=stats))
    layerwise = build_plan("expert_drop", MethodInputs(shape, 5, model=model, stats=stats), mode="layerwise")
    glob = build_plan("expert_drop", MethodInputs(shape, 5, model=model, stats=stats), mode="global")
    pooled = []
    for layer in stats.counts:
        saliency = (stats.reap_sum[layer] / stats.counts[layer].clamp(min=1)).tolist()
        assert reap.kept_experts(layer) == sorted(sorted(range(8), key=lambda e: -saliency[e])[:5])
        score = (stats.score_sum[layer] / stats.num_tokens).tolist()
        assert layerwise.kept_experts(layer) == sorted(sorted(range(8), key=lambda e: -score[e])[:5])
        protected = sorted(range(8), key=lambda e: -score[e])[:2]
        pooled += [(score[e], layer, e) for e in range(8) if e not in protected]
    dropped = {(layer, e) for _, layer, e in sorted(pooled)[: 3 * len(stats.counts)]}
    for layer in stats.counts:
        assert glob.kept_experts(layer) == [e for e in range(8) if (layer, e) not in dropped]


def test_preserve_gate_keeps_the_e_way_router_and_zeroes_dropped_experts():
    model = build_model("mixtral")
    stats = calibrate(model, SAMPLES, batch_size=3)
    plan = build_plan("expert_drop", MethodInputs(ModelShape.of(model), 4, model=model, stats=stats),
                      mode="layerwise", preserve_gate=True)
    kept = {int(layer): ids for layer, ids in plan.metadata["kept"].items()}
    assert all(len(ids) == 4 for ids in kept.values())
    x = stats.moe_inputs[0]
    block = model.model.layers[0].mlp
    with torch.no_grad():
        probs = (x @ block.gate.weight.T).softmax(-1)
        top = probs.topk(2, dim=-1)
        weights = top.values / top.values.sum(-1, keepdim=True)  # renormalised over all E's top-2
        expected = torch.zeros_like(x)
        for t in range(x.shape[0]):
            for w, e in zip(weights[t], top.indices[t].tolist()):
                if e in kept[0]:
                    g, u = (x[t] @ block.experts.gate_up_proj[e].T).chunk(2)
                    expected[t] += w * ((torch.nn.functional.silu(g) * u) @ block.experts.down_proj[e].T)
        apply_plan(model, plan)
        got = model.model.layers[0].mlp(x.unsqueeze(0))[0]
    assert torch.allclose(got, expected, atol=1e-5)


# ------------------------------------------------------------------------------ the task


def run_compress(tmp_path, tiny_mixtral_path, name, *extra):
    work = tmp_path / name
    argv = [toy_config(tmp_path), "--model_path", str(tiny_mixtral_path), "--work_dir", str(work),
            "--data_root", str(REPO / "data"), "--max_num", "4", *extra]
    return compress.main(argv), work


def test_a_second_method_on_the_same_data_reuses_the_statistics(tmp_path, tiny_mixtral_path, monkeypatch):
    from transformers import MixtralForCausalLM

    calls = []
    original = MixtralForCausalLM.forward
    monkeypatch.setattr(MixtralForCausalLM, "forward", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    shared = tmp_path / "calib"
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": f"copy: {i} {i + 1} {i + 2} = {i} {i + 1}"}) + "\n" for i in range(40)))
    common = ["--calib_data", str(corpus), "--calib_samples", "4", "--calib_seq_len", "16", "--calib_dir", str(shared)]
    rc, first = run_compress(tmp_path, tiny_mixtral_path, "reap", "--method", "reap", "--budget", "4", *common)
    assert rc == 0
    after_first = len(calls)
    rc, _ = run_compress(tmp_path, tiny_mixtral_path, "freq_eval_only", "--method", "keep_first", "--budget", "4")
    eval_calls = len(calls) - after_first  # what evaluating alone costs
    rc, second = run_compress(tmp_path, tiny_mixtral_path, "naee", "--method", "naee", "--budget", "4", *common)
    assert rc == 0
    assert len(calls) - after_first - eval_calls == eval_calls  # no calibration forward the second time
    assert len(list(shared.glob("*.safetensors"))) == 1
    one, two = load_plan(first / "plan.safetensors"), load_plan(second / "plan.safetensors")
    assert one.metadata["calibration_fingerprint"] == two.metadata["calibration_fingerprint"]
    assert two.metadata["method"] == "naee" and "4 x 16 tokens" in two.metadata["calibration"]


def test_prune_baseline_is_an_alias_of_compress():
    assert prune_baseline.translate(["C", "--method", "first", "--calib_num", "8"]) == \
        ["C", "--method", "keep_first", "--calib_samples", "8"]


@pytest.mark.parametrize("extra, message", [
    (["--method", "nope", "--budget", "4"], "unknown compression method type 'nope'"),
    (["--method", "reap", "--budget", "1"], "--budget 1 must be at least the model's top-k (2)"),
    (["--method", "reap", "--budget", "8"], "below its 8 experts"),
    (["--method", "layer_drop", "--drop_n", "2"], "--drop_n 2 must be between 1 and 1"),
    (["--method", "block_drop"], "needs --drop_n"),
    (["--method", "reap", "--budget", "4", "--calib_data", "missing.jsonl"], "--calib_data missing.jsonl not found"),
])
def test_bad_input_is_one_line_before_anything_is_written(tmp_path, tiny_mixtral_path, capsys, extra, message):
    rc, work = run_compress(tmp_path, tiny_mixtral_path, "bad", *extra)
    assert rc == 2 and message in capsys.readouterr().err and not work.exists()


@pytest.mark.parametrize("content, message", [("", "is empty"), ('{"txt": "a"}\n', "has no 'text' string field")])
def test_bad_corpus_files_are_named(tmp_path, tiny_mixtral_path, capsys, content, message):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text(content)
    rc, work = run_compress(tmp_path, tiny_mixtral_path, "bad", "--method", "reap", "--budget", "4",
                            "--calib_data", str(corpus))
    assert rc == 2 and message in capsys.readouterr().err and not work.exists()


def test_too_few_corpus_tokens_says_how_many_were_used(tmp_path):
    from harness.methods.calibration_data import corpus_samples

    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"text": "abcdefghij"}\n')
    data = corpus_samples(str(corpus), lambda text: [ord(c) for c in text], 4, 4, seed=0)
    assert [len(s) for s in data.samples] == [4, 4, 2] and "holds 10 tokens" in data.note
    with pytest.raises(HarnessError, match="no tokens"):
        corpus_samples(str(corpus), lambda text: [], 4, 4)


@pytest.mark.slow  # 3 compress.py runs, ~45 s; faster: test_a_second_method_on_the_same_data_reuses_the_statistics, tests/test_io_safety.py (atomic writes)
def test_a_calibration_killed_with_sigkill_reruns_to_the_same_plan(tmp_path, tiny_mixtral_path):
    import os
    import signal
    import subprocess
    import sys

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": f"sort: {i % 7} {i % 5} {i % 3} = tokens {i}"}) + "\n" for i in range(400)))

    def argv(work):
        return [toy_config(tmp_path), "--model_path", str(tiny_mixtral_path), "--work_dir", str(work), "--data_root",
                str(REPO / "data"), "--max_num", "2", "--method", "naee", "--budget", "4", "--calib_data", str(corpus),
                "--calib_samples", "200", "--calib_seq_len", "64", "--batch_size", "1"]

    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(REPO / "harness/tasks/compress.py"), *argv(killed)], cwd=REPO,
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    for line in proc.stderr:  # kill as soon as the pass starts
        if "calibrating on" in line:
            os.kill(proc.pid, signal.SIGKILL)
            break
    proc.wait()
    from harness.methods.calibration_store import load_stats

    for saved in (killed / "calibration").glob("*.safetensors"):  # a file under its final name is complete
        assert load_stats(saved).num_tokens > 0
    assert compress.main(argv(killed)) == 0
    assert compress.main(argv(tmp_path / "fresh")) == 0
    again, fresh = load_plan(killed / "plan.safetensors"), load_plan(tmp_path / "fresh/plan.safetensors")
    assert again.fingerprint() == fresh.fingerprint()
