"""The random-pruning baseline: evaluate N seeded random expert subsets and report mean and std.

    python harness/tasks/random_prune.py CONFIG --model_path P --budget B --work_dir DIR
        [--groups 4|32|layer] [--num_runs 30] [--seed S] [--data_root DIR] [--batch_size N] [--max_num N]

Per weight group, B of the E experts are drawn uniformly without replacement (EEP's baseline; the
registered method ``random``). Run r writes DIR/runs/run_<r>/{plan.safetensors, predictions/,
results/}; DIR/results/<model>/<dataset>.json holds each metric's mean, ``<metric>_std`` (sample
std) and ``num_runs``, so tools/summarize.py shows them beside other runs. Rerunning resumes:
finished runs are reused.
"""
from __future__ import annotations

import statistics

from harness.cli import main_guard
from harness.run import Run, add_run_arguments, make_parser, positive_int
from harness.runner import PlanRunner


def parse_args(argv=None):
    parser = make_parser(__doc__)
    add_run_arguments(parser)
    parser.add_argument("--budget", type=positive_int, required=True)
    parser.add_argument("--groups", default="4")
    parser.add_argument("--num_runs", type=positive_int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


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
    run = Run.prepare(args)
    runner = PlanRunner(run, run.load_model())
    # every run's plan first (cheap): a bad --budget or --groups is refused before anything is written
    plans = [runner.make_plan("random", args.budget, seed=args.seed, groups=str(args.groups), run=r)
             for r in range(args.num_runs)]
    run.start()
    per_task: dict[str, list[dict]] = {task.abbr: [] for task in run.tasks}
    for r, plan in enumerate(plans):
        run_dir = run.work_dir / "runs" / f"run_{r:03d}"
        runner.save(plan, run_dir / "plan.safetensors")
        for abbr, metrics in runner.evaluate(plan, run_dir).items():
            per_task[abbr].append(metrics)
    for abbr, runs in per_task.items():
        summary = summarize_runs(runs)
        runner.write_summary(abbr, summary)
        runner.report(f"{runner.lm.abbr}/{abbr} random budget {args.budget} over {args.num_runs} runs", summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
