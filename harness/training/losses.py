"""Token-level losses of fine-tuning: cross-entropy on the counted tokens plus, for distillation,
``alpha * T^2 * KL(teacher_T || student_T)`` (MC-SMoE: alpha 0.2, T 2).

``shift_labels[b, i]`` is the token position ``i`` must predict, or -100 where nothing counts
(padding, prompts, the last position). Both terms are sums over counted tokens divided by one
count, so gradient accumulation over batches of different lengths weighs every token alike.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

IGNORE = -100


@dataclass
class LossParts:
    loss: torch.Tensor  # what is back-propagated
    ce: torch.Tensor  # task (cross-entropy) sum over counted tokens, detached
    kl: torch.Tensor | None  # distillation sum (already times T^2), detached
    tokens: int


def shift_targets(input_ids: torch.Tensor, counted: torch.Tensor) -> torch.Tensor:
    """Targets aligned with the logits: position i predicts token i+1 where token i+1 counts."""
    targets = torch.full_like(input_ids, IGNORE)
    targets[..., :-1] = torch.where(counted[..., 1:].bool(), input_ids[..., 1:], IGNORE)
    return targets


def kd_kl_sum(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Sum over rows of ``T^2 * KL(softmax(t/T) || softmax(s/T))`` (Hinton's scaling keeps the
    gradient size independent of T); rows are tokens, computed in fp32."""
    s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    return (t.exp() * (t - s)).sum() * temperature**2


def token_loss(student_logits: torch.Tensor, shift_labels: torch.Tensor, teacher_logits: torch.Tensor | None = None,
               alpha: float = 0.0, temperature: float = 1.0, num_items: int | torch.Tensor | None = None) -> LossParts:
    """(CE + alpha * KD) over the tokens where ``shift_labels != -100``, divided by ``num_items``
    (the count over the whole accumulated batch) or by this batch's count."""
    counted = shift_labels != IGNORE
    tokens = int(counted.sum())
    student = student_logits[counted]  # only counted positions reach the vocabulary-wide softmax
    ce = F.cross_entropy(student.float(), shift_labels[counted], reduction="sum")
    total = ce
    kl = None
    if teacher_logits is not None:
        kl = kd_kl_sum(student, teacher_logits[counted], temperature)
        total = total + alpha * kl
    denominator = num_items if num_items is not None else max(tokens, 1)
    if torch.is_tensor(denominator):
        denominator = denominator.to(total.device).clamp(min=1)
    return LossParts(total / denominator, ce.detach(), None if kl is None else kl.detach(), tokens)
