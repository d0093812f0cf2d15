"""Apply a CompressionPlan to a loaded transformers 5.x MoE model, in place.

What each layer mode becomes (E original experts, B kept slots, k active per token):

- routed: the Experts module's ``gate_up_proj`` / ``down_proj`` are replaced by the B merged
  experts ``W'_i = sum_e merge[i, e] W_e`` (fp32 accumulation on the model's device, cast back;
  one-hot rows are copied bit-exactly) and its ``num_experts`` set to B, so transformers' own
  experts forward (eager / grouped_mm / batched_mm, per ``config._experts_implementation``) runs
  unchanged on the smaller tensors. Only B experts stay in memory.
  With ``router=None`` (one-hot merge rows required) the router is the architecture's own router
  class with its weight rows (and DeepSeek-V3's correction bias) sliced to the kept experts: the
  scores are over the B kept experts' logits, exactly what a plain smaller checkpoint computes.
  With a router mapping R (or NAEE skipping, or groups transformers cannot express) a
  ``MappedRouter`` keeps the (E, H) weight and computes
      p = score(logits over the E originals)  (softmax, or sigmoid for DeepSeek-V3)
      q = R p ;  selection scores = R (p + correction bias)   (bias: DeepSeek-V3 only)
      S = top-k of the selection scores (group-limited where the family does that)
      w = q[S], renormalised by the family's own rule, NAEE skip, times routed_scaling_factor.
- condensed (CD-MoE): every token uses all B (merged) experts with the fixed
  ``condensed_weights``; the router is bypassed and no scaling factor is applied.
- dropped (Layer Drop): the whole MLP sub-layer, shared experts included, returns zeros, so the
  residual stream passes through.
- skip_blocks (Block Drop): the decoder layer returns its input unchanged.

Conventions chosen here (and tested):
- Expert groups (DeepSeek ``n_group``) after compression: a slot belongs to the group of its
  dominant original expert (largest |R| entry, else its merge row's expert). Group-limited selection
  is kept when every one of the ``n_group`` groups holds the same number of slots; otherwise it is
  disabled and plain top-k over the B slots is used.
- NAEE dynamic skip: after top-k, an expert other than the first (highest ranked) is dropped when
  its weight < beta * the first's; the survivors are then renormalised if the family renormalises
  (as NAEE's released Mixtral code does: skip, then divide by the sum).
- Block Drop with a KV cache: the skipped layer stores a one-channel zero placeholder of the new
  tokens in its cache slot, so ``cache.get_seq_length()`` (read from layer 0) stays right.

Search runners swap plans without reloading: ``snap = snapshot_experts(model)`` once, then
``apply_plan(model, A)``, ``reset_plan(model, snap)``, ``apply_plan(model, B)``, ...
"""
from __future__ import annotations

import copy
import types
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from harness.compress.adapters import MoEAdapter, adapter_for, decoder_layers, expert_count, moe_block
from harness.compress.plan import CompressionPlan, LayerPlan, is_one_hot
from harness.errors import HarnessError

# ----------------------------------------------------------------------------------------------
# Validation: everything is checked before the first weight changes.


