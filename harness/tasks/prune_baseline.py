"""Pruning baselines as a task: routing-frequency pruning or keep-the-first-B experts.

    python harness/tasks/prune_baseline.py CONFIG --model_path P --budget B --method frequency|first
        --work_dir DIR [--calib_cfg FILE] [--calib_num N] [--data_root DIR] [--batch_size N]

``frequency`` keeps, per MoE layer, the B experts most often among a token's top-k on the
calibration prompts (--calib_cfg's data; defaults to CONFIG's, with a warning). ``first`` keeps
experts 0..B-1. The plan is written to DIR/plan.safetensors, then CONFIG's datasets are evaluated
with it (DIR/predictions, DIR/results), so the baseline sits in the same summary table.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from harness.cli import add_run_arguments, main_guard, record_plan_identity, run_model_config, setup_work_dir
from harness.compress import apply_plan, save_plan
from harness.compress.adapters import decoder_layers, expert_count, moe_layer_indices
from harness.config import dataset_configs, load_config
from harness.errors import HarnessError
from harness.pipeline import EvalTask
from harness.registry import MODELS, build
from harness.search.baselines import frequency_plan, keep_first_plan, routing_counts

log = logging.getLogger("harness.prune_baseline")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(parser)
    parser.add_argument("--budget", type=int, required=True)
    parser.add_argument("--method", choices=["frequency", "first"], required=True)
    parser.add_argument("--calib_cfg", help="dataset config whose prompts calibrate the routing counts")
    parser.add_argument("--calib_num", type=int, default=256, help="calibration prompts used (default 256)")
    return parser.parse_args(argv)


def calibration_texts(task: EvalTask, lm, limit: int) -> list[str]:
    """The task's prompts as plain texts (PPL items: the shared context plus the first choice)."""
    texts = []
    for prompt in task.prompts(lm)[:limit]:
        texts.append(prompt if isinstance(prompt, str) else prompt[0].context + prompt[0].continuation)
    return texts


@main_guard
def main(argv=None) -> int:
    args = parse_args(argv)
    cfg = load_config(args.config)
    model_cfg = run_model_config(args, cfg)
    tasks = [EvalTask(d, args.data_root) for d in dataset_configs(cfg)]
    calib_source = args.calib_cfg or args.config
    if args.method == "frequency" and not args.calib_cfg:
        log.warning("no --calib_cfg: routing frequencies are counted on the evaluation data itself")
    calib_tasks = tasks  # routing is counted on the evaluation tasks unless --calib_cfg names others
    if args.method == "frequency" and args.calib_cfg:
        calib_tasks = [EvalTask(d, args.data_root) for d in dataset_configs(load_config(args.calib_cfg))]
    setup_work_dir(args.work_dir, cfg)
    lm = build(MODELS, model_cfg)
    model = lm.model
    num_experts = expert_count(model)
    if not 1 <= args.budget <= num_experts:
        raise HarnessError(f"--budget {args.budget} must be between 1 and the model's {num_experts} experts")

    if args.method == "frequency":
        texts = []
        for task in calib_tasks:
            texts += calibration_texts(task, lm, args.calib_num)
            if len(texts) >= args.calib_num:
                break
        counts = routing_counts(lm, texts[: args.calib_num])
        plan = frequency_plan(counts, len(decoder_layers(model)), args.budget)
        plan.metadata["calibration"] = f"{calib_source} ({len(texts[: args.calib_num])} prompts)"
    else:
        plan = keep_first_plan(moe_layer_indices(model), len(decoder_layers(model)), num_experts, args.budget)
    plan_path = Path(args.work_dir) / "plan.safetensors"
    save_plan(plan, plan_path)
    apply_plan(model, plan)
    record_plan_identity(lm, plan_path)
    for task in tasks:
        metrics = task.run(lm, args.work_dir)
        print(f"{lm.abbr}/{task.abbr} {args.method} budget {args.budget}: {json.dumps(metrics)}")
    print(f"plan: {plan_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
