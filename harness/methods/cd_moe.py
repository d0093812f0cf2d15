"""CD-MoE ("Condense, Don't Just Prune"): which experts and which layers to condense, found greedily.

A condensed layer (``harness/compress/condensed.py``) runs a fixed expert set S with fixed weights on
every token, plus the shared experts. This module finds S per MoE layer and the layers to condense:

- **Expert weights:** w_e = mean over the calibration tokens that selected e (top-k) of its gate
  weight, the family's score over all E experts, not renormalised (softmax; DeepSeek-V3: sigmoid).
  ``weight_rule='routed'`` takes the weight the model really applies instead (renormalised, scaled).
  An expert no token selected gets 0.
- **Divergence:** per token, the Jensen-Shannon divergence between softmax over the hidden dimension
  of the original and the condensed hidden state (eps 1e-10 added as the reference does), averaged
  over a document's tokens, then over documents (padding never counts).
- **Greedy expert search** (per MoE layer, only that layer condensed): add the expert minimising the
  divergence of that decoder layer's output (as ``output_hidden_states`` reports it: the last one
  after the final norm). Pre-norm residual layers change only in their MLP sub-layer, so the
  condensed output is ``O - Z + C_S(X)`` with X, Z the MoE block's input and output and O the layer
  output, all from one run of that layer on cached inputs; each expert's output on the cached tokens
  is computed once and every candidate set is formed from those.
- **Greedy layer search** (beam 1, wider as an option): add the layer (with its greedy expert prefix)
  minimising the divergence of the final hidden state; a candidate reruns only the decoder layers
  from itself on, from the layer inputs cached (by forward pre-hooks) under the beam's current plan.

Both searches report every result through callbacks and accept the results of an earlier run, so a
killed search resumes where it stopped and ends with the same choices. Ties go to the lowest expert
or layer index (the reference's strict ``<``).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from harness.compress.adapters import resolve
from harness.compress.apply import apply_plan, reset_plan, snapshot_experts
from harness.compress.condensed import expert_output, shared_output
from harness.compress.plan import CompressionPlan, LayerPlan, one_hot_rows
from harness.errors import HarnessError
from harness.models.hf_causal_lm import right_pad

EPS = 1e-10
WEIGHT_RULES = ("gate", "routed")

# Where this implementation departs from the reference code (duterscmy/CD-MoE); each plan's
# metadata['deviations'] carries this list (see docs/CD_MOE.md).
DEVIATIONS = (
    "layers are named by decoder-layer index everywhere (plan, JSON files); the reference's MoE-layer index "
    "(decoder index - 1 on DeepSeekMoE, hard-coded +2 into hidden_states) is not used, dense layers are never searched",
    "a layer's calls are told apart by module hooks, not the reference's global call counter",
    "greedy expert search: each candidate is one decoder layer's output rebuilt on cached inputs "
    "(layer output - MoE output + condensed output), not a whole-model pass; same objective and values",
    "greedy layer search: each candidate reruns the decoder layers from itself on, from cached inputs",
    "documents right-padded with an attention mask (positions start at 0), pad tokens never counted; the reference "
    "left-pads and trims the pads",
    "the divergence is computed in at least float32 from the model's hidden states (the reference: bfloat16 model, "
    "float32 hidden states)",
    "ties go to the lowest expert / layer index (the reference's strict '<' over ascending candidates)",
    "the expert orders and the layer search run in one command (the reference's greedy_search_layer.py reads an "
    "undefined argument); the fine-tuning stage is not part of the search",
)


# ----------------------------------------------------------------------------------------------
# The objective.


def wide(t: torch.Tensor) -> torch.Tensor:
    """At least fp32 (bf16 / fp16 hidden states are widened; a float64 model stays float64)."""
    return t if t.dtype == torch.float64 else t.float()


def js_per_token(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """JS(p, q) over the last dimension of two probability tensors, eps added as the reference does."""
    m = 0.5 * (p + q) + EPS
    p, q = p + EPS, q + EPS
    log_m = m.log()
    return 0.5 * ((p * (p.log() - log_m)).sum(-1) + (q * (q.log() - log_m)).sum(-1))


def document_divergence(p: torch.Tensor, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per document (row of ``mask``): mean over its tokens of JS(p, softmax(hidden)).

    ``p`` (B, S, H) is the original softmax; ``hidden`` (..., B, S, H) the condensed hidden states.
    """
    js = js_per_token(p, torch.softmax(wide(hidden), dim=-1))
    mask = mask.to(js.dtype)
    return (js * mask).sum(-1) / mask.sum(-1)


