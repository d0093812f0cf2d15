"""What a compression plan buys on a Mixtral-shape MoE: expert memory held, and decode speed.

A budget-4 plan keeps 4 of Mixtral's 8 experts per layer, so it should hold about half of the
expert weights (target: at most 55% of the full model's expert memory); a top-1 variant routes each
token to one expert instead of two, so it should decode faster than the full top-2 model. This
script builds a random-weight model with Mixtral-8x7B's layer shape (hidden 4096, expert FFN 14336,
8 experts, top-2, GQA 32/8 heads, vocab 32000) and ``--layers`` decoder layers, applies each plan
with ``apply_plan`` (in place, as ``--coeff_path`` does), and measures per variant:

- expert bytes: the storage held by the experts' fused weights (unique storages, so a view that
  kept the full tensor alive would count in full);
- model bytes: the same over every parameter and buffer; on a GPU also ``torch.cuda.memory_allocated``;
- decode: greedy steps on the KV cache after a prefill, tokens per second (median of repeats).

The budget-4 plan is the EEP paper's searched BoolQ plan (``../shared/eep/searched_coeff``) cut to
the first ``--layers`` layers when that file is present, else a seeded random choice of 4 experts.

    python bench/bench_expert_footprint.py [--layers 2] [--batch_size 1] [--new_tokens 32] [--out F]

On CPU the default is 2 layers in fp32 (about 12 GB; CPU bf16 grouped matmuls are slower than
fp32 ones); on a GPU 8 layers in bf16 with ``grouped_mm`` experts. Memory ratios do not depend on
the depth; the decode ratio does (attention and the LM head are shared by every variant, and their
share of a step shrinks as layers are added), so the depth is printed with the result.
"""
from __future__ import annotations

import argparse
import gc
import statistics
import time
from dataclasses import dataclass, replace

import torch

try:
    from bench import common
except ImportError:  # run as a script
    import common

from harness.compress.adapters import adapter_for, decoder_layers, moe_block  # noqa: E402
from harness.compress.apply import apply_plan  # noqa: E402
from harness.compress.formats import load_plan  # noqa: E402
from harness.compress.plan import CompressionPlan  # noqa: E402
from harness.efficiency.memory import storage_bytes  # noqa: E402

SHAPE = "Mixtral-8x7B"  # common.REAL_SHAPES, but for the depth (``--layers``)
EEP_PLAN = common.REPO.parent / "shared" / "eep" / "searched_coeff" / "boolq_budget_4.pth"
TARGET_EXPERT_SHARE = 0.55


@dataclass
class Variant:
    name: str
    plan: CompressionPlan | None  # None: the full model


def mixtral_shape_model(layers: int, device: torch.device, dtype: torch.dtype, seed: int = 0):
    """A random-weight Mixtral-8x7B-shape causal LM with ``layers`` decoder layers, built on ``device``."""
    return common.real_shape_moe(SHAPE, device, dtype, seed, num_hidden_layers=layers)


def budget_plan(layers: int, budget: int = 4, seed: int = 0) -> tuple[CompressionPlan, str]:
    """The EEP BoolQ budget-4 plan cut to ``layers`` layers, or a seeded random pruning plan."""
    num_experts = common.REAL_SHAPES[SHAPE]["num_local_experts"]
    if budget == 4 and EEP_PLAN.is_file():
        full = load_plan(EEP_PLAN, num_layers=32, num_experts=num_experts)
        plan = CompressionPlan(num_layers=layers, num_experts=num_experts,
                               layers={i: full.layer(i) for i in range(layers)})
        return plan, f"EEP searched plan {EEP_PLAN.name} (first {layers} of 32 layers)"
    generator = torch.Generator().manual_seed(seed)
    kept = [sorted(torch.randperm(num_experts, generator=generator)[:budget].tolist()) for _ in range(layers)]
    return CompressionPlan.from_kept(kept, num_experts), f"random {budget} of {num_experts} experts (seed {seed})"


def with_top_k(plan: CompressionPlan | None, layers: int, top_k: int) -> CompressionPlan:
    """``plan`` (or the identity) with every layer routing each token to ``top_k`` experts."""
    num_experts = common.REAL_SHAPES[SHAPE]["num_local_experts"]
    base = plan or CompressionPlan.identity(layers, num_experts)
    return CompressionPlan(num_layers=layers, num_experts=num_experts,
                           layers={i: replace(base.layer(i), top_k=top_k) for i in range(layers)})


def variants(layers: int) -> tuple[list[Variant], str]:
    budget4, source = budget_plan(layers)
    return [
        Variant("full (8 experts, top-2)", None),
        Variant("budget 4 (top-2)", budget4),
        Variant("top-1 (8 experts)", with_top_k(None, layers, 1)),
        Variant("budget 4, top-1", with_top_k(budget4, layers, 1)),
    ], source


