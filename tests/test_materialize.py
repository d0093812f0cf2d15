"""materialize / load_compressed / tools/materialize.py: smaller checkpoints that reload exactly."""
from __future__ import annotations

import copy
import os

import pytest
import torch
from safetensors import safe_open

from harness.compress import apply_plan, load_compressed, materialize
from harness.compress.adapters import ADAPTERS
from harness.compress.materialize import STATE_FILE, is_compressed_checkpoint, parameter_stats
from harness.compress.plan import CompressionPlan, LayerPlan
from harness.errors import HarnessError
from tests.test_apply import ARCHS, IDS, build_model, logits_of, moe_layers, one_hot, random_mixing


def plan_for(model, layers, **kwargs):
    return CompressionPlan(num_layers=model.config.num_hidden_layers, num_experts=8, layers=layers, **kwargs)


def checkpoint_keys(folder) -> set[str]:
    keys = set()
    for file in folder.glob("*.safetensors"):
        with safe_open(str(file), "pt") as f:
            keys.update(f.keys())
    return keys


@pytest.mark.parametrize("arch", ARCHS)
def test_pure_pruning_becomes_an_ordinary_smaller_checkpoint(arch, tmp_path):
    from transformers import AutoModelForCausalLM

    original = build_model(arch)
    kept = [0, 1, 4, 5]
    plan = plan_for(original, {i: LayerPlan(merge=one_hot(kept), top_k=1) for i in moe_layers(original)})
    expected = logits_of(apply_plan(copy.deepcopy(original), plan), IDS)

    result = materialize(copy.deepcopy(original), plan, tmp_path / "out")
    assert result.kind == "plain" and not is_compressed_checkpoint(result.path)
    reloaded = AutoModelForCausalLM.from_pretrained(result.path, dtype=torch.float32).eval()
    assert torch.allclose(logits_of(reloaded, IDS), expected, atol=1e-6)
    adapter = ADAPTERS[arch]
    assert getattr(reloaded.config, adapter.expert_count_key) == 4
    assert reloaded.config.num_experts_per_tok == 1
    assert result.after.count == parameter_stats(reloaded).count < result.before.count

    layer = moe_layers(original)[-1]
    keys = checkpoint_keys(result.path)
    proj = adapter.checkpoint_projections[0]
    assert adapter.checkpoint_expert_key.format(layer=layer, expert=3, proj=proj) in keys
    assert adapter.checkpoint_expert_key.format(layer=layer, expert=4, proj=proj) not in keys


def test_deepseek_v3_unbalanced_groups_turn_group_selection_off_in_the_config(tmp_path):
    from transformers import AutoModelForCausalLM

    original = build_model("deepseek_v3")  # n_group 2: experts 0-3 | 4-7
    plan = plan_for(original, {i: LayerPlan(merge=one_hot([0, 1, 2, 4])) for i in moe_layers(original)})
    expected = logits_of(apply_plan(copy.deepcopy(original), plan), IDS)
    result = materialize(copy.deepcopy(original), plan, tmp_path / "out")
    reloaded = AutoModelForCausalLM.from_pretrained(result.path, dtype=torch.float32).eval()
    assert (reloaded.config.n_group, reloaded.config.topk_group) == (1, 1)
    assert torch.allclose(logits_of(reloaded, IDS), expected, atol=1e-6)


@pytest.mark.parametrize("arch", ["mixtral", "qwen2_moe", "deepseek_v3"])
def test_other_plans_write_a_compressed_folder_that_load_compressed_reads_back(arch, tmp_path):
    g = torch.Generator().manual_seed(7)
    original = build_model(arch)
    first, *rest = moe_layers(original)
    layers = {first: LayerPlan(merge=random_mixing(3, 8, g), router=random_mixing(3, 8, g), skip_threshold=0.3)}
    layers[rest[0]] = LayerPlan(mode="condensed", merge=one_hot([1, 6]), condensed_weights=torch.tensor([0.7, 0.4]))
    plan = plan_for(original, layers, skip_blocks=[original.config.num_hidden_layers - 1])
    in_place = apply_plan(copy.deepcopy(original), plan)

    result = materialize(copy.deepcopy(original), plan, tmp_path / "out")
    assert result.kind == "compressed" and is_compressed_checkpoint(result.path)
    loaded = load_compressed(result.path)
    assert torch.equal(logits_of(loaded, IDS), logits_of(in_place, IDS))
    assert parameter_stats(loaded) == parameter_stats(in_place) == result.after
    assert result.after.count < result.before.count
    assert (result.path / STATE_FILE).stat().st_size < result.before.bytes


