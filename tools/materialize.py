"""Write a compressed model as a real, smaller checkpoint folder.

    python tools/materialize.py --model_path MODEL_DIR --coeff_path PLAN_FILE --out OUT_DIR

PLAN_FILE is any plan format ``load_plan`` reads (EEP .pth, harness .safetensors, JSON mask).
Pure pruning with the same budget in every layer gives an ordinary checkpoint of the same
architecture with fewer experts (``from_pretrained`` loads it); any other plan gives a folder that
``harness.compress.load_compressed`` loads. Prints parameters and bytes before and after.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from harness.cli import main_guard
from harness.compress.describe import human_bytes
from harness.errors import HarnessError


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_path", required=True, help="a transformers model folder")
    parser.add_argument("--coeff_path", required=True, help="the compression plan file")
    parser.add_argument("--out", required=True, help="the folder to write (must not exist or be empty)")
    parser.add_argument("--dtype", default="auto", help="load dtype: auto (the checkpoint's), float32, bfloat16, float16")
    return parser.parse_args(argv)


def _config(model_path: Path):
    from transformers import AutoConfig

    if not (model_path / "config.json").is_file():
        raise HarnessError(f"--model_path {model_path} has no config.json; pass a transformers model folder")
    return AutoConfig.from_pretrained(model_path)


def _load(model_path: Path, dtype: str):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if dtype != "auto" and not isinstance(getattr(torch, dtype, None), torch.dtype):
        raise HarnessError(f"--dtype {dtype!r} is not a torch dtype; use auto, float32, bfloat16 or float16")
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype if dtype == "auto" else getattr(torch, dtype))
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_path)
    except (OSError, ValueError):
        tokenizer = None  # a model folder without tokenizer files: write the weights only
    return model.eval(), tokenizer


def run(argv=None) -> int:
    args = parse_args(argv)
    model_path, coeff_path = Path(args.model_path), Path(args.coeff_path)
    if not coeff_path.is_file():
        raise HarnessError(f"--coeff_path {coeff_path} does not exist; pass a plan file (EEP .pth, .safetensors, mask .json)")
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise HarnessError(f"--out {out} already exists and is not empty; choose a new folder")
    from harness.compress import load_plan_for_config, materialize

    plan = load_plan_for_config(coeff_path, _config(model_path))  # checked before any weight is read
    model, tokenizer = _load(model_path, args.dtype)
    result = materialize(model, plan, args.out, tokenizer=tokenizer)
    b, a = result.before, result.after
    print(f"wrote {result.kind} checkpoint to {result.path}")
    print(f"parameters: {b.count:,} -> {a.count:,} ({a.count / b.count:.1%})")
    print(f"bytes:      {b.bytes:,} ({human_bytes(b.bytes)}) -> {a.bytes:,} ({human_bytes(a.bytes)})")
    if result.kind == "compressed":
        print("load it with harness.compress.load_compressed(path)")
    return 0


main = main_guard(run)

if __name__ == "__main__":
    raise SystemExit(main())
