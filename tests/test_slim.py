"""Expert slimming (harness/slimming, tools/slim.py) on tiny random MoE models built here.

Wanda's masks are checked against a direct computation from the router's own top-k choices;
SparseGPT against magnitude pruning on the layer reconstruction error; N:M counts per group; the
parts that are not targets bit for bit; the written folder through infer.py; bad input.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from harness.errors import HarnessError
from harness.models.hf_causal_lm import right_pad
from harness.slimming.masks import nm_mask, parse_pattern, row_mask, unstructured, zero_fraction
from harness.slimming.slim import slim
from harness.slimming.sparsegpt import sparsegpt_prune
from harness.slimming.wanda import wanda_mask
from tests.test_apply import ARCH_OVERRIDES
from tests.tiny import build_tiny_model, build_tiny_tokenizer, tiny_config

REPO = Path(__file__).resolve().parents[1]


def tiny(arch="mixtral", seed=0):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(tiny_config(arch, **ARCH_OVERRIDES[arch]), dtype=torch.float32).eval()


def samples(seed=1, count=6):
    g = torch.Generator().manual_seed(seed)
    lengths = [int(n) for n in torch.randint(8, 24, (count,), generator=g)]  # unequal: padding is excluded
    return [[int(t) for t in torch.randint(4, 300, (n,), generator=g)] for n in lengths]


# ------------------------------------------------------------------ masks and bad settings
def test_nm_masks_keep_exactly_n_of_every_m():
    score = torch.rand(7, 48, generator=torch.Generator().manual_seed(0))
    for n, m in ((2, 4), (4, 8), (1, 4), (3, 4)):
        kept = (~nm_mask(score, n, m)).reshape(7, 48 // m, m).sum(-1)
        assert torch.equal(kept, torch.full_like(kept, n))
        # the kept ones are the group's largest scores
        groups = score.reshape(7, 48 // m, m)
        kept_min = groups.masked_fill(nm_mask(score, n, m).reshape(groups.shape), float("inf")).min(-1).values
        pruned_max = groups.masked_fill(~nm_mask(score, n, m).reshape(groups.shape), -float("inf")).max(-1).values
        assert bool((kept_min > pruned_max).all())


def test_row_mask_prunes_the_lowest_per_row():
    score = torch.tensor([[4.0, 1.0, 3.0, 2.0], [0.5, 0.7, 0.1, 0.9]])
    assert row_mask(score, 0.5).tolist() == [[False, True, False, True], [True, False, True, False]]
    assert row_mask(score, 0.3).sum(1).tolist() == [1, 1]  # int(4 * 0.3) per row


@pytest.mark.parametrize("ratio", [0.0, 1.0, -0.2, 1.5])
def test_sparsity_outside_open_interval_is_refused(ratio):
    with pytest.raises(HarnessError, match="strictly between 0 and 1"):
        unstructured(ratio)


@pytest.mark.parametrize("text,message", [("4:2", "exceeds M"), ("2:4:8", "not N:M"), ("a:4", "not N:M"),
                                          ("0:4", "positive"), ("4:4", "keeps every weight")])
def test_bad_patterns_are_refused(text, message):
    with pytest.raises(HarnessError, match=message):
        parse_pattern(text)


def test_pattern_that_does_not_divide_is_refused_before_weights_change():
    model = tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(HarnessError, match="not a multiple of 5"):
        slim(model, samples(), "wanda", parse_pattern("3:5"))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# ------------------------------------------------------------------ Wanda against a direct computation
def direct_wanda(model, data, sparsity, batch_size=8, sequential=True):
    """Wanda done by hand: per MoE layer in order, the tokens the router sends to each expert (its
    top-k indices, padding left out), their ||x_j|| and ||act(x Wg^T) * (x Wu^T)||_j, |W| * norm per
    row; the layer pruned before the next one is measured (the reference's sequential order)."""
    ref = copy.deepcopy(model)
    pad = 0
    order = sorted(range(len(data)), key=lambda i: -len(data[i]))
    pending = []
    for index, layer in enumerate(ref.model.layers):
        block = layer.mlp
        sums: dict = {}
        seen = {}

        def hook(module, args, output):
            seen["x"], seen["idx"] = args[0], output[2]

        handle = block.gate.register_forward_hook(hook)
        for start in range(0, len(order), batch_size):
            ids, mask = right_pad([data[i] for i in order[start: start + batch_size]], pad, "cpu")
            with torch.no_grad():
                ref(input_ids=ids, attention_mask=mask, use_cache=False)
            valid = mask.reshape(-1).bool()
            x, idx = seen["x"][valid].double(), seen["idx"][valid]
            for e in range(block.experts.gate_up_proj.shape[0]):
                xe = x[(idx == e).any(-1)]
                wg, wu = block.experts.gate_up_proj[e].double().chunk(2, dim=0)
                inner = torch.nn.functional.silu(xe @ wg.T) * (xe @ wu.T)
                for name, rows in (("gate_up_proj", xe), ("down_proj", inner)):
                    sums[(name, e)] = sums.get((name, e), 0) + (rows ** 2).sum(0)
        handle.remove()
        pending += [(getattr(block.experts, name).data[e], sq) for (name, e), sq in sums.items()]
        if sequential or index == len(ref.model.layers) - 1:  # one pass: every layer measured unpruned
            with torch.no_grad():
                for w, sq in pending:
                    score = w.abs().double() * sq.sqrt()
                    k = int(w.shape[1] * sparsity)
                    w.scatter_(1, score.argsort(dim=1)[:, :k], 0.0)
            pending = []
    return ref


@pytest.mark.parametrize("sequential", [True, False])
def test_wanda_mask_equals_direct_computation_over_routed_tokens(sequential):
    model = tiny()
    data = samples()
    ref = direct_wanda(model, data, 0.5, sequential=sequential)
    slim(model, data, "wanda", unstructured(0.5), pad_token_id=0, sequential=sequential)
    for a, b in zip(model.model.layers, ref.model.layers):
        for name in ("gate_up_proj", "down_proj"):
            got, want = getattr(a.mlp.experts, name), getattr(b.mlp.experts, name)
            assert torch.equal(got == 0, want == 0), name
            assert torch.equal(got, want)


def test_wanda_uses_activation_norms_not_magnitude():
    """Wanda's choice differs from magnitude's once one input column carries large activations."""
    w = torch.randn(6, 8, generator=torch.Generator().manual_seed(0))
    sq = torch.ones(8)
    sq[3] = 1e6
    mask = wanda_mask(w, sq, unstructured(0.5))
    assert not bool(mask[:, 3].any())  # the loud column is always kept
    assert torch.equal(wanda_mask(w, torch.zeros(8), unstructured(0.5)), row_mask(w.abs(), 0.5))  # no tokens: magnitude


def test_rarely_routed_experts_see_few_tokens():
    from harness.slimming.stats import gather
    from harness.slimming.targets import layer_targets

    model = tiny()
    data = samples()
    counts = torch.zeros(8, dtype=torch.long)
    keep = {}

    def count(module, args, out):
        counts.add_(torch.bincount(out[2][keep["valid"]].reshape(-1), minlength=8))

    handle = model.model.layers[0].mlp.gate.register_forward_hook(count)
    ids, mask = right_pad(data, 0, "cpu")
    keep["valid"] = mask.reshape(-1).bool()
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask, use_cache=False)
    handle.remove()
    stats = gather(model, data, layer_targets(model, 0, ("routed",)), False, 0, 0, batch_size=len(data))
    got = [stats.tokens[f"layers.0.mlp.experts.gate_up_proj.{e}"] for e in range(8)]
    assert got == counts.tolist() and sum(got) == 2 * int(mask.sum())


