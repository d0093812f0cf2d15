"""tools/convert_deepseek_moe.py: a DeepSeek-MoE v1 checkpoint becomes a stock Qwen2-MoE computing the same function.

The test writes a tiny random checkpoint under the remote code's key names and config.json, converts it,
loads it with plain transformers, and compares logits with a reference forward written here from the
DeepSeek v1 formulas (Llama attention, softmax -> top-k router, routed + ungated shared experts).
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from harness.errors import HarnessError
from harness.models.deepseek_v1 import convert

REPO = Path(__file__).resolve().parents[1]
H, I_DENSE, I_MOE, E, K, LAYERS, HEADS, VOCAB = 32, 48, 16, 8, 3, 3, 4, 64
IDS = torch.tensor([[5, 17, 42, 9, 7, 25, 30, 63, 12, 11], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]])


def ds_config(**overrides) -> dict:
    """A DeepSeek-MoE-16B config.json in miniature (same keys and flags)."""
    config = dict(
        architectures=["DeepseekForCausalLM"], model_type="deepseek",
        auto_map={"AutoConfig": "configuration_deepseek.DeepseekConfig",
                  "AutoModelForCausalLM": "modeling_deepseek.DeepseekForCausalLM"},
        vocab_size=VOCAB, hidden_size=H, intermediate_size=I_DENSE, moe_intermediate_size=I_MOE,
        num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=HEADS, n_shared_experts=2,
        n_routed_experts=E, num_experts_per_tok=K, first_k_dense_replace=1, moe_layer_freq=1, norm_topk_prob=False,
        scoring_func="softmax", aux_loss_alpha=0.001, seq_aux=True, hidden_act="silu", max_position_embeddings=128,
        rms_norm_eps=1e-6, rope_theta=10000, rope_scaling=None, attention_bias=False, tie_word_embeddings=False,
        bos_token_id=1, eos_token_id=2, torch_dtype="float32", pretraining_tp=1,
    )
    config.update(overrides)
    return config


def random_weights(config: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors under the remote modeling code's names (routers spread so no near-ties)."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=0.2):
        return torch.randn(*shape, generator=g) * scale

    n_shared = config["n_shared_experts"] or 0
    w = {"model.embed_tokens.weight": r(VOCAB, H, scale=1.0), "model.norm.weight": 1 + r(H, scale=0.1),
         "lm_head.weight": r(VOCAB, H)}
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}"
        w[f"{p}.input_layernorm.weight"] = 1 + r(H, scale=0.1)
        w[f"{p}.post_attention_layernorm.weight"] = 1 + r(H, scale=0.1)
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            w[f"{p}.self_attn.{proj}.weight"] = r(H, H)
        if i in moe_layer_ids(config):
            w[f"{p}.mlp.gate.weight"] = r(E, H, scale=0.8)
            for e in range(E):
                w[f"{p}.mlp.experts.{e}.gate_proj.weight"] = r(I_MOE, H)
                w[f"{p}.mlp.experts.{e}.up_proj.weight"] = r(I_MOE, H)
                w[f"{p}.mlp.experts.{e}.down_proj.weight"] = r(H, I_MOE)
            if n_shared:
                w[f"{p}.mlp.shared_experts.gate_proj.weight"] = r(n_shared * I_MOE, H)
                w[f"{p}.mlp.shared_experts.up_proj.weight"] = r(n_shared * I_MOE, H)
                w[f"{p}.mlp.shared_experts.down_proj.weight"] = r(H, n_shared * I_MOE)
        else:
            w[f"{p}.mlp.gate_proj.weight"] = r(I_DENSE, H)
            w[f"{p}.mlp.up_proj.weight"] = r(I_DENSE, H)
            w[f"{p}.mlp.down_proj.weight"] = r(H, I_DENSE)
    return w


def moe_layer_ids(config: dict) -> list[int]:
    return [i for i in range(config["num_hidden_layers"])
            if i >= config["first_k_dense_replace"] and i % config["moe_layer_freq"] == 0]


def write_checkpoint(folder: Path, config: dict, weights: dict, shards: int = 2) -> Path:
    """config.json + ``shards`` safetensors files with an index, as the hub folder has them."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    names = sorted(weights)
    weight_map = {}
    for s in range(shards):
        shard = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: weights[n].contiguous() for n in names[s::shards]}
        save_file(part, str(folder / shard), metadata={"format": "pt"})
        weight_map.update({n: shard for n in part})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (folder / "modeling_deepseek.py").write_text("# stands for the remote code, which the conversion drops\n")
    return folder


# ----------------------------------------------------------------------------------------------
# The reference: DeepSeek v1's forward, written from its formulas.


