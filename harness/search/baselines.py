"""Simple pruning baselines: keep the most-routed experts of each layer, or the first B.

Frequency pruning counts, on a calibration set, how often each expert of each MoE layer is among a
token's top-k, and keeps the ``budget`` most frequent ones per layer (ties: lower expert id).
"""
from __future__ import annotations

import torch

from harness.compress.adapters import adapter_for, decoder_layers, expert_count, moe_block
from harness.compress.plan import CompressionPlan


def routing_counts(lm, texts: list[str]) -> dict[int, torch.Tensor]:
    """{MoE layer index: (E,) count of tokens routed to each expert} over ``texts``."""
    model = lm.model
    adapter = adapter_for(model)
    num_experts = expert_count(model)
    counts: dict[int, torch.Tensor] = {}
    current_mask: list[torch.Tensor] = []  # the batch's attention mask; padding is not counted
    hooks = []
    for index, layer in enumerate(decoder_layers(model)):
        block = moe_block(adapter, layer)
        if block is None:
            continue
        counts[index] = torch.zeros(num_experts, dtype=torch.long)

        def count(module, inputs, output, index=index):
            # routers see the (batch * seq, H) hidden states; their rows follow the flattened mask
            indices = output[2].reshape(current_mask[0].numel(), -1)[current_mask[0].reshape(-1).bool()]
            counts[index] += torch.bincount(indices.reshape(-1).cpu(), minlength=num_experts)[:num_experts]

        hooks.append(getattr(block, adapter.router_attr).register_forward_hook(count))
    try:
        with torch.no_grad():
            for start in range(0, len(texts), lm.batch_size):
                enc = lm.tokenizer(texts[start : start + lm.batch_size], padding=True, truncation=True,
                                   max_length=lm.max_seq_len, return_tensors="pt").to(lm.device)
                current_mask[:] = [enc["attention_mask"]]
                model(**enc)
    finally:
        for hook in hooks:
            hook.remove()
    return counts


def top_experts(counts: torch.Tensor, budget: int) -> list[int]:
    """The ``budget`` most frequent experts, ties to the lower id, sorted by id."""
    order = sorted(range(len(counts)), key=lambda e: (-int(counts[e]), e))
    return sorted(order[:budget])


def frequency_plan(counts: dict[int, torch.Tensor], num_layers: int, budget: int) -> CompressionPlan:
    num_experts = len(next(iter(counts.values())))
    kept = {layer: top_experts(c, budget) for layer, c in counts.items()}
    return CompressionPlan.from_kept(kept, num_experts, num_layers=num_layers,
                                     metadata={"method": "frequency", "budget": budget})


def keep_first_plan(moe_layers: list[int], num_layers: int, num_experts: int, budget: int) -> CompressionPlan:
    kept = {layer: list(range(budget)) for layer in moe_layers}
    return CompressionPlan.from_kept(kept, num_experts, num_layers=num_layers,
                                     metadata={"method": "keep_first", "budget": budget})

