"""Calibration: run the loaded model over texts and gather what the methods need, through forward
hooks on transformers' own router modules (found via the adapter table).

Today's statistics are the routing counts (how often each expert is among a token's top-k);
padding is never counted. Statistics are running sums, so memory does not grow with the data.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from harness.compress.adapters import adapter_for, decoder_layers, expert_count, moe_block


@dataclass
class CalibrationStats:
    """Per MoE layer (decoder-layer index): (E,) counts of tokens routed to each expert."""

    counts: dict[int, torch.Tensor] = field(default_factory=dict)
    num_tokens: int = 0
    source: str = ""  # what the statistics were gathered on, for the plan's metadata


@torch.no_grad()
def calibrate(lm, texts: list[str], source: str = "") -> CalibrationStats:
    """Routing statistics of ``lm`` (an HFCausalLM) over ``texts``, in batches of its batch size."""
    model = lm.model
    adapter = adapter_for(model)
    num_experts = expert_count(model)
    stats = CalibrationStats(source=source)
    current_mask: list[torch.Tensor] = []  # the batch's attention mask; padding is not counted
    hooks = []
    for index, layer in enumerate(decoder_layers(model)):
        block = moe_block(adapter, layer)
        if block is None:
            continue
        stats.counts[index] = torch.zeros(num_experts, dtype=torch.long)

        def count(module, inputs, output, index=index):
            # routers see the (batch * seq, H) hidden states; their rows follow the flattened mask
            indices = output[2].reshape(current_mask[0].numel(), -1)[current_mask[0].reshape(-1).bool()]
            stats.counts[index] += torch.bincount(indices.reshape(-1).cpu(), minlength=num_experts)[:num_experts]

        hooks.append(getattr(block, adapter.router_attr).register_forward_hook(count))
    try:
        for start in range(0, len(texts), lm.batch_size):
            enc = lm.tokenizer(texts[start : start + lm.batch_size], padding=True, truncation=True,
                               max_length=lm.max_seq_len, return_tensors="pt").to(lm.device)
            current_mask[:] = [enc["attention_mask"]]
            stats.num_tokens += int(enc["attention_mask"].sum())
            model(**enc)
    finally:
        for hook in hooks:
            hook.remove()
    return stats


def task_texts(task, lm, limit: int) -> list[str]:
    """A dataset's prompts as plain calibration texts (PPL items: the shared context plus the
    first choice), at most ``limit`` of them."""
    texts = []
    for item in task.prompts(lm)[:limit]:
        texts.append(item if isinstance(item, str) else item[0].context + item[0].continuation)
    return texts