def rms(x, w, eps):
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def mlp(x, w, p):
    return F.linear(F.silu(F.linear(x, w[f"{p}.gate_proj.weight"])) * F.linear(x, w[f"{p}.up_proj.weight"]),
                    w[f"{p}.down_proj.weight"])


def rope(x, theta):
    """Rotate-half RoPE on (B, heads, T, d)."""
    T, d = x.shape[-2], x.shape[-1]
    inv = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float32) / d)
    ang = torch.outer(torch.arange(T, dtype=torch.float32), inv)
    cos, sin = torch.cat([ang, ang], -1).cos(), torch.cat([ang, ang], -1).sin()
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return x * cos + torch.cat([-x2, x1], -1) * sin


def attention(x, w, p, config):
    B, T, _ = x.shape
    d = H // HEADS
    q, k, v = (F.linear(x, w[f"{p}.{n}.weight"]).view(B, T, HEADS, d).transpose(1, 2)
               for n in ("q_proj", "k_proj", "v_proj"))
    q, k = rope(q, config["rope_theta"]), rope(k, config["rope_theta"])
    scores = q @ k.transpose(-1, -2) / math.sqrt(d)
    scores = scores.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 1), float("-inf"))
    out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, H)
    return F.linear(out, w[f"{p}.o_proj.weight"])


def deepseek_moe(x, w, p, config, kept=None):
    """Shared experts + sum over the top-k of softmax(router logits) * expert(x); ``kept`` limits the experts."""
    experts = list(range(E)) if kept is None else list(kept)
    flat = x.reshape(-1, H)
    scores = F.linear(flat, w[f"{p}.gate.weight"][experts]).softmax(-1)
    top_w, top_i = scores.topk(min(config["num_experts_per_tok"], len(experts)), dim=-1)
    if config["norm_topk_prob"] and config["num_experts_per_tok"] > 1:
        top_w = top_w / (top_w.sum(-1, keepdim=True) + 1e-20)
    out = torch.zeros_like(flat)
    for t in range(flat.shape[0]):
        for weight, slot in zip(top_w[t], top_i[t]):
            out[t] += weight * mlp(flat[t], w, f"{p}.experts.{experts[int(slot)]}")
    if config["n_shared_experts"]:
        out = out + mlp(flat, w, f"{p}.shared_experts")
    return out.view_as(x)


def reference_logits(config, w, ids, kept=None):
    x = w["model.embed_tokens.weight"][ids]
    eps = config["rms_norm_eps"]
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}"
        x = x + attention(rms(x, w[f"{p}.input_layernorm.weight"], eps), w, f"{p}.self_attn", config)
        h = rms(x, w[f"{p}.post_attention_layernorm.weight"], eps)
        if i in moe_layer_ids(config):
            x = x + deepseek_moe(h, w, f"{p}.mlp", config, None if kept is None else kept[i])
        else:
            x = x + mlp(h, w, f"{p}.mlp")
    return F.linear(rms(x, w["model.norm.weight"], eps), w["lm_head.weight"])


