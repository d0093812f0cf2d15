"""lm-eval parity: our dataset configs vs lm-evaluation-harness on PIQA-, COPA- and LAMBADA-shaped tasks.

The tasks are built from data in ``../shared/data`` (the shapes matter, not the benchmarks):

- PIQA-shaped, from ARC-Easy: ``goal`` = the question, ``sol1``/``sol2`` = the gold choice and the
  next one (order alternating), lm-eval's ``piqa`` rendering (``Question: {goal}\\nAnswer:``);
- COPA-shaped, from HellaSwag (lm-eval's cleaning): ``premise`` = the context closed with a full
  stop, ``question`` alternating cause/effect, ``choice1``/``choice2`` = the gold ending and the
  next one, capitalised, lm-eval's ``copa`` rendering (connector, lower-cased first letter, two spaces);
- LAMBADA-shaped, from BoolQ: ``text`` = the passage's first 40 words, lm-eval's ``lambada_openai``
  rendering (context = all but the last word, target = ``' ' + last word``).

Ours: a dataset config per task (``row_transforms``, ``PPLInferencer``, ``AccEvaluator`` /
``LoglikelihoodEvaluator``) run through ``EvalTask`` on ``HFCausalLM``. lm-eval: its requests built
by its own task code (``super_glue/copa/utils.py``, the piqa and lambada_openai templates rendered
with ``lm_eval.utils.apply_template``), scored by ``HFLM.loglikelihood`` on the same loaded model,
its metrics as ``ConfigurableTask.process_results`` computes them. Reported per task: accuracy
(and accuracy_norm or perplexity) on both sides, the share of items with the same prediction, the
largest log-likelihood difference, and the time of each side (median of ``--repeats``).

    python bench/bench_lm_eval_parity.py [--num_items 100] [--repeats 1] [--out bench/lm_eval_parity.md]
"""
from __future__ import annotations

import argparse
import bz2
import json
import math
from pathlib import Path

try:
    from bench import common
except ImportError:  # run as a script: bench/ is on sys.path, the repository is added by common
    import common

from harness.datasets.hellaswag import load_hellaswag, preprocess  # noqa: E402
from harness.models.hf_causal_lm import HFCausalLM  # noqa: E402
from harness.pipeline import EvalTask  # noqa: E402

WORK = common.CACHE_DIR / "lm_eval_parity"  # generated task files (ignored by git)
PIQA_TEXT = "Question: {{goal}}\nAnswer:"  # lm_eval/tasks/piqa/piqa.yaml doc_to_text
LAMBADA_TEXT = "{{text.split(' ')[:-1]|join(' ')}}"  # lm_eval/tasks/lambada/lambada_openai.yaml
LAMBADA_TARGET = "{{' '+text.split(' ')[-1]}}"


# ----------------------------------------------------------------------------------- task files
def piqa_rows(n: int) -> list[dict]:
    rows = []
    for line in (common.SHARED_DATA / "arc_easy" / "ARC-Easy-Test.jsonl").read_text().splitlines()[:n]:
        record = json.loads(line)
        texts = [c["text"] for c in record["question"]["choices"]]
        gold = [c["label"] for c in record["question"]["choices"]].index(record["answerKey"])
        other = texts[(gold + 1) % len(texts)]
        label = len(rows) % 2
        sols = [texts[gold], other] if label == 0 else [other, texts[gold]]
        rows.append({"goal": record["question"]["stem"], "sol1": sols[0], "sol2": sols[1], "label": label})
    return rows


def copa_rows(n: int) -> list[dict]:
    items = load_hellaswag(str(common.SHARED_DATA / "hellaswag" / "hellaswag_val_full.txt.bz2"))[:n]
    rows = []
    for k, item in enumerate(items):
        endings = [preprocess(e) for e in item["endings"]]
        gold, other = endings[item["gold"]], endings[(item["gold"] + 1) % 4]
        label = k % 2
        choices = [gold, other] if label == 0 else [other, gold]
        rows.append({"premise": preprocess(item["ctx"]).rstrip(".") + ".", "question": ("cause", "effect")[k % 2],
                     "choice1": choices[0][:1].upper() + choices[0][1:],
                     "choice2": choices[1][:1].upper() + choices[1][1:], "label": label})
    return rows


