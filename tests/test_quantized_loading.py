"""harness/models/quantized.py: a per-expert compressed-tensors checkpoint (llmcompressor's MoE layout:
one packed int4 linear per expert and projection) loads into transformers' fused experts holding
exactly the quantised values, scores through infer.py, and its efficiency results report the packed
bytes on disk beside the float bytes in memory.

The checkpoint is written here without llmcompressor (which cannot be installed beside transformers
5.24): each expert weight is quantised by a direct formula (symmetric int4 per group of 16 inputs,
scale = max|w| / 7), packed by compressed-tensors' own compressor and saved under the names and
config llmcompressor writes. The expected weights are the formula's, not compressed-tensors' unpacking.
"""
from __future__ import annotations

import json

import pytest
import torch
import transformers

pytest.importorskip("compressed_tensors")

from tests.tiny import build_tiny_model, build_tiny_tokenizer  # noqa: E402

GROUP = 16
PROJECTIONS = {"w1": "gate_proj", "w2": "down_proj", "w3": "up_proj"}  # transformers' Mixtral names -> linearised


def int4_groups(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale per row and group of GROUP inputs, the dequantised weight), symmetric int4 by formula."""
    rows, cols = weight.shape
    groups = weight.reshape(rows, cols // GROUP, GROUP)
    scale = groups.abs().amax(dim=-1) / 7
    q = torch.clamp(torch.round(groups / scale[..., None]), -8, 7)
    return scale, (q * scale[..., None]).reshape(rows, cols)


def quantisation_config() -> dict:
    from compressed_tensors.quantization import QuantizationArgs, QuantizationConfig, QuantizationScheme

    weights = QuantizationArgs(num_bits=4, type="int", symmetric=True, strategy="group", group_size=GROUP)
    config = QuantizationConfig(config_groups={"group_0": QuantizationScheme(targets=["Linear"], weights=weights)},
                                format="pack-quantized", quantization_status="compressed",
                                ignore=["lm_head", "re:.*mlp\\.gate$"])
    return config.model_dump(mode="json")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """(float folder, per-expert int4 folder, {per-expert float key: expected dequantised weight})."""
    from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
    from compressed_tensors.quantization import QuantizationConfig
    from safetensors.torch import load_file, save_file

    base, quant = tmp_path_factory.mktemp("float"), tmp_path_factory.mktemp("int4")
    build_tiny_tokenizer(base)
    build_tiny_model(base, "mixtral")
    state = load_file(base / "model.safetensors")
    qdict = quantisation_config()
    scheme = QuantizationConfig.model_validate(qdict).config_groups["group_0"]
    out, expected = {}, {}
    for key, tensor in state.items():
        parts = key.split(".")
        if ".experts." not in key or parts[-2] not in PROJECTIONS:
            out[key] = tensor
            continue
        scale, expected[key] = int4_groups(tensor)
        module = ".".join(parts[:-2] + [PROJECTIONS[parts[-2]]])
        packed = PackedQuantizationCompressor.compress({"weight": tensor, "weight_scale": scale}, scheme)
        out.update({f"{module}.{name}": value.contiguous() for name, value in packed.items()})
    save_file(out, quant / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((base / "config.json").read_text())
    (quant / "config.json").write_text(json.dumps({**config, "quantization_config": qdict}))
    for f in base.iterdir():
        if f.name not in ("config.json", "model.safetensors"):
            (quant / f.name).write_bytes(f.read_bytes())
    return base, quant, expected


def test_stock_transformers_would_leave_the_experts_random(folders):
    """Why the loader exists: transformers itself loads this folder with the fused experts missing."""
    from transformers import AutoModelForCausalLM

    from harness.models.quantized import is_per_expert_quantised

    base, quant, _ = folders
    assert is_per_expert_quantised(quant) and not is_per_expert_quantised(base)
    _, info = AutoModelForCausalLM.from_pretrained(quant, output_loading_info=True)
    assert any(k.endswith("experts.gate_up_proj") for k in info["missing_keys"]), info["missing_keys"]


def test_per_expert_int4_folder_loads_fused_with_exactly_the_quantised_values(folders):
    from harness.models.hf_causal_lm import HFCausalLM

    base, quant, expected = folders
    ref = HFCausalLM(path=str(base), max_seq_len=64).model
    lm = HFCausalLM(path=str(quant), max_seq_len=64)
    for i, (layer, ref_layer) in enumerate(zip(lm.model.model.layers, ref.model.layers)):
        experts = layer.mlp.experts
        for e in range(experts.gate_up_proj.shape[0]):
            prefix = f"model.layers.{i}.block_sparse_moe.experts.{e}"
            gate_up = torch.cat([expected[f"{prefix}.w1.weight"], expected[f"{prefix}.w3.weight"]])
            torch.testing.assert_close(experts.gate_up_proj[e], gate_up, rtol=0, atol=1e-6)
            torch.testing.assert_close(experts.down_proj[e], expected[f"{prefix}.w2.weight"], rtol=0, atol=1e-6)
        assert torch.equal(layer.mlp.gate.weight, ref_layer.mlp.gate.weight)  # router kept in float
        assert torch.equal(layer.self_attn.q_proj.weight, ref_layer.self_attn.q_proj.weight)
        levels = max(torch.unique(g).numel() for g in experts.down_proj.detach().reshape(-1, GROUP))
        assert levels <= 16
    assert not torch.equal(lm.model.model.layers[0].mlp.experts.down_proj, ref.model.layers[0].mlp.experts.down_proj)


def assert_scores_through_infer(tmp_path, folder) -> None:
    """``infer.py --model_path folder`` on a two-item yes/no likelihood task writes its results."""
    from harness.tasks import infer

    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps({"question": q, "label": "A"}) + "\n" for q in ("is it?", "was it?")))
    cfg = tmp_path / "eval.py"
    cfg.write_text(f"""