def load(folder: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("overrides", [
    {},
    dict(norm_topk_prob=True),
    dict(num_hidden_layers=4, first_k_dense_replace=1, moe_layer_freq=2),  # MoE in layer 2 only
    dict(n_shared_experts=None),
], ids=["16b-flags", "norm_topk", "moe_layer_freq2", "no_shared"])
def test_converted_logits_match_the_deepseek_formula(tmp_path, overrides):
    config = ds_config(**overrides)
    weights = random_weights(config)
    src = write_checkpoint(tmp_path / "ds", config, weights)
    dst = convert(src, tmp_path / "qwen")
    assert not (dst / "modeling_deepseek.py").exists()
    model = load(dst)
    assert model.config.model_type == "qwen2_moe"
    with torch.no_grad():
        got = model(IDS).logits
    want = reference_logits(config, weights, IDS)
    assert torch.allclose(got, want, atol=1e-4, rtol=1e-4), (got - want).abs().max()


def test_every_weight_is_loaded(tmp_path):
    """No tensor of the converted folder is unused and none of the model is left at its init."""
    from safetensors import safe_open

    config = ds_config()
    dst = convert(write_checkpoint(tmp_path / "ds", config, random_weights(config)), tmp_path / "qwen")
    model = load(dst)
    state = model.state_dict()
    for i in moe_layer_ids(config):
        p = f"model.layers.{i}.mlp"
        assert torch.equal(state[f"{p}.shared_expert_gate.weight"], torch.zeros(1, H))
        assert state[f"{p}.experts.gate_up_proj"].shape == (E, 2 * I_MOE, H)
        assert state[f"{p}.experts.down_proj"].shape == (E, H, I_MOE)
    on_disk = set()
    index = json.loads((dst / "model.safetensors.index.json").read_text())
    for shard in set(index["weight_map"].values()):
        with safe_open(str(dst / shard), framework="pt") as f:
            on_disk |= set(f.keys())
    assert on_disk == set(index["weight_map"])
    source = json.loads((tmp_path / "ds" / "model.safetensors.index.json").read_text())["weight_map"]
    assert set(index["weight_map"].values()) == set(source.values())  # one output shard per input shard
    assert all(index["weight_map"][name] == shard for name, shard in source.items() if name in index["weight_map"])
    # 3 per-expert projections fuse into 2 tensors per layer; everything else is one key each.
    assert len(state) == len(on_disk) - len(moe_layer_ids(config)) * (3 * E - 2)


def test_harness_resolves_and_prunes_the_converted_model(tmp_path):
    """adapters resolve the converted model; a pruning plan matches the formula with those experts removed."""
    from harness.compress import apply_plan
    from harness.compress.adapters import resolve
    from harness.compress.plan import CompressionPlan

    config = ds_config()
    weights = random_weights(config, seed=3)
    model = load(convert(write_checkpoint(tmp_path / "ds", config, weights), tmp_path / "qwen"))
    moe = resolve(model)
    facts = (moe.model_type, moe.moe_layers, moe.num_experts, moe.top_k, moe.renormalize)
    assert facts == ("qwen2_moe", (1, 2), E, K, False)
    assert moe.intermediate_size == I_MOE
    kept = {1: [0, 2, 3, 5, 7], 2: [1, 4, 6, 7]}
    apply_plan(model, CompressionPlan.from_kept(kept, num_experts=E, num_layers=LAYERS))
    with torch.no_grad():
        got = model(IDS).logits
    want = reference_logits(config, weights, IDS, kept=kept)
    assert torch.allclose(got, want, atol=1e-4, rtol=1e-4), (got - want).abs().max()
    assert not torch.allclose(got, reference_logits(config, weights, IDS), atol=1e-3)


def test_tokenizer_files_are_kept_without_remote_code(tmp_path):
    from tests.tiny import build_tiny_tokenizer

    config = ds_config()
    src = write_checkpoint(tmp_path / "ds", config, random_weights(config))
    build_tiny_tokenizer(src)
    data = json.loads((src / "tokenizer_config.json").read_text())
    data["auto_map"] = {"AutoTokenizer": ["tokenization_deepseek.Tok", None]}
    (src / "tokenizer_config.json").write_text(json.dumps(data))
    dst = convert(src, tmp_path / "qwen")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(dst)
    assert "auto_map" not in json.loads((dst / "tokenizer_config.json").read_text())
    text = "The quick brown fox"
    assert tok(text).input_ids == AutoTokenizer.from_pretrained(src)(text).input_ids


@pytest.mark.parametrize("mutate, message", [
    (lambda f: (f / "config.json").unlink(), "config.json does not exist"),
    (lambda f: (f / "config.json").write_text(json.dumps(ds_config(model_type="deepseek_v2"))), "not 'deepseek'"),
    (lambda f: (f / "config.json").write_text(json.dumps(ds_config(rope_scaling={"type": "linear", "factor": 2}))),
     "rope_scaling"),
    (lambda f: (f / "model-00002-of-00002.safetensors").unlink(), "lacks the shards"),
    (lambda f: (f / "model-00002-of-00002.safetensors").write_bytes(b"not safetensors"), "not a readable safetensors"),
])
def test_bad_sources_are_one_line_errors_and_leave_no_output(tmp_path, mutate, message):
    config = ds_config()
    src = write_checkpoint(tmp_path / "ds", config, random_weights(config))
    mutate(src)
    with pytest.raises(HarnessError, match=message) as info:
        convert(src, tmp_path / "qwen")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "qwen").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]


def test_cli_refuses_an_existing_destination(tmp_path):
    config = ds_config()
    src = write_checkpoint(tmp_path / "ds", config, random_weights(config))
    (tmp_path / "qwen").mkdir()
    command = [sys.executable, str(REPO / "tools/convert_deepseek_moe.py"), str(src), str(tmp_path / "qwen")]
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip().startswith("error:") and "already exists" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


# DeepSeek-MoE-16B's published config.json (deepseek-ai/deepseek-moe-16b-base), the keys the conversion reads.
DEEPSEEK_MOE_16B = dict(
    architectures=["DeepseekForCausalLM"], model_type="deepseek", vocab_size=102400, hidden_size=2048,
    intermediate_size=10944, moe_intermediate_size=1408, num_hidden_layers=28, num_attention_heads=16,
    num_key_value_heads=16, n_shared_experts=2, n_routed_experts=64, num_experts_per_tok=6, first_k_dense_replace=1,
    moe_layer_freq=1, norm_topk_prob=False, scoring_func="softmax", hidden_act="silu", max_position_embeddings=4096,
    rms_norm_eps=1e-6, rope_theta=10000, rope_scaling=None, attention_bias=False, tie_word_embeddings=False,
    bos_token_id=100000, eos_token_id=100001, torch_dtype="bfloat16",
)