def lambada_rows(n: int) -> list[dict]:
    rows = []
    for line in (common.SHARED_DATA / "boolq" / "val.jsonl").read_text().splitlines()[:n]:
        words = json.loads(line)["passage"].split(" ")
        rows.append({"text": " ".join(words[:40])})
    return rows


def write_jsonl(name: str, rows: list[dict]) -> str:
    WORK.mkdir(parents=True, exist_ok=True)
    path = WORK / f"{name}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def mc_config(abbr: str, path: str, transform: str) -> dict:
    """Our multiple-choice config as a user writes it (see dataset_cfgs/lm_eval_*.py)."""
    return dict(abbr=abbr, reader_cfg=dict(type="jsonl", path=path, output_column="label", row_transforms=[transform]),
                infer_cfg=dict(prompt_template=dict(template="{query}"),
                               inferencer=dict(type="PPLInferencer", continuations="choices", choice_template=" {choice}")),
                eval_cfg=dict(evaluator=dict(type="AccEvaluator")))


def lambada_config(path: str) -> dict:
    return dict(abbr="lambada", reader_cfg=dict(type="jsonl", path=path, row_transforms=["lm_eval_lambada"]),
                infer_cfg=dict(prompt_template=dict(template="{context}"),
                               inferencer=dict(type="PPLInferencer", continuations="continuation")),
                eval_cfg=dict(evaluator=dict(type="LoglikelihoodEvaluator")))


# ----------------------------------------------------------------------------------- lm-eval's side
def lm_eval_requests(kind: str, rows: list[dict]) -> list[tuple[str, list[str]]]:
    """(context, continuations) per doc, as lm-eval's task code builds them (target delimiter ' ')."""
    from lm_eval.tasks.super_glue.copa import utils as copa
    from lm_eval.utils import apply_template

    if kind == "piqa":
        return [(apply_template(PIQA_TEXT, r), [" " + r["sol1"], " " + r["sol2"]]) for r in rows]
    if kind == "copa":
        return [(copa.doc_to_text(r), [" " + c for c in copa.doc_to_choice(r)]) for r in rows]
    return [(apply_template(LAMBADA_TEXT, r), [apply_template(LAMBADA_TARGET, r)]) for r in rows]


def lm_eval_score(hflm, requests) -> list[list[tuple[float, bool]]]:
    from lm_eval.api.instance import Instance

    flat = [Instance(request_type="loglikelihood", doc={}, arguments=(ctx, c), idx=k)
            for ctx, conts in requests for k, c in enumerate(conts)]
    results = iter(hflm.loglikelihood(flat, disable_tqdm=True))
    return [[next(results) for _ in conts] for _, conts in requests]


def lm_eval_metrics(kind: str, requests, scores, rows) -> tuple[dict, list]:
    """lm-eval's process_results: acc = argmax ll, acc_norm = argmax ll / len(choice) (the choice
    without the delimiter); loglikelihood tasks: acc = is_greedy, perplexity = exp(-mean ll)."""
    if kind == "lambada":
        lls = [s[0][0] for s in scores]
        greedy = [s[0][1] for s in scores]
        return ({"accuracy": 100 * sum(greedy) / len(greedy), "perplexity": math.exp(-sum(lls) / len(lls))},
                [(g,) for g in greedy])
    preds = []
    for (_, conts), item in zip(requests, scores):
        lls = [ll for ll, _ in item]
        pred = max(range(len(lls)), key=lambda i: lls[i])
        pred_norm = max(range(len(lls)), key=lambda i: lls[i] / len(conts[i][1:]))
        preds.append((pred, pred_norm))
    gold = [r["label"] for r in rows]
    return ({"accuracy": 100 * sum(p == g for (p, _), g in zip(preds, gold)) / len(gold),
             "accuracy_norm": 100 * sum(p == g for (_, p), g in zip(preds, gold)) / len(gold)}, preds)


