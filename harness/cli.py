"""What every entry point shares: one-line errors, the log file, the resolved config, the plan hook.

The run setup of tasks that load a model (arguments, configs, tasks, model) is ``harness/run.py``.
"""
from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Callable

from harness.errors import HarnessError
from harness.io import atomic_write_text, make_dirs, write_error

log = logging.getLogger("harness")


def main_guard(main: Callable[[list[str] | None], int]) -> Callable[[list[str] | None], int]:
    """Run ``main``; a HarnessError becomes ``error: <message>`` on stderr and exit status 2."""

    def wrapped(argv: list[str] | None = None) -> int:
        try:
            return main(argv)
        except HarnessError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("interrupted; rerun the same command to resume", file=sys.stderr)
            return 130

    return wrapped


def setup_work_dir(work_dir: str, cfg=None) -> str:
    """Create the work dir, start the log file and save the resolved config; returns the timestamp."""
    stamp = time.strftime("%Y%m%d_%H%M%S")
    root = Path(work_dir)
    log_file = make_dirs(root / "logs") / f"{stamp}.log"
    try:
        handler = logging.FileHandler(log_file, encoding="utf-8")
    except OSError as exc:
        raise write_error(log_file, exc) from None
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.INFO)
    if cfg is not None:
        name = Path(cfg.filename).stem if cfg.filename else "config"
        atomic_write_text(root / "configs" / f"{stamp}_{name}.py", _config_text(cfg))
    return stamp


def _config_text(cfg) -> str:
    """The resolved config as python source (mmengine formats it; a plain dump if that fails)."""
    try:
        return cfg.pretty_text
    except Exception:  # yapf cannot format every config; the content matters more than the layout
        return "\n".join(f"{key} = {value!r}" for key, value in cfg.to_dict().items()) + "\n"


def apply_compression(model, coeff_path: str | None) -> None:
    """The ``--coeff_path`` hook: load a compression plan and apply it to the model in place."""
    if not coeff_path:
        return
    if not Path(coeff_path).is_file():
        raise HarnessError(f"--coeff_path {coeff_path} not found; pass a plan file (see searched_coeff/README.md)")
    try:
        from harness.compress import apply_plan, load_plan_for_config
    except ImportError as exc:
        raise HarnessError(f"--coeff_path is not supported yet in this installation ({exc})") from None
    plan = load_plan_for_config(coeff_path, model.model.config)
    apply_plan(model.model, plan)  # the model's identity (resume fingerprints) follows the installed plan
    log.info("applied compression plan %s (fingerprint %s)", coeff_path, plan.fingerprint())
