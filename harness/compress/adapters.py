"""Per-architecture facts about transformers 5.x MoE models, in one table, resolved once per model.

Everything ``apply_plan``, ``snapshot_experts``, ``materialize`` and ``describe_plan`` need to know
about a model family lives in its row of ``ADAPTERS``: where the MoE block, router and experts sit,
which config keys hold the expert count, top-k, expert width and expert groups, which layers are
dense, which tensors make up the experts, how the router scores and renormalises, and which shared
experts exist. ``resolve(model)`` combines the row with one model's config and modules into a
``ResolvedMoE`` (cached on the model); the rest of the package reads that object instead of
re-deriving keys. A new family is one more row here.

Routing rules as transformers 5.x implements them (checked against each ``*TopKRouter.forward``):

- mixtral: softmax -> top-k -> always renormalise over the top-k.
- qwen2_moe, qwen3_moe, olmoe: softmax -> top-k -> renormalise only if ``norm_topk_prob``.
- deepseek_v2: logits in fp32, softmax -> top-k (group-limited "max of group" when
  ``topk_method == 'group_limited_greedy'``) -> never renormalised (transformers ignores
  ``norm_topk_prob`` here) -> times ``routed_scaling_factor``.
- deepseek_v3: logits in fp32, sigmoid; ``e_score_correction_bias`` is added for selection only;
  group-limited selection (group score = sum of its top-2 scores, keep ``topk_group`` of
  ``n_group`` groups) -> renormalise if ``norm_topk_prob`` (+1e-20) -> times ``routed_scaling_factor``.

Dense layers (a plain MLP where the MoE block would be), as the decoder layers' constructors decide:
DeepSeek: layers below ``first_k_dense_replace``; Qwen2/3-MoE: layers in ``mlp_only_layers`` or with
``(i + 1) % decoder_sparse_step != 0``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from harness.errors import HarnessError

_MISSING = object()


@dataclass(frozen=True)
class MoEAdapter:
    """How one model family stores and routes its experts."""

    model_type: str
    expert_count_key: str  # config key holding E, the routed experts per MoE layer
    top_k_key: str = "num_experts_per_tok"
    intermediate_size_key: str = "moe_intermediate_size"  # config key of one expert's width I
    moe_attr: str = "mlp"  # decoder layer -> MoE block (dense layers hold a plain MLP there)
    router_attr: str = "gate"  # MoE block -> *TopKRouter (weight (E, H))
    experts_attr: str = "experts"  # MoE block -> *Experts (gate_up_proj (E, 2I, H), down_proj (E, H, I))
    # Tensors of the Experts module indexed by expert on dim 0; all are pruned / merged alike.
    expert_tensors: tuple[str, ...] = ("gate_up_proj", "down_proj")
    # Expert tensors a family may have (biases); handled like the others where the module has them.
    optional_expert_tensors: tuple[str, ...] = ()
    dense_rule: str | None = None  # None (every layer is MoE), "first_k_dense" (DeepSeek), "sparse_step" (Qwen)
    scoring: str = "softmax"  # "softmax" or "sigmoid", over the E original experts
    logits_in_fp32: bool = False  # router computes logits from fp32 hidden states and weight
    renormalize: str = "always"  # "always", "never", or "norm_topk_prob" (follow the config flag)
    renormalize_eps: float = 0.0  # added to the denominator of the renormalisation
    weights_in_logits_dtype: bool = False  # router casts top-k weights back to the logits dtype
    scaling_key: str | None = None  # config key of a factor applied to the routed weights
    correction_bias_attr: str | None = None  # router buffer added to the scores for selection only
    group_rule: str | None = None  # None, "max" (deepseek_v2) or "top2_sum" (deepseek_v3)
    # Router attribute -> config key of the group settings (what a plain smaller checkpoint carries).
    group_router_keys: tuple[tuple[str, str], ...] = ()
    # Router attribute -> value that turns group-limited selection off (plain top-k over the slots).
    groups_off: tuple[tuple[str, object], ...] = ()
    shared_expert_attrs: tuple[str, ...] = ()  # modules of the MoE block that plans leave in place
    # Per-expert checkpoint key on disk (transformers converts to/from the fused tensors itself).
    checkpoint_expert_key: str = "model.layers.{layer}.mlp.experts.{expert}.{proj}.weight"
    checkpoint_projections: tuple[str, str, str] = ("gate_proj", "up_proj", "down_proj")

    def group_limited(self, config) -> bool:
        """Whether the model as configured restricts selection to the best expert groups."""
        if self.group_rule is None:
            return False
        if self.group_rule == "max" and config_value(config, "topk_method", "greedy") != "group_limited_greedy":
            return False
        return int(config_value(config, "n_group", None) or 1) > 1

    def renormalizes(self, config) -> bool:
        if self.renormalize == "norm_topk_prob":
            return bool(config_value(config, "norm_topk_prob", False))
        return self.renormalize == "always"

    def scaling(self, config) -> float:
        return float(config_value(config, self.scaling_key, 1.0)) if self.scaling_key else 1.0

    def moe_layer_rule(self, config, num_layers: int) -> tuple[int, ...]:
        """The decoder layers with routed experts, by the family's dense-layer rule."""
        if self.dense_rule == "first_k_dense":
            first = int(config_value(config, "first_k_dense_replace", 0) or 0)
            return tuple(range(first, num_layers))
        if self.dense_rule == "sparse_step":
            dense = set(config_value(config, "mlp_only_layers", None) or [])
            step = int(config_value(config, "decoder_sparse_step", 1) or 1)
            return tuple(i for i in range(num_layers) if i not in dense and (i + 1) % step == 0)
        return tuple(range(num_layers))


