"""Quantised MoE checkpoints in compressed-tensors format, loaded into transformers' fused experts.

llmcompressor quantises a MoE by linearising its fused 3D experts into one ``nn.Linear`` per expert
and projection, and saves exactly that: ``...experts.E.gate_proj.weight_packed`` / ``weight_scale`` /
``weight_shape`` (int4 values packed into int32). transformers' MoE classes hold fused experts
(``experts.gate_up_proj`` (E, 2I, H), ``experts.down_proj`` (E, H, I)), so loading such a folder
directly leaves every expert missing (random). vLLM reads the per-expert layout; transformers and
this harness do not, so here the packed weights are unpacked by compressed-tensors' own compressor
into float tensors under the per-expert names transformers fuses on load, and the model is loaded
from those. The values are exactly the quantised ones (at most 2^bits levels per group): accuracy is
W4A16's; memory at run time is the float model's, the file on disk is the packed one
(``checkpoint_bytes``, reported by the efficiency task beside ``model_bytes``).
"""
from __future__ import annotations

import json
import re
import shutil
import tempfile
from pathlib import Path

from harness.errors import HarnessError

PACKED_SUFFIX = ".weight_packed"
PER_EXPERT_PACKED = re.compile(r"\.experts\.\d+\.[A-Za-z0-9_]+\.weight_(packed|scale)$")
QUANTISATION_PARTS = ("weight_packed", "weight_scale", "weight_shape", "weight_zero_point", "weight_global_scale",
                      "weight_g_idx")
# transformers converts a family's per-expert checkpoint names into its fused experts; Mixtral's are w1/w2/w3
LEGACY_EXPERT_NAMES = {"mixtral": {"gate_proj": "w1", "down_proj": "w2", "up_proj": "w3"}}
INSTALL_HINT = "pip install compressed-tensors (requirements.txt)"


def _config(path: Path) -> dict:
    try:
        return json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return {}


def _weight_names(path: Path) -> list[str]:
    """Tensor names of a folder's safetensors files, read from their headers (no tensor loads)."""
    from safetensors import safe_open

    names = []
    for shard in sorted(path.glob("*.safetensors")):
        with safe_open(str(shard), "pt") as f:
            names.extend(f.keys())
    return names


def is_per_expert_quantised(path) -> bool:
    """A local compressed-tensors folder whose experts are stored as separate quantised linears."""
    path = Path(path)
    qconfig = _config(path).get("quantization_config") or {}
    if qconfig.get("quant_method") != "compressed-tensors":
        return False
    return any(PER_EXPERT_PACKED.search(name) for name in _weight_names(path))


def checkpoint_bytes(path) -> int | None:
    """Bytes of the weight files of a local model folder (what the checkpoint stores), None for a hub id."""
    path = Path(path)
    files = list(path.glob("*.safetensors")) + list(path.glob("*.bin")) if path.is_dir() else []
    return sum(f.stat().st_size for f in files) or None


def _scheme(qconfig):
    """The one quantisation scheme of the folder (tools/quantize.py writes one config group)."""
    groups = list(qconfig.config_groups.values())
    if len(groups) != 1:
        raise HarnessError(f"a compressed-tensors folder with {len(groups)} quantisation groups is not supported here "
                           "(one group: tools/quantize.py's output); load it with vLLM instead")
    return groups[0]


