"""FLOPs per token counted from a model's config and a compression plan, without running it.

A FLOP here is what ``torch.utils.flop_counter`` counts: 2 per multiply-add of a matrix product
(linear layers, attention scores and values, the router), nothing for element-wise work. Per
decoder layer (a skipped block: nothing):
- attention projections (grouped-query q/k/v/o, or DeepSeek's MLA low-rank q and kv), and the
  scores and values against ``context_len`` positions (``2 * heads * context_len * (d_qk + d_v)``;
  a prefill of c tokens computes the full c x c square, as eager attention and SDPA do);
- a dense MLP (``6 * H * I``), or an MoE block: router (``2 * H * E``; a sliced router over the B kept
  experts ``2 * H * B``; EEP's mapped router also maps the E scores to B slots), top-k experts of
  ``6 * H * I`` each (condensed layers: all B slots), shared experts (and Qwen's shared-expert
  gate); a dropped layer's whole MLP sub-layer is gone;
plus the LM head (``2 * H * V``). The counter cannot see grouped GEMMs or CPU SDPA kernels, so
the tests compare against it with eager experts and eager attention.
"""
from __future__ import annotations

from harness.compress.adapters import ResolvedMoE, config_value
from harness.compress.apply import native_router_settings
from harness.compress.plan import CompressionPlan


def _attention(config, context_len: int) -> tuple[int, int]:
    """(projection FLOPs, score+value FLOPs) of one attention layer for one token."""
    H = int(config.hidden_size)
    heads = int(config.num_attention_heads)
    if config_value(config, "kv_lora_rank", None):  # DeepSeek multi-head latent attention
        nope, rope, dv = int(config.qk_nope_head_dim), int(config.qk_rope_head_dim), int(config.v_head_dim)
        rank, q_rank = int(config.kv_lora_rank), config_value(config, "q_lora_rank", None)
        q = H * heads * (nope + rope) if not q_rank else H * q_rank + q_rank * heads * (nope + rope)
        kv = H * (rank + rope) + rank * heads * (nope + dv)
        return 2 * (q + kv + heads * dv * H), 2 * heads * context_len * (nope + rope + dv)
    head_dim = int(config_value(config, "head_dim", None) or H // heads)
    kv_heads = int(config_value(config, "num_key_value_heads", None) or heads)
    proj = H * heads * head_dim + 2 * H * kv_heads * head_dim + heads * head_dim * H
    return 2 * proj, 4 * heads * context_len * head_dim


def _shared_experts(config, moe: ResolvedMoE) -> int:
    H = moe.hidden_size
    if moe.model_type == "qwen2_moe":
        return 6 * H * int(config.shared_expert_intermediate_size) + 2 * H
    shared = int(config_value(config, "n_shared_experts", 0) or 0)
    return 6 * H * moe.intermediate_size * shared


def _router(moe: ResolvedMoE, lp) -> int:
    """The router's matrix products for one token under the layer's plan."""
    H, E = moe.hidden_size, moe.num_experts
    slots = lp.budget(E)
    if lp.mode == "condensed":
        return 0  # fixed weights, no router forward
    if lp.merge is None and lp.router is None and lp.top_k is None and lp.skip_threshold is None:
        return 2 * H * E  # the model's own router
    if native_router_settings(moe, lp) is not None:
        return 2 * H * slots  # the family's router with the kept rows
    rows = E if lp.router is not None else slots  # a mapped router keeps E rows, or slices to B
    mapping = 2 * rows * slots * (2 if moe.adapter.correction_bias_attr else 1)
    return 2 * H * rows + mapping


def flops_per_token(config, plan: CompressionPlan | None = None, context_len: int = 1,
                    original_values: dict | None = None) -> dict[str, int]:
    """FLOPs of one token at ``context_len`` positions, by part, and their ``total``.

    ``config`` is the model's (a transformers config); ``original_values``: the expert count and
    top-k the config had before a plan rewrote them (``model.compression_original_config``)."""
    moe = ResolvedMoE.from_config(config, original_values=original_values)
    plan = plan or CompressionPlan.identity(moe.num_layers, moe.num_experts)
    H = moe.hidden_size
    parts = dict.fromkeys(("attention_projections", "attention_scores", "router", "experts", "shared_experts",
                           "dense_mlp", "lm_head"), 0)
    proj, scores = _attention(config, context_len)
    skipped = set(plan.skip_blocks)
    for index in range(moe.num_layers):
        if index in skipped:
            continue
        parts["attention_projections"] += proj
        parts["attention_scores"] += scores
        if not moe.is_moe(index):
            parts["dense_mlp"] += 6 * H * int(config.intermediate_size)
            continue
        lp = plan.layer(index)
        if lp.mode == "dropped":
            continue
        active = lp.budget(moe.num_experts) if lp.mode == "condensed" else (lp.top_k or moe.top_k)
        parts["router"] += _router(moe, lp)
        parts["experts"] += active * 6 * H * moe.intermediate_size
        parts["shared_experts"] += _shared_experts(config, moe)
    parts["lm_head"] = 2 * H * int(config.vocab_size)
    parts["total"] = sum(parts.values())
    return parts


def counted_flops_per_token(model, input_ids) -> float:
    """What ``torch.utils.flop_counter`` counts for one forward of ``input_ids``, per token."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(input_ids=input_ids, use_cache=False)
    return counter.get_total_flops() / input_ids.numel()
