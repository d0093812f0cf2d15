"""Saved calibration statistics: one safetensors file per (model, plan, data, settings) fingerprint in
``<work_dir>/calibration/`` (or a folder several runs share), so five methods on one model and calibration set cost one pass.

The file is written atomically after the pass; a killed pass leaves nothing behind but a temp file
that the next write removes, and the rerun computes the same statistics again.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load, save

from harness.errors import HarnessError
from harness.io import atomic_write_bytes
from harness.methods.calibration import FORMAT_VERSION, CalibrationStats


def model_identity(model) -> dict:
    """What the statistics of ``model`` (an HFCausalLM or a transformers model) depend on."""
    if hasattr(model, "identity") and hasattr(model, "model"):
        return dict(model.identity)
    plan = getattr(model, "compression_plan", None)
    return {"name": getattr(model, "name_or_path", ""), "config": model.config.to_json_string(use_diff=False),
            "dtype": str(next(model.parameters()).dtype), "plan": None if plan is None else plan.fingerprint()}


def fingerprint(identity: dict, samples: list[list[int]], settings: dict) -> str:
    """16 hex digits over the model identity, every token of every sample, and the settings."""
    digest = hashlib.sha256()
    digest.update(json.dumps({"identity": identity, "settings": settings, "format": FORMAT_VERSION},
                             sort_keys=True, default=str).encode())
    for sample in samples:
        digest.update(torch.tensor(sample, dtype=torch.int64).numpy().tobytes())
        digest.update(b"|")
    return digest.hexdigest()[:16]


def stats_path(folder: str | Path, key: str) -> Path:
    return Path(folder) / f"{key}.safetensors"


def save_stats(stats: CalibrationStats, path: str | Path) -> Path:
    tensors, meta = stats.to_tensors()
    return atomic_write_bytes(path, save(tensors, metadata=meta))


def load_stats(path: str | Path) -> CalibrationStats:
    try:
        data = Path(path).read_bytes()
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
        return CalibrationStats.from_tensors(load(data), meta)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise HarnessError(f"calibration file {path} is unreadable ({exc}); delete it to recalibrate") from None


def cached_calibration(folder: str | Path | None, key: str, compute, write: bool = True) -> tuple[CalibrationStats, bool]:
    """The saved statistics ``folder/key.safetensors``, else ``compute()`` (saved when ``write``);
    (stats, reused)."""
    path = stats_path(folder, key) if folder is not None else None
    if path is not None and path.is_file():
        return load_stats(path), True
    stats = compute()
    if path is not None and write:
        save_stats(stats, path)
    return stats, False
