"""Splitting one MLP's neurons: a shared set (highest mean output mass) and E equal-size clusters.

Balanced k-means on unit-norm feature rows (cosine similarity): each round assigns neurons to
centroids greedily, most confident pair first, under a capacity of n / k per cluster, so every
expert has the same width (Qwen2-MoE's experts share one ``moe_intermediate_size``).
"""
from __future__ import annotations

import torch

from harness.errors import HarnessError


def _balanced_assign(sim: torch.Tensor, capacity: int) -> torch.Tensor:
    """Labels (n,) maximising similarity greedily under ``capacity`` neurons per cluster."""
    n, k = sim.shape
    order = torch.argsort(sim.flatten(), descending=True, stable=True)
    labels = torch.full((n,), -1, dtype=torch.long)
    room = [capacity] * k
    left = n
    for flat in order.tolist():
        i, c = divmod(flat, k)
        if labels[i] >= 0 or room[c] == 0:
            continue
        labels[i] = c
        room[c] -= 1
        left -= 1
        if left == 0:
            break
    return labels


def balanced_kmeans(features: torch.Tensor, k: int, seed: int = 0, iters: int = 15) -> torch.Tensor:
    """Labels (n,) in [0, k), exactly n / k neurons each, from rows of ``features`` (n, d).

    Deterministic from ``seed`` (k-means++ style initialisation by farthest cosine distance)."""
    n = features.shape[0]
    if k < 1 or n % k:
        raise HarnessError(f"{n} neurons do not split into {k} equal experts; pick an expert count dividing {n}")
    x = torch.nn.functional.normalize(features.double(), dim=1)
    gen = torch.Generator().manual_seed(seed)
    first = int(torch.randint(n, (1,), generator=gen))
    centers = [x[first]]
    for _ in range(1, k):
        closest = torch.stack([x @ c for c in centers], 1).max(1).values
        weights = (1 - closest).clamp_min(0) ** 2 + 1e-12
        centers.append(x[int(torch.multinomial(weights, 1, generator=gen))])
    c = torch.stack(centers)
    labels = _balanced_assign(x @ c.T, n // k)
    for _ in range(iters):
        c = torch.nn.functional.normalize(torch.stack([x[labels == j].sum(0) for j in range(k)]), dim=1)
        new = _balanced_assign(x @ c.T, n // k)
        if torch.equal(new, labels):
            break
        labels = new
    return labels


def split_neurons(mass: torch.Tensor, num_experts: int, shared: int, seed: int = 0,
                  features: torch.Tensor | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(shared neuron ids, one sorted id tensor per routed expert) from per-token output mass.

    ``mass`` (tokens, n): |activation| x |down column| of each neuron on calibration tokens. The
    ``shared`` neurons with the highest mean mass form the shared expert; the others are clustered
    on ``features`` (rows = neurons; default their co-activation pattern, the columns of ``mass``)."""
    n = mass.shape[1]
    if not 0 <= shared < n:
        raise HarnessError(f"--shared {shared} must be in [0, {n}) for an MLP of {n} neurons")
    order = torch.argsort(mass.mean(0), descending=True, stable=True)
    shared_ids = torch.sort(order[:shared]).values
    rest = torch.sort(order[shared:]).values
    feats = (mass.T if features is None else features)[rest]
    labels = balanced_kmeans(feats, num_experts, seed=seed)
    return shared_ids, [rest[labels == j] for j in range(num_experts)]
