"""Apply a CompressionPlan to a loaded transformers 5.x MoE model, in place.

What each layer mode becomes (E original experts, B kept slots, k active per token):

- routed: the Experts module's per-expert tensors (``gate_up_proj`` / ``down_proj``, and biases
  where the family has them; ``ResolvedMoE.expert_tensors``) are replaced by the B merged
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
- routed after top-k (``expert_to_slot``; M-SMoE, HC-SMoE): the experts are merged as above (each
  original expert's neurons first re-ordered by ``permutations`` when the plan has them) and an
  ``AliasedRouter`` takes the router's place: the family's own router forward, over the E
  originals with the plan's top-k, then each picked expert's index becomes its slot. Two picks in
  one slot stay two entries, so the experts forward adds their weights.
- condensed (CD-MoE): every token uses all B (merged) experts with the fixed
  ``condensed_weights``; the router is bypassed and no scaling factor is applied.
- dropped (Layer Drop): the whole MLP sub-layer, shared experts included, returns zeros, so the
  residual stream passes through.
- skip_blocks (Block Drop): a ``SkippedBlock`` takes the decoder layer's place in the layer list
  and returns its input unchanged. The layer itself is not touched (accelerate's device hooks,
  which live on its instance, stay), and ``reset_plan`` puts it back.

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
- Stand-in modules (``DroppedMoE``, ``SkippedBlock``) keep the module they replace, unregistered,
  in ``replaced``: its weights leave the model's parameters and state dict while the plan is on.

Search runners swap plans without reloading: ``snap = snapshot_experts(model)`` once, then
``apply_plan(model, A)``, ``reset_plan(model, snap)``, ``apply_plan(model, B)``, ...
``model.compression_plan`` is the plan installed now (None without one); ``reset_plan`` undoes
exactly what that plan changed.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from harness.compress.adapters import ResolvedMoE, resolve
from harness.compress.plan import CompressionPlan, LayerPlan, is_one_hot
from harness.errors import HarnessError

# ----------------------------------------------------------------------------------------------
# Validation: everything is checked before the first weight changes.


def validate_plan_for_model(model, plan: CompressionPlan) -> ResolvedMoE:
    """Raise HarnessError naming the layer and the mismatch if ``plan`` does not fit ``model``."""
    if not isinstance(plan, CompressionPlan):
        raise HarnessError(f"apply_plan needs a CompressionPlan, got {type(plan).__name__}; load it with load_plan")
    if getattr(model, "compression_plan", None) is not None:
        raise HarnessError("the model already has a compression plan applied; call reset_plan(model, snapshot) first")
    moe = resolve(model)
    if plan.num_layers != moe.num_layers:
        raise HarnessError(f"plan is for {plan.num_layers} decoder layers but the model has {moe.num_layers}")
    if plan.num_experts != moe.num_experts:
        raise HarnessError(f"plan is for {plan.num_experts} experts per layer but the model has {moe.num_experts}")
    if plan.hidden_size is not None and plan.hidden_size != moe.hidden_size:
        raise HarnessError(f"plan is for hidden size {plan.hidden_size} but the model has {moe.hidden_size}")
    # the plan's own checks: layer and skip_blocks indices, matrices, modes, top_k, skip threshold
    plan.validate(num_layers=moe.num_layers, num_experts=moe.num_experts, hidden_size=moe.hidden_size)
    for index, layer_plan in sorted(plan.layers.items()):
        if not moe.is_moe(index):
            raise HarnessError(f"plan layer {index}: decoder layer {index} of this model is dense (no experts); remove it from the plan")
        slots = layer_plan.budget(moe.num_experts)
        if layer_plan.permutations is not None:
            _check_permutations_fit(moe, index, layer_plan.permutations)
        if layer_plan.mode == "routed" and layer_plan.top_k is None and moe.top_k > slots:
            raise HarnessError(
                f"plan layer {index}: keeps {slots} experts but the model routes to {moe.top_k}; set top_k <= {slots}"
            )
    return moe


def _check_permutations_fit(moe: ResolvedMoE, index: int, permutations: torch.Tensor) -> None:
    experts = moe.experts(moe.block(index))
    width = experts.down_proj.shape[-1]
    if permutations.shape[1] != width:
        raise HarnessError(f"plan layer {index}: permutations order {permutations.shape[1]} neurons but the experts "
                           f"have {width}; use a plan made for this model")
    unknown = [name for name in moe.expert_tensors if name not in NEURON_AXES]
    if unknown:
        raise HarnessError(f"plan layer {index}: cannot permute the neurons of expert tensors {unknown}")


# ----------------------------------------------------------------------------------------------
# Expert merging.

# Where each expert tensor (one expert's slice) holds the intermediate neurons: (dim, halves).
# gate_up_proj (2I, H) is [gate; up], so both halves are re-ordered alike; down_proj is (H, I).
NEURON_AXES = {"gate_up_proj": (0, 2), "down_proj": (1, 1), "gate_up_proj_bias": (0, 2), "down_proj_bias": None}


def permute_neurons(name: str, expert: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """One expert's tensor ``name`` with its intermediate neurons taken in ``order`` (length I)."""
    axes = NEURON_AXES[name]
    if axes is None:
        return expert
    dim, halves = axes
    width = expert.shape[dim] // halves
    order = order.to(expert.device).long()
    index = torch.cat([order + h * width for h in range(halves)])
    return expert.index_select(dim, index)