def validate_plan_for_model(model, plan: CompressionPlan) -> MoEAdapter:
    """Raise HarnessError naming the layer and the mismatch if ``plan`` does not fit ``model``."""
    if not isinstance(plan, CompressionPlan):
        raise HarnessError(f"apply_plan needs a CompressionPlan, got {type(plan).__name__}; load it with load_plan")
    if getattr(model, "compression_plan", None) is not None:
        raise HarnessError("the model already has a compression plan applied; call reset_plan(model, snapshot) first")
    adapter = adapter_for(model)
    config = model.config
    layers = decoder_layers(model)
    num_experts = expert_count(config)
    if plan.num_layers != len(layers):
        raise HarnessError(f"plan is for {plan.num_layers} decoder layers but the model has {len(layers)}")
    if plan.num_experts != num_experts:
        raise HarnessError(f"plan is for {plan.num_experts} experts per layer but the model has {num_experts}")
    if plan.hidden_size is not None and plan.hidden_size != config.hidden_size:
        raise HarnessError(f"plan is for hidden size {plan.hidden_size} but the model has {config.hidden_size}")
    # the plan's own checks: layer and skip_blocks indices, matrices, modes, top_k, skip threshold
    plan.validate(num_layers=len(layers), num_experts=num_experts, hidden_size=config.hidden_size)
    model_top_k = int(getattr(config, adapter.top_k_key))
    for index, layer_plan in sorted(plan.layers.items()):
        if moe_block(adapter, layers[index]) is None:
            raise HarnessError(f"plan layer {index}: decoder layer {index} of this model is dense (no experts); remove it from the plan")
        slots = layer_plan.budget(num_experts)
        if layer_plan.mode == "routed" and layer_plan.top_k is None and model_top_k > slots:
            raise HarnessError(
                f"plan layer {index}: keeps {slots} experts but the model routes to {model_top_k}; set top_k <= {slots}"
            )
    return adapter


# ----------------------------------------------------------------------------------------------
# Expert merging.


def merge_expert_tensor(weight: torch.Tensor, merge: torch.Tensor) -> torch.Tensor:
    """``out[i] = sum_e merge[i, e] * weight[e]`` in fp32, cast to ``weight.dtype``.

    Rows that are one-hot copy the expert bit-exactly. Works expert by expert so the extra memory
    is one fp32 expert, not a fp32 copy of all E.
    """
    merge = merge.detach().to("cpu", torch.float32)
    if is_one_hot(merge):
        kept = merge.argmax(dim=1).to(weight.device)
        return weight.detach().index_select(0, kept)
    out = torch.empty((merge.shape[0], *weight.shape[1:]), dtype=weight.dtype, device=weight.device)
    for i, row in enumerate(merge):
        experts = row.nonzero().flatten().tolist()
        if len(experts) == 1 and row[experts[0]] == 1:
            out[i] = weight[experts[0]].detach()
            continue
        acc = torch.zeros(weight.shape[1:], dtype=torch.float32, device=weight.device)
        for e in experts:
            acc.add_(weight[e].detach().float(), alpha=float(row[e]))
        out[i] = acc.to(weight.dtype)
    return out


# ----------------------------------------------------------------------------------------------
# Routing modules installed by the plan.


@dataclass(frozen=True)
class RoutingRule:
    """The per-family routing arithmetic, resolved against one model's config."""

    scoring: str
    logits_in_fp32: bool
    renormalize: bool
    renormalize_eps: float
    weights_in_logits_dtype: bool
    scaling: float
    group_rule: str | None  # None when group-limited selection is off for this layer
    n_group: int
    topk_group: int

    @classmethod
    def of(cls, adapter: MoEAdapter, config, groups_kept: bool) -> "RoutingRule":
        limited = groups_kept and adapter.group_limited(config)
        return cls(
            scoring=adapter.scoring,
            logits_in_fp32=adapter.logits_in_fp32,
            renormalize=adapter.renormalizes(config),
            renormalize_eps=adapter.renormalize_eps,
            weights_in_logits_dtype=adapter.weights_in_logits_dtype,
            scaling=adapter.scaling(config),
            group_rule=adapter.group_rule if limited else None,
            n_group=int(getattr(config, "n_group", None) or 1) if limited else 1,
            topk_group=int(getattr(config, "topk_group", None) or 1) if limited else 1,
        )


