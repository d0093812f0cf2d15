"""Efficiency of a model with a plan, against the same model without it, in one run.

    python harness/tasks/efficiency.py --model_path P [--coeff_path F] --work_dir DIR
        [--model_cfg FILE] [--context_lengths 128,512] [--batch_sizes 1,8] [--decode_context 128]
        [--decode_tokens 32] [--repeats 3] [--warmup 1]

Writes DIR/results/<model>/efficiency.json, beside the accuracy results of the same run folder (so
``tools/summarize.py`` and ``tools/plot.py`` read both). Top-level numbers (the compressed model's,
or the model's own without ``--coeff_path``): params, active_params, model_bytes, expert_bytes,
flops_per_token (analytic, at the largest context length), prefill_tokens_per_s_ctx<C>,
decode_tokens_per_s_bs<B>, and the ratios to the uncompressed model measured in the same process:
memory_ratio (model bytes), expert_memory_ratio, active_params_ratio, flops_ratio,
prefill_speedup_ctx<C>, decode_speedup_bs<B>, and speedup (decode speed-up at the first batch
size). ``details`` holds both models' full measurements, the FLOPs by part and the settings.
A checkpoint written by ``tools/slim.py`` adds ``slimming``: its record's method and settings and the
sparsity measured on the loaded weights, per layer (``harness/slimming/record.py``). A quantised
checkpoint (``tools/quantize.py``) adds ``quantisation``: its scheme, bits and group size and
``checkpoint_bytes``, the bytes its weight files store (the loaded model is dequantised to float, so
``model_bytes`` is the float model's; ``harness/models/quantized.py``).
"""
from __future__ import annotations

import copy
import gc
import logging

from harness.cli import apply_compression, main_guard
from harness.config import load_config, model_config
from harness.efficiency.flops import flops_per_token
from harness.efficiency.memory import footprint
from harness.efficiency.speed import decode_tokens_per_s, peak_bytes, prefill_tokens_per_s, reset_peak
from harness.errors import HarnessError
from harness.io import atomic_write_json, results_path
from harness.registry import MODELS, build
from harness.run import check_files, check_work_dir, make_parser, positive_int
from harness.models.quantized import quantisation_entry
from harness.slimming.record import efficiency_entry

log = logging.getLogger("harness.efficiency")


def int_list(text: str) -> list[int]:
    values = [positive_int(part) for part in text.split(",") if part.strip()]
    if not values:
        raise ValueError(f"{text!r} names no numbers")
    return values


def parse_args(argv=None):
    parser = make_parser(__doc__)
    parser.add_argument("--model_path", help="model folder or hub id; replaces the model config's path")
    parser.add_argument("--model_cfg", help="model config file (`models = [dict(...)]`); default: a float32 HFCausalLM")
    parser.add_argument("--coeff_path", help="compression plan to measure against the uncompressed model")
    parser.add_argument("--work_dir", required=True, help="run folder: writes results/<model>/efficiency.json")
    parser.add_argument("--context_lengths", type=int_list, default=[128, 512], help="prefill lengths, comma-separated")
    parser.add_argument("--batch_sizes", type=int_list, default=[1, 8], help="decode batch sizes, comma-separated")
    parser.add_argument("--decode_context", type=positive_int, default=128, help="prompt length before decoding")
    parser.add_argument("--decode_tokens", type=positive_int, default=32, help="timed decode steps")
    parser.add_argument("--repeats", type=positive_int, default=3, help="timed repeats (the median is reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs before the timed ones")
    return parser.parse_args(argv)


def check_lengths(args, config) -> None:
    """Every measured length must fit the model's positions (checked before anything is written)."""
    limit = getattr(config, "max_position_embeddings", None)
    if limit is None:
        return
    too_long = [c for c in args.context_lengths if c > limit]
    if too_long:
        raise HarnessError(f"--context_lengths {too_long} exceed the model's maximum of {limit} positions "
                           "(max_position_embeddings); pass shorter lengths")
    if args.decode_context + args.decode_tokens > limit:
        raise HarnessError(f"--decode_context {args.decode_context} + --decode_tokens {args.decode_tokens} exceed the "
                           f"model's maximum of {limit} positions; pass smaller values")


