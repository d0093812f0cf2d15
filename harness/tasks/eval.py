"""Re-score existing predictions of a config's datasets (no model is loaded).

    python harness/tasks/eval.py CONFIG --work_dir DIR [--model_abbr NAME] [--data_root DIR]

Reads DIR/predictions/<model>/<dataset>.json for every model folder found (or the one named) and
rewrites DIR/results/<model>/<dataset>.json.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from harness.cli import main_guard
from harness.config import dataset_configs, load_config
from harness.errors import HarnessError
from harness.io import predictions_path
from harness.pipeline import EvalTask, write_results
from harness.run import make_parser


def parse_args(argv=None) -> argparse.Namespace:
    parser = make_parser(__doc__)
    parser.add_argument("config")
    parser.add_argument("--work_dir", required=True)
    parser.add_argument("--model_abbr", help="only this model's predictions (default: every model folder)")
    parser.add_argument("--data_root", help="replaces the ./data prefix of the configs' data paths")
    return parser.parse_args(argv)


def no_predictions_hint(work_dir: Path) -> str:
    """What to do with a work dir without predictions/: a random-pruning folder keeps each run's in runs/."""
    runs = sorted(p for p in (work_dir / "runs").glob("*") if (p / "predictions").is_dir())
    if runs:
        return (f"{work_dir} is a random-pruning folder: its {len(runs)} runs' predictions are in {work_dir / 'runs'}/*; "
                f"re-score each with --work_dir {runs[0]} (and the others), then rerun harness/tasks/random_prune.py "
                "for the mean and std")
    return f"no predictions under {work_dir / 'predictions'}; run harness/tasks/infer.py first"


@main_guard
def main(argv=None) -> int:
    args = parse_args(argv)
    cfg = load_config(args.config)
    pred_root = Path(args.work_dir) / "predictions"
    models = [args.model_abbr] if args.model_abbr else sorted(p.name for p in pred_root.glob("*") if p.is_dir())
    if not models:
        raise HarnessError(no_predictions_hint(Path(args.work_dir)))
    for dataset_cfg in dataset_configs(cfg):
        task = None
        for model_abbr in models:
            path = predictions_path(args.work_dir, model_abbr, dataset_cfg["abbr"])
            if not path.is_file():
                raise HarnessError(f"predictions file {path} not found; run harness/tasks/infer.py first")
            task = task or EvalTask(dataset_cfg, args.data_root)
            metrics, details = task.evaluate_with_details(json.loads(path.read_text(encoding="utf-8")))
            write_results(args.work_dir, model_abbr, task.abbr, metrics, details)
            print(f"{model_abbr}/{task.abbr}: {json.dumps(metrics)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
