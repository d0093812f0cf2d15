"""Input statistics of each target over the calibration tokens it actually sees.

For an ``nn.Linear`` (shared experts, attention): every non-padding token. For a routed expert:
the tokens the experts module receives with that expert among their top-k (the slot indices the
router, or a plan's router, hands it: the routed tokens), and for ``down_proj`` their
act(gate(x)) * up(x). Per target: the token count, the per-column sum of squares (Wanda's
||X_j||^2) and, when asked, the Gram matrix X^T X (SparseGPT's Hessian up to a factor), all in
float64. Hooks on transformers' own modules; the forward stops after the last layer of interest.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from harness.models.hf_causal_lm import right_pad
from harness.slimming.targets import FUSED_INPUT, FUSED_OUTPUT, Target


@dataclass
class InputStats:
    tokens: dict[str, int] = field(default_factory=dict)
    column_sq: dict[str, torch.Tensor] = field(default_factory=dict)  # (in,) f64
    gram: dict[str, torch.Tensor] = field(default_factory=dict)  # (in, in) f64

    def add(self, name: str, x: torch.Tensor, with_gram: bool) -> None:
        x = x.double()
        width = x.shape[-1]
        if name not in self.tokens:
            self.tokens[name] = 0
            self.column_sq[name] = torch.zeros(width, dtype=torch.float64, device=x.device)
            if with_gram:
                self.gram[name] = torch.zeros(width, width, dtype=torch.float64, device=x.device)
        self.tokens[name] += int(x.shape[0])
        self.column_sq[name] += (x * x).sum(0)
        if with_gram:
            self.gram[name] += x.T @ x


class _Stop(Exception):
    """Raised after the last layer of interest: the rest of the forward is moot."""


def _rows(tensor: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    flat = tensor.reshape(-1, tensor.shape[-1])
    return flat[valid.to(flat.device)] if flat.shape[0] == valid.shape[0] else flat


def routed_inputs(experts, hidden: torch.Tensor, indices: torch.Tensor, expert: int):
    """(x, act(gate(x)) * up(x)) of the rows whose top-k holds ``expert``, in float32."""
    rows = (indices == expert).any(dim=-1)
    x = hidden[rows].float()
    gate, up = torch.nn.functional.linear(x, getattr(experts, FUSED_INPUT)[expert].float()).chunk(2, dim=-1)
    return x, experts.act_fn(gate) * up


@torch.no_grad()
def gather(model, samples: list[list[int]], targets: list[Target], with_gram: bool, stop_after: int,
           pad_token_id: int, batch_size: int = 8) -> InputStats:
    """Statistics of ``targets`` over ``samples`` (right-padded batches, longest first), the
    forward stopped after decoder layer ``stop_after``."""
    from harness.compress.adapters import resolve

    stats = InputStats()
    state: dict = {}
    handles = []
    linear_names = {id(t.module): t.name for t in targets if t.expert is None}
    fused = {}
    for t in targets:
        if t.expert is not None:
            fused.setdefault(id(t.module), (t.module, t.name.rsplit(".", 2)[0], set()))[2].add(t.expert)

    def linear_hook(name):
        def hook(module, args):
            stats.add(name, _rows(args[0], state["valid"]), with_gram)
        return hook

    def experts_hook(prefix, wanted):
        def hook(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            indices = args[1] if len(args) > 1 else kwargs["top_k_index"]
            valid = state["valid"].to(hidden.device)
            hidden, indices = (hidden[valid], indices[valid]) if hidden.shape[0] == valid.shape[0] else (hidden, indices)
            for e in sorted(wanted):
                x, inner = routed_inputs(module, hidden, indices, e)
                stats.add(f"{prefix}.{FUSED_INPUT}.{e}", x, with_gram)
                stats.add(f"{prefix}.{FUSED_OUTPUT}.{e}", inner, with_gram)
        return hook

    def stop_hook(module, args, output):
        raise _Stop

    layers = resolve(model).layers
    try:
        for t in targets:
            if t.expert is None:
                handles.append(t.module.register_forward_pre_hook(linear_hook(linear_names[id(t.module)])))
        for module, prefix, wanted in fused.values():
            handles.append(module.register_forward_pre_hook(experts_hook(prefix, wanted), with_kwargs=True))
        handles.append(layers[stop_after].register_forward_hook(stop_hook))
        device = next(model.parameters()).device
        order = sorted(range(len(samples)), key=lambda i: -len(samples[i]))
        for start in range(0, len(order), batch_size):
            ids, mask = right_pad([samples[i] for i in order[start: start + batch_size]], pad_token_id, device)
            state["valid"] = mask.reshape(-1).bool()
            try:
                model(input_ids=ids, attention_mask=mask, use_cache=False)
            except _Stop:
                pass
    finally:
        for handle in handles:
            handle.remove()
    for t in targets:  # a target that saw no token (an unused expert) still gets its entry
        if t.name not in stats.tokens:
            width, where = t.weight().shape[1], t.weight().device
            stats.tokens[t.name] = 0
            stats.column_sq[t.name] = torch.zeros(width, dtype=torch.float64, device=where)
            if with_gram:
                stats.gram[t.name] = torch.zeros(width, width, dtype=torch.float64, device=where)
    return stats
