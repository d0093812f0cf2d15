"""Calibration: one pass of the uncompressed model over token samples gathers what every method needs.

Forward hooks on transformers' own modules (found through ``adapters.resolve``; no forked modeling
code) see, per batch:
- each MoE layer's router (its input, logits, final top-k weights and indices): selection counts,
  summed gate weights, summed scores over all E (the family's own scoring: softmax, or DeepSeek-V3's
  sigmoid), the router-logit Gram matrix, NAEE's ranked-weight ratios w(2)/w(1);
- from the router's input, every expert's output on every token (the experts module itself, one
  expert at a time): REAP's sum of g_j(x)*||f_j(x)|| over the tokens routed to j and the per-expert
  output sums over all tokens (HC-SMoE's features);
- each MoE block's input X and output Z (capped caches, for reconstruction methods);
- the post-attention norm's input h and the decoder layer's output h + MoE(norm(h)): the MoE
  sub-layer's cosine (Layer Drop); every decoder block's input and output: the cosines between all
  pairs of block boundaries (Block Drop, discrete and consecutive).

Padding is never counted. Everything but the capped caches is a running sum, so memory does not
grow with the data; a batch's sums are committed only after its forward succeeded (a batch the
collator halves after an out-of-memory error is not counted twice).
"""
from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from harness.compress.adapters import resolve
from harness.errors import HarnessError
from harness.models.hf_causal_lm import right_pad

DEFAULT_CACHE_TOKENS = 4096  # X/Z tokens kept per MoE layer
DEFAULT_RATIO_TOKENS = 1 << 18  # w(2)/w(1) ratios kept per MoE layer (NAEE's median needs them)
FORMAT_VERSION = 1  # bump when the statistics change meaning (invalidates saved files)

# Per-layer tensors of CalibrationStats, saved under "<name>.<layer>".
LAYER_FIELDS = ("counts", "gate_sum", "score_sum", "reap_sum", "expert_output_sum", "logit_gram", "moe_cos_sum",
                "block_cos_sum", "moe_inputs", "moe_outputs", "skip_ratios")


@dataclass
class CalibrationStats:
    """Calibration statistics of one model on one token set. Dicts are keyed by decoder-layer index
    (MoE layers; ``block_cos_sum`` covers every decoder layer). Sums are over non-padding tokens;
    divide by ``num_tokens`` for means (``reap_sum`` by ``counts``)."""

    counts: dict[int, torch.Tensor] = field(default_factory=dict)  # (E,) int64 top-k selections
    gate_sum: dict[int, torch.Tensor] = field(default_factory=dict)  # (E,) f64 final routing weights
    score_sum: dict[int, torch.Tensor] = field(default_factory=dict)  # (E,) f64 scores over all E
    reap_sum: dict[int, torch.Tensor] = field(default_factory=dict)  # (E,) f64 g_j(x)*||f_j(x)||, routed
    expert_output_sum: dict[int, torch.Tensor] = field(default_factory=dict)  # (E, H) f64, all tokens
    logit_gram: dict[int, torch.Tensor] = field(default_factory=dict)  # (E, E) f64 sum of l l^T
    moe_cos_sum: dict[int, torch.Tensor] = field(default_factory=dict)  # () f64 cos(h, h + MoE(norm h))
    block_cos_sum: dict[int, torch.Tensor] = field(default_factory=dict)  # () f64 cos(block in, out)
    moe_inputs: dict[int, torch.Tensor] = field(default_factory=dict)  # (N, H) X, first N tokens
    moe_outputs: dict[int, torch.Tensor] = field(default_factory=dict)  # (N, H) Z of the same tokens
    skip_ratios: dict[int, torch.Tensor] = field(default_factory=dict)  # (N',) f32 w(2)/w(1) per token
    # (L+1, L+1) f64: [i, j] = sum over tokens of cos(h_i, h_j), h_i the input of block i (h_L: output)
    hidden_cos_sum: torch.Tensor | None = None
    num_tokens: int = 0
    source: str = ""  # what the statistics were gathered on, for the plan's metadata
    settings: dict = field(default_factory=dict)  # cache caps and the like

    def mean(self, name: str, layer: int) -> torch.Tensor:
        """A per-layer sum divided by the number of calibration tokens."""
        return getattr(self, name)[layer] / max(self.num_tokens, 1)

    # ------------------------------------------------------------------ files
    def to_tensors(self) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        tensors = {f"{name}.{layer}": t.contiguous() for name in LAYER_FIELDS
                   for layer, t in getattr(self, name).items()}
        if self.hidden_cos_sum is not None:
            tensors["hidden_cos_sum"] = self.hidden_cos_sum.contiguous()
        meta = {"format": str(FORMAT_VERSION), "num_tokens": str(self.num_tokens), "source": self.source,
                "settings": json.dumps(self.settings, sort_keys=True)}
        return tensors, meta

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> "CalibrationStats":
        stats = cls(num_tokens=int(meta["num_tokens"]), source=meta.get("source", ""),
                    settings=json.loads(meta.get("settings", "{}")))
        for key, tensor in tensors.items():
            if key == "hidden_cos_sum":
                stats.hidden_cos_sum = tensor
                continue
            name, layer = key.rsplit(".", 1)
            getattr(stats, name)[int(layer)] = tensor
        return stats