# ----------------------------------------------------------------------------------- measurements
def expert_tensors(model) -> list[torch.Tensor]:
    """The fused expert weights of every MoE block (gate_up_proj, down_proj, ...)."""
    adapter = adapter_for(model)
    tensors = []
    for layer in decoder_layers(model):
        experts = getattr(moe_block(adapter, layer), adapter.experts_attr)
        tensors.extend(experts.parameters())
    return tensors


def decode_seconds(model, batch_size: int, prompt_len: int, new_tokens: int, device, seed: int = 0) -> float:
    """Seconds for ``new_tokens`` greedy decode steps on the KV cache after a ``prompt_len`` prefill."""
    generator = torch.Generator().manual_seed(seed)
    prompt = torch.randint(3, model.config.vocab_size, (batch_size, prompt_len), generator=generator).to(device)
    with torch.no_grad():
        out = model(input_ids=prompt, use_cache=True, logits_to_keep=1)
        cache, token = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
        common.synchronize(device)
        start = time.perf_counter()
        for _ in range(new_tokens):
            out = model(input_ids=token, past_key_values=cache, use_cache=True)
            cache, token = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
        common.synchronize(device)
    return time.perf_counter() - start


def measure(variant: Variant, args, device, dtype) -> dict:
    model = mixtral_shape_model(args.layers, device, dtype)
    if variant.plan is not None:
        apply_plan(model, variant.plan)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    row = {
        "expert_bytes": storage_bytes(expert_tensors(model)),
        "model_bytes": storage_bytes(list(model.parameters()) + list(model.buffers())),
        "allocated": torch.cuda.memory_allocated(device) if device.type == "cuda" else None,
        "experts_impl": getattr(model.config, "_experts_implementation", None),
    }
    decode_seconds(model, args.batch_size, args.prompt_len, 2, device)  # warm-up
    times = [decode_seconds(model, args.batch_size, args.prompt_len, args.new_tokens, device)
             for _ in range(max(1, args.repeats))]
    row["decode_s"] = statistics.median(times)
    row["decode_spread"] = f"{min(times):.2f}-{max(times):.2f}"
    row["tokens_per_s"] = args.batch_size * args.new_tokens / row["decode_s"]
    del model
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def report(results: dict[str, dict], device, dtype, args, plan_source: str) -> list[str]:
    gib = 2**30
    full = results["full (8 experts, top-2)"]
    rows = []
    for name, r in results.items():
        rows.append([name, f"{r['expert_bytes'] / gib:.2f}", f"{r['expert_bytes'] / full['expert_bytes']:.1%}",
                     f"{r['model_bytes'] / gib:.2f}",
                     "-" if r["allocated"] is None else f"{r['allocated'] / gib:.2f}",
                     f"{r['decode_s']:.2f} ({r['decode_spread']})", f"{r['tokens_per_s']:.2f}",
                     common.ratio(full["decode_s"], r["decode_s"])])
    headers = ["variant", "expert GiB", "expert memory vs full", "model GiB", "cuda allocated GiB",
               f"decode s, {args.new_tokens} steps (min-max)", "tokens/s", "decode speed vs full"]
    budget4 = results["budget 4 (top-2)"]["expert_bytes"] / full["expert_bytes"]
    top1 = common.ratio(full["decode_s"], results["top-1 (8 experts)"]["decode_s"])
    checks = [
        "### Checks",
        "",
        common.check_line("budget-4 expert memory / full", budget4, f"<= {TARGET_EXPERT_SHARE}",
                          budget4 <= TARGET_EXPERT_SHARE),
        common.check_line("top-1 decode speed / full top-2", top1, "> 1", top1 > 1),
    ]
    title = "bench_expert_footprint: expert memory and decode speed of compressed Mixtral-shape MoEs"
    extra = {
        "model": f"random-weight Mixtral-8x7B shape, {args.layers} of 32 decoder layers",
        "experts implementation": full["experts_impl"] or "transformers default",
        "budget-4 plan": plan_source,
        "decode": f"batch {args.batch_size}, prompt {args.prompt_len} tokens, {args.new_tokens} greedy steps, "
                  f"median of {args.repeats}",
    }
    return [common.header(title, device, dtype, extra), common.table(rows, headers), "\n".join(checks)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.add_common_args(parser, num_items=None, batch_size=1)
    parser.add_argument("--layers", type=int, default=None, help="decoder layers (default: 2 on CPU, 8 on GPU)")
    parser.add_argument("--prompt_len", type=int, default=32, help="prompt tokens before decoding")
    parser.add_argument("--new_tokens", type=int, default=32, help="greedy decode steps timed")
    args = parser.parse_args(argv)
    device, dtype = common.start_run(args)
    if args.layers is None:
        args.layers = 8 if device.type == "cuda" else 2

    variant_list, plan_source = variants(args.layers)
    results = {v.name: measure(v, args, device, dtype) for v in variant_list}
    common.emit(report(results, device, dtype, args, plan_source), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
