"""Which weights of a model are slimmed: routed experts (default), shared experts, attention.

A ``Target`` is one (out, in) weight: one expert's slice of a fused 3D tensor
(``gate_up_proj[e]``: (2I, H); ``down_proj[e]``: (H, I)), or an ``nn.Linear``'s weight. Routers are
never targets, nor is Qwen2-MoE's ``shared_expert_gate`` (a one-row router of the shared expert).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from harness.compress.adapters import resolve
from harness.errors import HarnessError

KINDS = ("routed", "shared", "attention")
FUSED_INPUT = "gate_up_proj"  # sees the routed tokens themselves
FUSED_OUTPUT = "down_proj"  # sees act(gate(x)) * up(x) of the routed tokens


@dataclass
class Target:
    layer: int
    kind: str  # one of KINDS
    name: str  # unique in the model, e.g. "layers.0.mlp.experts.down_proj.3", "layers.0.self_attn.q_proj"
    tensor: torch.Tensor  # the parameter: fused (E, out, in) or (out, in)
    expert: int | None = None  # index into a fused tensor
    module: nn.Module | None = None  # the nn.Linear, or the experts module of a fused tensor

    def weight(self) -> torch.Tensor:
        """The (out, in) weight, a view of the parameter."""
        data = self.tensor.data
        return data[self.expert] if self.expert is not None else data

    @torch.no_grad()
    def set(self, value: torch.Tensor) -> None:
        self.weight().copy_(value.to(self.tensor.dtype))


def parse_kinds(text: str) -> tuple[str, ...]:
    kinds = tuple(dict.fromkeys(part.strip() for part in str(text).split(",") if part.strip()))
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise HarnessError(f"--targets {text!r}: unknown {unknown or 'empty'}; choose from {','.join(KINDS)}")
    return kinds


def _linears(module: nn.Module, prefix: str):
    for name, child in module.named_modules():
        if isinstance(child, nn.Linear):
            yield f"{prefix}.{name}" if name else prefix, child


def shared_modules(moe, block):
    """(attribute, module) of the block's shared experts, without their gates."""
    for attr in moe.adapter.shared_expert_attrs:
        module = getattr(block, attr, None)
        if module is not None and not attr.endswith("_gate"):
            yield attr, module


def layer_targets(model, index: int, kinds: tuple[str, ...]) -> list[Target]:
    """The targets of decoder layer ``index`` (as installed now: a dropped block has none)."""
    moe = resolve(model)
    layer = moe.layers[index]
    out: list[Target] = []
    block = moe.block(index) if moe.is_moe(index) else None
    moe_attr = moe.adapter.moe_attr
    if "attention" in kinds:
        attention = getattr(layer, "self_attn", None)
        if attention is not None:
            for name, linear in _linears(attention, f"layers.{index}.self_attn"):
                out.append(Target(index, "attention", name, linear.weight, module=linear))
    if block is not None and "routed" in kinds:
        experts = moe.experts(block)
        prefix = f"layers.{index}.{moe_attr}.{moe.adapter.experts_attr}"
        for proj in (FUSED_INPUT, FUSED_OUTPUT):
            tensor = getattr(experts, proj)
            for e in range(tensor.shape[0]):
                out.append(Target(index, "routed", f"{prefix}.{proj}.{e}", tensor, e, module=experts))
    if block is not None and "shared" in kinds:
        for attr, module in shared_modules(moe, block):
            for name, linear in _linears(module, f"layers.{index}.{moe_attr}.{attr}"):
                out.append(Target(index, "shared", name, linear.weight, module=linear))
    return out


def model_targets(model, kinds: tuple[str, ...]) -> dict[int, list[Target]]:
    """Every decoder layer's targets (layers without any are left out)."""
    found = {i: layer_targets(model, i, kinds) for i in range(resolve(model).num_layers)}
    return {i: t for i, t in found.items() if t}
