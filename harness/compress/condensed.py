"""CD-MoE's condensed MoE layer: a fixed set of experts with fixed weights, active for every token.

    y = sum_{e in S} w_e * E_e(x) + shared(x)        (weights as given, not renormalised)

The layer holds only the experts of S (copied, or merged by the plan's merge rows), runs them on
every token as plain dense MLPs (no router, no top-k, no token dispatch) and keeps the family's
shared experts as they are (Qwen2-MoE's sigmoid-gated ``shared_expert``, DeepSeek's
``shared_experts``). An empty S (or slots of weight 0, which contribute nothing) holds no routed
expert at all: the paper's "shared experts only" variant.

``expert_output`` is the one definition of a routed expert's function used here and by the CD-MoE
search, so the search's fast path and the installed layer compute the same thing.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from harness.compress.adapters import ResolvedMoE


def expert_output(tensors: Mapping[str, torch.Tensor], act_fn, index: int, x: torch.Tensor) -> torch.Tensor:
    """Expert ``index`` of fused (E, 2I, H) / (E, H, I) tensors applied to tokens ``x`` (T, H).

    The layout is transformers' fused experts: ``gate, up = (x @ gate_up_proj[e].T).chunk(2)``,
    ``down_proj[e] @ (act(gate) * up)``; ``<name>_bias`` tensors are added where a family has them.
    """
    gate_up_bias = tensors.get("gate_up_proj_bias")
    down_bias = tensors.get("down_proj_bias")
    proj = nn.functional.linear(x, tensors["gate_up_proj"][index], None if gate_up_bias is None else gate_up_bias[index])
    gate, up = proj.chunk(2, dim=-1)
    return nn.functional.linear(act_fn(gate) * up, tensors["down_proj"][index], None if down_bias is None else down_bias[index])


def shared_output(module: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    """The shared experts' contribution, as the family's MoE block adds it (None without any)."""
    gate = getattr(module, "shared_expert_gate", None)
    if getattr(module, "shared_expert", None) is not None:  # Qwen2-MoE: gated by sigmoid(w . x)
        out = module.shared_expert(x)
        return torch.sigmoid(gate(x)) * out if gate is not None else out
    if getattr(module, "shared_experts", None) is not None:  # DeepSeek: always on, ungated
        return module.shared_experts(x)
    return None


class CondensedExperts(nn.Module):
    """The K kept (or merged) experts' tensors, under the Experts module's own tensor names."""

    def __init__(self, tensors: Mapping[str, torch.Tensor], act_fn):
        super().__init__()
        for name, tensor in tensors.items():
            setattr(self, name, nn.Parameter(tensor, requires_grad=False))
        self.tensor_names = tuple(tensors)
        self.act_fn = act_fn
        self.num_experts = int(next(iter(tensors.values())).shape[0]) if tensors else 0

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """sum_k weights[k] * E_k(x) for tokens x (T, H), fp32, as two batched matmuls over the K experts.

        One (T, H) x (H, K*2I) product for every gate and up projection, then one batched product with
        the K down projections (views of the stored tensors, nothing copied): a dense MLP of width
        K*I, with no per-expert Python loop and no token dispatch.
        """
        tokens, hidden = x.shape
        if self.num_experts == 0:
            return torch.zeros(tokens, hidden, dtype=torch.float32, device=x.device)
        gate_up, down = self.gate_up_proj, self.down_proj  # (K, 2I, H), (K, H, I)
        k, width = gate_up.shape[0], gate_up.shape[1]
        proj = nn.functional.linear(x, gate_up.reshape(k * width, hidden))
        if "gate_up_proj_bias" in self.tensor_names:
            proj = proj + self.gate_up_proj_bias.reshape(-1)
        gate, up = proj.view(tokens, k, width).chunk(2, dim=-1)
        inner = (self.act_fn(gate) * up).transpose(0, 1)  # (K, T, I)
        scale = weights.to(device=x.device, dtype=torch.float32)
        out = (torch.bmm(inner, down.transpose(1, 2)).float() * scale[:, None, None]).sum(0)
        if "down_proj_bias" in self.tensor_names:
            out = out + (scale[:, None] * self.down_proj_bias.float()).sum(0)
        return out


class CondensedMoE(nn.Module):
    """Stands in a decoder layer's MoE block: ``y = sum_k w_k E_k(x) + shared(x)``, no router.

    The replaced block is kept, unregistered, in ``replaced`` (as the other stand-ins of
    ``harness.compress.apply`` do), so ``reset_plan`` puts it back and its router and unused
    experts leave the model's parameters while the plan is on.
    """

    def __init__(self, block: nn.Module, experts: CondensedExperts, weights: torch.Tensor, shared_attrs: tuple[str, ...]):
        super().__init__()
        self.__dict__["replaced"] = block
        self.experts = experts
        self.register_buffer("condensed_weights", weights.detach().to(torch.float32).clone())
        for name in shared_attrs:
            if getattr(block, name, None) is not None:
                setattr(self, name, getattr(block, name))  # the same modules: shared experts stay as they are

    @classmethod
    def from_plan(cls, moe: ResolvedMoE, block: nn.Module, merge: torch.Tensor | None, weights: torch.Tensor) -> "CondensedMoE":
        """The condensed layer of ``block`` for merge rows (B, E) (None: all E experts) and weights (B,);
        slots of weight 0 are left out."""
        from harness.compress.apply import merge_expert_tensor  # apply installs this module: import late

        keep = (weights != 0).nonzero().flatten()
        experts = moe.experts(block)
        rows = (torch.eye(moe.num_experts) if merge is None else merge.detach().to(torch.float32))[keep]
        tensors = {name: merge_expert_tensor(getattr(experts, name), rows) for name in moe.expert_tensors}
        return cls(block, CondensedExperts(tensors, experts.act_fn), weights[keep], moe.adapter.shared_expert_attrs)

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        shape = hidden_states.shape
        x = hidden_states.reshape(-1, shape[-1])
        out = self.experts(x, self.condensed_weights).to(hidden_states.dtype)
        shared = shared_output(self, x)
        if shared is not None:
            out = out + shared
        return out.reshape(shape)
