"""Every method on one model under one protocol: the comparison table and its plots, in one command.

    python tools/compare.py SUITE_CFG --model_path P --budget B [--budget B2 ...] --work_dir DIR
        [--model_cfg FILE] [--data_root DIR] [--max_num N] [--batch_size N] [--dtype float32]

SUITE_CFG (``compare_cfgs/``, format in ``harness/compare/suite.py``) names the benchmarks with
their item caps, the shared calibration data, the efficiency settings and the methods. The model
loads once; one calibration pass serves every method; the full model, then each method at each
budget (random over several seeds, layer/block drop and CD-MoE at a matching memory, the search
with its short setting) is evaluated on every benchmark and measured for memory and speed.

Writes DIR/comparison.md (rows = methods, columns = benchmarks, average, perplexity, memory ratio,
speed-up, wall time, status), DIR/comparison.json, DIR/accuracy_vs_memory.png and
DIR/accuracy_vs_speedup.png, rewritten after every finished plan; each plan's files lie under
DIR/full and DIR/budget_<B>/<method>/ in infer.py's layout. Rerun the same command after a kill
(even kill -9) and it continues: finished benchmarks are skipped. A method that fails is recorded
as failed with its error and the others still run. --max_num caps every benchmark further (a quick
look); the cap is part of what a finished result depends on.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.cli import main_guard  # noqa: E402
from harness.compare.plots import write_plots  # noqa: E402
from harness.compare.runner import Comparison  # noqa: E402
from harness.compare.setup import check_loaded_budgets, prepare  # noqa: E402
from harness.compare.table import write_table  # noqa: E402
from harness.run import add_run_arguments, make_parser, positive_int  # noqa: E402
from harness.runner import PlanRunner  # noqa: E402


def parse_args(argv=None):
    parser = make_parser(__doc__)
    add_run_arguments(parser, "comparison suite config (compare_cfgs/*.py)")
    parser.add_argument("--budget", type=positive_int, action="append", required=True,
                        help="experts kept per MoE layer; repeat for several budgets")
    return parser.parse_args(argv)


@main_guard
def main(argv=None) -> int:
    args = parse_args(argv)
    suite, run, calibration = prepare(args)  # every check before the model loads

    start = time.perf_counter()
    runner = PlanRunner(run, run.load_model())
    check_loaded_budgets(runner.lm.model, args.budget)  # a hub model's expert count is known only now
    runner.calibration_dir = run.work_dir / "calibration"
    comparison = Comparison(suite, run, runner, list(dict.fromkeys(args.budget)), run.tasks, calibration)
    comparison.timings["model load"] = time.perf_counter() - start
    run.start()

    def publish():
        _, rows = write_table(comparison)
        write_plots(rows, run.work_dir)

    comparison.run_all(on_progress=publish)
    comparison.timings["total"] = time.perf_counter() - start
    publish()
    print((run.work_dir / "comparison.md").read_text(encoding="utf-8"), end="")
    print(f"wrote {run.work_dir / 'comparison.md'}, comparison.json, accuracy_vs_memory.png, accuracy_vs_speedup.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