_DEEPSEEK_GROUP_KEYS = (("topk_method", "topk_method"), ("num_group", "n_group"), ("topk_group", "topk_group"))

ADAPTERS: dict[str, MoEAdapter] = {
    a.model_type: a
    for a in (
        MoEAdapter(
            "mixtral",
            expert_count_key="num_local_experts",
            intermediate_size_key="intermediate_size",
            renormalize="always",
            checkpoint_expert_key="model.layers.{layer}.block_sparse_moe.experts.{expert}.{proj}.weight",
            checkpoint_projections=("w1", "w3", "w2"),
        ),
        MoEAdapter(
            "qwen2_moe",
            expert_count_key="num_experts",
            dense_rule="sparse_step",
            renormalize="norm_topk_prob",
            weights_in_logits_dtype=True,
            shared_expert_attrs=("shared_expert", "shared_expert_gate"),
        ),
        MoEAdapter(
            "qwen3_moe", expert_count_key="num_experts", dense_rule="sparse_step", renormalize="norm_topk_prob",
            weights_in_logits_dtype=True,
        ),
        MoEAdapter(
            "olmoe", expert_count_key="num_experts", intermediate_size_key="intermediate_size",
            renormalize="norm_topk_prob", weights_in_logits_dtype=True,
        ),
        MoEAdapter(
            "deepseek_v2",
            expert_count_key="n_routed_experts",
            dense_rule="first_k_dense",
            logits_in_fp32=True,
            renormalize="never",
            scaling_key="routed_scaling_factor",
            group_rule="max",
            group_router_keys=_DEEPSEEK_GROUP_KEYS,
            groups_off=(("topk_method", "greedy"),),
            shared_expert_attrs=("shared_experts",),
        ),
        MoEAdapter(
            "deepseek_v3",
            expert_count_key="n_routed_experts",
            dense_rule="first_k_dense",
            scoring="sigmoid",
            logits_in_fp32=True,
            renormalize="norm_topk_prob",
            renormalize_eps=1e-20,
            scaling_key="routed_scaling_factor",
            correction_bias_attr="e_score_correction_bias",
            group_rule="top2_sum",
            group_router_keys=_DEEPSEEK_GROUP_KEYS,
            groups_off=(("num_group", 1), ("topk_group", 1)),
            shared_expert_attrs=("shared_experts",),
        ),
    )
}


def config_value(config, key: str, default=_MISSING):
    """``config.key`` for a transformers config, ``config[key]`` for a config.json dict."""
    value = config.get(key, _MISSING) if isinstance(config, dict) else getattr(config, key, _MISSING)
    if value is _MISSING:
        if default is _MISSING:
            model_type = config_value(config, "model_type", None)
            raise HarnessError(f"the {model_type!r} config has no {key!r}; pass the config.json of the model the plan is for")
        return default
    return value


