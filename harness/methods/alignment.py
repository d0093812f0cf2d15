"""Neuron alignment of SwiGLU experts before merging (weight matching, as MC-SMoE does for its MLPs).

Two experts can compute the same function with their intermediate neurons in another order, and
averaging them neuron by neuron then mixes unrelated neurons. Alignment re-orders each member
expert's neurons to best match its group's reference (dominant) expert: the score of pairing
reference neuron a with member neuron b is the sum of the inner products of their gate rows, up rows
and down columns, and ``scipy.optimize.linear_sum_assignment`` finds the pairing with the largest
total. MC-SMoE released this only for non-gated MLPs (its issue #2); the gate, up and down
projections are matched together here, and the result is a permutation per expert, which the plan
stores (``LayerPlan.permutations``) and ``apply_plan`` applies before averaging.
"""
from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment


def matching_scores(ref_gate_up: torch.Tensor, ref_down: torch.Tensor, gate_up: torch.Tensor,
                    down: torch.Tensor) -> torch.Tensor:
    """(I, I) fp32: [a, b] = <gate_r[a], gate[b]> + <up_r[a], up[b]> + <down_r[:, a], down[:, b]>.

    ``*gate_up`` are one expert's (2I, H) [gate; up] rows, ``*down`` its (H, I) down projection.
    """
    width = ref_down.shape[-1]
    ref_gate_up, gate_up = ref_gate_up.detach().float(), gate_up.detach().to(ref_gate_up.device).float()
    ref_down, down = ref_down.detach().float(), down.detach().to(ref_down.device).float()
    scores = ref_gate_up[:width] @ gate_up[:width].T + ref_gate_up[width:] @ gate_up[width:].T
    return scores + ref_down.T @ down


def align_neurons(ref_gate_up, ref_down, gate_up, down) -> torch.Tensor:
    """(I,) int64 order: the member's neuron ``order[a]`` is paired with reference neuron a."""
    scores = matching_scores(ref_gate_up, ref_down, gate_up, down).cpu().double().numpy()
    rows, cols = linear_sum_assignment(scores, maximize=True)
    order = torch.empty(len(rows), dtype=torch.long)
    order[torch.as_tensor(rows)] = torch.as_tensor(cols, dtype=torch.long)
    return order


def matching_objective(ref_gate_up, ref_down, gate_up, down, order: torch.Tensor) -> float:
    """The total score of a pairing (what ``align_neurons`` maximises)."""
    scores = matching_scores(ref_gate_up, ref_down, gate_up, down).cpu()
    return float(scores[torch.arange(len(order)), order].sum())


def group_permutations(gate_up: torch.Tensor, down: torch.Tensor, groups: list[list[int]],
                       references: list[int]) -> torch.Tensor:
    """(E, I) int64: every member of each group aligned to its reference; references (and experts
    in one-member groups) keep their order.

    ``gate_up`` (E, 2I, H) and ``down`` (E, H, I) are the layer's fused expert tensors.
    """
    num_experts, width = down.shape[0], down.shape[-1]
    orders = torch.arange(width).repeat(num_experts, 1)
    for members, reference in zip(groups, references):
        for e in members:
            if e != reference:
                orders[e] = align_neurons(gate_up[reference], down[reference], gate_up[e], down[e])
    return orders
