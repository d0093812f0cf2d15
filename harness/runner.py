"""The generic plan runner: what every plan-making task shares, so a method or a search is one module.

``PlanRunner`` owns, on one loaded model:
- plan swaps (``PlanEvaluator``: snapshot once, then reset + apply per plan, no reloads);
- making a plan with a registered method (calibrating first when the method needs it);
- running a registered search through a ``Ledger`` in ``<work_dir>/search`` and picking its
  finalists (re-scored on dev data when there is some);
- saving plans (rank 0 only, atomically, with the method, its settings and the command in the
  metadata) and the final evaluation of a plan into a folder laid out like ``infer.py``'s.
"""
from __future__ import annotations

import json
import logging
import shlex
import sys
from pathlib import Path

from harness import distributed
from harness.compress import save_plan
from harness.compress.plan import CompressionPlan
from harness.errors import HarnessError
from harness.io import atomic_write_json, results_path
from harness.methods.base import MethodInputs, ModelShape, build_plan, method
from harness.methods.calibration import DEFAULT_CACHE_TOKENS, CalibrationStats, calibrate
from harness.methods.calibration_data import CalibrationData, prompt_samples
from harness.methods.calibration_store import cached_calibration, fingerprint, model_identity
from harness.pipeline import EvalTask
from harness.run import Run
from harness.search.base import Search
from harness.search.fitness import PlanEvaluator
from harness.search.ledger import Ledger
from harness.search.space import Candidate, PlanSpace

log = logging.getLogger("harness.runner")
FINAL_CLAIM = 10**6  # ledger slot used as a lock so one search worker runs the final evaluation


def command_line() -> str:
    return " ".join(shlex.quote(a) for a in ["python", *sys.argv])