# ----------------------------------------------------------------------------------------------
# Calibration: one forward that caches every decoder layer's call and gathers the expert weights.


@dataclass
class Batch:
    input_ids: torch.Tensor  # (B, S), right-padded
    attention_mask: torch.Tensor  # (B, S), 1 on real tokens


def make_batches(documents: list[list[int]], pad_token_id: int, batch_size: int, device) -> list[Batch]:
    """Documents (token lists) in order, ``batch_size`` a batch, right-padded (positions start at 0)."""
    batches = []
    for start in range(0, len(documents), batch_size):
        batches.append(Batch(*right_pad(documents[start:start + batch_size], pad_token_id, device)))
    return batches


@dataclass
class LayerCall:
    """One decoder layer's call in a forward: its hidden-state input and the other arguments."""

    hidden: torch.Tensor
    args: tuple
    kwargs: dict
    hidden_in_kwargs: bool

    def run(self, layer, hidden: torch.Tensor | None = None) -> torch.Tensor:
        hidden = self.hidden if hidden is None else hidden
        if self.hidden_in_kwargs:
            out = layer(*self.args, **{**self.kwargs, "hidden_states": hidden})
        else:
            out = layer(hidden, *self.args, **self.kwargs)
        return out[0] if isinstance(out, tuple) else out

    def with_hidden(self, hidden: torch.Tensor) -> "LayerCall":
        return LayerCall(hidden, self.args, self.kwargs, self.hidden_in_kwargs)


@dataclass
class Calibration:
    """What the searches read: per batch the calls of every decoder layer and the original final
    softmax; per MoE layer the expert weights (E,) and selection counts (E,)."""

    batches: list[Batch]
    calls: list[list[LayerCall]]  # [batch][decoder layer]
    final_probs: list[torch.Tensor]  # [batch] (B, S, H) fp32
    weights: dict[int, torch.Tensor] = field(default_factory=dict)
    counts: dict[int, torch.Tensor] = field(default_factory=dict)

    @property
    def num_documents(self) -> int:
        return sum(int(b.attention_mask.shape[0]) for b in self.batches)


def final_hidden(model, hidden: torch.Tensor) -> torch.Tensor:
    """The last entry of ``output_hidden_states``: the last layer's output after the final norm."""
    return model.model.norm(hidden)