models = [dict(type='HFCausalLM', abbr='quantised', path='unused', max_seq_len=64, batch_size=2)]
datasets = [dict(abbr='qa', reader_cfg=dict(type='jsonl', path='{data}', input_columns=['question'], output_column='label'),
    infer_cfg=dict(prompt_template=dict(template='Q: {{question}} A:'),
                   inferencer=dict(type='PPLInferencer', continuations={{'A': ' yes', 'B': ' no'}})),
    eval_cfg=dict(evaluator=dict(type='AccEvaluator')))]
""")
    assert infer.main([str(cfg), "--model_path", str(folder), "--work_dir", str(tmp_path / "w")]) == 0
    assert (tmp_path / "w/results/quantised/qa.json").is_file()


@pytest.mark.skipif(tuple(int(x) for x in transformers.__version__.split(".")[:2]) < (5, 23),
                    reason="infer.py needs the project's transformers (>=5.23); llmcompressor's environment has 5.17")
def test_quantised_folder_scores_through_infer_and_reports_packed_bytes(tmp_path, folders):
    from harness.tasks import efficiency

    base, quant, _ = folders
    assert_scores_through_infer(tmp_path, quant)
    assert efficiency.main(["--model_path", str(quant), "--work_dir", str(tmp_path / "e"), "--context_lengths", "16",
                            "--batch_sizes", "1", "--decode_context", "8", "--decode_tokens", "2", "--repeats", "1"]) == 0
    result = json.loads(next((tmp_path / "e/results").glob("*/efficiency.json")).read_text())
    entry = result["quantisation"]
    assert entry["bits"] == 4 and entry["group_size"] == GROUP and entry["format"] == "pack-quantized"
    assert entry["checkpoint_bytes"] == (quant / "model.safetensors").stat().st_size
    assert entry["checkpoint_bytes"] < 0.5 * (base / "model.safetensors").stat().st_size  # experts are most bytes
    assert result["model_bytes"] > entry["checkpoint_bytes"]  # held dequantised in float


def test_several_quantisation_groups_are_a_one_line_error(tmp_path, folders):
    from harness.errors import HarnessError
    from harness.models.quantized import dequantised_state

    _, quant, _ = folders
    folder = tmp_path / "two"
    folder.mkdir()
    config = json.loads((quant / "config.json").read_text())
    groups = config["quantization_config"]["config_groups"]
    groups["group_1"] = dict(groups["group_0"], targets=["re:.*down_proj"])
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "model.safetensors").write_bytes((quant / "model.safetensors").read_bytes())
    with pytest.raises(HarnessError, match="2 quantisation groups is not supported"):
        dequantised_state(folder)