# ----------------------------------------------------------------------------------------------
# The pass.


class _Batch:
    """One batch's sums and cache rows, committed to the stats only after its forward succeeded."""

    def __init__(self, mask: torch.Tensor):
        self.valid = mask.reshape(-1).bool()  # flattened (batch * seq) rows that are real tokens
        self.sums: dict[tuple[str, int], torch.Tensor] = {}
        self.rows: dict[tuple[str, int], torch.Tensor] = {}
        self.normed: dict[int, torch.Tensor] = {}  # unit block-boundary states h_i of the valid tokens
        self.mid: dict[int, torch.Tensor] = {}  # post-attention norm inputs (MoE sub-layer inputs)
        self.moe_out: dict[int, torch.Tensor] = {}
        self.pairs: torch.Tensor | None = None

    def add(self, name: str, layer: int, value: torch.Tensor) -> None:
        key = (name, layer)
        self.sums[key] = value if key not in self.sums else self.sums[key] + value

    def rows_of(self, tensor: torch.Tensor) -> torch.Tensor:
        """The valid tokens' rows of a (batch, seq, H) or (batch * seq, H) tensor."""
        flat = tensor.reshape(-1, tensor.shape[-1])
        return flat[self.valid.to(flat.device)]


def _unit(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x.float(), dim=-1)


def _scores(moe, logits: torch.Tensor) -> torch.Tensor:
    """The router's scores over all E experts, as the family computes them."""
    return logits.float().sigmoid() if moe.adapter.scoring == "sigmoid" else logits.float().softmax(dim=-1)


def expert_outputs(experts, hidden: torch.Tensor, num_experts: int) -> torch.Tensor:
    """(E, T, H): every expert's own output f_j(x) on every row of ``hidden``, through the experts
    module's forward (one call, each row repeated once per expert with weight 1), so any experts
    implementation is honoured."""
    tokens = hidden.shape[0]
    device = hidden.device
    which = torch.arange(num_experts, device=device).repeat_interleave(tokens).unsqueeze(1)
    ones = torch.ones(num_experts * tokens, 1, dtype=hidden.dtype, device=device)
    out = experts(hidden.repeat(num_experts, 1), which, ones)
    return out.reshape(num_experts, tokens, -1)


