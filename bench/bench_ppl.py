"""Likelihood scoring: our PPL inferencer vs OpenCompass vs lm-eval's HF backend.

All score the same (context, continuation) pairs of real HellaSwag (4 endings, lm-eval's
preprocessing), BoolQ (' no' / ' yes' after lm-eval's prompt) and ARC-Easy (4-choice items,
lm-eval's prompt) items with the same loaded model and batch size:

1. ours: ``PPLInferencer(mode='loglikelihood')`` on ``HFCausalLM``: several items per packed row
   (each context once, its endings after it), batches of a token budget (default batch size x
   the longest item, i.e. what a padded batch of that size would hold);
2. OpenCompass: the PyPI ``opencompass`` package's own ``PPLInferencer`` on its
   ``HuggingFaceBaseModel`` wrapping the same model (every label's whole prompt, label by label,
   right-padded; see ``common.OPENCOMPASS_INSTALL``). Where it cannot be imported, our
   re-implementation of that loop runs instead and the header says why;
3. lm-eval's ``HFLM.loglikelihood`` (sorted by length, right-padded, one forward per request except
   one-token continuations of one context, which it groups).

Reported: items/s, real tokens/s, forward tokens (padded and real), padding share, ratios vs ours,
agreement of predictions, and the checks: padding share < 5%, speed ours/lm-eval (HellaSwag >= 2.5,
BoolQ >= 1.8), identical predictions to lm-eval, max |our per-choice log-likelihood - lm-eval's|.

    python bench/bench_ppl.py [--num_items 32] [--boolq_items 12] [--arc_items 32] [--batch_size 8] [--out FILE]
"""
from __future__ import annotations

import argparse
import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch

try:
    from bench import common
except ImportError:  # run as a script: bench/ is on sys.path, the repository is added by common
    import common

from harness.io import PredictionStore  # noqa: E402
from harness.models.hf_causal_lm import HFCausalLM  # noqa: E402
from harness.openicl.inferencers.ppl import Choice, PPLInferencer  # noqa: E402

TARGET_TOKEN_RATIO = 2.0
TARGET_SPEEDUP = {"HellaSwag": 2.5, "BoolQ": 1.8}  # ours / lm-eval's HF backend
TARGET_PADDING = 0.05  # padding share of our forward tokens
TARGET_MAX_DIFF = 1e-4


@dataclass
class Item:
    """One multiple-choice item: a context, its continuations (scored after it) and the gold index."""

    context: str
    continuations: list[str]
    gold: int


# ----------------------------------------------------------------------------------- data
def lm_eval_preprocess(text: str) -> str:
    """lm-eval's HellaSwag cleanup (tasks/hellaswag/utils.py): WikiHow bracket markup out."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def hellaswag_items(n: int, data_dir: Path = common.SHARED_DATA) -> list[Item]:
    """The first ``n`` validation items: query (activity label: context) and ' ' + each ending."""
    from harness.datasets.hellaswag import load_hellaswag

    rows = load_hellaswag(str(data_dir / "hellaswag" / "hellaswag_val_full.txt.bz2"))[:n]
    return [Item(lm_eval_preprocess(r["query"]), [" " + lm_eval_preprocess(e) for e in r["endings"]], r["gold"])
            for r in rows]


def arc_easy_items(n: int, data_dir: Path = common.SHARED_DATA) -> list[Item]:
    """The first ``n`` ARC-Easy test items with lm-eval's prompt ('Question: ...\nAnswer:', ' ' + choice)."""
    items = []
    with open(data_dir / "arc_easy" / "ARC-Easy-Test.jsonl", encoding="utf-8") as f:
        for line in f:
            if len(items) == n:
                break
            row = json.loads(line)
            choices = row["question"]["choices"]
            if len(choices) != 4:  # OpenCompass's per-label templates need one label set for all items
                continue
            labels = [c["label"] for c in choices]
            items.append(Item(f"Question: {row['question']['stem']}\nAnswer:", [" " + c["text"] for c in choices],
                              labels.index(row["answerKey"])))
    return items