def test_shared_expert_statistics_cover_every_real_token():
    """A shared expert sees every non-padding token: ||X_j||^2 equals the sum over the MoE block's input."""
    from harness.slimming.stats import gather
    from harness.slimming.targets import layer_targets

    model = tiny("qwen2_moe")
    data = samples()
    seen = {}
    handle = model.model.layers[0].mlp.register_forward_pre_hook(lambda m, a: seen.__setitem__("x", a[0]))
    ids, mask = right_pad(data, 0, "cpu")
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask, use_cache=False)
    handle.remove()
    x = seen["x"].reshape(-1, seen["x"].shape[-1])[mask.reshape(-1).bool()].double()
    stats = gather(model, data, layer_targets(model, 0, ("shared",)), True, 0, 0, batch_size=len(data))
    name = "layers.0.mlp.shared_expert.gate_proj"
    assert stats.tokens[name] == int(mask.sum())
    assert torch.allclose(stats.column_sq[name], (x ** 2).sum(0), rtol=1e-6)
    assert torch.allclose(stats.gram[name], x.T @ x, rtol=1e-6, atol=1e-8)
    assert "layers.0.mlp.shared_expert_gate" not in stats.tokens  # a router: never a target


# ------------------------------------------------------------------ SparseGPT
def correlated_inputs(tokens=512, width=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(16, width, generator=g)
    return torch.randn(tokens, 16, generator=g) @ basis + 0.1 * torch.randn(tokens, width, generator=g)


@pytest.mark.parametrize("setting", ["0.5", "2:4", "0.7"])
def test_sparsegpt_reconstructs_better_than_magnitude(setting):
    sparsity = parse_pattern(setting) if ":" in setting else unstructured(float(setting))
    x = correlated_inputs()
    w = torch.randn(32, 64, generator=torch.Generator().manual_seed(1))
    pruned = sparsegpt_prune(w, (x.T @ x).double(), sparsity, blocksize=16)
    if sparsity.is_nm:
        magnitude = w.masked_fill(nm_mask(w.abs(), sparsity.n, sparsity.m), 0)
    else:  # the same number of weights as SparseGPT pruned, the smallest ones
        count = int((pruned == 0).sum())
        magnitude = w.flatten().clone()
        magnitude[w.abs().flatten().argsort()[:count]] = 0
        magnitude = magnitude.reshape(w.shape)
        assert count / w.numel() == pytest.approx(sparsity.ratio, abs=0.02)
    assert zero_fraction(pruned) == zero_fraction(magnitude)
    err = ((x @ (w - pruned).T) ** 2).sum()
    err_magnitude = ((x @ (w - magnitude).T) ** 2).sum()
    assert err < 0.8 * err_magnitude
    if sparsity.is_nm:
        kept = (pruned != 0).reshape(32, -1, sparsity.m).sum(-1)
        assert bool((kept == sparsity.n).all())


def test_sparsegpt_on_a_model_beats_magnitude_on_each_experts_routed_tokens():
    """Layer 0's experts: reconstruction error of gate_up_proj on the tokens routed to each expert."""
    from harness.slimming.stats import gather
    from harness.slimming.targets import layer_targets

    model = tiny()
    data = samples(count=8)
    targets = layer_targets(model, 0, ("routed",))
    stats = gather(model, data, targets, True, 0, 0)
    original = model.model.layers[0].mlp.experts.gate_up_proj.detach().clone()
    slim(model, data, "sparsegpt", unstructured(0.5), pad_token_id=0)
    new = model.model.layers[0].mlp.experts.gate_up_proj.detach()
    for e in range(8):
        gram = stats.gram[f"layers.0.mlp.experts.gate_up_proj.{e}"].float()
        if stats.tokens[f"layers.0.mlp.experts.gate_up_proj.{e}"] < 40:
            continue  # too few tokens for the Hessian to say much
        w = original[e]
        magnitude = w.masked_fill(row_mask(w.abs(), 0.5), 0)

        def error(d):
            return float(torch.trace(d @ gram @ d.T))

        assert error(w - new[e]) < error(w - magnitude)


def test_sparsegpt_nm_counts_on_the_model():
    model = tiny()
    slim(model, samples(), "sparsegpt", parse_pattern("2:4"), pad_token_id=0)
    for layer in model.model.layers:
        for name in ("gate_up_proj", "down_proj"):
            w = getattr(layer.mlp.experts, name).detach()
            kept = (w != 0).reshape(w.shape[0], w.shape[1], -1, 4).sum(-1)
            assert bool((kept == 2).all())


# ------------------------------------------------------------------ what stays untouched
@pytest.mark.parametrize("arch,kinds", [("mixtral", ("routed",)), ("qwen2_moe", ("routed", "shared", "attention")),
                                        ("deepseek_v2", ("routed", "shared"))])
def test_routers_and_frozen_parts_stay_bit_identical(arch, kinds):
    model = tiny(arch)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    slim(model, samples(), "wanda", unstructured(0.5), kinds, pad_token_id=0)
    changed = {k for k, v in model.state_dict().items() if not torch.equal(before[k], v)}

    def target(name):
        return (".experts." in name and "routed" in kinds
                or (".shared_expert." in name or ".shared_experts." in name) and "shared" in kinds
                or ".self_attn." in name and name.endswith("proj.weight") and "attention" in kinds)

    assert changed and all(target(k) for k in changed), sorted(changed - {k for k in changed if target(k)})
    assert not any(".gate.weight" in k or "shared_expert_gate" in k for k in changed)
    for k in changed:  # Wanda only zeroes: every weight it keeps is the original one
        kept = model.state_dict()[k] != 0
        assert torch.equal(model.state_dict()[k][kept], before[k][kept])


# ------------------------------------------------------------------ the command
@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("slim_tiny")
    build_tiny_tokenizer(path)
    build_tiny_model(path, "mixtral")
    corpus = path / "calib.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in
                              ["The quick brown fox jumps over the lazy dog."] * 4 + ["Question: is the sky blue?"] * 4))
    return path