def test_load_compressed_also_reads_plain_folders(tmp_path):
    original = build_model("olmoe")
    plan = plan_for(original, {i: LayerPlan(merge=one_hot([2, 3, 7])) for i in moe_layers(original)})
    result = materialize(copy.deepcopy(original), plan, tmp_path / "out")
    expected = logits_of(apply_plan(copy.deepcopy(original), plan), IDS)
    assert torch.allclose(logits_of(load_compressed(result.path), IDS), expected, atol=1e-6)


def test_materialize_refuses_a_non_empty_out_folder(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("x")
    model = build_model("mixtral")
    with pytest.raises(HarnessError, match="not empty"):
        materialize(model, plan_for(model, {}), tmp_path / "out")
    assert getattr(model, "compression_plan", None) is None


# ----------------------------------------------------------------------------------------------
# the CLI


def test_cli_writes_the_eep_pure_pruning_file_as_a_plain_checkpoint(shared_dir, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    from harness.compress import load_plan
    from tools.materialize import main

    original = build_model(
        "mixtral", seed=5, num_hidden_layers=32, hidden_size=16, intermediate_size=32,
        num_attention_heads=1, num_key_value_heads=1,
    )
    original.save_pretrained(tmp_path / "model")
    coeff = shared_dir / "eep" / "searched_coeff" / "arc-e_budget_6.pth"  # one-hot rows, router == merge
    assert main(["--model_path", str(tmp_path / "model"), "--coeff_path", str(coeff), "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "plain" in printed and "parameters:" in printed and "bytes:" in printed
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o777 & ~umask  # an ordinary folder, not mkdtemp's 0700
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32).eval()
    assert reloaded.config.num_local_experts == 6
    expected = logits_of(apply_plan(copy.deepcopy(original), load_plan(coeff)), IDS)
    assert torch.allclose(logits_of(reloaded, IDS), expected, atol=1e-6)


def test_cli_errors_are_one_line_with_exit_status_2(tiny_mixtral_path, shared_dir, tmp_path, capsys):
    from tools.materialize import main

    status = main(["--model_path", str(tiny_mixtral_path), "--coeff_path", str(tmp_path / "none.pth"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert status == 2 and err.startswith("error: --coeff_path") and err.count("\n") == 1
    coeff = shared_dir / "eep" / "searched_coeff" / "cb_budget_4.pth"  # a 32-layer plan for a 2-layer model
    status = main(["--model_path", str(tiny_mixtral_path), "--coeff_path", str(coeff), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert status == 2 and err.startswith("error: ") and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_load_compressed_with_a_device_map_gives_the_same_model(tmp_path):
    original = build_model("mixtral")
    layers = {i: LayerPlan(merge=one_hot([0, 5]), top_k=1) for i in moe_layers(original)}
    layers[moe_layers(original)[0]] = LayerPlan(merge=one_hot([1, 2, 6]))  # uneven: a compressed folder
    plan = plan_for(original, layers)
    result = materialize(copy.deepcopy(original), plan, tmp_path / "out")
    assert result.kind == "compressed"
    expected = logits_of(load_compressed(result.path), IDS)
    # "auto" without a GPU keeps the CPU; an explicit per-module map goes through accelerate's dispatch
    assert torch.equal(logits_of(load_compressed(result.path, device_map="auto"), IDS), expected)
    per_module = {"model.embed_tokens": "cpu", "model.layers": "cpu", "model.norm": "cpu",
                  "model.rotary_emb": "cpu", "lm_head": "cpu"}
    dispatched = load_compressed(result.path, device_map=per_module)
    assert hasattr(dispatched, "hf_device_map") and torch.equal(logits_of(dispatched, IDS), expected)


def test_model_wrapper_loads_a_compressed_folder_with_device_map_auto(tmp_path, tiny_mixtral_path):
    from harness.models.hf_causal_lm import HFCausalLM, ScoreRequest

    original = build_model("mixtral")
    plan = plan_for(original, {moe_layers(original)[0]: LayerPlan(merge=one_hot([1, 2, 6]))})
    result = materialize(copy.deepcopy(original), plan, tmp_path / "out")
    for file in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (tiny_mixtral_path / file).is_file():
            (result.path / file).write_bytes((tiny_mixtral_path / file).read_bytes())
    lm = HFCausalLM(str(result.path), device_map="auto", max_seq_len=64)
    [[score]] = lm.score([[ScoreRequest(IDS[0].tolist(), 1)]])
    logprobs = torch.log_softmax(logits_of(load_compressed(result.path), IDS)[0, :-1].float(), -1)
    expected = logprobs.gather(-1, IDS[0, 1:, None]).sum().item()
    assert abs(score.logprob - expected) < 1e-4