def _config_of(model_or_config):
    """The config of a model, or the argument itself when it is a config (object or dict)."""
    from torch import nn

    return model_or_config.config if isinstance(model_or_config, nn.Module) else model_or_config


def _as_config(config, adapter: MoEAdapter):
    """A config.json dict as the family's config class, which knows the key aliases
    (transformers 5 reads Qwen3-MoE's ``num_experts`` as ``num_local_experts``)."""
    if not isinstance(config, dict):
        return config
    from transformers import CONFIG_MAPPING

    return CONFIG_MAPPING[adapter.model_type].from_dict(config)


def adapter_for(model_or_config) -> MoEAdapter:
    """The adapter of a model (or config); HarnessError for families the table does not cover."""
    model_type = config_value(_config_of(model_or_config), "model_type", None)
    if model_type == "deepseek":  # DeepSeek-MoE v1's remote code: convert it to a Qwen2-MoE checkpoint first
        raise HarnessError(
            "unsupported architecture 'deepseek' (DeepSeek-MoE v1 remote code); convert the checkpoint with "
            "python tools/convert_deepseek_moe.py SRC DST and pass DST (a stock qwen2_moe model)"
        )
    if model_type not in ADAPTERS:
        raise HarnessError(
            f"unsupported architecture {model_type!r}; supported: {', '.join(sorted(ADAPTERS))}"
        )
    return ADAPTERS[model_type]


# ----------------------------------------------------------------------------------------------
# One model's facts, resolved once.


@dataclass(frozen=True)
class ResolvedMoE:
    """The MoE facts of one model (or config): its adapter row applied to its config.

    ``num_experts`` and ``top_k`` are the *original* model's, also while a plan is applied (which
    rewrites the config's values when every layer agrees). ``layers`` is the decoder-layer list when
    resolved from a model (None from a config alone).
    """

    adapter: MoEAdapter
    num_layers: int
    moe_layers: tuple[int, ...]  # decoder layers with routed experts (the others are dense)
    num_experts: int  # E
    top_k: int
    hidden_size: int
    intermediate_size: int | None  # one expert's width I (None when the config does not say)
    group_limited: bool  # DeepSeek group-limited selection is on as configured
    n_group: int  # expert groups (1 when selection is not group-limited)
    topk_group: int
    renormalize: bool
    scaling: float
    expert_tensors: tuple[str, ...]  # the Experts module's per-expert tensors, biases included
    layers: object = field(default=None, repr=False, compare=False)

    @classmethod
    def from_config(cls, config, num_layers: int | None = None, expert_tensors: tuple[str, ...] | None = None,
                    original_values: dict | None = None) -> "ResolvedMoE":
        """The facts a config (object or config.json dict) gives; ``original_values`` override its keys."""
        adapter = adapter_for(config)
        config = _as_config(config, adapter)
        values = original_values or {}

        def read(key, default=_MISSING):
            return values[key] if key in values else config_value(config, key, default)

        layer_count = int(num_layers if num_layers is not None else read("num_hidden_layers"))
        limited = adapter.group_limited(config)
        intermediate = read(adapter.intermediate_size_key, None)
        return cls(
            adapter=adapter,
            num_layers=layer_count,
            moe_layers=adapter.moe_layer_rule(config, layer_count),
            num_experts=int(read(adapter.expert_count_key)),
            top_k=int(read(adapter.top_k_key)),
            hidden_size=int(read("hidden_size")),
            intermediate_size=int(intermediate) if intermediate is not None else None,
            group_limited=limited,
            n_group=int(read("n_group", 1) or 1) if limited else 1,
            topk_group=int(read("topk_group", 1) or 1) if limited else 1,
            renormalize=adapter.renormalizes(config),
            scaling=adapter.scaling(config),
            expert_tensors=expert_tensors if expert_tensors is not None else adapter.expert_tensors,
        )

    @property
    def model_type(self) -> str:
        return self.adapter.model_type

    def config_values(self) -> dict:
        """The original expert count and top-k under the family's config keys."""
        return {self.adapter.expert_count_key: self.num_experts, self.adapter.top_k_key: self.top_k}

    def is_moe(self, index: int) -> bool:
        return index in self.moe_layers

    def block(self, index: int):
        """Decoder layer ``index``'s MoE block as installed now (None when dense or dropped)."""
        return moe_block(self.adapter, self.layers[index])

    def blocks(self):
        """(index, MoE block) of every MoE layer whose block is installed now."""
        for index in self.moe_layers:
            block = self.block(index)
            if block is not None:
                yield index, block

    def experts(self, block):
        return getattr(block, self.adapter.experts_attr)

    def router(self, block):
        return getattr(block, self.adapter.router_attr)


