"""Human-readable views of a compression plan: a per-layer text table and a PNG heatmap.

The table says, per decoder layer, what the plan does (mode, kept experts B_l, top-k, which
original experts survive or that they are merged; for routing after top-k, the group of original
experts each slot stands for, and whether their neurons were aligned) and, when the expert shape is known from a
transformers config (or given), how many routed-expert parameters and bytes it saves. One expert
is a SwiGLU MLP of three H x I matrices, so it holds 3 * H * I parameters.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from harness.compress.adapters import ADAPTERS, ResolvedMoE, config_value
from harness.compress.plan import CompressionPlan
from harness.errors import HarnessError
from harness.io import atomic_write


@dataclass(frozen=True)
class ExpertShape:
    """The size of one routed expert and which decoder layers have experts."""

    num_experts: int
    hidden_size: int
    intermediate_size: int
    bytes_per_param: int = 2  # bf16/fp16 unless the config says otherwise
    moe_layers: tuple[int, ...] | None = None  # None: every decoder layer is an MoE layer

    @property
    def params_per_expert(self) -> int:
        return 3 * self.hidden_size * self.intermediate_size

    def has_experts(self, layer: int) -> bool:
        return self.moe_layers is None or layer in self.moe_layers


def _dtype_bytes(config) -> int | None:
    name = config_value(config, "dtype", None) or config_value(config, "torch_dtype", None)
    if name is None:
        return None
    dtype = name if isinstance(name, torch.dtype) else getattr(torch, str(name).replace("torch.", ""), None)
    if not isinstance(dtype, torch.dtype):
        return None
    return torch.empty((), dtype=dtype).element_size()


def expert_shape_from_config(config) -> ExpertShape:
    """The expert shape of a transformers config (object or config.json dict); HarnessError if unknown."""
    model_type = config_value(config, "model_type", None)
    if model_type not in ADAPTERS:
        raise HarnessError(
            f"cannot tell the expert size of a {model_type!r} config (MoE families known: {', '.join(sorted(ADAPTERS))}); "
            "pass expert_shape=ExpertShape(...)"
        )
    moe = ResolvedMoE.from_config(config)
    if moe.intermediate_size is None:
        raise HarnessError(
            f"the {model_type!r} config has no {moe.adapter.intermediate_size_key!r}; pass expert_shape=ExpertShape(...)"
        )
    return ExpertShape(
        num_experts=moe.num_experts,
        hidden_size=moe.hidden_size,
        intermediate_size=moe.intermediate_size,
        bytes_per_param=_dtype_bytes(config) or 2,
        moe_layers=None if len(moe.moe_layers) == moe.num_layers else moe.moe_layers,
    )


# ----------------------------------------------------------------------------------------------
# The text description.


def _layer_row(plan: CompressionPlan, index: int, shape: ExpertShape | None, default_top_k) -> tuple[list, int, int]:
    """One table row and the (kept, original) routed-expert parameter counts of the layer."""
    E = plan.num_experts
    per_expert = shape.params_per_expert if shape else 0
    if shape is not None and not shape.has_experts(index):
        return [index, "dense", "-", "-", "-"], 0, 0
    lp = plan.layers.get(index)
    if index in plan.skip_blocks:
        mode, budget, top_k, experts = "skipped block", 0, "-", "-"
    elif lp is None:
        mode, budget, top_k, experts = "unchanged", E, default_top_k, "all"
    else:
        mode, budget = lp.mode, lp.budget(E)
        top_k = "-" if lp.mode != "routed" else (lp.top_k if lp.top_k is not None else default_top_k)
        kept = lp.kept_experts(E)
        groups = lp.groups()
        if lp.mode == "dropped":
            experts = "-"
        elif groups is not None:  # routing after top-k: each slot's original experts
            experts = "groups after top-k: " + " ".join("{" + ",".join(map(str, g)) + "}" for g in groups)
            if lp.permutations is not None:
                experts += " (aligned)"
        elif kept is None:
            dominant = lp.merge.abs().argmax(dim=1).tolist()
            experts = "merged (mostly " + " ".join(str(e) for e in dominant) + ")"
        else:
            experts = "all" if kept == list(range(E)) else " ".join(str(e) for e in kept)
        if lp.skip_threshold is not None:
            top_k = f"{top_k} (skip<{lp.skip_threshold:g})"
    row = [index, mode, budget, top_k, experts]
    return row, budget * per_expert, E * per_expert


def human_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count:.1f} {unit}" if unit != "B" else f"{int(count)} B"
        count /= 1024
    return f"{count:.1f} TiB"


def describe_plan(plan: CompressionPlan, model_config=None, expert_shape: ExpertShape | None = None) -> str:
    """A text summary and per-layer table of ``plan``; parameter savings when the expert shape is known."""
    shape = expert_shape or (expert_shape_from_config(model_config) if model_config is not None else None)
    if shape is not None and shape.num_experts != plan.num_experts:
        raise HarnessError(
            f"the plan has {plan.num_experts} experts per layer but the model config has {shape.num_experts}; "
            "describe it with the config of the model it was made for"
        )
    default_top_k = "model"
    if model_config is not None and config_value(model_config, "model_type", None) in ADAPTERS:
        default_top_k = ResolvedMoE.from_config(model_config).top_k
    from tabulate import tabulate

    rows, kept_params, all_params = [], 0, 0
    for index in range(plan.num_layers):
        row, kept, original = _layer_row(plan, index, shape, default_top_k)
        if shape is not None:
            row += [f"{kept:,}", f"{original - kept:,}"]
        rows.append(row)
        kept_params += kept
        all_params += original
    headers = ["layer", "mode", "B", "top-k", "experts kept"]
    if shape is not None:
        headers += ["expert params", "saved"]
    budget = plan.uniform_budget
    source = plan.metadata.get("source", "(not from a file)")
    lines = [
        f"compression plan: {source}" + (f" (method: {plan.metadata['method']})" if plan.metadata.get("method") else ""),
        f"{plan.num_layers} decoder layers x {plan.num_experts} experts"
        + (f", hidden size {plan.hidden_size}" if plan.hidden_size else "")
        + f"; pure pruning: {'yes' if plan.is_pure_pruning else 'no'}"
        + f"; uniform budget: {budget if budget is not None else 'no (varies by layer)'}",
        f"skipped blocks: {', '.join(map(str, plan.skip_blocks)) if plan.skip_blocks else 'none'}",
    ]
    if shape is not None and all_params:
        saved = all_params - kept_params
        lines.append(
            f"routed-expert parameters: {all_params:,} -> {kept_params:,}; saved {saved:,} "
            f"({100.0 * saved / all_params:.1f}%), {human_bytes(saved * shape.bytes_per_param)} at "
            f"{shape.bytes_per_param} bytes/param ({shape.params_per_expert:,} params per expert = 3 x "
            f"{shape.hidden_size} x {shape.intermediate_size}; attention, shared experts and routers not counted)"
        )
    return "\n".join(lines) + "\n\n" + tabulate(rows, headers=headers, tablefmt="github") + "\n"


# ----------------------------------------------------------------------------------------------
# The heatmap.


def expert_usage(plan: CompressionPlan, value: str = "weight") -> torch.Tensor:
    """(num_layers, E): how much of each original expert each layer keeps.

    ``value='weight'``: sum over kept slots of |merge[i, e]| (1 per kept expert for pruning; the
    identity for layers the plan leaves unchanged; 0 for dropped layers and skipped blocks).
    ``value='kept'``: 1 where that weight is non-zero, else 0.
    """
    if value not in ("weight", "kept"):
        raise HarnessError(f"heatmap value {value!r} must be 'weight' or 'kept'")
    usage = torch.zeros(plan.num_layers, plan.num_experts)
    for index in range(plan.num_layers):
        lp = plan.layers.get(index)
        if index in plan.skip_blocks or (lp is not None and lp.mode == "dropped"):
            continue
        merge = lp.merge if lp is not None and lp.merge is not None else torch.eye(plan.num_experts)
        usage[index] = merge.detach().float().abs().sum(dim=0)
    return (usage != 0).float() if value == "kept" else usage


def plan_heatmap(plan: CompressionPlan, path: str | os.PathLike, value: str = "weight", title: str | None = None) -> Path:
    """Write a PNG heatmap (layers x original experts, see ``expert_usage``) atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    usage = expert_usage(plan, value).numpy()
    height = max(3.0, 0.18 * plan.num_layers + 1.5)
    width = max(4.0, 0.35 * plan.num_experts + 2.5)
    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)  # no pyplot: no global backend state
    axes = figure.add_subplot()
    image = axes.imshow(usage, aspect="auto", cmap="viridis", interpolation="nearest")
    axes.set_xlabel("original expert")
    axes.set_ylabel("decoder layer")
    axes.set_title(title or Path(str(plan.metadata.get("source", "compression plan"))).name, fontsize=9)
    figure.colorbar(image, ax=axes, label="sum |merge| weight" if value == "weight" else "kept")
    figure.tight_layout()
    return atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=100))
