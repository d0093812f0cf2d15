"""A dense Llama-like model plus per-layer splits and routers -> a Qwen2-MoE model (transformers 5).

Why Qwen2-MoE: it has a shared expert (Qwen1.5-MoE's, which MoEfication's always-on neurons map to)
and, with ``norm_topk_prob=False``, routing weights are the raw softmax probabilities, so the
compensation is a constant: routed down projections are multiplied by E (weights are ~1/E at a
small logit scale), the shared one by 2 (its gate weight is zero: sigmoid(0) = 1/2). With top-k = E
and logit scale 0 the MoE equals the dense model exactly. Attention, norms and embeddings are copied.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from harness.errors import HarnessError


@dataclass
class LayerPlan:
    """How one MLP becomes a MoE block: neuron ids per expert, the router and its logit scale."""

    shared: torch.Tensor  # neuron ids of the shared expert (may be empty)
    experts: list[torch.Tensor]  # neuron ids of each routed expert, equal sizes
    router: torch.Tensor  # (E, H) fitted router weight, before ``scale``
    scale: float = 1.0
    stats: dict = field(default_factory=dict)
    # (H, I) down projections as stored (columns by neuron id), e.g. refitted (refit.py); None: the
    # dense ones times the constant compensation (E for routed neurons, 2 for shared ones)
    down: torch.Tensor | None = None


def stored_down(down: torch.Tensor, plan: LayerPlan) -> torch.Tensor:
    """(H, I) the down projections the block stores for ``plan``, columns in dense neuron order."""
    if plan.down is not None:
        return plan.down
    out = down.clone()
    out[:, plan.shared] *= 2.0
    for ids in plan.experts:
        out[:, ids] *= len(plan.experts)
    return out


def dense_mlp(layer) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(gate (I, H), up (I, H), down (H, I)) of a Llama-style decoder layer's MLP."""
    mlp = layer.mlp
    for name in ("gate_proj", "up_proj", "down_proj"):
        proj = getattr(mlp, name, None)
        if proj is None:
            raise HarnessError(f"decoder layer MLP {type(mlp).__name__} has no {name}; MoEfication needs a "
                               "Llama-style gated MLP (gate_proj, up_proj, down_proj)")
        if getattr(proj, "bias", None) is not None:
            raise HarnessError(f"the MLP's {name} has a bias; Qwen2-MoE experts have none, so this model cannot be converted")
    return mlp.gate_proj.weight.detach(), mlp.up_proj.weight.detach(), mlp.down_proj.weight.detach()


def moe_config(dense_config, num_experts: int, top_k: int, expert_size: int, shared_size: int):
    """The Qwen2-MoE config of the converted model (same attention, norms, vocabulary)."""
    from transformers import Qwen2MoeConfig

    c = dense_config
    if getattr(c, "hidden_act", "silu") != "silu":
        raise HarnessError(f"hidden_act {c.hidden_act!r}: Qwen2-MoE experts use silu; this model cannot be converted")
    if not 1 <= top_k <= num_experts:
        raise HarnessError(f"--top_k {top_k} must be between 1 and --experts {num_experts}")
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    config = Qwen2MoeConfig(
        vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
        num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
        num_key_value_heads=c.num_key_value_heads, hidden_act="silu",
        max_position_embeddings=c.max_position_embeddings, rms_norm_eps=c.rms_norm_eps,
        rope_parameters=dict(c.rope_parameters), tie_word_embeddings=c.tie_word_embeddings,
        use_sliding_window=False, decoder_sparse_step=1, mlp_only_layers=[],
        moe_intermediate_size=expert_size, shared_expert_intermediate_size=shared_size,
        num_experts=num_experts, num_experts_per_tok=top_k, norm_topk_prob=False,
        qkv_bias=bool(getattr(c, "attention_bias", False)),
        bos_token_id=c.bos_token_id, eos_token_id=c.eos_token_id, pad_token_id=c.pad_token_id,
    )
    config.head_dim = head_dim
    config.architectures = ["Qwen2MoeForCausalLM"]
    return config


@torch.no_grad()
def fill_moe_block(block, gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor, plan: LayerPlan) -> None:
    """Write one layer's experts, shared expert and router into a ``Qwen2MoeSparseMoeBlock``."""
    ids = torch.stack(plan.experts)  # (E, I)
    stored = stored_down(down, plan)
    block.experts.gate_up_proj.copy_(torch.cat([gate[ids], up[ids]], 1))
    block.experts.down_proj.copy_(stored[:, ids].permute(1, 0, 2))
    block.gate.weight.copy_(plan.router * plan.scale)
    shared = block.shared_expert
    shared.gate_proj.weight.copy_(gate[plan.shared])
    shared.up_proj.weight.copy_(up[plan.shared])
    shared.down_proj.weight.copy_(stored[:, plan.shared])
    block.shared_expert_gate.weight.zero_()


def moe_block(config, gate, up, down, plan: LayerPlan):
    """A new ``Qwen2MoeSparseMoeBlock`` (fp32) holding ``plan``."""
    from transformers.models.qwen2_moe.modeling_qwen2_moe import Qwen2MoeSparseMoeBlock

    block = Qwen2MoeSparseMoeBlock(config).to(gate.dtype)
    fill_moe_block(block, gate, up, down, plan)
    return block.eval()


@torch.no_grad()
def convert(dense, plans: list[LayerPlan], top_k: int):
    """The Qwen2-MoE model (fp32, eval) equal to ``dense`` except for its MLPs, built from ``plans``."""
    from transformers import Qwen2MoeForCausalLM

    layers = dense.model.layers
    if len(plans) != len(layers):
        raise HarnessError(f"{len(plans)} layer plans for a model of {len(layers)} layers")
    sizes = {len(e) for p in plans for e in p.experts}
    shared = {len(p.shared) for p in plans}
    if len(sizes) != 1 or len(shared) != 1:
        raise HarnessError(f"expert widths {sorted(sizes)} / shared widths {sorted(shared)} differ between layers")
    config = moe_config(dense.config, len(plans[0].experts), top_k, sizes.pop(), shared.pop())
    moe = Qwen2MoeForCausalLM(config).to(torch.float32).eval()
    moe.model.embed_tokens.weight.copy_(dense.model.embed_tokens.weight)
    moe.model.norm.weight.copy_(dense.model.norm.weight)
    if not config.tie_word_embeddings:
        moe.lm_head.weight.copy_(dense.lm_head.weight)
    for src, dst, plan in zip(layers, moe.model.layers, plans):
        dst.input_layernorm.weight.copy_(src.input_layernorm.weight)
        dst.post_attention_layernorm.weight.copy_(src.post_attention_layernorm.weight)
        if getattr(src.self_attn.o_proj, "bias", None) is not None:
            raise HarnessError("the attention output projection has a bias; Qwen2-MoE's has none")
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            s, d = getattr(src.self_attn, name), getattr(dst.self_attn, name)
            d.weight.copy_(s.weight)
            if d.bias is not None:
                d.bias.copy_(s.bias)
        fill_moe_block(dst.mlp, *dense_mlp(src), plan)
    moe.tie_weights()
    return moe
