"""Convert a DeepSeek-MoE (v1, ``model_type: deepseek``) checkpoint into a stock transformers Qwen2-MoE one.

    python tools/convert_deepseek_moe.py SRC DST [--overwrite]

SRC is a downloaded deepseek-ai/deepseek-moe-16b-base (or -chat) folder (config.json, safetensors
shards, tokenizer). DST loads with plain transformers 5 (no trust_remote_code) and computes the same
function (harness/models/deepseek_v1.py says how, and the one bf16 rounding difference). One shard is
in memory at a time (a few GiB for the 16B model); DST appears only when complete.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.cli import main_guard
from harness.models.deepseek_v1 import convert


def run(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", help="folder of the DeepSeek-MoE v1 checkpoint (config.json model_type 'deepseek')")
    parser.add_argument("dst", help="new folder for the Qwen2-MoE checkpoint")
    parser.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    args = parser.parse_args(argv)
    out = convert(args.src, args.dst, overwrite=args.overwrite)
    print(f"wrote the Qwen2-MoE checkpoint to {out}; use it as --model_path (no trust_remote_code)")
    return 0


main = main_guard(run)

if __name__ == "__main__":
    raise SystemExit(main())