def finish_weights(weights: torch.Tensor, rule: RoutingRule, skip_threshold: float | None) -> torch.Tensor:
    """NAEE skip (ranked column 0 is the first expert), renormalisation, scaling; fp32 in and out."""
    if skip_threshold is not None and weights.shape[1] > 1:
        first = weights[:, :1]
        later = weights[:, 1:]
        weights = torch.cat([first, later.masked_fill(later < skip_threshold * first, 0.0)], dim=1)
    if rule.renormalize:
        weights = weights / (weights.sum(dim=-1, keepdim=True) + rule.renormalize_eps)
    return weights * rule.scaling


class MappedRouter(nn.Module):
    """EEP router mapping over the E original experts' scores (see the module docstring).

    Installed as a subclass of the family's own router class (``mapped_router_class``) so that
    ``isinstance`` checks, e.g. transformers' router-logit recording, still find it.
    """

    def __init__(self, weight, mapping, correction_bias, slot_group, top_k, rule: RoutingRule, skip_threshold):
        nn.Module.__init__(self)
        self.weight = weight  # the original (E, H) parameter, shared, not copied
        self.register_buffer("mapping", mapping.to(device=weight.device, dtype=torch.float32))
        if correction_bias is not None:
            self.register_buffer("e_score_correction_bias", correction_bias)
        else:
            self.e_score_correction_bias = None
        self.register_buffer("slot_group", slot_group.to(weight.device))
        self.register_buffer("group_order", torch.argsort(slot_group, stable=True).to(weight.device))
        self.hidden_dim = weight.shape[1]
        self.num_experts = mapping.shape[0]
        self.top_k = top_k
        self.rule = rule
        self.skip_threshold = skip_threshold

    def forward(self, hidden_states):
        rule = self.rule
        hidden = hidden_states.reshape(-1, self.hidden_dim)
        if rule.logits_in_fp32:
            logits = F.linear(hidden.float(), self.weight.float())
        else:
            logits = F.linear(hidden, self.weight)
        probs = logits.float().softmax(dim=-1) if rule.scoring == "softmax" else logits.float().sigmoid()
        mapped = probs @ self.mapping.T
        choice = mapped
        if self.e_score_correction_bias is not None:
            choice = (probs + self.e_score_correction_bias.float()) @ self.mapping.T
        choice = self._limit_to_best_groups(choice)
        indices = torch.topk(choice, self.top_k, dim=-1, sorted=True).indices
        weights = finish_weights(mapped.gather(1, indices), rule, self.skip_threshold)
        if rule.weights_in_logits_dtype:
            weights = weights.to(logits.dtype)
        return logits, weights, indices

    def _limit_to_best_groups(self, choice: torch.Tensor) -> torch.Tensor:
        rule = self.rule
        if rule.group_rule is None:
            return choice
        tokens = choice.shape[0]
        grouped = choice[:, self.group_order].view(tokens, rule.n_group, -1)
        if rule.group_rule == "max":
            group_scores = grouped.max(dim=-1).values
        else:
            group_scores = grouped.topk(min(2, grouped.shape[-1]), dim=-1).values.sum(dim=-1)
        best = torch.topk(group_scores, rule.topk_group, dim=-1).indices
        group_mask = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, best, True)
        return choice.masked_fill(~group_mask[:, self.slot_group], float("-inf"))


_MAPPED_CLASSES: dict[type, type] = {}


def mapped_router_class(base: type) -> type:
    """``MappedRouter`` as a subclass of the family's router class ``base`` (cached)."""
    if base not in _MAPPED_CLASSES:
        _MAPPED_CLASSES[base] = type(f"Mapped{base.__name__}", (MappedRouter, base), {})
    return _MAPPED_CLASSES[base]


class CondensedRouter(nn.Module):
    """CD-MoE: every token gets all B experts with fixed weights; the learned router is bypassed."""

    def __init__(self, weights: torch.Tensor, hidden_dim: int):
        super().__init__()
        self.register_buffer("condensed_weights", weights.to(torch.float32))
        self.hidden_dim = hidden_dim
        self.num_experts = self.top_k = weights.shape[0]

    def forward(self, hidden_states):
        tokens = hidden_states.reshape(-1, self.hidden_dim).shape[0]
        slots = self.condensed_weights.shape[0]
        device = hidden_states.device
        logits = torch.zeros(tokens, slots, dtype=hidden_states.dtype, device=device)
        indices = torch.arange(slots, device=device).expand(tokens, slots)
        weights = self.condensed_weights.to(device).expand(tokens, slots)
        return logits, weights, indices


