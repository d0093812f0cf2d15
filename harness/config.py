"""Read a config file (mmengine python config) into dataset configs and model configs.

A config file defines lists named ``datasets`` or ``*_datasets`` and optionally ``models`` (so one
file runs alone, as the EEP paper's files do). Command-line values override the model config:
``--model_path`` replaces its ``path`` and ``tokenizer_path``, ``--batch_size`` its batch size,
``--dtype`` its dtype, and ``--model_kwargs`` is merged into its ``model_kwargs``.
"""
from __future__ import annotations

from pathlib import Path

from harness.errors import HarnessError, one_line

DTYPES = ("float32", "bfloat16", "float16", "auto")
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
        first = one_line(exc)
        raise HarnessError(f"config file {path} could not be parsed: {first}") from None


def dataset_configs(cfg) -> list[dict]:
    """Every dataset dict of the config, from ``datasets`` and lists named ``*_datasets``.

    The same dataset listed twice (``datasets = [*boolq_datasets]`` beside ``boolq_datasets``, the
    OpenCompass habit) counts once. Two *different* datasets with one ``abbr`` are an error: output
    files are named by abbr, so the second would overwrite (or silently reuse) the first's results.
    """
    found: list[tuple[str, dict]] = []
    for name in sorted(cfg.keys()):
        if name == "datasets" or name.endswith("_datasets"):
            value = cfg[name]
            items = value if isinstance(value, (list, tuple)) else [value]
            found.extend((f"{name}[{i}]", dict(item)) for i, item in enumerate(items))
    first_of: dict = {}
    unique = []
    for where, item in found:
        abbr = item.get("abbr")
        check_output_name(abbr, f"config {cfg.filename}: {where}.abbr")
        if abbr in first_of:
            other_where, other = first_of[abbr]
            if item != other:
                raise HarnessError(
                    f"config {cfg.filename}: {other_where} and {where} are different datasets with the same "
                    f"abbr {abbr!r}; give each a distinct abbr (it names the output files)"
                )
            continue
        first_of[abbr] = (where, item)
        unique.append(item)
    if not unique:
        raise HarnessError(f"config {cfg.filename} defines no datasets (a list named 'datasets' or '*_datasets')")
    return unique


def check_output_name(name, where: str, fix: str = "give it an abbr without '/', '\\', '..' or a leading '.'") -> str:
    """Refuse an abbr that cannot safely name a file or folder inside the work dir.

    Dataset and model abbrs become path components (``predictions/<model>/<dataset>.json``), so a
    separator or ``..`` would write outside the work dir, and a leading dot would hide the file.
    """
    if not isinstance(name, str) or not name.strip():
        problem = "is missing or empty"
    elif any(sep in name for sep in ("/", "\\", "\0")):
        problem = "contains a path separator"
    elif ".." in name:
        problem = "contains '..'"
    elif name.startswith("."):
        problem = "starts with a dot"
    else:
        return name
    raise HarnessError(f"{where} {name!r} {problem} (it names output files); {fix}")


def model_config(cfg, model_path: str | None, batch_size: int | None = None, dtype: str | None = None,
                 model_kwargs: dict | None = None) -> dict:
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
    if dtype:
        if dtype not in DTYPES:
            raise HarnessError(f"--dtype {dtype!r} is not one of {', '.join(DTYPES)}")
        model["dtype"] = dtype
    if model_kwargs:
        model["model_kwargs"] = {**dict(model.get("model_kwargs") or {}), **model_kwargs}
    if model.get("abbr") is not None:
        check_output_name(model["abbr"], f"config {cfg.filename}: models[0].abbr")
    else:
        model["abbr"] = check_output_name(
            Path(str(model["path"]).rstrip("/")).name,
            f"the model abbr taken from the folder name of {model['path']}",
            "set abbr in the config's models[0] (or --model_cfg file)",
        )
    return model