def boolq_items(n: int, data_dir: Path = common.SHARED_DATA) -> list[Item]:
    """The first ``n`` validation items with lm-eval's boolq prompt and choices ['no', 'yes']."""
    items = []
    with open(data_dir / "boolq" / "val.jsonl", encoding="utf-8") as f:
        for line in f:
            if len(items) == n:
                break
            row = json.loads(line)
            label = row["label"] in (True, "true", "True", 1)
            items.append(Item(f"{row['passage']}\nQuestion: {row['question']}?\nAnswer:", [" no", " yes"], int(label)))
    return items


# ----------------------------------------------------------------------------------- the three variants
def score_ours(lm: HFCausalLM, items: list[Item], batch_size: int) -> list[list[float]]:
    """Our PPL inferencer, built fresh each call so tokenisation is part of the measured time."""
    inferencer = PPLInferencer(mode="loglikelihood", batch_size=batch_size)
    choices = [[Choice(k, item.context, c) for k, c in enumerate(item.continuations)] for item in items]
    store = PredictionStore(None, None, "bench")
    inferencer.infer(lm, choices, store)
    return [[store.done[i]["label_scores"][str(k)]["loglikelihood"] for k in range(len(item.continuations))]
            for i, item in enumerate(items)]


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context tokens, continuation tokens): the continuation is the tail of the joint encoding."""
    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    context_tokens = tokenizer(context, add_special_tokens=False)["input_ids"]
    return whole[: len(context_tokens)], whole[len(context_tokens):]


@torch.no_grad()
def score_opencompass_style(model, tokenizer, items: list[Item], batch_size: int, pad_id: int) -> list[list[float]]:
    """OpenCompass's PPL loop: for each label, the batches of full prompts in dataset order, each
    prompt right-padded and run whole; the continuation's log-likelihood is read off the logits
    (OpenCompass's ``mask_length`` does the same for its normalised scores)."""
    device = model.get_input_embeddings().weight.device
    scores = [[0.0] * len(item.continuations) for item in items]
    for label in range(max(len(item.continuations) for item in items)):
        positions = [i for i, item in enumerate(items) if label < len(item.continuations)]
        for start in range(0, len(positions), batch_size):
            batch = positions[start:start + batch_size]
            pairs = [encode_pair(tokenizer, items[i].context, items[i].continuations[label]) for i in batch]
            seqs = [c + r for c, r in pairs]
            width = max(len(s) for s in seqs)
            ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(seqs), width), dtype=torch.long)
            for row, s in enumerate(seqs):
                ids[row, : len(s)] = torch.tensor(s)
                mask[row, : len(s)] = 1
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
            token_lp = logprobs.gather(-1, ids[:, 1:].to(device)[..., None]).squeeze(-1)
            for row, (i, (context, rest)) in enumerate(zip(batch, pairs)):
                scores[i][label] = float(token_lp[row, len(context) - 1: len(context) + len(rest) - 1].sum())
    return scores


def score_opencompass(oc_model, items: list[Item], batch_size: int) -> list[list[float]]:
    """The PyPI ``opencompass`` package's own ``PPLInferencer`` (one template per label, every
    label's whole prompt run separately, label by label) on its ``HuggingFaceBaseModel``.
    Its score is the whole prompt's average NLL; returned negated, so higher is better."""
    import tempfile

    from opencompass.openicl.icl_inferencer import PPLInferencer as OpenCompassPPL
    from opencompass.openicl.icl_prompt_template import PromptTemplate
    from opencompass.openicl.icl_retriever import ZeroRetriever

    labels = range(len(items[0].continuations))
    rows = [{"context": item.context, **{f"c{k}": c for k, c in enumerate(item.continuations)}, "gold": item.gold}
            for item in items]
    dataset = common.opencompass_dataset(rows, ["context", *[f"c{k}" for k in labels]], "gold")
    template = PromptTemplate(template={k: f"{{context}}{{c{k}}}" for k in labels})
    with tempfile.TemporaryDirectory() as out:
        inferencer = OpenCompassPPL(model=oc_model, batch_size=batch_size, output_json_filepath=out)
        inferencer.inference(ZeroRetriever(dataset), prompt_template=template, output_json_filepath=out,
                             output_json_filename="ppl.json")
        with open(Path(out) / "ppl.json", encoding="utf-8") as f:
            saved = json.load(f)
    return [[-float(saved[str(i)][f"label: {k}"]["PPL"]) for k in labels] for i in range(len(items))]