_CACHE_ATTR = "_harness_resolved_moe"


def resolve(model) -> ResolvedMoE:
    """The ``ResolvedMoE`` of a loaded model, computed once and cached on the model.

    The cache is reused only while the model's class, config object, model type and decoder-layer
    list are the ones it was computed from; anything else resolves afresh. Stand-in modules a plan
    installs (a dropped MoE block, a skipped decoder layer) remember what they replaced in
    ``replaced``, so a model with a plan applied resolves to the same facts.
    """
    layers = decoder_layers(model)
    key = (type(model), getattr(model.config, "model_type", None), len(layers))
    cached = model.__dict__.get(_CACHE_ATTR)
    if cached is not None:
        cached_key, config, cached_layers, resolved = cached
        if cached_key == key and config is model.config and cached_layers is layers:
            return resolved
    resolved = _resolve_uncached(model, layers)
    model.__dict__[_CACHE_ATTR] = (key, model.config, layers, resolved)
    return resolved


def _resolve_uncached(model, layers) -> ResolvedMoE:
    adapter = adapter_for(model)
    config = model.config
    facts = ResolvedMoE.from_config(
        config, num_layers=len(layers), original_values=getattr(model, "compression_original_config", None)
    )
    present = None
    for index, layer in enumerate(layers):
        block = _block_before_plan(adapter, layer)
        if (block is not None) != facts.is_moe(index):
            kind = "has no experts" if block is None else "has experts"
            raise HarnessError(
                f"decoder layer {index} of this {adapter.model_type} model {kind}, which its config's dense-layer rule "
                "contradicts; load the model with its own config.json"
            )
        if block is not None and present is None:
            experts = getattr(block, adapter.experts_attr)
            missing = [name for name in adapter.expert_tensors if not hasattr(experts, name)]
            if missing:
                raise HarnessError(
                    f"the {type(experts).__name__} of layer {index} lacks {missing}; this transformers version stores "
                    f"{adapter.model_type} experts differently from what harness/compress/adapters.py expects"
                )
            present = adapter.expert_tensors + tuple(
                n for n in adapter.optional_expert_tensors if getattr(experts, n, None) is not None
            )
    return ResolvedMoE(**{**facts.__dict__, "expert_tensors": present or adapter.expert_tensors, "layers": layers})


def original_module(module):
    """The module a plan's stand-in replaced (``replaced``), else the module itself."""
    return module.__dict__.get("replaced", module) if module is not None else None


def _block_before_plan(adapter: MoEAdapter, layer):
    """The layer's MoE block as the model was built, seeing through a plan's stand-ins."""
    block = original_module(getattr(original_module(layer), adapter.moe_attr, None))
    if block is None or not hasattr(block, adapter.router_attr) or not hasattr(block, adapter.experts_attr):
        return None
    return block


# ----------------------------------------------------------------------------------------------
# The helpers other parts of the harness call (thin wrappers over ``resolve``).


def expert_count(model_or_config) -> int:
    """E: the routed experts per MoE layer (a model's original count, also with a plan applied)."""
    from torch import nn

    if isinstance(model_or_config, nn.Module):
        return resolve(model_or_config).num_experts
    adapter = adapter_for(model_or_config)
    return int(config_value(_as_config(model_or_config, adapter), adapter.expert_count_key))


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
    """The decoder layers with routed experts (dropped ones included while a plan is applied)."""
    return list(resolve(model).moe_layers)