def merge_expert_tensor(weight: torch.Tensor, merge: torch.Tensor, align=None) -> torch.Tensor:
    """``out[i] = sum_e merge[i, e] * align(e, weight[e])`` in fp32, cast to ``weight.dtype``.

    ``align(e, expert)`` re-orders expert e's neurons (None: as is). Rows that are one-hot copy the
    (aligned) expert bit-exactly. Works expert by expert so the extra memory is one fp32 expert,
    not a fp32 copy of all E.
    """
    merge = merge.detach().to("cpu", torch.float32)
    if align is None and is_one_hot(merge):
        kept = merge.argmax(dim=1).to(weight.device)
        return weight.detach().index_select(0, kept)
    align = align or (lambda e, expert: expert)
    out = torch.empty((merge.shape[0], *weight.shape[1:]), dtype=weight.dtype, device=weight.device)
    for i, row in enumerate(merge):
        experts = row.nonzero().flatten().tolist()
        if len(experts) == 1 and row[experts[0]] == 1:
            out[i] = align(experts[0], weight[experts[0]].detach())
            continue
        acc = torch.zeros(weight.shape[1:], dtype=torch.float32, device=weight.device)
        for e in experts:
            acc.add_(align(e, weight[e].detach()).float(), alpha=float(row[e]))
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
    def of(cls, moe: ResolvedMoE, groups_kept: bool) -> "RoutingRule":
        adapter = moe.adapter
        limited = groups_kept and moe.group_limited
        return cls(
            scoring=adapter.scoring,
            logits_in_fp32=adapter.logits_in_fp32,
            renormalize=moe.renormalize,
            renormalize_eps=adapter.renormalize_eps,
            weights_in_logits_dtype=adapter.weights_in_logits_dtype,
            scaling=moe.scaling,
            group_rule=adapter.group_rule if limited else None,
            n_group=moe.n_group if limited else 1,
            topk_group=moe.topk_group if limited else 1,
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


class AliasedRouter(nn.Module):
    """Routing after top-k: the family's own router over the E originals, picks sent to slots.

    Installed as a subclass of the family's router class (``aliased_router_class``), holding the
    original's weight, buffers and settings (shared, not copied), so its forward is the family's.
    """

    def __init__(self, router: nn.Module, expert_to_slot: torch.Tensor, top_k: int):
        nn.Module.__init__(self)
        for name, value in vars(router).items():  # plain settings: top_k, num_group, norm_topk_prob, ...
            if not name.startswith("_") and name not in ("training", "forward"):
                setattr(self, name, value)
        for name, param in router.named_parameters(recurse=False):
            setattr(self, name, param)
        for name, buffer in router.named_buffers(recurse=False):
            self.register_buffer(name, buffer, persistent=name not in router._non_persistent_buffers_set)
        self.register_buffer("expert_to_slot", expert_to_slot.to(device=router.weight.device, dtype=torch.long))
        self.top_k = top_k
        self.training = router.training

    def forward(self, hidden_states):
        logits, weights, indices = super().forward(hidden_states)
        return logits, weights, self.expert_to_slot[indices]


_ALIASED_CLASSES: dict[type, type] = {}


def aliased_router_class(base: type) -> type:
    """``AliasedRouter`` as a subclass of the family's router class ``base`` (cached)."""
    if base not in _ALIASED_CLASSES:
        _ALIASED_CLASSES[base] = type(f"Aliased{base.__name__}", (AliasedRouter, base), {})
    return _ALIASED_CLASSES[base]


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


def _remember_replaced(stand_in: nn.Module, original: nn.Module) -> None:
    """Keep the replaced module on the stand-in without registering it (no parameters, no state dict)."""
    stand_in.__dict__["replaced"] = original


class DroppedMoE(nn.Module):
    """Layer Drop: the MLP sub-layer (routed and shared experts) contributes nothing."""

    def __init__(self, replaced: nn.Module):
        super().__init__()
        _remember_replaced(self, replaced)

    def forward(self, hidden_states, *args, **kwargs):
        return torch.zeros_like(hidden_states)


class SkippedBlock(nn.Module):
    """Block Drop: stands in the decoder-layer list for a skipped layer and returns its input.

    The skipped layer is kept, untouched, in ``replaced`` for ``reset_plan`` (device hooks that
    accelerate put on it stay). With a KV cache it stores a one-channel zero placeholder of the new
    tokens in its cache slot, so ``cache.get_seq_length()`` (read from the first layer) stays right.
    """

    def __init__(self, replaced: nn.Module, layer_idx: int):
        super().__init__()
        _remember_replaced(self, replaced)
        self.layer_idx = layer_idx
        if hasattr(replaced, "attention_type"):  # read by some models' layer loops
            self.attention_type = replaced.attention_type

    def forward(self, hidden_states, *args, cache=None, past_key_values=None, **kwargs):
        cache = cache if cache is not None else past_key_values  # transformers 5 passes ``cache``
        if cache is not None:
            batch, tokens = hidden_states.shape[:2]
            placeholder = hidden_states.new_zeros(batch, 1, tokens, 1)
            cache.update(placeholder, placeholder, self.layer_idx)
        return hidden_states


# ----------------------------------------------------------------------------------------------
# Router choice per layer.


def _slot_groups(moe: ResolvedMoE, lp: LayerPlan) -> torch.Tensor:
    """The expert group of each slot: the group of its dominant original expert."""
    if lp.router is not None:
        dominant = lp.router.abs().argmax(dim=1)
    elif lp.merge is not None:
        dominant = lp.merge.abs().argmax(dim=1)
    else:
        dominant = torch.arange(moe.num_experts)
    return (dominant // (moe.num_experts // moe.n_group)).long()


def _groups_kept(moe: ResolvedMoE, slot_group: torch.Tensor) -> bool:
    """Group-limited selection survives only if every group holds the same number of slots."""
    if not moe.group_limited:
        return False
    counts = torch.bincount(slot_group, minlength=moe.n_group)
    return bool((counts == counts[0]).all() and counts[0] > 0)


def _kept_experts(moe: ResolvedMoE, lp: LayerPlan) -> torch.Tensor | None:
    """The kept original experts when the layer is pure pruning with a sliceable router, else None.

    ``router=None`` means "slice the gate rows" by definition. A one-hot ``router`` equal to the
    merge rows means "scores over the E originals, then pick": the same thing only when the
    family renormalises the top-k or scores each expert on its own (sigmoid); for softmax without
    renormalisation the two differ by the softmax denominator, so a MappedRouter is used.
    """
    merge = lp.merge if lp.merge is not None else torch.eye(moe.num_experts)
    if not is_one_hot(merge):
        return None
    if lp.router is not None:
        if not torch.equal(lp.router.to(merge.dtype), merge):
            return None
        if not (moe.adapter.scoring == "sigmoid" or moe.renormalize):
            return None
    return merge.argmax(dim=1)


def native_router_settings(moe: ResolvedMoE, lp: LayerPlan) -> dict | None:
    """Router attributes for the family's own router class, or None when a MappedRouter is needed.

    The dict holds the attributes to set on a copy of the original router (``num_experts``,
    ``top_k`` and, for DeepSeek, the group settings) plus ``kept`` (the kept expert indices).
    """
    if lp.mode != "routed" or lp.skip_threshold is not None or lp.expert_to_slot is not None:
        return None
    kept = _kept_experts(moe, lp)
    if kept is None:
        return None
    slots = len(kept)
    settings = dict(kept=kept, num_experts=slots, top_k=lp.top_k or moe.top_k)
    if not moe.group_limited:
        return settings
    adapter = moe.adapter
    slot_group = _slot_groups(moe, lp)
    per_group = slots // moe.n_group
    if _groups_kept(moe, slot_group):
        in_group_order = bool((slot_group[1:] >= slot_group[:-1]).all())
        if not in_group_order or (adapter.group_rule == "top2_sum" and per_group < 2):
            return None
        return settings
    # Groups cannot be kept: plain top-k over the slots, in the family's own terms (``groups_off``);
    # top2_sum scores its single group by the best two slots, so it needs two.
    if adapter.group_rule == "top2_sum" and slots < 2:
        return None
    settings.update(adapter.groups_off)
    return settings


# ----------------------------------------------------------------------------------------------
# Applying and undoing plans.


def apply_plan(model, plan: CompressionPlan):
    """Apply ``plan`` to ``model`` in place and return it (see the module docstring).

    ``model.compression_plan`` is set once the plan is validated, before the first weight changes,
    so a failure part-way leaves a model that ``reset_plan`` still undoes.
    """
    moe = validate_plan_for_model(model, plan)
    layers = moe.layers
    model.compression_plan = plan
    model.compression_original_config = moe.config_values()
    with torch.no_grad():
        for index, lp in sorted(plan.layers.items()):
            block = moe.block(index)
            if lp.mode == "dropped":
                setattr(layers[index], moe.adapter.moe_attr, DroppedMoE(block))
                continue
            if lp.mode == "condensed":  # a dense stand-in holding only its experts (harness/compress/condensed.py)
                from harness.compress.condensed import CondensedMoE

                setattr(layers[index], moe.adapter.moe_attr, CondensedMoE.from_plan(moe, block, lp.merge, lp.condensed_weights))
                continue
            _apply_to_block(moe, block, lp)
    for index in sorted(set(plan.skip_blocks)):
        layers[index] = SkippedBlock(layers[index], index)
    _update_config_when_uniform(model, moe)
    return model


def _apply_to_block(moe: ResolvedMoE, block, lp: LayerPlan) -> None:
    adapter = moe.adapter
    router = moe.router(block)
    experts = moe.experts(block)
    if lp.merge is not None:
        merge = lp.merge.to(torch.float32)
        for name in moe.expert_tensors:
            align = None
            if lp.permutations is not None:
                def align(e, expert, name=name):
                    return permute_neurons(name, expert, lp.permutations[e])
            merged = merge_expert_tensor(getattr(experts, name), merge, align)
            setattr(experts, name, nn.Parameter(merged, requires_grad=False))
        experts.num_experts = lp.budget(moe.num_experts)
    if lp.expert_to_slot is not None:
        aliased = aliased_router_class(type(router))(router, lp.expert_to_slot, lp.top_k or moe.top_k)
        setattr(block, adapter.router_attr, aliased)
        return
    if lp.mode == "condensed":
        setattr(block, adapter.router_attr, CondensedRouter(lp.condensed_weights.to(router.weight.device), router.hidden_dim))
        return
    settings = native_router_settings(moe, lp)
    if settings is not None:
        setattr(block, adapter.router_attr, _sliced_router(moe, router, settings))
        return
    slot_group = _slot_groups(moe, lp)
    rule = RoutingRule.of(moe, groups_kept=_groups_kept(moe, slot_group))
    weight = router.weight
    bias = getattr(router, adapter.correction_bias_attr) if adapter.correction_bias_attr else None
    if lp.router is not None:
        mapping = lp.router.detach().float()
    else:  # router=None keeps its meaning (slice the gate rows) even when a MappedRouter is needed
        kept = (lp.merge if lp.merge is not None else torch.eye(moe.num_experts)).argmax(dim=1).to(weight.device)
        weight = nn.Parameter(weight.detach().index_select(0, kept), requires_grad=False)
        bias = bias.index_select(0, kept.to(bias.device)) if bias is not None else None
        mapping = torch.eye(len(kept))
    top_k = lp.top_k or moe.top_k
    mapped = mapped_router_class(type(router))(weight, mapping, bias, slot_group, top_k, rule, lp.skip_threshold)
    setattr(block, adapter.router_attr, mapped)


def _sliced_router(moe: ResolvedMoE, router: nn.Module, settings: dict) -> nn.Module:
    """A copy of the family's router with the kept experts' rows (the original stays untouched)."""
    sliced = copy.deepcopy(router)
    kept = settings["kept"].to(router.weight.device)
    sliced.weight = nn.Parameter(router.weight.detach().index_select(0, kept), requires_grad=False)
    bias_attr = moe.adapter.correction_bias_attr
    if bias_attr:
        bias = getattr(router, bias_attr)
        setattr(sliced, bias_attr, bias.index_select(0, kept.to(bias.device)))
    for name, value in settings.items():
        if name != "kept":
            setattr(sliced, name, value)
    return sliced


def _update_config_when_uniform(model, moe: ResolvedMoE) -> None:
    """Expert count and top-k go into the config only when every routed MoE layer agrees."""
    counts, top_ks = set(), set()
    for _, block in moe.blocks():
        router = moe.router(block)
        if isinstance(router, CondensedRouter):
            continue
        counts.add(moe.experts(block).num_experts)
        top_ks.add(router.top_k)
    if len(counts) == 1:
        setattr(model.config, moe.adapter.expert_count_key, counts.pop())
    if len(top_ks) == 1:
        setattr(model.config, moe.adapter.top_k_key, top_ks.pop())


@dataclass
class ExpertSnapshot:
    """What ``reset_plan`` needs to restore the uncompressed MoE layers (see ``snapshot_experts``).

    ``layers``: MoE layer index -> its block, router, expert count and per-expert tensors by name.
    """

    layers: dict[int, dict] = field(default_factory=dict)
    config_values: dict = field(default_factory=dict)
    decoder_layers: object = field(default=None, repr=False)  # the layer list it was taken of


def snapshot_experts(model, device: str | torch.device | None = None) -> ExpertSnapshot:
    """Remember the uncompressed MoE layers so plans can be swapped without reloading.

    ``device=None`` keeps references to the original tensors (no copy; ``apply_plan`` replaces
    rather than modifies them, so they stay intact, but they also stay in memory). ``device='cpu'``
    keeps CPU copies instead, so an applied plan really frees the device memory; ``reset_plan``
    copies them back.
    """
    if getattr(model, "compression_plan", None) is not None:
        raise HarnessError("snapshot_experts needs the uncompressed model; it already has a plan applied")
    moe = resolve(model)
    snapshot = ExpertSnapshot(config_values=moe.config_values(), decoder_layers=moe.layers)
    for index, block in moe.blocks():
        experts = moe.experts(block)
        tensors = {name: getattr(experts, name) for name in moe.expert_tensors}
        if device is not None:
            tensors = {name: t.detach().to(device, copy=True) for name, t in tensors.items()}
        snapshot.layers[index] = dict(
            block=block, router=moe.router(block), num_experts=experts.num_experts, tensors=tensors
        )
    return snapshot


def reset_plan(model, snapshot: ExpertSnapshot):
    """Undo ``apply_plan``: put back what the installed plan replaced; return the model.

    Only what the plan changed is touched: its skipped blocks get their layers back from the
    stand-ins, its MoE layers their blocks, routers and experts from ``snapshot``, the config its
    expert count and top-k. Without a plan installed this changes nothing.
    """
    plan = getattr(model, "compression_plan", None)
    if plan is None:
        return model
    moe = resolve(model)
    if snapshot.decoder_layers is not None and snapshot.decoder_layers is not moe.layers:
        raise HarnessError("reset_plan: the snapshot was taken of another model; take it with snapshot_experts(model)")
    missing = sorted(set(plan.layers) - set(snapshot.layers))
    if missing:
        raise HarnessError(f"reset_plan: the snapshot has no MoE layers {missing}; take it before apply_plan")
    layers = moe.layers
    for index in plan.skip_blocks:
        if isinstance(layers[index], SkippedBlock):
            layers[index] = layers[index].replaced
    adapter = moe.adapter
    for index in plan.layers:
        saved = snapshot.layers[index]
        block = saved["block"]
        setattr(layers[index], adapter.moe_attr, block)
        setattr(block, adapter.router_attr, saved["router"])
        experts = moe.experts(block)
        device = saved["router"].weight.device
        for name, tensor in saved["tensors"].items():
            if not isinstance(tensor, nn.Parameter):
                tensor = nn.Parameter(tensor.to(device, copy=True), requires_grad=False)
            setattr(experts, name, tensor)
        experts.num_experts = saved["num_experts"]
    for key, value in snapshot.config_values.items():
        setattr(model.config, key, value)
    model.compression_plan = None
    model.compression_original_config = None
    return model
