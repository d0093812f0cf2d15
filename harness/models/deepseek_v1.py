"""DeepSeek-MoE (v1, ``model_type: deepseek``) as a stock transformers Qwen2-MoE checkpoint.

DeepSeek-MoE-16B ships remote modeling code (``trust_remote_code``) written for transformers 4.x;
transformers 5 has no ``deepseek`` class and the harness's adapter table has no row for it. The
network is a Qwen2-MoE in all but two details, which the conversion absorbs exactly:

- attention: Llama MHA without biases -> Qwen2-MoE attention with ``qkv_bias=False``;
- dense layers (``layer < first_k_dense_replace`` or ``layer % moe_layer_freq != 0``) -> ``mlp_only_layers``
  with ``intermediate_size`` = DeepSeek's dense width;
- routed experts and router: same keys, softmax -> top-k -> renormalise only if ``norm_topk_prob``;
- the shared experts (one MLP of width ``n_shared_experts * moe_intermediate_size``, no gate) -> Qwen2-MoE's
  ``shared_expert``, whose output is multiplied by ``sigmoid(shared_expert_gate(x))``: the gate weight is
  written as zeros (sigmoid(0) = 1/2 exactly) and the shared down projection doubled (exact, a power of 2).

Numerical difference (the only one): DeepSeek v1's ``MoEGate`` takes the softmax in the model's dtype,
transformers' ``Qwen2MoeTopKRouter`` in fp32 (then casts the top-k weights back). In fp32 the two agree
bit for bit up to reduction order; in bf16 the weights agree after rounding, and the top-k choice can
differ only between experts whose bf16-rounded scores tie.

The checkpoint keys are the ones of the remote code (``model.layers.L.mlp.experts.E.{gate,up,down}_proj``,
``mlp.gate.weight``, ``mlp.shared_experts.*``); transformers 5 fuses per-expert keys into
``gate_up_proj`` / ``down_proj`` itself when it loads a qwen2_moe checkpoint.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from harness.errors import HarnessError

# Files of the source folder that the converted one keeps (the tokenizer and generation settings).
_KEEP = re.compile(r"^(tokenizer.*|special_tokens_map\.json|generation_config\.json|.*\.model)$")
_SHARED = re.compile(r"^(model\.layers\.\d+\.mlp)\.shared_experts\.(gate_proj|up_proj|down_proj)\.weight$")


def read_config(folder: Path) -> dict:
    """The source's config.json, checked to be a DeepSeek v1 model the conversion covers."""
    path = folder / "config.json"
    if not path.is_file():
        raise HarnessError(f"{path} does not exist; pass the folder of a downloaded DeepSeek-MoE checkpoint as SRC")
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise HarnessError(f"{path} is not readable JSON ({exc}); download the checkpoint again") from None
    if config.get("model_type") != "deepseek":
        raise HarnessError(
            f"{path} has model_type {config.get('model_type')!r}, not 'deepseek' (DeepSeek-MoE v1); "
            "deepseek_v2/v3 and other families load in transformers directly, convert nothing"
        )
    problems = []
    if config.get("scoring_func", "softmax") != "softmax":
        problems.append(f"scoring_func {config.get('scoring_func')!r} (only 'softmax')")
    if config.get("attention_bias", False):
        problems.append("attention_bias true")
    if config.get("rope_scaling"):
        problems.append(f"rope_scaling {config.get('rope_scaling')!r} (only none)")
    if config.get("hidden_act", "silu") != "silu":
        problems.append(f"hidden_act {config.get('hidden_act')!r} (only 'silu')")
    for key in ("n_routed_experts", "num_experts_per_tok", "moe_intermediate_size", "hidden_size",
                "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size"):
        if not config.get(key):
            problems.append(f"no {key}")
    if problems:
        raise HarnessError(f"{path}: this converter does not cover {', '.join(problems)}")
    return config


def moe_layers(config: dict) -> list[int]:
    """DeepSeek v1's rule for the layers with experts (the others hold a dense MLP)."""
    first = int(config.get("first_k_dense_replace", 0) or 0)
    freq = int(config.get("moe_layer_freq", 1) or 1)
    return [i for i in range(int(config["num_hidden_layers"])) if i >= first and i % freq == 0]


def qwen2_moe_config(config: dict) -> dict:
    """The config.json of the Qwen2-MoE that computes the same function."""
    layers = int(config["num_hidden_layers"])
    sparse = set(moe_layers(config))
    n_shared = int(config.get("n_shared_experts") or 0)
    moe_width = int(config["moe_intermediate_size"])
    heads = int(config["num_attention_heads"])
    out = dict(
        architectures=["Qwen2MoeForCausalLM"],
        model_type="qwen2_moe",
        vocab_size=config["vocab_size"],
        hidden_size=config["hidden_size"],
        intermediate_size=config["intermediate_size"],
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=int(config.get("num_key_value_heads") or heads),
        hidden_act="silu",
        max_position_embeddings=config.get("max_position_embeddings", 4096),
        rms_norm_eps=config.get("rms_norm_eps", 1e-6),
        rope_parameters=dict(rope_type="default", rope_theta=float(config.get("rope_theta", 10000.0))),
        tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
        use_sliding_window=False,
        qkv_bias=False,
        decoder_sparse_step=1,
        mlp_only_layers=[i for i in range(layers) if i not in sparse],
        num_experts=config["n_routed_experts"],
        num_experts_per_tok=config["num_experts_per_tok"],
        moe_intermediate_size=moe_width,
        # Qwen2-MoE always builds a shared expert; with none in the source it stays zero (see convert_shard).
        shared_expert_intermediate_size=max(n_shared, 1) * moe_width,
        # DeepSeek renormalises only when top_k > 1 and norm_topk_prob; for top_k == 1 both are the same.
        norm_topk_prob=bool(config.get("norm_topk_prob", False)) and int(config["num_experts_per_tok"]) > 1,
        output_router_logits=False,
        bos_token_id=config.get("bos_token_id"),
        eos_token_id=config.get("eos_token_id"),
        pad_token_id=config.get("pad_token_id"),
        dtype=config.get("torch_dtype", config.get("dtype", "bfloat16")),
        converted_from=dict(model_type="deepseek", tool="tools/convert_deepseek_moe.py",
                            note="shared_expert_gate = 0 (sigmoid 1/2), shared_expert.down_proj doubled"),
    )
    return out