def _score(moe, logits: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(logits.float()) if moe.adapter.scoring == "sigmoid" else torch.softmax(logits.float(), dim=-1)


@torch.no_grad()
def calibrate(model, batches: list[Batch], weight_rule: str = "gate") -> Calibration:
    """One forward of the uncompressed model over ``batches``: layer calls, final softmax, weights."""
    if weight_rule not in WEIGHT_RULES:
        raise HarnessError(f"CD-MoE weight rule {weight_rule!r} is not one of {', '.join(WEIGHT_RULES)}")
    if getattr(model, "compression_plan", None) is not None:
        raise HarnessError("CD-MoE calibrates the uncompressed model; it has a plan applied (reset it first)")
    moe = resolve(model)
    sums = {i: torch.zeros(moe.num_experts, dtype=torch.float64) for i in moe.moe_layers}
    counts = {i: torch.zeros(moe.num_experts, dtype=torch.long) for i in moe.moe_layers}
    calls: list[list[LayerCall]] = []
    finals: list[torch.Tensor] = []
    mask_now: list[torch.Tensor] = []
    hooks = []

    def capture(module, args, kwargs):
        in_kwargs = not args
        hidden = kwargs["hidden_states"] if in_kwargs else args[0]
        rest = dict(kwargs)
        rest.pop("hidden_states", None)
        calls[-1].append(LayerCall(hidden, tuple(args[1:]), rest, in_kwargs))

    def gather(module, inputs, output, index):
        logits, routed, indices = output[0], output[1], output[2]
        real = mask_now[0].reshape(-1).bool()
        indices = indices.reshape(real.numel(), -1)[real]
        if weight_rule == "gate":
            chosen = _score(moe, logits).reshape(real.numel(), -1)[real].gather(1, indices)
        else:
            chosen = routed.float().reshape(real.numel(), -1)[real]
        flat = indices.reshape(-1).cpu()
        sums[index].index_add_(0, flat, chosen.reshape(-1).double().cpu())
        counts[index] += torch.bincount(flat, minlength=moe.num_experts)[: moe.num_experts]

    for layer in moe.layers:
        hooks.append(layer.register_forward_pre_hook(capture, with_kwargs=True))
    for index, block in moe.blocks():
        hooks.append(moe.router(block).register_forward_hook(lambda m, i, o, index=index: gather(m, i, o, index)))
    try:
        for batch in batches:
            calls.append([])
            mask_now[:] = [batch.attention_mask]
            out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False,
                        output_hidden_states=True)
            finals.append(torch.softmax(wide(out.hidden_states[-1]), dim=-1))
    finally:
        for hook in hooks:
            hook.remove()
    if any(len(c) != moe.num_layers for c in calls):
        raise HarnessError("CD-MoE: a decoder layer ran more or less than once per forward; this model's layer loop is not supported")
    weights = {i: (sums[i] / counts[i].clamp(min=1)).float() for i in moe.moe_layers}
    return Calibration(batches, calls, finals, weights, counts)


# ----------------------------------------------------------------------------------------------
# Plans.


def condensed_plan(model, experts: dict[int, list[int]], weights: dict[int, torch.Tensor], **metadata) -> CompressionPlan:
    """The plan condensing each layer of ``experts`` to its expert list with the weights of those experts.

    An empty list (K=0, shared experts only) is written as one slot of weight 0, since plan files
    hold at least one row per layer; the condensed layer keeps no zero-weight slot.
    """
    moe = resolve(model)
    layers = {}
    for index, ids in experts.items():
        if ids:
            layers[index] = LayerPlan(mode="condensed", merge=one_hot_rows(ids, moe.num_experts),
                                      condensed_weights=weights[index][list(ids)].float().clone())
        else:
            layers[index] = LayerPlan(mode="condensed", merge=one_hot_rows([0], moe.num_experts),
                                      condensed_weights=torch.zeros(1))
    return CompressionPlan(num_layers=moe.num_layers, num_experts=moe.num_experts, layers=layers,
                           hidden_size=moe.hidden_size, metadata=dict(metadata))


# ----------------------------------------------------------------------------------------------
# Greedy expert search (one MoE layer at a time, on that layer's cached inputs).


