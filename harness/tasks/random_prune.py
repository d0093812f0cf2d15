"""The random-pruning baseline: evaluate N seeded random expert subsets and report mean and std.

    python harness/tasks/random_prune.py CONFIG --model_path P --budget B --work_dir DIR
        [--groups 4|32|layer] [--num_runs 30] [--seed S] [--data_root DIR] [--batch_size N]

Per weight group, B of the E experts are drawn uniformly without replacement (EEP's baseline).
Run r writes DIR/runs/run_<r>/{plan.safetensors, predictions/, results/}; DIR/results/<model>/
<dataset>.json holds each metric's mean, ``<metric>_std`` and ``num_runs``, so tools/summarize.py
shows them beside other runs. Rerunning resumes: finished runs are reused.
"""
from __future__ import annotations

import argparse
import json
import logging
import random
import statistics
from pathlib import Path

from harness.cli import add_run_arguments, main_guard, record_plan_identity, run_model_config, setup_work_dir
from harness.compress import save_plan
from harness.config import dataset_configs, load_config
from harness.io import atomic_write_json, results_path
from harness.pipeline import EvalTask
from harness.registry import MODELS, build
from harness.search.evolution import random_pruning
from harness.search.fitness import PlanEvaluator

log = logging.getLogger("harness.random_prune")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(parser)
    parser.add_argument("--budget", type=int, required=True)
    parser.add_argument("--groups", default="4")
    parser.add_argument("--num_runs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def run_rng(seed: int, run: int) -> random.Random:
    return random.Random(seed * 1_000_003 + run)


def summarize_runs(per_run: list[dict]) -> dict:
    """Mean of each metric over runs, plus ``<metric>_std`` (sample std; 0 for one run) and the count."""
    out: dict = {}
    for key in per_run[0]:
        values = [float(m[key]) for m in per_run]
        out[key] = statistics.fmean(values)
        out[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
    out["num_runs"] = len(per_run)
    return out


@main_guard
def main(argv=None) -> int:
    args = parse_args(argv)
    cfg = load_config(args.config)
    model_cfg = run_model_config(args, cfg)
    tasks = [EvalTask(d, args.data_root) for d in dataset_configs(cfg)]
    setup_work_dir(args.work_dir, cfg)
    lm = build(MODELS, model_cfg)
    evaluator = PlanEvaluator(lm)
    space = evaluator.plan_space(args.budget, args.groups)

    per_task: dict[str, list[dict]] = {task.abbr: [] for task in tasks}
    for run in range(args.num_runs):
        run_dir = Path(args.work_dir) / "runs" / f"run_{run:03d}"
        candidate = random_pruning(space, run_rng(args.seed, run))
        plan = space.to_plan(candidate, metadata={"method": "random", "seed": args.seed, "run": run,
                                                  "budget": args.budget, "groups": str(args.groups)})
        save_plan(plan, run_dir / "plan.safetensors")
        evaluator.use(plan)
        record_plan_identity(lm, run_dir / "plan.safetensors")
        for task in tasks:
            metrics = task.run(lm, run_dir)
            per_task[task.abbr].append(metrics)
            log.info("run %d %s: %s", run, task.abbr, metrics)

    for task in tasks:
        summary = summarize_runs(per_task[task.abbr])
        atomic_write_json(results_path(args.work_dir, lm.abbr, task.abbr), summary)
        print(f"{lm.abbr}/{task.abbr} random budget {args.budget} over {args.num_runs} runs: {json.dumps(summary)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
