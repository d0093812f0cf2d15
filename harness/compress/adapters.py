"""Per-architecture facts about transformers 5.x MoE models, in one table.

Everything ``apply_plan`` and ``materialize`` need to know about a model family lives in its row
of ``ADAPTERS``: where the MoE block, router and experts sit, which config keys hold the expert
count and top-k, how the router scores and renormalises, and which shared experts exist. The
code in ``apply.py`` is the same for every family; a new family is one more row here.

Routing rules as transformers 5.x implements them (checked against each ``*TopKRouter.forward``):

- mixtral: softmax -> top-k -> always renormalise over the top-k.
- qwen2_moe, qwen3_moe, olmoe: softmax -> top-k -> renormalise only if ``norm_topk_prob``.
- deepseek_v2: logits in fp32, softmax -> top-k (group-limited "max of group" when
  ``topk_method == 'group_limited_greedy'``) -> never renormalised (transformers ignores
  ``norm_topk_prob`` here) -> times ``routed_scaling_factor``.
- deepseek_v3: logits in fp32, sigmoid; ``e_score_correction_bias`` is added for selection only;
  group-limited selection (group score = sum of its top-2 scores, keep ``topk_group`` of
  ``n_group`` groups) -> renormalise if ``norm_topk_prob`` (+1e-20) -> times ``routed_scaling_factor``.
"""
from __future__ import annotations

from dataclasses import dataclass

from harness.errors import HarnessError


@dataclass(frozen=True)
class MoEAdapter:
    """How one model family stores and routes its experts."""

    model_type: str
    expert_count_key: str  # config key holding E, the routed experts per MoE layer
    top_k_key: str = "num_experts_per_tok"
    moe_attr: str = "mlp"  # decoder layer -> MoE block (dense layers hold a plain MLP there)
    router_attr: str = "gate"  # MoE block -> *TopKRouter (weight (E, H))
    experts_attr: str = "experts"  # MoE block -> *Experts (gate_up_proj (E, 2I, H), down_proj (E, H, I))
    scoring: str = "softmax"  # "softmax" or "sigmoid", over the E original experts
    logits_in_fp32: bool = False  # router computes logits from fp32 hidden states and weight
    renormalize: str = "always"  # "always", "never", or "norm_topk_prob" (follow the config flag)
    renormalize_eps: float = 0.0  # added to the denominator of the renormalisation
    weights_in_logits_dtype: bool = False  # router casts top-k weights back to the logits dtype
    scaling_key: str | None = None  # config key of a factor applied to the routed weights
    correction_bias_attr: str | None = None  # router buffer added to the scores for selection only
    group_rule: str | None = None  # None, "max" (deepseek_v2) or "top2_sum" (deepseek_v3)
    shared_expert_attrs: tuple[str, ...] = ()  # modules of the MoE block that plans leave in place
    # Per-expert checkpoint key on disk (transformers converts to/from the fused tensors itself).
    checkpoint_expert_key: str = "model.layers.{layer}.mlp.experts.{expert}.{proj}.weight"
    checkpoint_projections: tuple[str, str, str] = ("gate_proj", "up_proj", "down_proj")

    def group_limited(self, config) -> bool:
        """Whether the model as configured restricts selection to the best expert groups."""
        if self.group_rule is None:
            return False
        if self.group_rule == "max" and getattr(config, "topk_method", "greedy") != "group_limited_greedy":
            return False
        return (getattr(config, "n_group", None) or 1) > 1

    def renormalizes(self, config) -> bool:
        if self.renormalize == "norm_topk_prob":
            return bool(getattr(config, "norm_topk_prob", False))
        return self.renormalize == "always"

    def scaling(self, config) -> float:
        return float(getattr(config, self.scaling_key, 1.0)) if self.scaling_key else 1.0


ADAPTERS: dict[str, MoEAdapter] = {
    a.model_type: a
    for a in (
        MoEAdapter(
            "mixtral",
            expert_count_key="num_local_experts",
            renormalize="always",
            checkpoint_expert_key="model.layers.{layer}.block_sparse_moe.experts.{expert}.{proj}.weight",
            checkpoint_projections=("w1", "w3", "w2"),
        ),
        MoEAdapter(
            "qwen2_moe",
            expert_count_key="num_experts",
            renormalize="norm_topk_prob",
            weights_in_logits_dtype=True,
            shared_expert_attrs=("shared_expert", "shared_expert_gate"),
        ),
        MoEAdapter(
            "qwen3_moe", expert_count_key="num_experts", renormalize="norm_topk_prob", weights_in_logits_dtype=True
        ),
        MoEAdapter(
            "olmoe", expert_count_key="num_experts", renormalize="norm_topk_prob", weights_in_logits_dtype=True
        ),
        MoEAdapter(
            "deepseek_v2",
            expert_count_key="n_routed_experts",
            logits_in_fp32=True,
            renormalize="never",
            scaling_key="routed_scaling_factor",
            group_rule="max",
            shared_expert_attrs=("shared_experts",),
        ),
        MoEAdapter(
            "deepseek_v3",
            expert_count_key="n_routed_experts",
            scoring="sigmoid",
            logits_in_fp32=True,
            renormalize="norm_topk_prob",
            renormalize_eps=1e-20,
            scaling_key="routed_scaling_factor",
            correction_bias_attr="e_score_correction_bias",
            group_rule="top2_sum",
            shared_expert_attrs=("shared_experts",),
        ),
    )
}


def adapter_for(model_or_config) -> MoEAdapter:
    """The adapter of a model (or config); HarnessError for families the table does not cover."""
    config = getattr(model_or_config, "config", model_or_config)
    model_type = getattr(config, "model_type", None)
    if model_type not in ADAPTERS:
        raise HarnessError(
            f"unsupported architecture {model_type!r}; supported: {', '.join(sorted(ADAPTERS))}"
        )
    return ADAPTERS[model_type]


def expert_count(model_or_config) -> int:
    """E: the routed experts per MoE layer, from the config key of the model's family."""
    config = getattr(model_or_config, "config", model_or_config)
    return int(getattr(config, adapter_for(config).expert_count_key))


def decoder_layers(model):
    """The decoder layers of a causal LM (``model.model.layers``)."""
    base = getattr(model, "model", model)
    layers = getattr(base, "layers", None)
    if layers is None:
        raise HarnessError(f"{type(model).__name__} has no model.layers; pass a transformers causal LM")
    return layers


def moe_block(adapter: MoEAdapter, layer):
    """The layer's MoE block, or None for a dense layer (DeepSeek first_k_dense_replace, Qwen mlp_only_layers)."""
    block = getattr(layer, adapter.moe_attr, None)
    if block is None or not hasattr(block, adapter.router_attr) or not hasattr(block, adapter.experts_attr):
        return None
    return block


def moe_layer_indices(model) -> list[int]:
    adapter = adapter_for(model)
    return [i for i, layer in enumerate(decoder_layers(model)) if moe_block(adapter, layer) is not None]