class _Gatherer:
    """Installs the hooks on one model and folds each batch into a CalibrationStats."""

    def __init__(self, model, cache_tokens: int, ratio_tokens: int, source: str):
        self.model = model
        self.moe = resolve(model)
        self.cache_tokens = int(cache_tokens)
        self.ratio_tokens = int(ratio_tokens)
        self.stats = CalibrationStats(source=source, settings={"cache_tokens": self.cache_tokens,
                                                              "ratio_tokens": self.ratio_tokens})
        self.batch: _Batch | None = None
        moe = self.moe
        self.moe_layers = [index for index, _ in moe.blocks()]
        for index in self.moe_layers:
            e = moe.num_experts
            s = self.stats
            s.counts[index] = torch.zeros(e, dtype=torch.long)
            for name in ("gate_sum", "score_sum", "reap_sum"):
                getattr(s, name)[index] = torch.zeros(e, dtype=torch.float64)
            s.expert_output_sum[index] = torch.zeros(e, moe.hidden_size, dtype=torch.float64)
            s.logit_gram[index] = torch.zeros(e, e, dtype=torch.float64)
            s.moe_cos_sum[index] = torch.zeros((), dtype=torch.float64)
            s.moe_inputs[index] = torch.zeros(0, moe.hidden_size)
            s.moe_outputs[index] = torch.zeros(0, moe.hidden_size)
            s.skip_ratios[index] = torch.zeros(0)
        for index in range(moe.num_layers):
            self.stats.block_cos_sum[index] = torch.zeros((), dtype=torch.float64)
        self.stats.hidden_cos_sum = torch.zeros(moe.num_layers + 1, moe.num_layers + 1, dtype=torch.float64)

    # ------------------------------------------------------------------ hooks
    @contextmanager
    def hooked(self):
        moe = self.moe
        handles = []
        try:
            for index, layer in enumerate(moe.layers):
                handles.append(layer.register_forward_hook(self._block_hook(index), with_kwargs=True))
            for index, block in moe.blocks():
                handles.append(moe.router(block).register_forward_hook(self._router_hook(index, moe.experts(block))))
                handles.append(block.register_forward_hook(self._moe_hook(index)))
                norm = getattr(moe.layers[index], "post_attention_layernorm", None)
                if norm is not None:
                    handles.append(norm.register_forward_pre_hook(self._mid_hook(index)))
            yield self
        finally:
            for handle in handles:
                handle.remove()

    def _router_hook(self, index: int, experts):
        e = self.moe.num_experts

        def hook(module, args, output):
            batch = self.batch
            logits, weights, indices = output[0], output[1], output[2]
            valid = batch.valid.to(logits.device)
            logits, weights, indices = logits[valid].float(), weights[valid].float(), indices[valid]
            hidden = batch.rows_of(args[0])
            counts = torch.bincount(indices.reshape(-1), minlength=e)[:e]
            batch.add("counts", index, counts)
            gates = torch.zeros(logits.shape[0], e, device=logits.device).scatter_add_(1, indices, weights)
            batch.add("gate_sum", index, gates.sum(0))
            batch.add("score_sum", index, _scores(self.moe, logits).sum(0))
            batch.add("logit_gram", index, logits.T @ logits)
            if weights.shape[1] > 1:  # NAEE: ratio of the second-ranked weight to the first
                ranked = weights.sort(dim=1, descending=True).values
                batch.rows[("skip_ratios", index)] = (ranked[:, 1] / ranked[:, 0]).cpu()
            outputs = expert_outputs(experts, hidden, e).float()  # (E, T, H)
            batch.add("expert_output_sum", index, outputs.sum(1))
            routed = torch.zeros_like(gates).scatter_(1, indices, 1.0)
            norms = outputs.norm(dim=-1).T  # (T, E)
            batch.add("reap_sum", index, (gates * norms * routed).sum(0))

        return hook

    def _moe_hook(self, index: int):
        def hook(module, args, output):
            batch = self.batch
            out = output[0] if isinstance(output, tuple) else output
            batch.rows[("moe_inputs", index)] = batch.rows_of(args[0])[: self.cache_tokens].detach().cpu()
            batch.rows[("moe_outputs", index)] = batch.rows_of(out)[: self.cache_tokens].detach().cpu()
            batch.moe_out[index] = batch.rows_of(out).float()

        return hook

    def _mid_hook(self, index: int):
        def hook(module, args):
            self.batch.mid[index] = self.batch.rows_of(args[0]).float()

        return hook

    def _block_hook(self, index: int):
        def hook(module, args, kwargs, output):
            batch = self.batch
            hidden_in = args[0] if args else kwargs["hidden_states"]
            out = output[0] if isinstance(output, tuple) else output
            if index not in batch.normed:
                batch.normed[index] = _unit(batch.rows_of(hidden_in))
            new = _unit(batch.rows_of(out))
            if batch.pairs is None:
                size = self.moe.num_layers + 1
                batch.pairs = torch.zeros(size, size, dtype=torch.float64)
            for j, earlier in batch.normed.items():  # cosines of every earlier boundary with this one
                value = float((earlier * new).sum(dtype=torch.float64))
                batch.pairs[j, index + 1] = batch.pairs[index + 1, j] = value
            batch.pairs[index + 1, index + 1] = float(new.shape[0])
            batch.pairs[index, index] = float(new.shape[0])
            batch.normed[index + 1] = new
            if index in batch.mid or index in batch.moe_out:
                mid = batch.mid.get(index)
                full = batch.rows_of(out).float()
                if mid is None:  # no post-attention norm module: h = output - MoE(norm(h))
                    mid = full - batch.moe_out[index]
                batch.add("moe_cos_sum", index, F.cosine_similarity(mid, full, dim=-1).sum(dtype=torch.float64))
            batch.mid.pop(index, None)
            batch.moe_out.pop(index, None)

        return hook

    # ------------------------------------------------------------------ batches
    def run(self, ids: torch.Tensor, mask: torch.Tensor) -> None:
        """One forward of ``ids`` (right-padded) under ``mask``; its statistics are committed after."""
        self.batch = _Batch(mask)
        try:
            self.model(input_ids=ids, attention_mask=mask, use_cache=False)
            self._commit(self.batch, int(mask.sum()))
        finally:
            self.batch = None

    def _commit(self, batch: _Batch, tokens: int) -> None:
        stats = self.stats
        for (name, index), value in batch.sums.items():
            target = getattr(stats, name)
            target[index] = target[index] + value.detach().to("cpu", target[index].dtype)
        for (name, index), rows in batch.rows.items():
            cap = self.ratio_tokens if name == "skip_ratios" else self.cache_tokens
            have = getattr(stats, name)[index]
            if have.shape[0] < cap:
                room = cap - have.shape[0]
                getattr(stats, name)[index] = torch.cat([have.to(rows.dtype), rows[:room]])
        if batch.pairs is not None:
            for index in range(self.moe.num_layers):
                stats.block_cos_sum[index] += batch.pairs[index, index + 1]
            stats.hidden_cos_sum += batch.pairs
        stats.num_tokens += tokens