class PlanRunner:
    def __init__(self, run: Run, lm, metric: str | None = None):
        self.run = run
        self.lm = lm
        self.evaluator = PlanEvaluator(lm, metric=metric)
        self.shape = ModelShape.of(lm.model)
        self.calibration_key: str | None = None  # fingerprint of the last calibration
        self.calibration_reused = False
        self.calibration_dir: Path | None = None  # where statistics are saved (default <work_dir>/calibration)

    def check_budget(self, budget: int) -> None:
        """A budget keeps at least one expert and at most all of them (checked before any output)."""
        if not 1 <= budget <= self.shape.num_experts:
            raise HarnessError(f"--budget {budget} must be between 1 and the model's {self.shape.num_experts} experts")

    # ------------------------------------------------------------------ methods
    def prompt_data(self, tasks: list[EvalTask], limit: int, source: str, seq_len: int | None = None) -> CalibrationData:
        """The tasks' prompts (at most ``limit``) as calibration samples."""
        return prompt_samples(tasks, self.lm, limit, seq_len, source)

    def calibrate(self, data: CalibrationData, cache_tokens: int = DEFAULT_CACHE_TOKENS) -> CalibrationStats:
        """Statistics of the uncompressed model on ``data``: read from ``calibration_dir`` when a
        pass with the same model, tokens and settings was saved there, else one pass (then saved)."""
        self.evaluator.use(None)
        settings = {"cache_tokens": int(cache_tokens)}
        self.calibration_key = fingerprint(model_identity(self.lm), data.samples, settings)
        folder = self.calibration_dir or (self.run.work_dir / "calibration" if self.run is not None else None)

        def compute():
            log.info("calibrating on %s", data.source)
            return calibrate(self.lm, data.samples, source=data.source, cache_tokens=cache_tokens)

        stats, reused = cached_calibration(folder, self.calibration_key, compute, write=distributed.is_main())
        log.info("calibration %s %s", self.calibration_key, "reused" if reused else "computed")
        self.calibration_reused = reused
        return stats

    def method_inputs(self, budget: int | None, seed: int = 0, drop_n: int | None = None,
                      data: CalibrationData | None = None) -> MethodInputs:
        return MethodInputs(self.shape, budget, seed, model=self.lm.model, drop_n=drop_n,
                            samples=data.samples if data is not None else None)

    def check_method(self, name: str, budget: int | None, drop_n: int | None = None,
                     data: CalibrationData | None = None, **settings) -> None:
        """Refuse a method, its settings, budget or drop_n before any calibration or output."""
        chosen = method(name, **settings)
        chosen.check(self.method_inputs(budget, drop_n=drop_n, data=data))
        if chosen.needs_calibration and data is None:
            raise HarnessError(f"method {name!r} needs calibration data; pass --calib_data FILE or --calib_cfg CFG")

    def make_plan(self, name: str, budget: int | None, seed: int = 0, calibration=None, drop_n: int | None = None,
                  cache_tokens: int = DEFAULT_CACHE_TOKENS, **settings) -> CompressionPlan:
        """A plan from method ``name``. ``calibration``: a CalibrationData (calibrated, or read back,
        only if the method needs statistics), or a callable returning one."""
        inputs = MethodInputs(self.shape, budget, seed, model=self.lm.model, drop_n=drop_n)
        if method(name, **settings).needs_calibration:
            if calibration is None:
                raise HarnessError(f"method {name!r} needs calibration data")
            data = calibration() if callable(calibration) else calibration
            inputs.stats = self.calibrate(data, cache_tokens)
            inputs.samples = data.samples
        self.evaluator.use(None)
        plan = build_plan(name, inputs, **settings)
        if inputs.stats is not None:
            plan.metadata["calibration_fingerprint"] = self.calibration_key
        return plan

    # ------------------------------------------------------------------ searches
    def plan_space(self, budget: int, groups) -> PlanSpace:
        return self.evaluator.plan_space(budget, groups)

    def search(self, search: Search, space: PlanSpace, train_task: EvalTask) -> tuple[dict[int, dict], Ledger]:
        """Run ``search`` with the train task's metric as fitness; every result lands in the ledger."""
        ledger = Ledger(self.run.work_dir / "search")

        def fitness(candidate: Candidate):
            return self.evaluator.score(space.to_plan(candidate), train_task)

        records = search.run(space, ledger, fitness,
                             on_result=lambda slot, value: log.info("evaluation %d: fitness %.2f", slot, value))
        return records, ledger

    def claim_final(self, ledger: Ledger) -> bool:
        """One worker of a shared search runs the final evaluation; False for the others."""
        return ledger.claim(FINAL_CLAIM) or (self.run.work_dir / "best_plan.safetensors").exists()

    def release_final(self, ledger: Ledger) -> None:
        ledger.release(FINAL_CLAIM)

    def choose(self, records: dict[int, dict], ranked: list[int], space: PlanSpace, dev_task: EvalTask | None,
               dev_ledger: Ledger | None) -> int:
        """The finalist to output: the first by train fitness, or the best by dev score among them."""
        if dev_task is None or dev_ledger is None:
            return ranked[0]
        scores = {}
        for slot in ranked:
            done = dev_ledger.finished()
            if slot not in done:
                plan = space.to_plan(Candidate.from_dict(records[slot]["candidate"]))
                value, metrics = self.evaluator.score(plan, dev_task)
                dev_ledger.record(slot, {"fitness": value, "metrics": metrics})
                done = dev_ledger.finished()
            scores[slot] = done[slot]["fitness"]
        return max(ranked, key=lambda s: (scores[s], records[s]["fitness"], -s))

    # ------------------------------------------------------------------ outputs
    def save(self, plan: CompressionPlan, path: Path, eep_format: bool = False) -> Path:
        """Write ``plan`` (rank 0; the others wait for it) with the command in its metadata."""
        plan.metadata = {**dict(plan.metadata or {}), "command": command_line()}
        if distributed.is_main():
            save_plan(plan, path)
            if eep_format:
                save_plan(plan, path.with_suffix(".pth"), format="eep")
        distributed.barrier()
        return path

    def evaluate(self, plan: CompressionPlan | None, out_dir: Path, tasks: list[EvalTask] | None = None) -> dict:
        """Swap ``plan`` in and run the tasks into ``out_dir`` (resuming); {dataset abbr: metrics}."""
        self.evaluator.use(plan)
        return {task.abbr: task.run(self.lm, out_dir) for task in (tasks or self.run.tasks)}

    def write_summary(self, dataset_abbr: str, metrics: dict) -> None:
        if distributed.is_main():
            atomic_write_json(results_path(self.run.work_dir, self.lm.abbr, dataset_abbr), metrics)

    def report(self, text: str, metrics: dict) -> None:
        self.run.print(f"{text}: {json.dumps(metrics)}")