class DroppedMoE(nn.Module):
    """Layer Drop: the MLP sub-layer (routed and shared experts) contributes nothing."""

    def forward(self, hidden_states, *args, **kwargs):
        return torch.zeros_like(hidden_states)


def _skipped_block_forward(self, hidden_states, *args, past_key_values=None, **kwargs):
    """Block Drop: return the input; keep the cache's length right with a tiny placeholder."""
    if past_key_values is not None:
        batch, tokens = hidden_states.shape[:2]
        placeholder = hidden_states.new_zeros(batch, 1, tokens, 1)
        past_key_values.update(placeholder, placeholder, self.self_attn.layer_idx)
    return hidden_states


# ----------------------------------------------------------------------------------------------
# Router choice per layer.


def _slot_groups(adapter: MoEAdapter, config, lp: LayerPlan, num_experts: int) -> torch.Tensor:
    """The expert group of each slot: the group of its dominant original expert."""
    if lp.router is not None:
        dominant = lp.router.abs().argmax(dim=1)
    elif lp.merge is not None:
        dominant = lp.merge.abs().argmax(dim=1)
    else:
        dominant = torch.arange(num_experts)
    n_group = int(getattr(config, "n_group", None) or 1) if adapter.group_limited(config) else 1
    return (dominant // (num_experts // n_group)).long()


def _groups_kept(adapter: MoEAdapter, config, slot_group: torch.Tensor) -> bool:
    """Group-limited selection survives only if every group holds the same number of slots."""
    if not adapter.group_limited(config):
        return False
    n_group = int(config.n_group)
    counts = torch.bincount(slot_group, minlength=n_group)
    return bool((counts == counts[0]).all() and counts[0] > 0)


def _kept_experts(adapter: MoEAdapter, config, lp: LayerPlan, num_experts: int) -> torch.Tensor | None:
    """The kept original experts when the layer is pure pruning with a sliceable router, else None.

    ``router=None`` means "slice the gate rows" by definition. A one-hot ``router`` equal to the
    merge rows means "scores over the E originals, then pick": the same thing only when the
    family renormalises the top-k or scores each expert on its own (sigmoid); for softmax without
    renormalisation the two differ by the softmax denominator, so a MappedRouter is used.
    """
    merge = lp.merge if lp.merge is not None else torch.eye(num_experts)
    if not is_one_hot(merge):
        return None
    if lp.router is not None:
        if not torch.equal(lp.router.to(merge.dtype), merge):
            return None
        if not (adapter.scoring == "sigmoid" or adapter.renormalizes(config)):
            return None
    return merge.argmax(dim=1)


def native_router_settings(adapter: MoEAdapter, config, lp: LayerPlan, num_experts: int) -> dict | None:
    """Router attributes for the family's own router class, or None when a MappedRouter is needed.

    The dict holds the attributes to set on a copy of the original router (``num_experts``,
    ``top_k`` and, for DeepSeek, the group settings) plus ``kept`` (the kept expert indices).
    """
    if lp.mode != "routed" or lp.skip_threshold is not None:
        return None
    kept = _kept_experts(adapter, config, lp, num_experts)
    if kept is None:
        return None
    slots = len(kept)
    settings = dict(kept=kept, num_experts=slots, top_k=lp.top_k or int(getattr(config, adapter.top_k_key)))
    if not adapter.group_limited(config):
        return settings
    slot_group = _slot_groups(adapter, config, lp, num_experts)
    per_group = slots // int(config.n_group)
    if _groups_kept(adapter, config, slot_group):
        in_group_order = bool((slot_group[1:] >= slot_group[:-1]).all())
        if not in_group_order or (adapter.group_rule == "top2_sum" and per_group < 2):
            return None
        return settings
    # Groups cannot be kept: plain top-k over the slots, expressed in the family's own terms.
    if adapter.group_rule == "max":
        settings["topk_method"] = "greedy"
    else:
        if slots < 2:
            return None
        settings.update(num_group=1, topk_group=1)
    return settings


# ----------------------------------------------------------------------------------------------
# Applying and undoing plans.


def apply_plan(model, plan: CompressionPlan):
    """Apply ``plan`` to ``model`` in place and return it (see the module docstring)."""
    adapter = validate_plan_for_model(model, plan)
    config = model.config
    layers = decoder_layers(model)
    num_experts = expert_count(config)
    original_config = {
        adapter.expert_count_key: getattr(config, adapter.expert_count_key),
        adapter.top_k_key: getattr(config, adapter.top_k_key),
    }
    with torch.no_grad():
        for index, lp in sorted(plan.layers.items()):
            layer = layers[index]
            if lp.mode == "dropped":
                setattr(layer, adapter.moe_attr, DroppedMoE())
                continue
            _apply_to_block(adapter, config, moe_block(adapter, layer), lp, num_experts)
    for index in plan.skip_blocks:
        layers[index].forward = types.MethodType(_skipped_block_forward, layers[index])
    _update_config_when_uniform(model, adapter)
    model.compression_plan = plan
    model.compression_original_config = original_config
    return model


def _apply_to_block(adapter: MoEAdapter, config, block, lp: LayerPlan, num_experts: int) -> None:
    router = getattr(block, adapter.router_attr)
    experts = getattr(block, adapter.experts_attr)
    slots = lp.budget(num_experts)
    if lp.merge is not None:
        merge = lp.merge.to(torch.float32)
        experts.gate_up_proj = nn.Parameter(merge_expert_tensor(experts.gate_up_proj, merge), requires_grad=False)
        experts.down_proj = nn.Parameter(merge_expert_tensor(experts.down_proj, merge), requires_grad=False)
        experts.num_experts = slots
    if lp.mode == "condensed":
        setattr(block, adapter.router_attr, CondensedRouter(lp.condensed_weights.to(router.weight.device), router.hidden_dim))
        return
    settings = native_router_settings(adapter, config, lp, num_experts)
    if settings is not None:
        setattr(block, adapter.router_attr, _sliced_router(adapter, router, settings))
        return
    slot_group = _slot_groups(adapter, config, lp, num_experts)
    rule = RoutingRule.of(adapter, config, groups_kept=_groups_kept(adapter, config, slot_group))
    weight = router.weight
    bias = getattr(router, adapter.correction_bias_attr) if adapter.correction_bias_attr else None
    if lp.router is not None:
        mapping = lp.router.detach().float()
    else:  # router=None keeps its meaning (slice the gate rows) even when a MappedRouter is needed
        kept = (lp.merge if lp.merge is not None else torch.eye(num_experts)).argmax(dim=1).to(weight.device)
        weight = nn.Parameter(weight.detach().index_select(0, kept), requires_grad=False)
        bias = bias.index_select(0, kept.to(bias.device)) if bias is not None else None
        mapping = torch.eye(len(kept))
    top_k = lp.top_k or int(getattr(config, adapter.top_k_key))
    mapped = mapped_router_class(type(router))(weight, mapping, bias, slot_group, top_k, rule, lp.skip_threshold)
    setattr(block, adapter.router_attr, mapped)


def _sliced_router(adapter: MoEAdapter, router: nn.Module, settings: dict) -> nn.Module:
    """A copy of the family's router with the kept experts' rows (the original stays untouched)."""
    sliced = copy.deepcopy(router)
    kept = settings["kept"].to(router.weight.device)
    sliced.weight = nn.Parameter(router.weight.detach().index_select(0, kept), requires_grad=False)
    if adapter.correction_bias_attr:
        bias = getattr(router, adapter.correction_bias_attr)
        setattr(sliced, adapter.correction_bias_attr, bias.index_select(0, kept.to(bias.device)))
    for name, value in settings.items():
        if name != "kept":
            setattr(sliced, name, value)
    return sliced


def _update_config_when_uniform(model, adapter: MoEAdapter) -> None:
    """Expert count and top-k go into the config only when every routed MoE layer agrees."""
    counts, top_ks = set(), set()
    for layer in decoder_layers(model):
        block = moe_block(adapter, layer)
        if block is None:
            continue
        router = getattr(block, adapter.router_attr)
        if isinstance(router, CondensedRouter):
            continue
        counts.add(getattr(block, adapter.experts_attr).num_experts)
        top_ks.add(router.top_k)
    if len(counts) == 1:
        setattr(model.config, adapter.expert_count_key, counts.pop())
    if len(top_ks) == 1:
        setattr(model.config, adapter.top_k_key, top_ks.pop())


@dataclass
class ExpertSnapshot:
    """What ``reset_plan`` needs to restore the uncompressed model (see ``snapshot_experts``)."""

    layers: dict[int, dict] = field(default_factory=dict)
    config_values: dict = field(default_factory=dict)


def snapshot_experts(model, device: str | torch.device | None = None) -> ExpertSnapshot:
    """Remember the uncompressed MoE layers so plans can be swapped without reloading.

    ``device=None`` keeps references to the original tensors (no copy; ``apply_plan`` replaces
    rather than modifies them, so they stay intact, but they also stay in memory). ``device='cpu'``
    keeps CPU copies instead, so an applied plan really frees the device memory; ``reset_plan``
    copies them back.
    """
    if getattr(model, "compression_plan", None) is not None:
        raise HarnessError("snapshot_experts needs the uncompressed model; it already has a plan applied")
    adapter = adapter_for(model)
    snapshot = ExpertSnapshot(
        config_values={
            key: getattr(model.config, key) for key in (adapter.expert_count_key, adapter.top_k_key)
        }
    )
    for index, layer in enumerate(decoder_layers(model)):
        block = moe_block(adapter, layer)
        if block is None:
            continue
        experts = getattr(block, adapter.experts_attr)
        tensors = {name: getattr(experts, name) for name in ("gate_up_proj", "down_proj")}
        if device is not None:
            tensors = {name: t.detach().to(device, copy=True) for name, t in tensors.items()}
        snapshot.layers[index] = dict(
            block=block,
            router=getattr(block, adapter.router_attr),
            num_experts=experts.num_experts,
            **tensors,
        )
    return snapshot


def reset_plan(model, snapshot: ExpertSnapshot):
    """Undo ``apply_plan``: put the snapshot's experts, routers and blocks back; return the model."""
    adapter = adapter_for(model)
    layers = decoder_layers(model)
    for index, saved in snapshot.layers.items():
        layer = layers[index]
        block = saved["block"]
        setattr(layer, adapter.moe_attr, block)
        setattr(block, adapter.router_attr, saved["router"])
        experts = getattr(block, adapter.experts_attr)
        device = saved["router"].weight.device
        for name in ("gate_up_proj", "down_proj"):
            tensor = saved[name]
            if not isinstance(tensor, nn.Parameter):
                tensor = nn.Parameter(tensor.to(device, copy=True), requires_grad=False)
            setattr(experts, name, tensor)
        experts.num_experts = saved["num_experts"]
    for layer in layers:
        layer.__dict__.pop("forward", None)
    for key, value in snapshot.config_values.items():
        setattr(model.config, key, value)
    model.compression_plan = None
    model.compression_original_config = None
    return model
