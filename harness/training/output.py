"""The fine-tuned student as a folder ``infer.py --model_path`` loads, written whole or not at all.

With a plan, ``materialize`` writes it: the smaller ordinary architecture where the plan is pure
uniform pruning, the harness's compressed folder (original config + plan + compressed state dict)
otherwise. Without a plan it is a plain ``save_pretrained``. ``finetune.json`` beside the weights
records the recipe, data, plan and hyperparameters. Everything goes to a staging folder first and
is renamed into place last, so ``DIR/model`` existing means the run finished.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from harness.io import atomic_write_json, write_error

RECORD_FILE = "finetune.json"


def save_finetuned(model, tokenizer, out_dir: Path, record: dict) -> str:
    """Write ``model`` (LoRA already merged) to ``out_dir``; returns the kind of folder written."""
    from harness.compress import materialize

    out_dir = Path(out_dir)
    staging = out_dir.with_name(f".{out_dir.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    plan = getattr(model, "compression_plan", None)
    for p in model.parameters():
        p.requires_grad_(False)
    if plan is not None:
        kind = materialize(model, plan, staging, tokenizer=tokenizer).kind
    else:
        model.save_pretrained(staging)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        kind = "plain"
    atomic_write_json(staging / RECORD_FILE, {**record, "checkpoint_kind": kind})
    try:
        os.replace(staging, out_dir)
    except OSError as exc:
        raise write_error(out_dir, exc) from None
    return kind


def is_finished(out_dir: Path) -> bool:
    return (Path(out_dir) / RECORD_FILE).is_file()