def _samples(data, lm) -> list[list[int]]:
    """Token-id lists from ``data``: token lists as they are, texts encoded by the lm's tokenizer."""
    samples = []
    for item in data:
        if isinstance(item, str):
            if lm is None:
                raise HarnessError("calibrate: texts need an HFCausalLM (its tokenizer); pass token ids for a bare model")
            item = lm.encode(item)[: lm.max_seq_len]
        samples.append([int(t) for t in item])
    samples = [s for s in samples if s]
    if not samples:
        raise HarnessError("calibration data holds no tokens; give a calibration file or config with text in it")
    return samples


@torch.no_grad()
def calibrate(model, data, source: str = "", cache_tokens: int = DEFAULT_CACHE_TOKENS,
              ratio_tokens: int = DEFAULT_RATIO_TOKENS, batch_size: int = 8,
              pad_token_id: int | None = None) -> CalibrationStats:
    """Statistics of ``model`` over ``data`` (token-id lists, or texts when ``model`` is an
    HFCausalLM), in one pass. An HFCausalLM batches through its collator (longest first, halving
    on out-of-memory); a bare transformers model in batches of ``batch_size``, longest first."""
    lm = model if hasattr(model, "collator") and hasattr(model, "model") else None
    net = lm.model if lm is not None else model
    samples = _samples(data, lm)
    gatherer = _Gatherer(net, cache_tokens, ratio_tokens, source)
    if not gatherer.moe_layers:
        raise HarnessError("calibrate: the model has no MoE layers installed; calibrate the uncompressed model")
    pad = lm.pad_token_id if lm is not None else (pad_token_id if pad_token_id is not None else
                                                  int(getattr(net.config, "pad_token_id", None) or 0))
    device = next(net.parameters()).device if lm is None else lm.device

    def run_batch(batch: list[list[int]]) -> list[None]:
        gatherer.run(*right_pad(batch, pad, device))
        return [None] * len(batch)

    with gatherer.hooked():
        if lm is not None:
            lm.collator.run(samples, [len(s) for s in samples], run_batch)
        else:
            order = sorted(range(len(samples)), key=lambda i: -len(samples[i]))
            for start in range(0, len(order), batch_size):
                run_batch([samples[i] for i in order[start: start + batch_size]])
    return gatherer.stats


class _Stop(Exception):
    """Raised inside a hook once the layer of interest has been seen: the rest of the forward is moot."""


@torch.no_grad()
def moe_io(model, samples: list[list[int]], layer: int, cache_tokens: int, batch_size: int = 8,
           pad_token_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(X, Z) of MoE layer ``layer`` as the model is now (a partial plan may be installed on earlier
    layers: NAEE's progressive mode), first ``cache_tokens`` non-padding tokens, longest sample first.
    The forward stops after that layer."""
    moe = resolve(model)
    block = moe.block(layer)
    if block is None:
        raise HarnessError(f"moe_io: decoder layer {layer} has no MoE block installed")
    device = next(model.parameters()).device
    xs, zs, have = [], [], 0
    state = {}

    def hook(module, args, output):
        valid = state["mask"].reshape(-1).bool()
        out = output[0] if isinstance(output, tuple) else output
        xs.append(args[0].reshape(-1, args[0].shape[-1])[valid.to(args[0].device)].cpu())
        zs.append(out.reshape(-1, out.shape[-1])[valid.to(out.device)].cpu())
        raise _Stop

    handle = block.register_forward_hook(hook)
    try:
        order = sorted(range(len(samples)), key=lambda i: -len(samples[i]))
        for start in range(0, len(order), batch_size):
            if have >= cache_tokens:
                break
            ids, mask = right_pad([samples[i] for i in order[start: start + batch_size]], pad_token_id, device)
            state["mask"] = mask
            try:
                model(input_ids=ids, attention_mask=mask, use_cache=False)
            except _Stop:
                pass
            have += xs[-1].shape[0]
    finally:
        handle.remove()
    return torch.cat(xs)[:cache_tokens], torch.cat(zs)[:cache_tokens]


def task_texts(task, lm, limit: int) -> list[str]:
    """A dataset's prompts as plain calibration texts (PPL items: the shared context plus the
    first choice), at most ``limit`` of them."""
    texts = []
    for item in task.prompts(lm)[:limit]:
        texts.append(item if isinstance(item, str) else item[0].context + item[0].continuation)
    return texts
