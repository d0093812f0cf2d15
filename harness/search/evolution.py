"""EEP's gradient-free evolutionary search over per-group pruning and merging coefficients.

Steady-state evolution (the released algorithm, ``../shared/eep/README.md``): every evaluated
candidate joins the population, ranked by fitness.
- slots below ``init_random``: random prunings (one-hot rows, R == M);
- pruning phase (slots below ``prune_evals``): a parent drawn among candidates within
  ``prune_margin`` points of the best; in each changed group every row moves, with ``p_row_move``,
  to an expert not yet used in that group; R stays equal to M;
- merging phase (up to ``total_evals``): with ``p_crossover``, two parents drawn among those within
  ``merge_margin`` of the best (at least the top ``min_merge_parents``) exchange rows (each row from
  parent 1 with ``p_parent1``); otherwise Gaussian mutation of the changed groups' M and R (each
  entry with ``p_entry`` gets N(0, 1) * ``sigma``); then, with ``p_renorm``, each merging row is
  rescaled to sum to one.
Each step changes each group with ``p_group`` (redrawn until at least one changes).

Determinism: slot ``i`` is proposed from its own seeded generator and from the candidates of slots
below ``parallel_width * (i // parallel_width)``. With width 1 this is the sequential algorithm;
with width W, W workers evaluate a batch in parallel and the result is the same however many
workers there are, and however often they are stopped and restarted.
"""
from __future__ import annotations

import random
from dataclasses import asdict, dataclass, fields

import torch

from harness.registry import SEARCHES
from harness.search.base import Search
from harness.search.progress import SearchProgress
from harness.search.space import Candidate, PlanSpace


@dataclass
class EvolutionConfig:
    seed: int = 11450
    init_random: int = 30
    prune_evals: int = 100
    total_evals: int = 400
    prune_margin: float = 3.0
    merge_margin: float = 1.0
    min_merge_parents: int = 6
    p_group: float = 0.25
    p_row_move: float = 0.15
    p_crossover: float = 0.3
    p_parent1: float = 0.6
    p_entry: float = 0.25
    sigma: float = 0.065
    p_renorm: float = 0.1
    max_redraws: int = 50  # a proposal equal to an evaluated pruning is redrawn up to this often
    parallel_width: int = 1
    rescore_top: int = 20  # candidates re-scored on the dev subset after each phase (0: off)
    top_k: int | None = None  # the reduced-top-k variant: every candidate activates this many experts

    @classmethod
    def from_dict(cls, values: dict) -> "EvolutionConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            from harness.errors import HarnessError

            raise HarnessError(f"unknown search setting(s) {unknown}; known: {sorted(known)}")
        return cls(**values)

    def to_dict(self) -> dict:
        return asdict(self)


def phase_of(slot: int, cfg: EvolutionConfig) -> str:
    if slot < cfg.init_random:
        return "init"
    return "prune" if slot < cfg.prune_evals else "merge"


def slot_rng(cfg: EvolutionConfig, slot: int) -> tuple[random.Random, torch.Generator]:
    seed = cfg.seed * 1_000_003 + slot
    gen = torch.Generator().manual_seed(seed)
    return random.Random(seed), gen


