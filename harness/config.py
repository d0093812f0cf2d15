"""Read a config file (mmengine python config) into dataset configs and model configs.

A config file defines lists named ``datasets`` or ``*_datasets`` and optionally ``models`` (so one
file runs alone, as the EEP paper's files do). Command-line values override the model config:
``--model_path`` replaces its ``path`` and ``tokenizer_path``, ``--batch_size`` its batch size.
"""
from __future__ import annotations

from pathlib import Path

from harness.errors import HarnessError

DEFAULT_MODEL = dict(type="HFCausalLM", dtype="float32", batch_size=8, max_seq_len=2048, max_out_len=100)


def load_config(path: str):
    """Parse a python config file with mmengine (``read_base()`` inheritance works)."""
    from mmengine.config import Config

    file = Path(path)
    if not file.is_file():
        raise HarnessError(f"config file {path} not found; pass the path of a file in dataset_cfgs/")
    try:
        return Config.fromfile(str(file))
    except HarnessError:
        raise
    except Exception as exc:  # mmengine wraps syntax and import errors in many types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise HarnessError(f"config file {path} could not be parsed: {first}") from None


def dataset_configs(cfg) -> list[dict]:
    """Every dataset dict of the config, from ``datasets`` and lists named ``*_datasets``."""
    found: list[dict] = []
    for name in sorted(cfg.keys()):
        if name == "datasets" or name.endswith("_datasets"):
            value = cfg[name]
            items = value if isinstance(value, (list, tuple)) else [value]
            found.extend(dict(item) for item in items)
    seen: set = set()
    unique = []
    for item in found:
        if item.get("abbr") not in seen:
            seen.add(item.get("abbr"))
            unique.append(item)
    if not unique:
        raise HarnessError(f"config {cfg.filename} defines no datasets (a list named 'datasets' or '*_datasets')")
    return unique


def model_config(cfg, model_path: str | None, batch_size: int | None = None) -> dict:
    """The model config of a run: the config's first model (or the default), with CLI overrides."""
    models = list(cfg.get("models") or [])
    if len(models) > 1:
        raise HarnessError(f"config {cfg.filename} defines {len(models)} models; this entry point runs one")
    model = {**DEFAULT_MODEL, **(dict(models[0]) if models else {})}
    if model_path:
        model["path"] = model_path
        model["tokenizer_path"] = model_path
    if not model.get("path"):
        raise HarnessError("no model path: pass --model_path or set models[0].path in the config")
    if batch_size:
        model["batch_size"] = batch_size
    model.setdefault("abbr", Path(str(model["path"]).rstrip("/")).name)
    return model
