"""Calibration: run the loaded model over texts and gather what the methods need, through forward
hooks on transformers' own router modules (found via the resolved adapter).

Today's statistics are the routing counts (how often each expert is among a token's top-k);
padding is never counted. Statistics are running sums, so memory does not grow with the data.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from harness.compress.adapters import resolve


@dataclass
class CalibrationStats:
    """Per MoE layer (decoder-layer index): (E,) counts of tokens routed to each expert."""

    counts: dict[int, torch.Tensor] = field(default_factory=dict)
    num_tokens: int = 0
    source: str = ""  # what the statistics were gathered on, for the plan's metadata


@torch.no_grad()
def calibrate(lm, texts: list[str], source: str = "") -> CalibrationStats:
    """Routing statistics of ``lm`` (an HFCausalLM) over ``texts``, batched by its collator."""
    model = lm.model
    moe = resolve(model)
    stats = CalibrationStats(source=source)
    current_mask: list[torch.Tensor] = []  # the batch's attention mask; padding is not counted
    hooks = []
    for index, block in moe.blocks():
        stats.counts[index] = torch.zeros(moe.num_experts, dtype=torch.long)

        def count(module, inputs, output, index=index):
            # routers see the (batch * seq, H) hidden states; their rows follow the flattened mask
            indices = output[2].reshape(current_mask[0].numel(), -1)[current_mask[0].reshape(-1).bool()]
            stats.counts[index] += torch.bincount(indices.reshape(-1).cpu(), minlength=moe.num_experts)[:moe.num_experts]

        hooks.append(moe.router(block).register_forward_hook(count))

    def run_batch(batch: list[list[int]]) -> list[None]:
        width = max(len(t) for t in batch)
        ids = torch.full((len(batch), width), lm.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, tokens in enumerate(batch):  # right-padded: positions start at 0 in every row
            ids[row, : len(tokens)] = torch.tensor(tokens)
            mask[row, : len(tokens)] = 1
        current_mask[:] = [mask.to(lm.device)]
        stats.num_tokens += int(mask.sum())
        model(input_ids=ids.to(lm.device), attention_mask=mask.to(lm.device))
        return [None] * len(batch)

    tokens = [lm.encode(text)[: lm.max_seq_len] for text in texts]
    try:
        lm.collator.run(tokens, [len(t) for t in tokens], run_batch)
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
