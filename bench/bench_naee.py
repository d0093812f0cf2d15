"""NAEE's enumeration: every expert's output computed once per token and all C(E, B) kept sets scored
as one batched tensor operation (``harness.methods.naee.reconstruction_losses``), vs recomputing the
pruned MoE layer per kept set as the reference does (``reconstruction_loss_by_model``: apply the
plan, run the layer, undo). Same choice expected; target at E=8, B=4: at least 10x faster.

Model: the toy MoE (``models/toy-moe``, 4 layers x 8 experts, top-2), calibrated on the sort task's
train prompts; the X/Z caches of every MoE layer are scored.

    python bench/bench_naee.py [--budget 4] [--samples 256] [--cache_tokens 4096] [--out FILE]
"""
from __future__ import annotations

import argparse
import time

import torch

try:
    from bench import common
except ImportError:  # run as a script
    import common

from harness.compress.adapters import resolve  # noqa: E402
from harness.compress.apply import snapshot_experts  # noqa: E402
from harness.methods.calibration import calibrate  # noqa: E402
from harness.methods.naee import kept_sets, reconstruction_loss_by_model, reconstruction_losses  # noqa: E402
from harness.models.hf_causal_lm import HFCausalLM  # noqa: E402

TOY_MOE = common.REPO / "models" / "toy-moe"
TRAIN = common.REPO / "data" / "toy" / "sort" / "train.jsonl"


def toy_prompts(limit: int) -> list[str]:
    import json

    return [json.loads(line)["prompt"] for line in TRAIN.read_text().splitlines()[:limit]]


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=int, default=4)
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--cache_tokens", type=int, default=4096)
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    common.offline()
    torch.set_num_threads(1)
    lm = HFCausalLM(str(TOY_MOE), batch_size=64, max_seq_len=64)
    stats = calibrate(lm, toy_prompts(args.samples), cache_tokens=args.cache_tokens)
    model, moe = lm.model, resolve(lm.model)
    snapshot = snapshot_experts(model)
    with torch.no_grad():  # warm-up of both paths, untimed
        first = sorted(stats.counts)[0]
        reconstruction_losses(moe, moe.block(first), stats.moe_inputs[first], [tuple(range(args.budget))], moe.top_k)
        reconstruction_loss_by_model(model, first, range(args.budget), stats.moe_inputs[first],
                                     stats.moe_outputs[first], snapshot)
    rows, fast_total, slow_total, same = [], 0.0, 0.0, True
    for layer in sorted(stats.counts):
        x, z = stats.moe_inputs[layer], stats.moe_outputs[layer]
        sets, _ = kept_sets(moe.num_experts, args.budget, 10**6, 0)
        start = time.perf_counter()
        with torch.no_grad():
            fast = reconstruction_losses(moe, moe.block(layer), x, sets, moe.top_k)
        fast_s = time.perf_counter() - start
        start = time.perf_counter()
        slow = torch.tensor([reconstruction_loss_by_model(model, layer, s, x, z, snapshot) for s in sets])
        slow_s = time.perf_counter() - start
        agree = int(fast.argmin()) == int(slow.argmin())
        same &= agree
        fast_total += fast_s
        slow_total += slow_s
        rows.append([layer, len(sets), x.shape[0], list(sets[int(fast.argmin())]), list(sets[int(slow.argmin())]),
                     f"{float((fast - slow).abs().max()):.2e}", round(fast_s, 3), round(slow_s, 3),
                     round(slow_s / fast_s, 1)])
    speedup = slow_total / fast_total
    text = "\n\n".join([
        common.header("bench_naee", torch.device("cpu"), torch.float32,
                      {"model": "toy-moe (models/toy-moe), E=8, top-2", "budget": args.budget,
                       "calibration": f"{args.samples} sort train prompts, {stats.num_tokens} tokens",
                       "command": "python bench/bench_naee.py " + " ".join(argv or [])}),
        common.table(rows, ["layer", "kept sets", "cached tokens", "batched choice", "per-set choice",
                            "max |loss diff|", "batched s", "per-set s", "ratio"]),
        "### Checks",
        f"- same choice in every layer: {same}\n- speed-up, per-set recomputation / batched: {speedup:.1f}x "
        f"(target >= 10x: {'met' if speedup >= 10 else 'NOT met'})",
    ])
    print(text)
    if args.out:
        common.emit([text], args.out)
    return text


if __name__ == "__main__":
    main()