def make_lm_eval(model, tokenizer, batch_size: int, softmax_dtype=None, **kwargs):
    """lm-eval's HF backend around the already loaded model (None when lm-eval is not installed).
    ``softmax_dtype=torch.float64`` is lm-eval's own option for an exact log-softmax; the timed
    variant uses lm-eval's default (the model's dtype)."""
    try:
        from lm_eval.models.huggingface import HFLM
    except ImportError:
        return None
    return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, softmax_dtype=softmax_dtype, **kwargs)


def score_lm_eval(lm_eval_model, items: list[Item]) -> list[list[float]]:
    from lm_eval.api.instance import Instance

    requests = [
        Instance(request_type="loglikelihood", doc={"item": i}, arguments=(item.context, c), idx=k)
        for i, item in enumerate(items) for k, c in enumerate(item.continuations)
    ]
    flat = iter(lm_eval_model.loglikelihood(requests, disable_tqdm=True))
    return [[next(flat)[0] for _ in item.continuations] for item in items]


# ----------------------------------------------------------------------------------- measuring
def accuracy(scores: list[list[float]], items: list[Item]) -> float:
    return 100.0 * sum(max(range(len(s)), key=s.__getitem__) == item.gold for s, item in zip(scores, items)) / len(items)


def predictions(scores: list[list[float]]) -> list[int]:
    return [max(range(len(s)), key=s.__getitem__) for s in scores]


def agreement(a: list[list[float]], b: list[list[float]]) -> float:
    return 100.0 * sum(x == y for x, y in zip(predictions(a), predictions(b))) / max(1, len(a))


def padding_share(tokens: common.TokenCount) -> float:
    return (tokens.padded - tokens.real) / tokens.padded if tokens.padded else 0.0


def max_abs_diff(a: list[list[float]], b: list[list[float]]) -> float:
    return max(abs(x - y) for ra, rb in zip(a, b) for x, y in zip(ra, rb))


