"""One-shot compression with a registered method, then evaluation: the field's methods side by side.

    python harness/tasks/compress.py CONFIG --model_path P --method NAME [--budget B | --drop_n N]
        [--calib_data FILE | --calib_cfg CFG] [--calib_samples N] [--calib_seq_len L]
        [--calib_cache_tokens N] [--calib_dir D] [--method_cfg FILE] [--seed S] --work_dir DIR

Methods (``harness/methods/``): frequency, keep_first, random, reap, expert_drop, naee, layer_drop,
block_drop (and any other registered one). Settings come from ``method_cfgs/NAME.py`` (the paper's
defaults) or ``--method_cfg FILE`` (``method = dict(type=NAME, ...)``).

Calibration: ``--calib_data`` is a JSONL corpus with a ``text`` field (documents shuffled with
``--seed``, concatenated, cut into --calib_samples x --calib_seq_len tokens; default 128 x 2048,
capped at the model's max_seq_len); ``--calib_cfg`` a dataset config whose prompts are the samples
(default 256). Without either, a method that needs statistics calibrates on CONFIG's prompts (with a
warning). The statistics are saved in DIR/calibration/<fingerprint>.safetensors (model, tokens and
settings) and reused by every later method on the same data; ``--calib_dir D`` puts them in D
instead, so runs of several methods in their own work dirs share one pass.

Writes DIR/plan.safetensors (method, settings, calibration fingerprint and the command in its
metadata), then evaluates CONFIG with it as infer.py does (DIR/predictions, DIR/results), so
tools/summarize.py sets methods side by side.
"""
from __future__ import annotations

import logging
from pathlib import Path

from harness.cli import main_guard
from harness.config import load_config
from harness.errors import HarnessError
from harness.registry import METHODS, get
from harness.methods.base import method
from harness.methods.calibration import DEFAULT_CACHE_TOKENS
from harness.methods.calibration_data import corpus_samples
from harness.run import Run, add_run_arguments, make_parser, positive_int
from harness.runner import PlanRunner

log = logging.getLogger("harness.compress")
METHOD_CFGS = Path(__file__).resolve().parents[2] / "method_cfgs"
DEFAULT_CORPUS_SAMPLES, DEFAULT_PROMPT_SAMPLES, DEFAULT_SEQ_LEN = 128, 256, 2048


def parse_args(argv=None):
    parser = make_parser(__doc__)
    add_run_arguments(parser)
    parser.add_argument("--method", required=True, help="a registered method's name")
    sizes = parser.add_mutually_exclusive_group()
    sizes.add_argument("--budget", type=positive_int, help="experts kept per MoE layer (expert methods)")
    sizes.add_argument("--drop_n", type=positive_int, help="MoE layers (layer_drop) or blocks (block_drop) to drop")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--calib_data", help="JSONL calibration corpus with a 'text' field")
    source.add_argument("--calib_cfg", help="dataset config whose prompts are the calibration samples")
    parser.add_argument("--calib_samples", type=positive_int, help="calibration samples (default 128 corpus chunks / 256 prompts)")
    parser.add_argument("--calib_seq_len", type=positive_int, help="tokens per corpus sample (default 2048, at most max_seq_len)")
    parser.add_argument("--calib_cache_tokens", type=positive_int, default=DEFAULT_CACHE_TOKENS,
                        help=f"MoE inputs/outputs cached per layer for reconstruction methods (default {DEFAULT_CACHE_TOKENS})")
    parser.add_argument("--calib_dir", help="where calibration statistics are saved and reused (default DIR/calibration); "
                        "give several methods' runs the same one to calibrate once")
    parser.add_argument("--method_cfg", help="method settings file (default method_cfgs/NAME.py when it exists)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the corpus shuffle and of methods that draw at random")
    return parser.parse_args(argv)


def _same_method(kind: str, name: str) -> bool:
    """Whether two names are aliases of one registered method (``m_smoe`` and ``msmoe``)."""
    return get(METHODS, kind) is get(METHODS, name)


def method_settings(name: str, path: str | None) -> dict:
    """The method's settings: ``method = dict(type=NAME, ...)`` from --method_cfg or method_cfgs/NAME.py."""
    file = Path(path) if path else METHOD_CFGS / f"{name}.py"
    if not file.is_file():
        if path:
            raise HarnessError(f"--method_cfg {path} not found; pass an existing method config file")
        return {}
    cfg = load_config(str(file))
    settings = dict(cfg.get("method", None) or {})
    kind = settings.pop("type", name)
    if kind != name and not _same_method(kind, name):
        raise HarnessError(f"--method_cfg {file} is for method {kind!r}, not --method {name}; pass the matching file")
    return settings


def calibration_data(args, run: Run, runner: PlanRunner):
    """The calibration samples the arguments name (built before anything is written)."""
    lm = runner.lm
    if args.calib_data:
        seq_len = args.calib_seq_len or min(DEFAULT_SEQ_LEN, lm.max_seq_len)
        if seq_len > lm.max_seq_len:
            raise HarnessError(f"--calib_seq_len {seq_len} exceeds the model's max_seq_len {lm.max_seq_len}; pass a smaller one")
        data = corpus_samples(args.calib_data, lm.encode, args.calib_samples or DEFAULT_CORPUS_SAMPLES, seq_len,
                              seed=args.seed)
    else:
        if args.calib_cfg:
            tasks, what = [run.task(args.calib_cfg, "--calib_cfg")], args.calib_cfg
        else:
            log.warning("no --calib_data or --calib_cfg: the method calibrates on the evaluation data itself")
            tasks, what = run.tasks, args.config
        data = runner.prompt_data(tasks, args.calib_samples or DEFAULT_PROMPT_SAMPLES, what, args.calib_seq_len)
    if data.note:
        log.warning(data.note)
    return data


@main_guard
def main(argv=None) -> int:
    args = parse_args(argv)
    method(args.method)  # an unknown name lists the registered ones
    settings = method_settings(args.method, args.method_cfg)
    chosen = method(args.method, **settings)
    if chosen.needs_budget and args.budget is None:
        raise HarnessError(f"--method {args.method} needs --budget B (experts kept per MoE layer)")
    if chosen.needs_drop_n and args.drop_n is None:
        raise HarnessError(f"--method {args.method} needs --drop_n N (layers or blocks to drop)")
    if not chosen.needs_drop_n and args.drop_n is not None:
        raise HarnessError(f"--method {args.method} takes --budget, not --drop_n")
    run = Run.prepare(args, calib_cfg=args.calib_cfg, calib_data=args.calib_data)
    runner = PlanRunner(run, run.load_model())
    if args.calib_dir:
        runner.calibration_dir = Path(args.calib_dir)
    data = calibration_data(args, run, runner) if chosen.needs_calibration else None
    runner.check_method(args.method, args.budget, args.drop_n, data, **settings)
    run.start()
    plan = runner.make_plan(args.method, args.budget, seed=args.seed, calibration=data, drop_n=args.drop_n,
                            cache_tokens=args.calib_cache_tokens, **settings)
    plan_path = runner.save(plan, run.work_dir / "plan.safetensors")
    size = f"budget {args.budget}" if args.budget is not None else f"drop_n {args.drop_n}"
    for abbr, metrics in runner.evaluate(plan, run.work_dir).items():
        runner.report(f"{runner.lm.abbr}/{abbr} {args.method} {size}", metrics)
    run.print(f"plan: {plan_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
