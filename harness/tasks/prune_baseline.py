"""One-shot pruning methods as a task: routing frequency, keep-the-first-B, or any registered method.

    python harness/tasks/prune_baseline.py CONFIG --model_path P --budget B --method frequency|first|NAME
        --work_dir DIR [--calib_cfg FILE] [--calib_num N] [--seed S] [--data_root DIR] [--batch_size N]
        [--max_num N]

``frequency`` keeps, per MoE layer, the B experts most often among a token's top-k on the
calibration prompts (--calib_cfg's data; defaults to CONFIG's, with a warning). ``first`` keeps
experts 0..B-1. Any other name is a method registered in ``harness.registry.METHODS``
(``harness/methods/``, one module each). The plan is written to DIR/plan.safetensors, then
CONFIG's datasets are evaluated with it (DIR/predictions, DIR/results), so the method sits in the
same summary table.
"""
from __future__ import annotations

import logging

from harness.cli import main_guard
from harness.run import Run, add_run_arguments, make_parser, positive_int
from harness.methods.base import method
from harness.runner import PlanRunner

log = logging.getLogger("harness.prune_baseline")
ALIASES = {"first": "keep_first"}  # the names this task's command line had before the registry


def parse_args(argv=None):
    parser = make_parser(__doc__)
    add_run_arguments(parser)
    parser.add_argument("--budget", type=positive_int, required=True)
    parser.add_argument("--method", required=True, help="frequency, first, or a registered method's name")
    parser.add_argument("--seed", type=int, default=0, help="seed of methods that draw at random")
    parser.add_argument("--calib_cfg", help="dataset config whose prompts calibrate the routing counts")
    parser.add_argument("--calib_num", type=positive_int, default=256, help="calibration prompts used (default 256)")
    return parser.parse_args(argv)


@main_guard
def main(argv=None) -> int:
    args = parse_args(argv)
    name = ALIASES.get(args.method, args.method)
    needs_calibration = method(name).needs_calibration  # an unknown name lists the registered ones
    run = Run.prepare(args, calib_cfg=args.calib_cfg)
    calib_tasks = run.tasks  # calibration runs on the evaluation tasks unless --calib_cfg names others
    if needs_calibration and args.calib_cfg:
        calib_tasks = [run.task(args.calib_cfg, "--calib_cfg")]
    elif needs_calibration:
        log.warning("no --calib_cfg: the method calibrates on the evaluation data itself")
    runner = PlanRunner(run, run.load_model())

    def calibration():
        return runner.calibration(calib_tasks, args.calib_num, args.calib_cfg or args.config)

    plan = runner.make_plan(name, args.budget, seed=args.seed, calibration=calibration)
    run.start()
    plan_path = runner.save(plan, run.work_dir / "plan.safetensors")
    for abbr, metrics in runner.evaluate(plan, run.work_dir).items():
        runner.report(f"{runner.lm.abbr}/{abbr} {args.method} budget {args.budget}", metrics)
    run.print(f"plan: {plan_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