def measure(variants: dict, model, items: list[Item], pad_ids, repeats: int, device) -> dict[str, dict]:
    """Per variant: median seconds, tokens fed per run, scores. After an untimed warm-up on a few
    items the variants are timed round-robin; the token hook stays on during the timed runs (its
    cost is a comparison over the input ids) and the count is divided by the repeats."""
    warm = items[: min(4, len(items))]
    for fn in variants.values():
        fn(warm)
    counters = {name: common.TokenCounter(model, pad_ids) for name in variants}

    def counted(name, fn):
        def run():
            with counters[name]:
                return fn(items)
        return run

    timings, results = common.interleaved_timings(
        {name: counted(name, fn) for name, fn in variants.items()}, repeats=repeats, warmup=0, device=device
    )
    measured = {}
    for name in variants:
        total = counters[name].count
        runs = len(timings[name].seconds)
        per_run = common.TokenCount(total.forwards // runs, total.padded // runs, total.real // runs)
        measured[name] = dict(timing=timings[name], tokens=per_run, scores=results[name])
    return measured


def dataset_table(name: str, items: list[Item], measured: dict[str, dict]) -> tuple[str, list]:
    ours = measured["ours"]
    rows = []
    for variant, m in measured.items():
        seconds = m["timing"].median
        rows.append([
            variant, len(items), f"{seconds:.2f} ({m['timing'].spread()})", len(items) / seconds,
            m["tokens"].real / seconds, common.ratio(seconds, ours["timing"].median), m["tokens"].padded,
            m["tokens"].real, f"{padding_share(m['tokens']):.1%}", m["tokens"].forwards,
            f"{accuracy(m['scores'], items):.1f}", f"{agreement(m['scores'], ours['scores']):.0f}",
        ])
    headers = ["variant", "items", "median s (min-max)", "items/s", "real tokens/s", "time vs ours",
               "fwd tokens (padded)", "fwd tokens (real)", "padding share", "forwards", "acc %",
               "same prediction as ours %"]
    return f"### {name}\n\n" + common.table(rows, headers), rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.add_common_args(parser, num_items=32, batch_size=8)
    parser.add_argument("--boolq_items", type=int, default=12, help="BoolQ items (long passages: fewer by default)")
    parser.add_argument("--arc_items", type=int, default=32, help="ARC-Easy items (4-choice ones)")
    parser.add_argument("--max_batch_tokens", type=int, default=None,
                        help="our token budget per batch (default: batch size x the longest item)")
    parser.add_argument("--no_lm_eval", action="store_true", help="skip lm-eval's backend")
    parser.add_argument("--no_opencompass", action="store_true",
                        help="use our re-implementation of OpenCompass's loop instead of the PyPI package")
    args = parser.parse_args(argv)
    device, dtype = common.start_run(args)

    model, tokenizer = common.load_smollm2(device, dtype)
    lm = HFCausalLM("SmolLM2-135M-Instruct", model=model, tokenizer=tokenizer, batch_size=args.batch_size,
                    max_seq_len=4096, add_special_tokens=False, max_batch_tokens=args.max_batch_tokens)
    pad_ids = {lm.pad_token_id, 0}  # ours and OpenCompass-style pad with the pad id, lm-eval with 0
    lm_eval_model = None if args.no_lm_eval else make_lm_eval(model, tokenizer, args.batch_size)

    variants = {"ours": lambda items: score_ours(lm, items, args.batch_size)}
    notes = {}
    missing = None if args.no_opencompass else common.opencompass_missing()
    if args.no_opencompass or missing:
        # fallback: our re-implementation of OpenCompass's per-label loop
        variants["opencompass-style"] = lambda items: score_opencompass_style(model, tokenizer, items, args.batch_size,
                                                                             lm.pad_token_id)
        notes["OpenCompass column"] = "our re-implementation of its loop: " + (missing or "--no_opencompass")
    else:
        import opencompass

        oc_model = common.opencompass_model(model, common.smollm2_folder())
        variants["opencompass (PyPI)"] = lambda items: score_opencompass(oc_model, items, args.batch_size)
        pad_ids.add(int(oc_model.tokenizer.pad_token_id))
        notes["OpenCompass column"] = (f"opencompass {getattr(opencompass, '__version__', '?')} from PyPI: its "
                                       "PPLInferencer + HuggingFaceBaseModel on the same loaded model (scores: average "
                                       "NLL of the whole prompt, its own rule)")
    if lm_eval_model is not None:
        variants["lm-eval HFLM"] = lambda items: score_lm_eval(lm_eval_model, items)
        sample = "Roof shingle removal: A man is sitting on a roof."
        adds_bos = lm_eval_model.tok_encode(sample) != tokenizer(sample, add_special_tokens=False)["input_ids"]
        notes["lm-eval adds special tokens for this tokenizer"] = "yes" if adds_bos else "no (ours: add_special_tokens=False)"
    else:
        notes["lm-eval"] = "not installed or --no_lm_eval: its column is left out"

    datasets = {"HellaSwag": hellaswag_items(args.num_items),
                "BoolQ": boolq_items(args.boolq_items),
                "ARC-Easy": arc_easy_items(args.arc_items)}
    sections, measured_all, exact = [], {}, {}
    for name, items in datasets.items():
        measured_all[name] = measure(variants, model, items, pad_ids, args.repeats, device)
        sections.append(dataset_table(name, items, measured_all[name])[0])
        if lm_eval_model is not None:  # untimed: lm-eval with a float64 log-softmax, the parity reference
            exact[name] = score_lm_eval(make_lm_eval(model, tokenizer, args.batch_size, torch.float64), items)

    checks = check_targets(measured_all, exact)
    title = "bench_ppl: likelihood scoring, ours vs OpenCompass vs lm-eval"
    extra = {"model": "SmolLM2-135M-Instruct (GGUF Q4_1 dequantised)", "batch size": args.batch_size,
             "repeats": f"{args.repeats} (median; variants interleaved)", **notes}
    common.emit([common.header(title, device, dtype, extra), *sections, "### Checks\n\n" + "\n".join(checks)], args.out)
    return 0


def check_targets(measured_all: dict[str, dict], exact: dict[str, list] | None = None) -> list[str]:
    """The targets of the issue, each stated as met or missed. ``exact``: lm-eval's scores with a
    float64 log-softmax per dataset, which separates scoring differences from softmax rounding."""
    lines = []
    for name, m in measured_all.items():
        share = padding_share(m["ours"]["tokens"])
        lines.append(common.check_line(f"{name} padding share of our forward tokens", share, f"< {TARGET_PADDING}",
                                       share < TARGET_PADDING))
    hs = measured_all.get("HellaSwag")
    per_label = next((v for v in ("opencompass (PyPI)", "opencompass-style") if hs and v in hs), None)
    if per_label:
        r = common.ratio(hs[per_label]["tokens"].padded, hs["ours"]["tokens"].padded)
        lines.append(common.check_line(f"HellaSwag forward tokens, {per_label} / ours", r, f">= {TARGET_TOKEN_RATIO}",
                                       r >= TARGET_TOKEN_RATIO))
    if all("lm-eval HFLM" in m for m in measured_all.values()):
        for name, m in measured_all.items():
            speed = common.ratio(m["lm-eval HFLM"]["timing"].median, m["ours"]["timing"].median)
            if name in TARGET_SPEEDUP:
                lines.append(common.check_line(f"{name} speed, ours / lm-eval", speed, f">= {TARGET_SPEEDUP[name]}",
                                               speed >= TARGET_SPEEDUP[name]))
            else:
                lines.append(f"- {name} speed, ours / lm-eval: {speed:.3g} (no target)")
            same = agreement(m["ours"]["scores"], m["lm-eval HFLM"]["scores"])
            lines.append(common.check_line(f"{name} predictions identical to lm-eval's (%)", same, "= 100", same == 100))
        diff = max(max_abs_diff(m["ours"]["scores"], m["lm-eval HFLM"]["scores"]) for m in measured_all.values())
        lines.append(common.check_line("max |our loglikelihood - lm-eval's (defaults)|", diff,
                                       f"<= {TARGET_MAX_DIFF:g}", diff <= TARGET_MAX_DIFF))
    if exact:
        diff = max(max_abs_diff(measured_all[n]["ours"]["scores"], exact[n]) for n in exact)
        lines.append(common.check_line("max |our loglikelihood - lm-eval's with softmax_dtype=float64|", diff,
                                       f"<= {TARGET_MAX_DIFF:g}", diff <= TARGET_MAX_DIFF))
        own = max(max_abs_diff(measured_all[n]["lm-eval HFLM"]["scores"], exact[n]) for n in exact)
        lines.append(f"- max |lm-eval (defaults) - lm-eval with softmax_dtype=float64|: {own:.3g} "
                     "(lm-eval's own log-softmax rounding in the model dtype)")
    for name, m in measured_all.items():
        if "opencompass (PyPI)" in m:
            speed = common.ratio(m["opencompass (PyPI)"]["timing"].median, m["ours"]["timing"].median)
            lines.append(f"- {name} speed, ours / opencompass (PyPI): {speed:.3g}")
    if all("opencompass-style" in m for m in measured_all.values()):
        diff = max(max_abs_diff(m["ours"]["scores"], m["opencompass-style"]["scores"]) for m in measured_all.values())
        lines.append(f"- max |our loglikelihood - OpenCompass-style loop's| (same quantity, independent code): {diff:.3g}")
    return lines


if __name__ == "__main__":
    raise SystemExit(main())
