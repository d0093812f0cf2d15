"""Generation: our GenInferencer (refilled rows) vs a plain Hugging Face generate loop.

All generate greedily for the same GSM8K test questions with the same model, batch size and
``max_out_len``; the plain loop takes the questions in dataset order (the usual script), ours sorts
them by prompt length and refills a row as soon as its output ends (``harness/models/refill.py``);
"ours, refill off" is the same inferencer with ``refill_rows=False`` (length-sorted batches through
HF ``generate``), to show what refilling adds. Reported: items/s, generated
tokens/s, forward tokens, the speed ratio, and the share of items whose outputs are identical
(greedy decoding must give the same text; a difference means padding changed the numerics).

    python bench/bench_gen.py [--num_items 24] [--batch_size 8] [--max_out_len 64] [--out bench/gen.md]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

try:
    from bench import common
except ImportError:  # run as a script
    import common

from harness.io import PredictionStore  # noqa: E402
from harness.models.hf_causal_lm import HFCausalLM  # noqa: E402
from harness.openicl.inferencers.gen import GenInferencer  # noqa: E402

PROMPT = "Question: {question}\nAnswer:"


def gsm8k_prompts(n: int, data_dir: Path = common.SHARED_DATA) -> list[str]:
    """The first ``n`` GSM8K test questions in a zero-shot prompt."""
    prompts = []
    with open(data_dir / "gsm8k" / "test.jsonl", encoding="utf-8") as f:
        for line in f:
            if len(prompts) == n:
                break
            prompts.append(PROMPT.replace("{question}", json.loads(line)["question"]))
    return prompts


def generate_ours(lm: HFCausalLM, prompts: list[str], batch_size: int, max_out_len: int,
                  refill: bool = True) -> list[str]:
    """Our GenInferencer, built fresh so prompt tokenisation is part of the measured time."""
    lm.refill_rows = refill
    inferencer = GenInferencer(max_out_len=max_out_len, batch_size=batch_size, stop_strings=[])
    store = PredictionStore(None, None, "bench")
    inferencer.infer(lm, prompts, store)
    return [store.done[i]["prediction"] for i in range(len(prompts))]


@torch.no_grad()
def generate_plain(model, tokenizer, prompts: list[str], batch_size: int, max_out_len: int,
                   pad_id: int, add_special_tokens: bool = False) -> list[str]:
    """The plain loop: batches in dataset order, left-padded by the tokenizer, greedy generate."""
    device = model.get_input_embeddings().weight.device
    tokenizer.padding_side = "left"
    outputs = []
    for start in range(0, len(prompts), batch_size):
        batch = tokenizer(prompts[start:start + batch_size], padding=True, return_tensors="pt",
                          add_special_tokens=add_special_tokens).to(device)
        out = model.generate(**batch, max_new_tokens=max_out_len, do_sample=False, pad_token_id=pad_id)
        outputs.extend(tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True))
    return outputs


def generate_opencompass(oc_model, prompts: list[str], batch_size: int, max_out_len: int) -> list[str]:
    """The PyPI ``opencompass`` package's own ``GenInferencer`` on its ``HuggingFaceBaseModel``
    (batches in dataset order, greedy: no sampling arguments)."""
    import tempfile

    from opencompass.openicl.icl_inferencer import GenInferencer as OpenCompassGen
    from opencompass.openicl.icl_prompt_template import PromptTemplate
    from opencompass.openicl.icl_retriever import ZeroRetriever

    dataset = common.opencompass_dataset([{"prompt": p, "answer": ""} for p in prompts], ["prompt"], "answer")
    with tempfile.TemporaryDirectory() as out:
        inferencer = OpenCompassGen(model=oc_model, max_out_len=max_out_len, batch_size=batch_size,
                                    output_json_filepath=out)
        return inferencer.inference(ZeroRetriever(dataset), prompt_template=PromptTemplate("{prompt}"),
                                    output_json_filepath=out, output_json_filename="gen.json")


def generated_tokens(tokenizer, texts: list[str]) -> int:
    """Tokens in the outputs (re-encoded, so both variants are counted the same way)."""
    return sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)


def agreement(a: list[str], b: list[str]) -> float:
    return 100.0 * sum(x == y for x, y in zip(a, b)) / max(1, len(a))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.add_common_args(parser, num_items=24, batch_size=8)
    parser.add_argument("--max_out_len", type=int, default=64, help="new tokens per item")
    args = parser.parse_args(argv)
    device, dtype = common.start_run(args)

    model, tokenizer = common.load_smollm2(device, dtype)
    lm = HFCausalLM("SmolLM2-135M-Instruct", model=model, tokenizer=tokenizer, batch_size=args.batch_size,
                    max_seq_len=4096, max_out_len=args.max_out_len, add_special_tokens=False)
    prompts = gsm8k_prompts(args.num_items)
    variants = {
        "ours (GenInferencer, refilled rows)": lambda items: generate_ours(lm, items, args.batch_size,
                                                                           args.max_out_len),
        "ours, refill off (length-sorted HF generate)": lambda items: generate_ours(
            lm, items, args.batch_size, args.max_out_len, refill=False),
        "plain HF generate loop (dataset order)": lambda items: generate_plain(
            model, tokenizer, items, args.batch_size, args.max_out_len, lm.pad_token_id),
    }
    missing = common.opencompass_missing()
    if missing is None:
        oc_model = common.opencompass_model(model, common.smollm2_folder())
        oc_model.generation_kwargs = dict(do_sample=False)
        variants["opencompass (PyPI) GenInferencer"] = lambda items: generate_opencompass(
            oc_model, items, args.batch_size, args.max_out_len)
    for fn in variants.values():  # warm-up
        fn(prompts[: min(2, len(prompts))])
    counters = {name: common.TokenCounter(model, {lm.pad_token_id}) for name in variants}

    def counted(name, fn):
        def run():
            with counters[name]:
                return fn(prompts)
        return run

    timings, outputs = common.interleaved_timings({n: counted(n, f) for n, f in variants.items()},
                                                  repeats=args.repeats, warmup=0, device=device)
    names = list(variants)
    ours_s = timings[names[0]].median
    rows = []
    for name in names:
        seconds = timings[name].median
        gen = generated_tokens(tokenizer, outputs[name])
        fed = counters[name].count.padded // len(timings[name].seconds)
        rows.append([name, len(prompts), f"{seconds:.2f} ({timings[name].spread()})", len(prompts) / seconds,
                     gen / seconds, fed, common.ratio(seconds, ours_s)])
    headers = ["variant", "items", "median s (min-max)", "items/s", "generated tokens/s",
               "fwd tokens (padded, per run)", "time vs ours"]
    plain = names[2]
    same = agreement(outputs[names[0]], outputs[plain])
    speed = common.ratio(timings[plain].median, ours_s)
    tokens_per_s = {n: generated_tokens(tokenizer, outputs[n]) / timings[n].median for n in (names[0], plain)}
    checks = [common.check_line("speed, ours / plain loop", speed, ">= 1.3", speed >= 1.3),
              f"- generated tokens/s: ours {tokens_per_s[names[0]]:.1f}, plain loop {tokens_per_s[plain]:.1f}",
              f"- identical greedy outputs (ours vs plain loop): {same:.1f}% of {len(prompts)} items",
              f"- speed, ours / ours with refill off: {common.ratio(timings[names[1]].median, ours_s):.3g}; "
              f"identical outputs: {agreement(outputs[names[0]], outputs[names[1]]):.1f}%"]
    for name in names[3:]:
        checks.append(f"- speed, ours / {name}: {common.ratio(timings[name].median, ours_s):.3g}; identical outputs "
                      f"to ours: {agreement(outputs[names[0]], outputs[name]):.1f}%")
    if missing:
        checks.append(f"- OpenCompass column left out: {missing}")
    title = "bench_gen: generation, GenInferencer vs a plain generate loop (GSM8K)"
    extra = {"model": "SmolLM2-135M-Instruct (GGUF Q4_1 dequantised)", "batch size": args.batch_size,
             "max_out_len": args.max_out_len, "repeats": f"{args.repeats} (median; variants interleaved)"}
    common.emit([common.header(title, device, dtype, extra), common.table(rows, headers),
                 "### Checks\n\n" + "\n".join(checks)], args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
