"""Rolling perplexity: our RollingPPLInferencer vs lm-eval's ``HFLM.loglikelihood_rolling``.

Same model (SmolLM2-135M-Instruct on CPU), same C4 validation documents, same windows (our
``max_seq_len`` = lm-eval's ``max_length`` + 1: ours counts the last scored target too), the first
token conditioned on the same prefix token. Reported: per-document |loss difference| (target
<= 1e-4 nats per token in fp32; lm-eval with ``softmax_dtype=float64`` and with its default),
corpus loss and token perplexity of both, seconds of each (median of ``--repeats``, round-robin).

    python bench/bench_rolling.py [--num_items 8] [--max_seq_len 256] [--stride N] [--out bench/rolling.md]
"""
from __future__ import annotations

import argparse
import json
import math

try:
    from bench import common
except ImportError:  # run as a script: bench/ is on sys.path, the repository is added by common
    import common

from harness.io import PredictionStore  # noqa: E402
from harness.models.hf_causal_lm import HFCausalLM  # noqa: E402
from harness.openicl.inferencers.rolling import RollingPPLInferencer  # noqa: E402

C4 = common.SHARED_DATA / "c4" / "c4-validation.00000-of-00008.first1025.jsonl"


def ours(lm, docs, stride):
    store = PredictionStore(None, None, "")
    RollingPPLInferencer(stride=stride).infer(lm, docs, store)
    return [store.done[i]["prediction"] for i in range(len(docs))]


def lm_eval_rolling(reference, docs):
    from lm_eval.api.instance import Instance

    requests = [Instance(request_type="loglikelihood_rolling", doc={}, arguments=(d,), idx=0) for d in docs]
    return reference.loglikelihood_rolling(requests, disable_tqdm=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_args(parser, num_items=8, batch_size=4)
    parser.add_argument("--max_seq_len", type=int, default=256)
    parser.add_argument("--stride", type=int, default=None, help="ours only, shown beside the lm-eval comparison")
    args = parser.parse_args(argv)
    device, dtype = common.start_run(args)
    from lm_eval.models.huggingface import HFLM

    model, tokenizer = common.load_smollm2(device, dtype)
    docs = [json.loads(line)["text"] for line in C4.read_text(encoding="utf-8").splitlines()[: args.num_items]]
    lm = HFCausalLM("SmolLM2-135M-Instruct", model=model, tokenizer=tokenizer, max_seq_len=args.max_seq_len,
                    batch_size=args.batch_size, add_special_tokens=False)
    hflm_kwargs = dict(pretrained=model, tokenizer=tokenizer, max_length=args.max_seq_len - 1, batch_size=args.batch_size,
                  prefix_token_id=lm.prefix_token_id, add_bos_token=False)
    exact, default = HFLM(softmax_dtype="float64", **hflm_kwargs), HFLM(**hflm_kwargs)
    variants = {"ours": lambda: ours(lm, docs, None), "lm-eval (float64 softmax)": lambda: lm_eval_rolling(exact, docs),
                "lm-eval (default)": lambda: lm_eval_rolling(default, docs)}
    if args.stride:
        variants[f"ours, stride {args.stride}"] = lambda: ours(lm, docs, args.stride)
    timings, results = common.interleaved_timings(variants, repeats=args.repeats, device=device)

    records = results["ours"]
    tokens = [r["num_tokens"] for r in records]
    rows, diffs = [], {}
    for name, result in results.items():
        lls = [r["loglikelihood"] for r in result] if name.startswith("ours") else list(result)
        loss = -sum(lls) / sum(tokens)
        if not name.startswith("ours"):
            diffs[name] = max(abs(a["loglikelihood"] - b) / n for a, b, n in zip(records, lls, tokens))
        rows.append([name, timings[name].median, loss, math.exp(loss), diffs.get(name, "")])
    sections = [
        common.header("bench_rolling", device, dtype, {
            "model": "SmolLM2-135M-Instruct", "documents": f"first {len(docs)} of C4 validation ({sum(tokens)} tokens)",
            "windows": f"max_seq_len {args.max_seq_len} (lm-eval max_length {args.max_seq_len - 1}), disjoint"}),
        common.table(rows, ["variant", "seconds (median)", "loss", "token perplexity", "max per-doc |loss diff| vs ours"]),
        common.check_line("max per-document loss difference to lm-eval (float64 softmax)",
                   diffs["lm-eval (float64 softmax)"], "<= 1e-4", diffs["lm-eval (float64 softmax)"] <= 1e-4),
        common.check_line("max per-document loss difference to lm-eval (default softmax)",
                   diffs["lm-eval (default)"], "<= 1e-4", diffs["lm-eval (default)"] <= 1e-4),
    ]
    common.emit(sections, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