def dequantised_state(path) -> tuple[dict, dict]:
    """(float state dict under the names transformers loads, config without quantization_config)."""
    try:
        from compressed_tensors.compressors.base import BaseCompressor
        from compressed_tensors.quantization import QuantizationConfig
    except ImportError:
        raise HarnessError(f"--model_path {path} is a compressed-tensors checkpoint; loading it needs "
                           f"compressed-tensors: {INSTALL_HINT}") from None
    from safetensors.torch import load_file

    path = Path(path)
    config = _config(path)
    qconfig = QuantizationConfig.model_validate(config.pop("quantization_config"))
    scheme = _scheme(qconfig)
    try:
        compressor = BaseCompressor.get_value_from_registry(qconfig.format)
    except (KeyError, ValueError):
        raise HarnessError(f"--model_path {path}: compressed-tensors format {qconfig.format!r} is not one this "
                           f"compressed-tensors knows ({', '.join(BaseCompressor.registered_names())})") from None
    rename = LEGACY_EXPERT_NAMES.get(config.get("model_type"), {})
    state = {}
    for shard in sorted(path.glob("*.safetensors")):
        state.update(load_file(shard))
    out = {k: v for k, v in state.items() if k.rsplit(".", 1)[-1] not in QUANTISATION_PARTS}
    for key in [k for k in state if k.endswith(PACKED_SUFFIX)]:
        module = key[: -len(PACKED_SUFFIX)]
        local = {p: state[f"{module}.{p}"] for p in QUANTISATION_PARTS if f"{module}.{p}" in state}
        weight = compressor.decompress(local, scheme)["weight"]
        prefix, leaf = module.rsplit(".", 1)
        if PER_EXPERT_PACKED.search(key):
            leaf = rename.get(leaf, leaf)
        out[f"{prefix}.{leaf}.weight"] = weight.to(state[f"{module}.weight_scale"].dtype).contiguous()
    return out, config


def write_dequantised(compressed, folder) -> None:
    """The compressed folder unpacked into a plain float checkpoint in ``folder`` (tokenizer and records copied)."""
    from safetensors.torch import save_file

    compressed, folder = Path(compressed), Path(folder)
    state, config = dequantised_state(compressed)
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    for f in compressed.iterdir():
        if f.is_file() and f.suffix != ".safetensors" and f.name not in ("config.json", "recipe.yaml",
                                                                          "model.safetensors.index.json"):
            shutil.copy2(f, folder / f.name)
    (folder / "config.json").write_text(json.dumps(config, indent=2))


def load_per_expert_quantised(path, dtype=None, device_map=None, **kwargs):
    """The model of a per-expert quantised folder with its experts fused and dequantised (through a
    temporary float copy that transformers' own per-expert -> fused conversion reads); every weight
    must land, as for any checkpoint."""
    from transformers import AutoModelForCausalLM

    from harness.models.hf_causal_lm import check_all_weights_loaded

    with tempfile.TemporaryDirectory(prefix="dequantised-") as tmp:
        write_dequantised(path, tmp)
        model, info = AutoModelForCausalLM.from_pretrained(tmp, dtype=dtype, device_map=device_map,
                                                           output_loading_info=True, **kwargs)
        check_all_weights_loaded(path, info)
    return model  # tensors still mapped from the removed file stay readable (POSIX keeps its pages)


def quantisation_entry(path) -> dict | None:
    """What the efficiency results say of a quantised folder: its quantisation settings (the record
    tools/quantize.py writes, else config.json's quantization_config) and the bytes its files store."""
    path = Path(path)
    qconfig = _config(path).get("quantization_config") if path.is_dir() else None
    if not qconfig or qconfig.get("quant_method") != "compressed-tensors":
        return None
    entry = {"format": qconfig.get("format"), "checkpoint_bytes": checkpoint_bytes(path),
             "loaded_as": "dequantised float (per-expert layout)" if is_per_expert_quantised(path) else "transformers"}
    record = path / "quantization_record.json"
    if record.is_file():
        entry.update({k: v for k, v in json.loads(record.read_text()).items()
                      if k in ("scheme", "preset", "bits", "group_size", "targets", "calibration")})
    else:
        groups = list((qconfig.get("config_groups") or {}).values())
        weights = (groups[0].get("weights") or {}) if len(groups) == 1 and isinstance(groups[0], dict) else {}
        entry.update({"bits": weights.get("num_bits"), "group_size": weights.get("group_size")})
    return entry
