"""tools/quantize.py: arguments, group size and the missing backend are one-line errors before anything
loads; with llmcompressor installed (its own environment, docs/SLIMMING.md), AWQ without a GPU is a
one-line error, and a GPTQ-quantised tiny MoE loads every weight (its per-expert layout unpacked into
fused experts by harness/models/quantized.py) and scores through infer.py."""
from __future__ import annotations

import importlib.util
import json

import pytest
import torch
import transformers

from tests.tiny import build_tiny_model, build_tiny_tokenizer

HAVE_LLMCOMPRESSOR = importlib.util.find_spec("llmcompressor") is not None


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("quant_tiny")
    build_tiny_tokenizer(path)
    build_tiny_model(path, "mixtral")
    (path / "calib.jsonl").write_text("".join(json.dumps({"text": "The quick brown fox jumps."}) + "\n" for _ in range(8)))
    return path


def quantize(*argv):
    import tools.quantize

    return tools.quantize.main([str(a) for a in argv])


@pytest.mark.parametrize("args,message", [
    (["--scheme", "int3"], "not one of gptq, awq"),
    (["--scheme", "awq", "--bits", "8"], "--bits 8 is not supported with --scheme awq"),
    (["--scheme", "gptq", "--bits", "3"], "--bits 3 is not supported with --scheme gptq"),
    (["--scheme", "gptq", "--group_size", "64"], "--group_size 64 does not divide hidden_size=32, intermediate_size=48"),
])
def test_unsupported_schemes_are_one_line_errors(tmp_path, folder, capsys, args, message):
    argv = ["--model_path", folder, "--calib_data", folder / "calib.jsonl", "--out", tmp_path / "q", *args]
    assert quantize(*argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "q").exists()


@pytest.mark.skipif(HAVE_LLMCOMPRESSOR, reason="llmcompressor is installed: the missing-backend error cannot show")
def test_missing_backend_names_what_to_install(tmp_path, folder, capsys):
    argv = ["--model_path", folder, "--scheme", "gptq", "--calib_data", folder / "calib.jsonl", "--group_size", 16,
            "--out", tmp_path / "q"]
    assert quantize(*argv) == 2
    err = capsys.readouterr().err.strip()
    assert "needs llmcompressor" in err and "pip install llmcompressor" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "q").exists()


@pytest.mark.skipif(not HAVE_LLMCOMPRESSOR, reason="llmcompressor is not installed here")
@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: AWQ can run")
def test_awq_without_gpu_is_a_one_line_error(tmp_path, folder, capsys):
    argv = ["--model_path", folder, "--scheme", "awq", "--calib_data", folder / "calib.jsonl", "--group_size", 16,
            "--out", tmp_path / "q"]
    assert quantize(*argv) == 2
    err = capsys.readouterr().err.strip()
    assert "--scheme awq needs a CUDA GPU" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "q").exists()


@pytest.mark.skipif(not HAVE_LLMCOMPRESSOR, reason="llmcompressor is not installed here (it pins transformers<=5.17); "
                    "run in the separate environment of docs/SLIMMING.md")
def test_quantised_tiny_model_loads_every_weight_and_scores_through_infer(tmp_path, folder):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "gptq"
    assert quantize("--model_path", folder, "--scheme", "gptq", "--calib_data", folder / "calib.jsonl",
                    "--calib_seq_len", 16, "--calib_samples", 8, "--group_size", 16, "--out", out) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "compressed-tensors"
    from harness.models.hf_causal_lm import HFCausalLM

    base = AutoModelForCausalLM.from_pretrained(folder)
    model = HFCausalLM(path=str(out), max_seq_len=64).model  # refuses missing weights
    for layer, ref in zip(model.model.layers, base.model.layers):
        w, w0 = layer.mlp.experts.down_proj, ref.mlp.experts.down_proj
        assert 0 < ((w - w0).norm() / w0.norm()).item() < 0.3  # the quantised experts, not random ones
    if tuple(int(x) for x in transformers.__version__.split(".")[:2]) < (5, 23):
        return  # infer.py needs the project's transformers (>=5.23); llmcompressor's env has 5.17 (docs/SLIMMING.md)
    from tests.test_quantized_loading import assert_scores_through_infer

    assert_scores_through_infer(tmp_path, out)


@pytest.mark.skipif(not HAVE_LLMCOMPRESSOR, reason="llmcompressor is not installed here (it pins transformers<=5.17); "
                    "run in the separate environment of docs/SLIMMING.md")
def test_dequantised_copy_loads_holds_4bit_groups_and_keeps_router_and_attention(tmp_path, folder):
    from transformers import AutoModelForCausalLM

    out, deq = tmp_path / "gptq", tmp_path / "deq"
    assert quantize("--model_path", folder, "--scheme", "gptq", "--calib_data", folder / "calib.jsonl",
                    "--calib_seq_len", 16, "--calib_samples", 8, "--group_size", 16, "--out", out,
                    "--dequantised_out", deq) == 0
    model, info = AutoModelForCausalLM.from_pretrained(deq, output_loading_info=True)
    assert not any(info.values()), info
    base = AutoModelForCausalLM.from_pretrained(folder)
    for layer, ref in zip(model.model.layers, base.model.layers):
        for name in ("gate_up_proj", "down_proj"):
            w, w0 = getattr(layer.mlp.experts, name), getattr(ref.mlp.experts, name)
            groups = w.detach().reshape(-1, 16)  # groups of 16 along each row's input dimension
            assert max(torch.unique(g).numel() for g in groups) <= 16  # 4 bits: at most 16 levels per group
            assert 0 < ((w - w0).norm() / w0.norm()).item() < 0.3  # quantised, yet close to the original
        assert torch.equal(layer.mlp.gate.weight, ref.mlp.gate.weight)  # router never quantised
        assert torch.equal(layer.self_attn.q_proj.weight, ref.self_attn.q_proj.weight)  # --targets experts
