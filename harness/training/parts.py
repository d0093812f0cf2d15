"""Which parameters of the student train.

- ``experts``: the routed expert tensors (the kept or merged ones: the plan already removed the
  rest) and the shared experts of the MoE layers the plan compresses, every MoE layer without a
  plan (CD-MoE fine-tunes only these).
- ``experts+routers``: also those layers' router weights.
- ``routers``: only the router weights (a condensed layer has none: its weights are fixed).
- ``all``: every parameter.

Everything else is frozen (``requires_grad=False``), so it stays bit-identical. With ``lora`` the
chosen tensors get peft adapters instead (``target_parameters``, which also covers the fused 3D
expert tensors of transformers 5); the adapters are merged back before the model is saved.
"""
from __future__ import annotations

from harness.compress.adapters import resolve
from harness.errors import HarnessError


def _layers_in_scope(model) -> list[int]:
    plan = getattr(model, "compression_plan", None)
    moe = resolve(model)
    if plan is None:
        return list(moe.moe_layers)
    return sorted(i for i, lp in plan.layers.items() if lp.mode != "dropped" and i not in plan.skip_blocks)


def selected_parameters(model, parts: str) -> list[str]:
    """Names (as in ``model.named_parameters()``) of the parameters ``parts`` trains."""
    names = {id(p): n for n, p in model.named_parameters()}
    if parts == "all":
        return list(names.values())
    moe = resolve(model)
    chosen: list = []
    for index in _layers_in_scope(model):
        block = moe.block(index)
        if block is None:
            continue
        if parts in ("experts", "experts+routers"):
            experts = moe.experts(block)
            chosen += [getattr(experts, t) for t in moe.expert_tensors if getattr(experts, t, None) is not None]
            for attr in moe.adapter.shared_expert_attrs:
                shared = getattr(block, attr, None)
                chosen += list(shared.parameters()) if shared is not None else []
        if parts in ("routers", "experts+routers"):
            chosen += list(moe.router(block).parameters(recurse=False))
    seen, out = set(), []
    for p in chosen:
        if id(p) in names and id(p) not in seen:  # a MappedRouter shares the original router's weight
            seen.add(id(p))
            out.append(names[id(p)])
    return out


def freeze_all_but(model, names: list[str]) -> int:
    """Make exactly ``names`` trainable; returns their element count (0 is an error: nothing to train)."""
    wanted = set(names)
    count = 0
    for name, p in model.named_parameters():
        p.requires_grad_(name in wanted)
        count += p.numel() if name in wanted else 0
    return count


def check_trainable(model, parts: str) -> list[str]:
    names = selected_parameters(model, parts)
    if not names:
        raise HarnessError(f"parts={parts!r} selects no trainable parameters in this model and plan "
                           "(condensed layers have no router; dropped layers no experts); choose other parts")
    return names


def wrap_lora(model, names: list[str], lora: dict):
    """A peft model with LoRA adapters on the chosen tensors; everything else frozen."""
    from peft import LoraConfig, get_peft_model

    targets = [n for n in names if model.get_parameter(n).dim() >= 2]
    if not targets:
        raise HarnessError("lora: the chosen parts have no matrix to adapt (only vectors); train them whole (lora=None)")
    config = LoraConfig(r=int(lora.get("r", 8)), lora_alpha=int(lora.get("alpha", 16)),
                        lora_dropout=float(lora.get("dropout", 0.0)), target_modules=[], target_parameters=targets)
    return get_peft_model(model, config)


def trainable_count(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