# ----------------------------------------------------------------------------------- our side
def our_predictions(kind: str, predictions: dict) -> tuple[list, list]:
    records = [predictions[str(i)] for i in range(len(predictions))]
    if kind == "lambada":
        return [(r["prediction"]["is_greedy"],) for r in records], [[r["prediction"]["loglikelihood"]] for r in records]
    lls = [[r["label_scores"][k]["loglikelihood"] for k in sorted(r["label_scores"], key=int)] for r in records]
    return [(r["prediction"], r["prediction_norm"]) for r in records], lls


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.add_common_args(parser, num_items=100, batch_size=8)
    args = parser.parse_args(argv)
    device, dtype = common.start_run(args)
    try:
        from lm_eval.models.huggingface import HFLM
    except ImportError:
        raise SystemExit("error: this benchmark compares with lm-eval: pip install lm-eval") from None

    model, tokenizer = common.load_smollm2(device, dtype)
    lm = HFCausalLM("SmolLM2-135M-Instruct", model=model, tokenizer=tokenizer, batch_size=args.batch_size,
                    max_seq_len=2048, add_special_tokens=False)
    hflm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=args.batch_size)

    tasks = {"piqa": piqa_rows(args.num_items), "copa": copa_rows(args.num_items),
             "lambada": lambada_rows(args.num_items)}
    rows_out, total = [], {"ours": 0.0, "lm-eval": 0.0}
    for kind, rows in tasks.items():
        path = write_jsonl(kind, rows)
        task = EvalTask(lambada_config(path) if kind == "lambada" else mc_config(kind, path, f"lm_eval_{kind}"))
        requests = lm_eval_requests(kind, rows)
        ours_contexts = [[(c.context, c.continuation) for c in item] for item in task.prompts(lm)]
        same_requests = sum(o == [(ctx, c) for c in conts] for o, (ctx, conts) in zip(ours_contexts, requests))
        timings = common.interleaved_timings({"ours": lambda: task.infer(lm),
                                              "lm-eval": lambda: lm_eval_score(hflm, requests)},
                                             repeats=args.repeats, device=device)
        (timing, results) = timings
        ours_time, lm_eval_time = timing["ours"], timing["lm-eval"]
        predictions, scores = results["ours"], results["lm-eval"]
        ours_metrics = task.evaluate(predictions)
        theirs, their_preds = lm_eval_metrics(kind, requests, scores, rows)
        our_preds, our_lls = our_predictions(kind, predictions)
        agree = [sum(o[j] == t[j] for o, t in zip(our_preds, their_preds)) for j in range(len(our_preds[0]))]
        diff = max(abs(a - b[0]) for ours_item, item in zip(our_lls, scores) for a, b in zip(ours_item, item))
        total["ours"] += ours_time.median
        total["lm-eval"] += lm_eval_time.median
        metric_names = [m for m in ("accuracy", "accuracy_norm", "perplexity") if m in theirs]
        rows_out.append([
            kind, len(rows), f"{same_requests}/{len(rows)}",
            " / ".join(f"{ours_metrics[m]:.2f} vs {theirs[m]:.2f}" for m in metric_names),
            " / ".join(f"{a}/{len(rows)}" for a in agree), f"{diff:.2e}",
            f"{ours_time.median:.2f}", f"{lm_eval_time.median:.2f}",
            f"{common.ratio(lm_eval_time.median, ours_time.median):.2f}"])
    headers = ["task", "items", "same requests", "ours vs lm-eval (accuracy / accuracy_norm or perplexity)",
               "same predictions (acc / acc_norm or greedy)", "max |ll diff|", "ours s", "lm-eval s",
               "lm-eval time / ours"]
    title = "bench_lm_eval_parity: dataset configs vs lm-eval on PIQA-, COPA- and LAMBADA-shaped tasks"
    sections = [common.header(title, device, dtype, {"model": "SmolLM2-135M-Instruct (GGUF Q4_1 dequantised)",
                                                       "batch size": args.batch_size, "repeats": args.repeats}),
                common.table(rows_out, headers),
                f"- total: ours {total['ours']:.2f} s, lm-eval {total['lm-eval']:.2f} s, "
                f"lm-eval / ours {common.ratio(total['lm-eval'], total['ours']):.2f}"]
    common.emit(sections, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