class LayerCache:
    """One MoE layer on the calibration batches: the block's input X, the residual O - Z, the
    original softmax of the layer output, and (up to a memory budget) each expert's output on X."""

    def __init__(self, model, calib: Calibration, index: int, cache_bytes: int):
        self.model, self.index = model, index
        moe = resolve(model)
        self.block = moe.block(index)
        experts = moe.experts(self.block)
        self.tensors = {name: getattr(experts, name) for name in moe.expert_tensors}
        self.act_fn = experts.act_fn
        self.num_experts = moe.num_experts
        self.is_last = index == moe.num_layers - 1
        self.x, self.base, self.probs, self.masks = [], [], [], []
        self.cache_bytes, self._outputs = cache_bytes, {}
        layer = moe.layers[index]
        for call, batch in zip(calib.calls, calib.batches):
            seen = {}
            hook = self.block.register_forward_hook(lambda m, i, o: seen.update(x=i[0], z=o))
            try:
                with torch.no_grad():
                    out = call[index].run(layer)
            finally:
                hook.remove()
            x = seen["x"].reshape(-1, seen["x"].shape[-1])
            residual = wide(out - seen["z"])
            shared = shared_output(self.block, x)
            base = residual if shared is None else residual + wide(shared).reshape(residual.shape)
            target = final_hidden(model, out) if self.is_last else out
            self.x.append(x)
            self.base.append(base)
            self.probs.append(torch.softmax(wide(target), dim=-1))
            self.masks.append(batch.attention_mask)

    def expert_outputs(self, b: int) -> torch.Tensor:
        """(E, B, S, H), at least fp32: every expert's output on batch ``b``'s tokens (kept while the budget allows)."""
        if b in self._outputs:
            return self._outputs[b]
        shape = self.base[b].shape
        with torch.no_grad():
            outs = torch.stack([wide(expert_output(self.tensors, self.act_fn, e, self.x[b])).reshape(shape)
                                for e in range(self.num_experts)])
        used = sum(t.numel() * t.element_size() for t in self._outputs.values())
        if used + outs.numel() * outs.element_size() <= self.cache_bytes:
            self._outputs[b] = outs
        return outs

    def hidden(self, condensed: torch.Tensor) -> torch.Tensor:
        """The layer output as ``output_hidden_states`` reports it, from (O - Z) + C(X)."""
        return final_hidden(self.model, condensed) if self.is_last else condensed

    @torch.no_grad()
    def divergences(self, chosen: list[int], weights: torch.Tensor, candidates: list[int]) -> torch.Tensor:
        """Mean document divergence of the layer condensed to ``chosen + [c]``, for each candidate c."""
        totals = torch.zeros(len(candidates), dtype=torch.float64)
        documents = 0
        cand = torch.tensor(candidates, dtype=torch.long)
        for b in range(len(self.x)):
            outs = self.expert_outputs(b)
            current = self.base[b] + (weights[chosen, None, None, None].to(outs.device) * outs[chosen]).sum(0)
            step = max(1, (64 << 20) // max(1, current.numel() * 4))  # candidates per pass: about 64 MiB each
            for start in range(0, len(candidates), step):
                part = cand[start:start + step]
                hidden = current + weights[part, None, None, None].to(outs.device) * outs[part]
                totals[start:start + len(part)] += document_divergence(
                    self.probs[b], self.hidden(hidden), self.masks[b]).sum(-1).double().cpu()
            documents += self.masks[b].shape[0]
        return totals / documents


def search_experts(model, calib: Calibration, index: int, num_experts: int, done: list[int] | None = None,
                   on_step: Callable[[list[int], list[float]], None] | None = None,
                   cache_bytes: int = 2 << 30, divergences: list[float] | None = None) -> tuple[list[int], list[float]]:
    """Greedy expert order of MoE layer ``index`` up to ``num_experts`` experts, and each step's divergence.

    ``done``/``divergences``: the order and values an earlier run found (greedy continues from them;
    the greedy choice of a step depends only on the earlier ones). ``on_step(order, values)`` after each step.
    """
    order, values = list(done or []), list(divergences or [])
    if len(order) >= num_experts:
        return order[:num_experts], values[:num_experts]
    cache = LayerCache(model, calib, index, cache_bytes)
    weights = calib.weights[index]
    while len(order) < num_experts:
        candidates = [e for e in range(cache.num_experts) if e not in order]
        scores = cache.divergences(order, weights, candidates)
        best = int(torch.argmin(scores))  # first minimum: the lowest expert id wins a tie
        order.append(candidates[best])
        values.append(float(scores[best]))
        if on_step is not None:
            on_step(list(order), list(values))
    return order, values


# ----------------------------------------------------------------------------------------------
# Greedy layer search (final hidden state, blocks rerun from the first changed layer).


class PlanSwapper:
    """Installs condensed plans on the model without reloading (snapshot once, reset + apply)."""

    def __init__(self, model, experts: dict[int, list[int]], weights: dict[int, torch.Tensor]):
        self.model, self.experts, self.weights = model, experts, weights
        self.snapshot = snapshot_experts(model)

    def use(self, layers: list[int]) -> None:
        reset_plan(self.model, self.snapshot)
        if layers:
            apply_plan(self.model, condensed_plan(self.model, {i: self.experts[i] for i in layers}, self.weights))

    def clear(self) -> None:
        reset_plan(self.model, self.snapshot)


@torch.no_grad()
def run_from(model, calib: Calibration, inputs: list[list[torch.Tensor]], start: int,
             keep: bool = False) -> tuple[list[torch.Tensor], list[list[torch.Tensor]] | None]:
    """Run decoder layers ``start..`` on the cached inputs of layer ``start`` under the plan installed now.

    Returns the final hidden states per batch and, with ``keep``, the inputs of every layer (those
    below ``start`` shared with ``inputs``).
    """
    layers = resolve(model).layers
    finals, new_inputs = [], [] if keep else None
    for b, calls in enumerate(calib.calls):
        hidden = inputs[b][start]
        kept = list(inputs[b][: start + 1])
        for i in range(start, len(layers)):
            hidden = calls[i].run(layers[i], hidden)
            if keep and i + 1 < len(layers):
                kept.append(hidden)
        finals.append(final_hidden(model, hidden))
        if keep:
            new_inputs.append(kept)
    return finals, new_inputs


def final_divergence(calib: Calibration, finals: list[torch.Tensor]) -> float:
    total = sum(float(document_divergence(p, h, b.attention_mask).double().sum())
                for p, h, b in zip(calib.final_probs, finals, calib.batches))
    return total / calib.num_documents


def search_layers(model, calib: Calibration, experts: dict[int, list[int]], num_layers: int, beam: int = 1,
                  known: dict[tuple[int, ...], float] | None = None,
                  on_result: Callable[[tuple[int, ...], float], None] | None = None) -> list[dict]:
    """Greedy (beam) layer order: ``num_layers`` steps, each adding one MoE layer condensed to ``experts``.

    ``known``: divergences of layer sequences an earlier run evaluated (not recomputed);
    ``on_result(sequence, value)`` after each evaluation. Returns per step the kept beams, best first,
    as ``{"layers": [...], "divergence": v}``.
    """
    moe_layers = list(resolve(model).moe_layers)
    if not 1 <= num_layers <= len(moe_layers):
        raise HarnessError(f"--condense_layers {num_layers} must be between 1 and the model's {len(moe_layers)} MoE layers")
    known = dict(known or {})
    swapper = PlanSwapper(model, experts, calib.weights)
    original = [[call.hidden for call in calls] for calls in calib.calls]
    beams = [((), original)]
    steps = []
    try:
        for _ in range(num_layers):
            scored = []
            for prefix, inputs in beams:
                for layer in moe_layers:
                    if layer in prefix:
                        continue
                    sequence = (*prefix, layer)
                    if sequence not in known:
                        swapper.use(list(sequence))
                        finals, _ = run_from(model, calib, inputs, layer)
                        known[sequence] = final_divergence(calib, finals)
                        if on_result is not None:
                            on_result(sequence, known[sequence])
                    scored.append((known[sequence], len(scored), sequence, inputs))
            scored.sort(key=lambda s: (s[0], s[1]))
            chosen, seen = [], set()
            for value, _, sequence, inputs in scored:
                if frozenset(sequence) not in seen:  # the same set reached in another order counts once
                    seen.add(frozenset(sequence))
                    chosen.append((value, sequence, inputs))
                if len(chosen) == beam:
                    break
            beams = []
            for value, sequence, inputs in chosen:
                swapper.use(list(sequence))
                _, new_inputs = run_from(model, calib, inputs, sequence[-1], keep=True)
                beams.append((sequence, new_inputs))
            steps.append([{"layers": list(s), "divergence": v} for v, s, _ in chosen])
    finally:
        swapper.clear()
    return steps
