"""Everything tools/compare.py checks before the model loads: suite, budgets, files, resumability.

A bad suite (unknown method or benchmark, bad settings), a budget the model cannot take (read from
its config.json when the model is a local folder), a missing calibration or model-config file, or a
work dir holding a row with other settings: one-line errors, nothing written, no model loaded.
"""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

from harness.compare.runner import STATUS, read_json
from harness.compare.suite import Suite, _cap, read_suite
from harness.config import load_config, model_config
from harness.errors import HarnessError
from harness.methods.calibration import DEFAULT_CACHE_TOKENS
from harness.run import Run, check_files, check_work_dir


def prepare(args) -> tuple[Suite, Run, SimpleNamespace]:
    """The suite, a prepared Run (tasks built, nothing written) and compress.py-style calibration arguments."""
    suite = read_suite(args.config)
    budgets = list(dict.fromkeys(args.budget))
    work_dir = check_work_dir(args.work_dir)
    check_files(model_cfg=args.model_cfg)
    source = load_config(args.model_cfg) if args.model_cfg else suite.cfg
    model_cfg = model_config(source, args.model_path, args.batch_size, dtype=args.dtype, model_kwargs=args.model_kwargs)
    check_budgets(model_cfg["path"], budgets)
    data_root = args.data_root or suite.data_root
    tasks = suite.tasks(data_root, args.max_num)
    check_train_items(suite, args.max_num)
    check_resumable(suite, work_dir, budgets)
    run_args = SimpleNamespace(**{**vars(args), "data_root": data_root})
    run = Run(run_args, suite.cfg, model_cfg, tasks, work_dir)
    cal = suite.calibration
    calibration = SimpleNamespace(calib_data=cal.get("calib_data"), calib_cfg=cal.get("calib_cfg"),
                                  calib_samples=cal.get("calib_samples"), calib_seq_len=cal.get("calib_seq_len"),
                                  seed=int(cal.get("seed", 0)), calib_cache_tokens=int(cal.get("cache_tokens", DEFAULT_CACHE_TOKENS)),
                                  config=args.config)
    if suite.needs_calibration() and not (cal.get("calib_data") or cal.get("calib_cfg")):
        raise HarnessError(f"suite {args.config}: its methods need calibration data; set calibration = "
                           "dict(calib_data='FILE.jsonl', ...) or dict(calib_cfg='dataset_cfgs/FILE.py', ...)")
    return suite, run, calibration


def check_budgets(model_path: str, budgets: list[int]) -> None:
    """Every budget keeps at least the model's top-k and fewer than its E experts (local models;
    a hub id is checked by ``check_loaded_budgets`` once loaded, still before anything is written)."""
    config_file = Path(model_path) / "config.json"
    if not config_file.is_file():
        if not Path(model_path).exists() and not _looks_like_hub_id(model_path):
            raise HarnessError(f"--model_path {model_path} not found; pass a model folder or a hub id")
        return
    from harness.compress.adapters import ResolvedMoE

    moe = ResolvedMoE.from_config(json.loads(config_file.read_text(encoding="utf-8")))
    budget_range(moe.num_experts, moe.top_k, budgets, str(config_file))


def check_loaded_budgets(model, budgets: list[int]) -> None:
    from harness.compress.adapters import resolve

    moe = resolve(model)
    budget_range(moe.num_experts, moe.top_k, budgets, "loaded")


def budget_range(num_experts: int, top_k: int, budgets: list[int], where: str) -> None:
    for budget in budgets:
        if not top_k <= budget < num_experts:
            raise HarnessError(f"--budget {budget}: the model ({where}) has {num_experts} experts per MoE layer and "
                               f"routes each token to {top_k}; pass budgets from {top_k} to {num_experts - 1}")


def _looks_like_hub_id(text: str) -> bool:
    parts = text.split("/")
    return len(parts) == 2 and all(parts) and not text.startswith((".", "/"))


def check_train_items(suite: Suite, max_num: int | None) -> None:
    """A search's fitness items must lie beyond the items its benchmark evaluates."""
    caps = {b.abbr: _cap(b.max_num, max_num) for b in suite.benchmarks}
    for row in suite.rows:
        train = row.options.get("train") or {}
        if "benchmark" in train:
            cap = caps[train["benchmark"]]
            if cap is None or train["range"][0] < cap:
                raise HarnessError(f"suite {suite.path}: method {row.label!r} searches on items {train['range']} of "
                                   f"{train['benchmark']}, which overlap the evaluated first {cap or 'all'}; start the "
                                   "range at or after the benchmark's max_num")


def check_resumable(suite: Suite, work_dir: Path, budgets: list[int]) -> None:
    """A work dir's finished rows must have been made with the suite's settings for them."""
    specs = {row.label: row.spec() for row in suite.rows}
    for budget in budgets:
        for label, spec in specs.items():
            for status_file in sorted((work_dir / f"budget_{budget}" / label).rglob(STATUS)):
                saved = (read_json(status_file) or {}).get("spec")
                if saved is not None and saved != spec:
                    raise HarnessError(f"{status_file.parent} holds method {label!r} made with other settings; "
                                       "use a new --work_dir or delete that folder")