EVAL = """
models = [dict(type='HFCausalLM', abbr='slimmed', path='unused', max_seq_len=64, batch_size=4)]
datasets = [dict(
    abbr='toy_ppl',
    reader_cfg=dict(type='jsonl', path='{data}', input_columns=['question'], output_column='label'),
    infer_cfg=dict(prompt_template=dict(template='Question: {{question}} Answer:'),
                   inferencer=dict(type='PPLInferencer', continuations={{'A': ' yes', 'B': ' no'}})),
    eval_cfg=dict(evaluator=dict(type='AccEvaluator')),
)]
"""


def slim_cli(*argv):
    import tools.slim

    return tools.slim.main([str(a) for a in argv])


def test_slimmed_checkpoint_loads_and_scores_through_infer(tmp_path, tiny_folder):
    from harness.models.hf_causal_lm import HFCausalLM
    from harness.slimming.record import efficiency_entry, read_record
    from harness.tasks import infer

    out = tmp_path / "slim"
    assert slim_cli("--model_path", tiny_folder, "--method", "sparsegpt", "--pattern", "2:4",
                    "--calib_data", tiny_folder / "calib.jsonl", "--calib_seq_len", 16, "--out", out) == 0
    record = read_record(out)
    assert record["method"] == "sparsegpt" and record["pattern"] == "2:4" and record["targets"] == ["routed"]
    assert record["calibration"]["tokens"] > 0 and "calib.jsonl" in record["calibration"]["source"]
    assert set(record["layers"]) == {"0", "1"}
    assert all(v["measured_sparsity"]["routed"] == 0.5 for v in record["layers"].values())
    assert all(len(v["routed_tokens_per_expert"]) == 8 for v in record["layers"].values())
    assert not list(tmp_path.glob(".slim.*"))  # the temporary folder is gone
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps({"question": q, "label": l}) + "\n"
                            for q, l in [("is the sky blue?", "A"), ("is the fox lazy?", "B"), ("1 2 3?", "A")]))
    cfg = tmp_path / "eval.py"
    cfg.write_text(EVAL.format(data=data))
    assert infer.main([str(cfg), "--model_path", str(out), "--work_dir", str(tmp_path / "w")]) == 0
    assert "accuracy" in json.loads((tmp_path / "w/results/slimmed/toy_ppl.json").read_text())
    lm = HFCausalLM(str(out))
    assert zero_fraction(lm.model.model.layers[0].mlp.experts.down_proj) == 0.5
    entry = efficiency_entry(lm.model, out)
    assert entry["measured_sparsity"] == 0.5 and entry["measured_sparsity_per_layer"]["1"]["routed"] == 0.5
    # the efficiency results show the measured sparsity of the slimmed checkpoint
    from harness.tasks import efficiency

    assert efficiency.main(["--model_path", str(out), "--work_dir", str(tmp_path / "eff"), "--context_lengths", "8",
                            "--batch_sizes", "1", "--decode_context", "4", "--decode_tokens", "2", "--repeats", "1",
                            "--warmup", "0"]) == 0
    result = json.loads(next((tmp_path / "eff/results").glob("*/efficiency.json")).read_text())
    assert result["slimming"]["pattern"] == "2:4" and result["slimming"]["measured_sparsity"] == 0.5
    assert result["slimming"]["nonzero_target_weights"] == result["slimming"]["target_weights"] // 2
    assert result["slimming"]["pattern_groups_kept"] == 1.0
    # a later step that refills one pruned weight (as GPTQ's updates do) shows in the share of groups kept
    down = lm.model.model.layers[0].mlp.experts.down_proj
    with torch.no_grad():
        row = down.data[0, 0, :4]
        row[row == 0] = 1.0  # group 0 of that row: 4 non-zeros now
    groups = sum(t.numel() // 4 for t in (e.gate_up_proj for e in experts_of(lm.model))) + \
        sum(t.numel() // 4 for t in (e.down_proj for e in experts_of(lm.model)))
    assert efficiency_entry(lm.model, out)["pattern_groups_kept"] == (groups - 1) / groups


def experts_of(model):
    return [layer.mlp.experts for layer in model.model.layers]


def test_trimming_then_slimming_writes_the_smaller_model(tmp_path, tiny_folder):
    from transformers import AutoModelForCausalLM

    from harness.compress import save_plan
    from harness.compress.plan import CompressionPlan, LayerPlan

    merge = torch.eye(8)[[0, 2, 5, 7]]  # one-hot rows: keep experts 0, 2, 5, 7
    plan = CompressionPlan(2, 8, {l: LayerPlan(merge=merge) for l in range(2)})
    plan_path = tmp_path / "plan.safetensors"
    save_plan(plan, plan_path)
    out = tmp_path / "trim_slim"
    assert slim_cli("--model_path", tiny_folder, "--coeff_path", plan_path, "--method", "wanda", "--sparsity", 0.5,
                    "--calib_data", tiny_folder / "calib.jsonl", "--calib_seq_len", 16, "--out", out) == 0
    model = AutoModelForCausalLM.from_pretrained(out)
    original = AutoModelForCausalLM.from_pretrained(tiny_folder)
    experts = model.model.layers[0].mlp.experts.gate_up_proj
    assert experts.shape[0] == 4 and zero_fraction(experts) == 0.5
    kept = experts != 0
    assert torch.equal(experts[kept], original.model.layers[0].mlp.experts.gate_up_proj[[0, 2, 5, 7]][kept])
    assert torch.equal(model.model.layers[1].mlp.gate.weight, original.model.layers[1].mlp.gate.weight[[0, 2, 5, 7]])
    assert json.loads((out / "slimming.json").read_text())["checkpoint_kind"] == "plain"


@pytest.mark.parametrize("args,message", [
    (["--sparsity", "1.0"], "strictly between 0 and 1"),
    (["--sparsity", "0"], "strictly between 0 and 1"),
    (["--pattern", "4:2"], "exceeds M"),
    (["--pattern", "3:5"], "not a multiple of 5"),
    (["--pattern", "2:4", "--method", "magnitude"], "not one of wanda, sparsegpt"),
    (["--pattern", "2:4", "--targets", "router"], "unknown"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, tiny_folder, capsys, args, message):
    argv = ["--model_path", tiny_folder, "--calib_data", tiny_folder / "calib.jsonl", "--out", tmp_path / "o"]
    if "--method" not in args:
        argv += ["--method", "wanda"]
    assert slim_cli(*argv, *args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_merging_plan_then_slimming_writes_the_compressed_layout(tmp_path, tiny_folder):
    """A plan that is not plain pruning (merged experts, mapped router) is materialised in the compressed
    layout; the slimmed merged experts load back through HFCausalLM with their zeros."""
    from harness.compress import save_plan
    from harness.compress.materialize import is_compressed_checkpoint
    from harness.compress.plan import CompressionPlan, LayerPlan
    from harness.models.hf_causal_lm import HFCausalLM

    g = torch.Generator().manual_seed(0)
    plan = CompressionPlan(2, 8, {l: LayerPlan(merge=torch.rand(3, 8, generator=g), router=torch.rand(3, 8, generator=g))
                                  for l in range(2)})
    save_plan(plan, tmp_path / "plan.safetensors")
    out = tmp_path / "merged_slim"
    assert slim_cli("--model_path", tiny_folder, "--coeff_path", tmp_path / "plan.safetensors", "--method", "sparsegpt",
                    "--sparsity", 0.5, "--calib_data", tiny_folder / "calib.jsonl", "--calib_seq_len", 16, "--out", out) == 0
    record = json.loads((out / "slimming.json").read_text())
    assert is_compressed_checkpoint(out) and record["checkpoint_kind"] == "compressed"
    assert all(len(v["routed_tokens_per_expert"]) == 3 for v in record["layers"].values())
    experts = HFCausalLM(str(out)).model.model.layers[1].mlp.experts
    assert experts.down_proj.shape[0] == 3 and zero_fraction(experts.down_proj) == 0.5
