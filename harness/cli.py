"""What every entry point shares: one-line errors, the log file, the resolved config, the plan hook."""
from __future__ import annotations

import hashlib
import logging
import sys
import time
from pathlib import Path
from typing import Callable

from harness.errors import HarnessError
from harness.io import atomic_write_text

log = logging.getLogger("harness")


def add_run_arguments(parser, config_help: str = "dataset config file (may also define `models`)") -> None:
    """The arguments every model-running task takes: config, model, work dir, data root, batch size."""
    parser.add_argument("config", help=config_help)
    parser.add_argument("--model_path", help="model folder or hub id; replaces the config's model path")
    parser.add_argument("--model_cfg", help="model config file whose `models` replace the dataset config's")
    parser.add_argument("--work_dir", required=True, help="output folder")
    parser.add_argument("--data_root", help="replaces the ./data prefix of the configs' data paths")
    parser.add_argument("--batch_size", type=int, help="override the model's batch size")


def run_model_config(args, cfg) -> dict:
    """The model config of a run: from --model_cfg's file or the dataset config, with CLI overrides."""
    from harness.config import load_config, model_config

    source = load_config(args.model_cfg) if args.model_cfg else cfg
    return model_config(source, args.model_path, args.batch_size)


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
    (root / "logs").mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(root / "logs" / f"{stamp}.log", encoding="utf-8")
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
    apply_plan(model.model, plan)
    digest = record_plan_identity(model, coeff_path)
    log.info("applied compression plan %s (sha256 %s)", coeff_path, digest)


def record_plan_identity(model, plan_file: str | Path) -> str:
    """Make the applied plan file part of the model's identity (cached predictions depend on it);
    returns the file's short sha256."""
    digest = hashlib.sha256(Path(plan_file).read_bytes()).hexdigest()[:16]
    model.identity["plan"] = digest
    return digest