def history_limit(slot: int, cfg: EvolutionConfig) -> int:
    """Slots whose results a proposal for ``slot`` may use."""
    return cfg.parallel_width * (slot // cfg.parallel_width)


def random_pruning(space: PlanSpace, rng: random.Random, top_k: int | None = None) -> Candidate:
    """Per group, B of the E experts uniformly without replacement (EEP's random baseline)."""
    kept = [sorted(rng.sample(range(space.num_experts), space.budget)) for _ in space.groups]
    return space.pruning(kept, top_k)


def propose(slot: int, history: list[tuple[Candidate, float]], space: PlanSpace, cfg: EvolutionConfig) -> Candidate:
    """The candidate of ``slot`` given the evaluated ``history`` (candidate, fitness) it may use."""
    rng, gen = slot_rng(cfg, slot)
    phase = phase_of(slot, cfg)
    if phase == "init" or not history:
        return random_pruning(space, rng, cfg.top_k)
    if phase == "prune":
        seen = {_key(c) for c, _ in history}
        for _ in range(cfg.max_redraws):
            child = _mutate_pruning(_pick_parent(history, cfg.prune_margin, 1, rng), space, cfg, rng)
            if _key(child) not in seen:
                return child
        return child
    return _merge_step(history, space, cfg, rng, gen)


def _key(candidate: Candidate) -> tuple:
    return tuple(candidate.merge.flatten().tolist()) + tuple(candidate.router.flatten().tolist())


def _ranked(history):
    return sorted(history, key=lambda item: -item[1])


def _pick_parents(history, margin: float, minimum: int) -> list[Candidate]:
    ranked = _ranked(history)
    best = ranked[0][1]
    close = [c for c, f in ranked if f >= best - margin]
    return close if len(close) >= minimum else [c for c, _ in ranked[:minimum]]


def _pick_parent(history, margin: float, minimum: int, rng: random.Random) -> Candidate:
    return rng.choice(_pick_parents(history, margin, minimum))


def _changed_groups(num_groups: int, cfg: EvolutionConfig, rng: random.Random) -> list[int]:
    while True:
        changed = [g for g in range(num_groups) if rng.random() < cfg.p_group]
        if changed:
            return changed


def _mutate_pruning(parent: Candidate, space: PlanSpace, cfg: EvolutionConfig, rng: random.Random) -> Candidate:
    merge = parent.merge.clone()
    for g in _changed_groups(len(space.groups), cfg, rng):
        used = set(merge[g].argmax(-1).tolist())
        for row in range(space.budget):
            if rng.random() < cfg.p_row_move:
                free = [e for e in range(space.num_experts) if e not in used]
                if not free:
                    continue
                new = rng.choice(free)
                used.discard(int(merge[g, row].argmax()))
                used.add(new)
                merge[g, row] = 0.0
                merge[g, row, new] = 1.0
    return Candidate(merge, merge.clone(), cfg.top_k)


def _merge_step(history, space: PlanSpace, cfg: EvolutionConfig, rng: random.Random, gen: torch.Generator) -> Candidate:
    changed = _changed_groups(len(space.groups), cfg, rng)
    parents = _pick_parents(history, cfg.merge_margin, cfg.min_merge_parents)
    first = rng.choice(parents)
    merge, router = first.merge.clone(), first.router.clone()
    if rng.random() < cfg.p_crossover:
        second = rng.choice(parents)
        for g in changed:
            for row in range(space.budget):
                if rng.random() >= cfg.p_parent1:
                    merge[g, row] = second.merge[g, row]
                    router[g, row] = second.router[g, row]
    else:
        for g in changed:
            for matrix in (merge, router):
                noise = torch.randn(matrix[g].shape, generator=gen) * cfg.sigma
                mask = torch.rand(matrix[g].shape, generator=gen) < cfg.p_entry
                matrix[g] += noise * mask
    if rng.random() < cfg.p_renorm:
        sums = merge.sum(-1, keepdim=True)
        merge = torch.where(sums.abs() > 1e-6, merge / sums, merge)
    return Candidate(merge, router, cfg.top_k)


def run_evolution(
    space: PlanSpace,
    cfg: EvolutionConfig,
    ledger,
    fitness,
    poll_seconds: float = 2.0,
    on_result=None,
    progress: SearchProgress | None = None,
) -> dict[int, dict]:
    """Evaluate slots until ``cfg.total_evals`` are finished; returns every finished record.

    ``fitness(candidate) -> (value, metrics)``. Records are persisted by ``ledger`` as soon as a
    candidate is scored; several processes may run this loop on one ledger at once. ``progress``
    reports each finished evaluation (``harness/search/progress.py``).
    """
    import time

    while True:
        done = ledger.finished()
        todo = [i for i in range(cfg.total_evals) if i not in done]
        if not todo:
            return done
        slot = next((i for i in todo if not ledger.is_claimed(i)), None)
        limit = history_limit(slot, cfg) if slot is not None else 0
        if slot is None or any(i not in done for i in range(limit)):
            time.sleep(poll_seconds)  # other workers hold the remaining slots, or the history is incomplete
            continue
        if not ledger.claim(slot):
            continue
        history = [(Candidate.from_dict(done[i]["candidate"]), done[i]["fitness"]) for i in range(limit)]
        candidate = propose(slot, history, space, cfg)
        try:
            value, metrics = fitness(candidate)
        except BaseException:
            ledger.release(slot)
            raise
        ledger.record(slot, {"phase": phase_of(slot, cfg), "fitness": value, "metrics": metrics,
                             "candidate": candidate.to_dict()})
        if progress is not None:
            progress.update(slot, value, done)
        if on_result is not None:
            on_result(slot, value)


def best_slots(records: dict[int, dict], slots, top: int) -> list[int]:
    """The ``top`` slots among ``slots`` by fitness (ties: earlier slot first)."""
    ranked = sorted((i for i in slots if i in records), key=lambda i: (-records[i]["fitness"], i))
    return ranked[:top]


@SEARCHES.register_module(name="eep")
class EEPSearch(Search):
    """EEP's evolution as a registered search: finalists ``prune_only`` (the pruning phase's best)
    and ``best`` (over both phases), each ranked by train fitness, ``rescore_top`` of them."""

    def __init__(self, **settings):
        self.cfg = EvolutionConfig.from_dict(settings)
        self.top_k = self.cfg.top_k

    def settings(self) -> dict:
        return self.cfg.to_dict()

    def run(self, space, ledger, fitness, on_result=None) -> dict[int, dict]:
        progress = SearchProgress(self.cfg.total_evals, ledger.finished(), str(ledger.root),
                                  phase=lambda slot: phase_of(slot, self.cfg))
        return run_evolution(space, self.cfg, ledger, fitness, on_result=on_result, progress=progress)

    def finalists(self, records: dict[int, dict]) -> dict[str, list[int]]:
        top = max(1, self.cfg.rescore_top)
        prune_slots = range(min(self.cfg.prune_evals, self.cfg.total_evals))
        return {"prune_only": best_slots(records, prune_slots, top),
                "best": best_slots(records, range(self.cfg.total_evals), top)}