def convert_tensors(tensors: dict, config: dict) -> dict:
    """One shard's tensors under Qwen2-MoE's names (shared experts renamed, gate added, down doubled)."""
    import torch

    out = {}
    for name, tensor in tensors.items():
        match = _SHARED.match(name)
        if match:
            prefix, proj = match.groups()
            if proj == "down_proj":
                tensor = tensor * 2
                out[f"{prefix}.shared_expert_gate.weight"] = torch.zeros(1, tensor.shape[0], dtype=tensor.dtype)
            out[f"{prefix}.shared_expert.{proj}.weight"] = tensor
        elif ".rotary_emb." in name:
            continue  # inv_freq buffers of old checkpoints; transformers recomputes them
        else:
            out[name] = tensor
    return out


def _zero_shared_experts(config: dict, dtype) -> dict:
    """A source without shared experts: Qwen2-MoE's mandatory shared expert, all zeros."""
    import torch

    hidden, width = int(config["hidden_size"]), int(config["moe_intermediate_size"])
    out = {}
    for layer in moe_layers(config):
        prefix = f"model.layers.{layer}.mlp"
        out[f"{prefix}.shared_expert.gate_proj.weight"] = torch.zeros(width, hidden, dtype=dtype)
        out[f"{prefix}.shared_expert.up_proj.weight"] = torch.zeros(width, hidden, dtype=dtype)
        out[f"{prefix}.shared_expert.down_proj.weight"] = torch.zeros(hidden, width, dtype=dtype)
        out[f"{prefix}.shared_expert_gate.weight"] = torch.zeros(1, hidden, dtype=dtype)
    return out


def _shards(folder: Path) -> list[str]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError) as exc:
            raise HarnessError(f"{index} is not a safetensors index ({exc}); download the checkpoint again") from None
    else:
        names = sorted(p.name for p in folder.glob("*.safetensors"))
    if not names:
        raise HarnessError(
            f"{folder} has no *.safetensors weights; download the safetensors checkpoint "
            "(huggingface-cli download deepseek-ai/deepseek-moe-16b-base)"
        )
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise HarnessError(f"{folder} lacks the shards {missing}; finish the download first")
    return names


def _read_shard(path: Path) -> dict:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {name: f.get_tensor(name) for name in f.keys()}
    except Exception as exc:  # safetensors raises its own error type for a truncated or foreign file
        message = " ".join(str(exc).split())
        raise HarnessError(f"{path} is not a readable safetensors file ({message}); download it again") from None


def convert(src: str | os.PathLike, dst: str | os.PathLike, overwrite: bool = False) -> Path:
    """Convert the DeepSeek v1 checkpoint in ``src`` to a Qwen2-MoE one in ``dst``.

    One shard in memory at a time; written into a temporary folder beside ``dst`` and renamed, so
    ``dst`` is either absent or complete.
    """
    from safetensors.torch import save_file

    src, dst = Path(src), Path(dst)
    config = read_config(src)
    shards = _shards(src)
    if dst.exists() and not overwrite:
        raise HarnessError(f"{dst} already exists; pass another DST or --overwrite")
    if dst.resolve() == src.resolve():
        raise HarnessError(f"DST {dst} is SRC; pass a new folder")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        weight_map, total, shared_seen, dtype = {}, 0, False, None
        for shard in shards:
            tensors = _read_shard(src / shard)
            if tensors:
                dtype = next(iter(tensors.values())).dtype
            shared_seen |= any(_SHARED.match(n) for n in tensors)
            out = convert_tensors(tensors, config)
            del tensors
            save_file(out, str(tmp / shard), metadata={"format": "pt"})
            for name, tensor in out.items():
                weight_map[name] = shard
                total += tensor.numel() * tensor.element_size()
            del out
        if not shared_seen and moe_layers(config):
            extra = _zero_shared_experts(config, dtype)
            save_file(extra, str(tmp / "shared-expert-zeros.safetensors"), metadata={"format": "pt"})
            weight_map.update({name: "shared-expert-zeros.safetensors" for name in extra})
        (tmp / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}, indent=2)
        )
        (tmp / "config.json").write_text(json.dumps(qwen2_moe_config(config), indent=2))
        for entry in src.iterdir():
            if entry.is_file() and _KEEP.match(entry.name):
                shutil.copyfile(entry, tmp / entry.name)
        _drop_remote_code(tmp)
        if dst.exists():
            shutil.rmtree(dst)
        os.replace(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dst


def _drop_remote_code(folder: Path) -> None:
    """The tokenizer config must not point at the remote code, which the converted folder lacks."""
    path = folder / "tokenizer_config.json"
    if path.is_file():
        data = json.loads(path.read_text())
        if data.pop("auto_map", None) is not None:
            path.write_text(json.dumps(data, indent=2))
