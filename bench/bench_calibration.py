"""One shared calibration pass for several methods vs each method running its own pass, as the
reference repositories do (REAP, Unified's Expert/Layer/Block Drop, NAEE each calibrate separately).

Both sides build the same plans; the shared side calibrates once (``harness.methods.calibration``)
and builds every plan from those statistics; the per-method side calibrates again before each plan.
Prints the total time of both and their ratio (expected: about the number of methods).

Model: the toy MoE (``models/toy-moe``), calibrated on the sort task's train prompts.

    python bench/bench_calibration.py [--samples 256] [--out FILE]
"""
from __future__ import annotations

import argparse
import time

import torch

try:
    from bench import common
except ImportError:  # run as a script
    import common

from harness.methods.base import MethodInputs, ModelShape, build_plan  # noqa: E402
from harness.methods.calibration import calibrate  # noqa: E402
from harness.models.hf_causal_lm import HFCausalLM  # noqa: E402

try:
    from bench.bench_naee import TOY_MOE, toy_prompts
except ImportError:
    from bench_naee import TOY_MOE, toy_prompts

METHODS = [("frequency", 4, None), ("reap", 4, None), ("expert_drop", 4, None), ("naee", 4, None),
           ("layer_drop", None, 1), ("block_drop", None, 1)]


def plans(lm, stats_for, texts):
    shape = ModelShape.of(lm.model)
    out = {}
    for name, budget, drop_n in METHODS:
        stats = stats_for(texts)
        out[name] = build_plan(name, MethodInputs(shape, budget, model=lm.model, stats=stats, drop_n=drop_n))
    return out


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    common.offline()
    torch.set_num_threads(1)
    lm = HFCausalLM(str(TOY_MOE), batch_size=64, max_seq_len=64)
    texts = toy_prompts(args.samples)
    calibrate(lm, texts[:8])  # warm-up
    start = time.perf_counter()
    shared_stats = calibrate(lm, texts)
    shared = plans(lm, lambda _: shared_stats, texts)
    shared_s = time.perf_counter() - start
    start = time.perf_counter()
    own = plans(lm, lambda t: calibrate(lm, t), texts)
    own_s = time.perf_counter() - start
    start = time.perf_counter()
    calibrate(lm, texts)
    pass_s = time.perf_counter() - start
    same = all(shared[n].fingerprint() == own[n].fingerprint() for n in shared)
    text = "\n\n".join([
        common.header("bench_calibration", torch.device("cpu"), torch.float32,
                      {"model": "toy-moe (models/toy-moe)", "methods": ", ".join(n for n, _, _ in METHODS),
                       "calibration": f"{len(texts)} sort train prompts, {shared_stats.num_tokens} tokens",
                       "command": "python bench/bench_calibration.py " + " ".join(argv or [])}),
        common.table([["one shared pass", 1, round(shared_s, 2), 1.0],
                      ["a pass per method (reference)", len(METHODS), round(own_s, 2), round(own_s / shared_s, 2)]],
                     ["variant", "calibration passes", "total s", "time vs shared"]),
        "### Checks",
        f"- identical plans: {same}\n- total time ratio, per-method passes / shared pass: {own_s / shared_s:.2f}\n"
        f"- one calibration pass: {pass_s:.2f} s; building the {len(METHODS)} plans from statistics: "
        f"{shared_s - pass_s:.2f} s (NAEE's enumeration most of it), so the ratio approaches {len(METHODS)} as "
        "the pass grows (real models: the pass dominates)",
    ])
    print(text)
    if args.out:
        common.emit([text], args.out)
    return text


if __name__ == "__main__":
    main()