def test_the_16b_model_converts_to_a_qwen2_moe_of_its_published_size(tmp_path):
    """Its converted config builds a 16.4B-parameter Qwen2-MoE (the paper's 16.4B) that the suite accepts."""
    from transformers import AutoModelForCausalLM, Qwen2MoeConfig

    from harness.compare.setup import check_budgets
    from harness.compress.adapters import ResolvedMoE
    from harness.models.deepseek_v1 import qwen2_moe_config

    config = qwen2_moe_config(DEEPSEEK_MOE_16B)
    moe = ResolvedMoE.from_config(config)
    assert (moe.moe_layers, moe.num_experts, moe.top_k, moe.renormalize, moe.intermediate_size) == (
        tuple(range(1, 28)), 64, 6, False, 1408)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(Qwen2MoeConfig(**config))
    gate_params = 27 * 2048  # the added shared_expert_gate rows (zeros)
    total = sum(p.numel() for p in model.parameters()) - gate_params
    assert round(total / 1e9, 1) == 16.4
    assert model.model.layers[0].mlp.down_proj.in_features == 10944
    assert model.model.layers[1].mlp.shared_expert.down_proj.in_features == 2 * 1408
    (tmp_path / "config.json").write_text(json.dumps(config))
    check_budgets(str(tmp_path), [32, 48])
    with pytest.raises(HarnessError, match="pass budgets from 6 to 63"):
        check_budgets(str(tmp_path), [4])


def test_the_unconverted_checkpoint_is_refused_with_the_converter_named(tmp_path):
    from harness.compare.setup import check_budgets

    (tmp_path / "config.json").write_text(json.dumps(DEEPSEEK_MOE_16B))
    with pytest.raises(HarnessError, match="tools/convert_deepseek_moe.py SRC DST"):
        check_budgets(str(tmp_path), [32])


def test_the_converted_model_cfgs_need_no_remote_code_and_keep_the_chat_format():
    from harness.config import load_config

    def model_of(name):
        return load_config(str(REPO / "model_cfgs" / name)).models[0]

    for variant in ("base", "chat"):
        converted = model_of(f"deepseek-moe-16b-{variant}-qwen2moe.py")
        original = model_of(f"deepseek-moe-16b-{variant}.py")
        assert "trust_remote_code" not in json.dumps(dict(converted))
        assert converted["path"] == f"outputs/deepseek-moe-16b-{variant}-qwen2moe"
        for key in ("abbr", "meta_template", "stop_strings", "dtype", "max_seq_len", "batch_size"):
            assert converted.get(key) == original.get(key), (variant, key)


def test_overwrite_replaces_the_destination(tmp_path):
    config = ds_config()
    src = write_checkpoint(tmp_path / "ds", config, random_weights(config))
    (tmp_path / "qwen").mkdir()
    (tmp_path / "qwen" / "stale.txt").write_text("old")
    dst = convert(src, tmp_path / "qwen", overwrite=True)
    assert not (dst / "stale.txt").exists() and (dst / "config.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "qwen"]  # no temporary folder left


def test_the_harness_scores_the_converted_folder_like_the_deepseek_formula(tmp_path):
    """HFCausalLM loads DST by path (no trust_remote_code) and its choice log-likelihoods are the reference's."""
    from harness.models.api import ScoreRequest
    from harness.models.hf_causal_lm import HFCausalLM
    from tests.tiny import build_tiny_tokenizer

    config = ds_config()
    weights = random_weights(config, seed=5)
    src = write_checkpoint(tmp_path / "ds", config, weights)
    build_tiny_tokenizer(src, vocab_size=VOCAB)
    lm = HFCausalLM(str(convert(src, tmp_path / "qwen")), batch_size=2, max_seq_len=64)
    tokens = IDS[0].tolist()
    scores = lm.score([[ScoreRequest(tokens=tokens, score_from=6), ScoreRequest(tokens=tokens[:8], score_from=4)]])[0]
    logprobs = reference_logits(config, weights, IDS[:1]).log_softmax(-1)[0]

    def expected(n, start):
        return sum(logprobs[t - 1, tokens[t]].item() for t in range(start, n))

    assert [s.logprob for s in scores] == pytest.approx([expected(10, 6), expected(8, 4)], abs=1e-4)
