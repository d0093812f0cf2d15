"""Parameters and bytes a loaded model holds, and the parameters one token uses.

Counts read the model as installed now (a plan's stand-ins keep what they replaced unregistered,
so dropped layers and skipped blocks are not counted). Bytes are of distinct storages, so tied
or shared tensors count once; on a GPU ``torch.cuda.memory_allocated`` is reported beside them.
Active parameters per token: every parameter except routed experts a token does not use, i.e. per
MoE layer ``top_k / B`` of its B experts (condensed layers: all B); embeddings count, as the
"active parameters" figures of MoE model cards do.
"""
from __future__ import annotations

import torch

from harness.compress.adapters import resolve


def storage_bytes(tensors) -> int:
    """Bytes of the distinct storages behind ``tensors`` (what keeping them alive costs)."""
    seen: dict[int, int] = {}
    for tensor in tensors:
        storage = tensor.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def _expert_layers(model):
    """(expert tensors, slots, experts used per token) of every installed MoE block; a condensed
    layer (CD-MoE: no router) holds K experts that every token uses."""
    from harness.compress.condensed import CondensedMoE

    moe = resolve(model)
    for _, block in moe.blocks():
        experts, router = moe.experts(block), moe.router(block)
        tensors = [getattr(experts, name) for name in moe.expert_tensors if getattr(experts, name, None) is not None]
        slots = int(tensors[0].shape[0])
        yield tensors, slots, min(int(getattr(router, "top_k", moe.top_k)), slots)
    for index in moe.moe_layers:
        block = getattr(moe.layers[index], moe.adapter.moe_attr, None)
        if isinstance(block, CondensedMoE) and block.experts.num_experts:
            experts = block.experts
            tensors = [getattr(experts, name) for name in experts.tensor_names]
            yield tensors, experts.num_experts, experts.num_experts


def footprint(model) -> dict:
    """params, active_params, model_bytes, expert_bytes (and allocated_bytes on a GPU)."""
    params = {id(p): p for p in model.parameters()}
    total = sum(p.numel() for p in params.values())
    expert_tensors, inactive = [], 0
    for tensors, slots, used in _expert_layers(model):
        expert_tensors += tensors
        inactive += sum(t.numel() for t in tensors) * (slots - used) // slots
    device = next(iter(params.values())).device
    return {
        "params": total,
        "active_params": total - inactive,
        "model_bytes": storage_bytes(list(params.values()) + list(model.buffers())),
        "expert_bytes": storage_bytes(expert_tensors),
        "allocated_bytes": torch.cuda.memory_allocated(device) if device.type == "cuda" else None,
    }
