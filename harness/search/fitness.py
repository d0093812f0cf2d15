"""Scoring a candidate plan on a loaded model: swap the plan in, run the pipeline, read the metric.

The model is loaded once. Trying a candidate restores the uncompressed experts from a snapshot and
applies the candidate's plan on the model's device; weights are never reloaded from disk, and each
task's prompts are built and tokenised once.
"""
from __future__ import annotations

import logging
import time

from harness.compress import apply_plan, reset_plan, snapshot_experts
from harness.compress.adapters import decoder_layers, expert_count, moe_layer_indices
from harness.errors import HarnessError
from harness.pipeline import EvalTask
from harness.search.space import PlanSpace

log = logging.getLogger(__name__)


def primary_metric(metrics: dict, name: str | None = None) -> float:
    """The metric a search maximises: ``name`` if given, else the first one the evaluator reports."""
    if name is not None:
        if name not in metrics:
            raise HarnessError(f"fitness metric {name!r} not among the evaluator's metrics {sorted(metrics)}")
        return float(metrics[name])
    for key, value in metrics.items():
        if isinstance(value, (int, float)):
            return float(value)
    raise HarnessError(f"the evaluator returned no numeric metric: {metrics}")


class PlanEvaluator:
    """Applies plans to one loaded ``HFCausalLM`` and scores them on tasks.

    The uncompressed experts are kept on ``snapshot_device`` (CPU by default, so a compressed
    candidate really frees accelerator memory; ``None`` keeps them where they are, which makes a
    swap cheaper at the cost of holding both copies)."""

    def __init__(self, lm, snapshot_device="cpu", metric: str | None = None):
        self.lm = lm
        self.metric = metric
        self.snapshot = snapshot_experts(lm.model, device=snapshot_device)
        self.swap_seconds = 0.0
        self.swaps = 0

    def plan_space(self, budget: int, groups) -> PlanSpace:
        model = self.lm.model
        return PlanSpace.for_model(
            moe_layer_indices(model),
            len(decoder_layers(model)),
            expert_count(model),
            budget,
            groups,
        )

    def use(self, plan) -> None:
        """Swap ``plan`` in (``None``: the uncompressed model)."""
        start = time.perf_counter()
        reset_plan(self.lm.model, self.snapshot)
        if plan is not None:
            apply_plan(self.lm.model, plan)
        self.swap_seconds += time.perf_counter() - start
        self.swaps += 1

    def score(self, plan, task: EvalTask) -> tuple[float, dict]:
        self.use(plan)
        metrics = task.score(self.lm)
        return primary_metric(metrics, self.metric), metrics