def measure(model, args, config, plan, original_values) -> dict:
    """Footprint, analytic FLOPs and measured speed of ``model`` as installed now."""
    device = model.device
    reset_peak(device)
    result = footprint(model)
    flops = {c: flops_per_token(config, plan, c, original_values) for c in args.context_lengths}
    result["flops_per_token"] = flops[max(args.context_lengths)]["total"]
    result["flops_by_part"] = flops[max(args.context_lengths)]
    result["flops_per_token_by_context"] = {str(c): f["total"] for c, f in flops.items()}
    result["prefill_tokens_per_s"] = {str(c): prefill_tokens_per_s(model, c, args.repeats, args.warmup)
                                      for c in args.context_lengths}
    result["decode_tokens_per_s"] = {
        str(b): decode_tokens_per_s(model, b, args.decode_context, args.decode_tokens, args.repeats, args.warmup)
        for b in args.batch_sizes}
    result["peak_memory_bytes"] = peak_bytes(device)
    return result


def summary(measured: dict, reference: dict, args) -> dict:
    """The top-level numbers of efficiency.json (see the module docstring)."""
    out = {k: measured[k] for k in ("params", "active_params", "model_bytes", "expert_bytes", "flops_per_token")}
    out["memory_ratio"] = measured["model_bytes"] / reference["model_bytes"]
    out["expert_memory_ratio"] = measured["expert_bytes"] / reference["expert_bytes"] if reference["expert_bytes"] else 1.0
    out["active_params_ratio"] = measured["active_params"] / reference["active_params"]
    out["flops_ratio"] = measured["flops_per_token"] / reference["flops_per_token"]
    for c in map(str, args.context_lengths):
        out[f"prefill_tokens_per_s_ctx{c}"] = measured["prefill_tokens_per_s"][c]
        out[f"prefill_speedup_ctx{c}"] = measured["prefill_tokens_per_s"][c] / reference["prefill_tokens_per_s"][c]
    for b in map(str, args.batch_sizes):
        out[f"decode_tokens_per_s_bs{b}"] = measured["decode_tokens_per_s"][b]
        out[f"decode_speedup_bs{b}"] = measured["decode_tokens_per_s"][b] / reference["decode_tokens_per_s"][b]
    out["speedup"] = out[f"decode_speedup_bs{args.batch_sizes[0]}"]
    return out


@main_guard
def main(argv=None) -> int:
    args = parse_args(argv)
    work_dir = check_work_dir(args.work_dir)
    check_files(model_cfg=args.model_cfg, coeff_path=args.coeff_path)
    if args.model_cfg:
        source = load_config(args.model_cfg)
    else:
        from mmengine.config import Config
        source = Config({})
    lm = build(MODELS, model_config(source, args.model_path))
    model = lm.model
    config = copy.deepcopy(model.config)  # before a plan rewrites expert count and top-k
    check_lengths(args, config)
    settings = {k: getattr(args, k) for k in ("context_lengths", "batch_sizes", "decode_context", "decode_tokens",
                                              "repeats", "warmup")}
    reference = measure(model, args, config, None, None)
    measured, plan = reference, None
    if args.coeff_path:
        apply_compression(lm, args.coeff_path)  # the replaced expert tensors are freed
        gc.collect()
        plan = model.compression_plan
        measured = measure(model, args, config, plan, None)
    result = summary(measured, reference, args)
    result["details"] = {"model": measured, "reference": reference, "plan": args.coeff_path, "device": str(lm.device),
                         "dtype": str(next(model.parameters()).dtype), "settings": settings}
    slimming = efficiency_entry(model, lm.path)
    if slimming is not None:
        result["slimming"] = slimming
    quantisation = quantisation_entry(lm.path)
    if quantisation is not None:
        result["quantisation"] = quantisation
    path = results_path(work_dir, lm.abbr, "efficiency")
    atomic_write_json(path, result)
    print(f"{lm.abbr}: wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
