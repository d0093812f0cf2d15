"""Run inference and evaluation for every dataset of a config file.

    python harness/tasks/infer.py CONFIG --model_path PATH [--coeff_path FILE] --work_dir DIR
        [--max_num N] [--batch_size B] [--data_root DIR] [--model_cfg FILE]

Writes DIR/predictions/<model>/<dataset>.json, DIR/results/<model>/<dataset>.json, the resolved
config under DIR/configs and a log under DIR/logs. Rerunning the same command resumes. Under
``torchrun --nproc_per_node N`` the items are shared among the ranks and rank 0 writes the files.
"""
from __future__ import annotations

import json

from harness.cli import main_guard
from harness.run import Run, add_run_arguments, make_parser


def parse_args(argv=None):
    parser = make_parser(__doc__)
    add_run_arguments(parser)
    parser.add_argument("--coeff_path", help="compression plan to apply (EEP .pth, mask .json, or .safetensors)")
    return parser.parse_args(argv)


@main_guard
def main(argv=None) -> int:
    args = parse_args(argv)
    run = Run.prepare(args, plan_files={"coeff_path": args.coeff_path})
    model = run.load_model(args.coeff_path)
    run.start()  # only once the model and its plan are in place: a refused plan leaves nothing behind
    for task in run.tasks:
        metrics = task.run(model, run.work_dir)
        run.print(f"{model.abbr}/{task.abbr}: {json.dumps(metrics)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
