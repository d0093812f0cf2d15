"""Summarise result folders as one table: a row per dataset and metric, a column per run.

    python tools/summarize.py DIR [DIR ...] [--format md|csv|txt] [--out FILE]

A run is one model folder under DIR/results (named after DIR, or DIR/model when a folder holds
several models). A result that one run has and another lacks is shown as ``missing`` and named on
stderr. Metrics averaged over repeated runs (random pruning's ``<metric>_std``, ``num_runs``) show
as mean ± std.

The average row averages ONE metric per dataset, its primary metric (as OpenCompass's summary
groups do): the one a results file names under ``"primary_metric"``, else the first metric the
evaluator reported (the first numeric key of the file, the same rule as a search's fitness in
``harness/search/fitness.py``). Mixing accuracy, its ``_norm`` twin, em and f1 in one mean would
count some datasets several times. The row's metric cell names what was averaged, and it covers
only the datasets every run has (saying how many that is); a one-dataset table has no average row.

Perplexity results (``PerplexityEvaluator``: loss, token/word/byte perplexity, bits per byte; lower
is better) and ``efficiency.json`` (``harness/tasks/efficiency.py``: parameters, bytes, FLOPs,
tokens/s and the ratios to the full model) get rows like any other result but stay out of the
average, which is a mean of accuracy-like percentages.

Below the table (md and txt; csv stays a plain table) a legend says what each metric shown means:
its unit and whether higher or lower is better (``METRIC_MEANINGS``).
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path

from tabulate import tabulate

from harness.cli import main_guard
from harness.errors import HarnessError
from harness.io import atomic_write_text

MISSING = "missing"
PRIMARY = "primary_metric"  # a results file may name its averaged metric under this key
EFFICIENCY = "efficiency"  # results/<model>/efficiency.json of harness/tasks/efficiency.py
# lower-is-better corpus metrics (harness/openicl/evaluators/perplexity.py): never averaged with accuracies
PERPLEXITY_METRICS = ("loss", "token_perplexity", "word_perplexity", "byte_perplexity", "bits_per_byte")


PERCENT = "% (0-100), higher is better"
# what each metric a harness evaluator or efficiency.py writes means; patterns for the per-setting keys
METRIC_MEANINGS = {
    "accuracy": f"items whose prediction equals the gold answer (likelihood tasks: the gold choice ranked first), {PERCENT}",
    "accuracy_norm": f"the gold choice ranked first by log-likelihood per character of the choice (lm-eval's acc_norm), {PERCENT}",
    "em": f"exact match after answer normalisation, {PERCENT}",
    "f1": f"token-overlap F1 with the best reference, {PERCENT}",
    "score": f"items whose answer contains a reference (the EEP protocol's rule), {PERCENT}",
    "rouge1": f"ROUGE-1 F-measure, {PERCENT}", "rouge2": f"ROUGE-2 F-measure, {PERCENT}",
    "rougeL": f"ROUGE-L F-measure, {PERCENT}",
    "perplexity": "exp(-mean log-likelihood per item) of the continuation, lower is better (not a %)",
    "loss": "mean negative log-likelihood per token in nats, lower is better",
    "token_perplexity": "exp(loss), lower is better",
    "word_perplexity": "exp(negative log-likelihood per whitespace-separated word), lower is better",
    "byte_perplexity": "exp(negative log-likelihood per UTF-8 byte), lower is better",
    "bits_per_byte": "negative log-likelihood per UTF-8 byte in bits, lower is better",
    "num_tokens": "tokens scored (a count)", "num_documents": "documents scored (a count)",
    "params": "parameters held (a count), lower is smaller",
    "active_params": "parameters used per token (a count), lower is cheaper",
    "model_bytes": "bytes of all weights, lower is smaller", "expert_bytes": "bytes of the routed experts, lower is smaller",
    "flops_per_token": "analytic FLOPs per token, lower is cheaper",
    "memory_ratio": "model bytes / the uncompressed model's, lower is smaller",
    "expert_memory_ratio": "expert bytes / the uncompressed model's, lower is smaller",
    "active_params_ratio": "active parameters / the uncompressed model's, lower is cheaper",
    "flops_ratio": "FLOPs per token / the uncompressed model's, lower is cheaper",
    "speedup": "decode tokens/s / the uncompressed model's at the first batch size, higher is faster",
}
METRIC_PATTERNS = (  # (prefix, meaning) for keys with a setting in their name
    ("prefill_tokens_per_s_ctx", "prefill tokens per second at context length {}, higher is faster"),
    ("prefill_speedup_ctx", "prefill tokens/s / the uncompressed model's at context length {}, higher is faster"),
    ("decode_tokens_per_s_bs", "decode tokens per second at batch size {}, higher is faster"),
    ("decode_speedup_bs", "decode tokens/s / the uncompressed model's at batch size {}, higher is faster"),
    ("HasAns_", "on questions with an answer, {}"), ("NoAns_", "on questions without one, {}"),
)


def metric_meaning(metric: str) -> str | None:
    """What ``metric`` measures, its unit and which direction is better; None when unknown."""
    if metric in METRIC_MEANINGS:
        return METRIC_MEANINGS[metric]
    for prefix, text in METRIC_PATTERNS:
        if metric.startswith(prefix):
            rest = metric[len(prefix):]
            return text.format(METRIC_MEANINGS.get(rest, rest) if prefix.endswith("Ans_") else rest)
    return None


def legend(rows: list[list]) -> str:
    """One line per metric of the table: what it means (metrics the harness does not know are named as such)."""
    names = list(dict.fromkeys(row[1] for row in rows if not str(row[0]).startswith("average")))
    lines = [f"- {name}: {metric_meaning(name) or 'not a harness metric; see the evaluator that wrote it'}" for name in names]
    if any(str(row[0]).startswith("average") for row in rows):
        lines.append("- average: mean over datasets of each one's primary metric (named in the row)")
    if any(" ± " in str(cell) for row in rows for cell in row):
        lines.append("- a ± b (n runs): mean and sample standard deviation over n seeded runs (random pruning)")
    return "\nMetrics:\n" + "\n".join(lines) + "\n" if lines else ""


def averaged(dataset: str, metrics: dict) -> bool:
    """Whether a dataset's primary metric belongs in the average row (not perplexity, not efficiency)."""
    return dataset != EFFICIENCY and primary_metric(metrics) not in PERPLEXITY_METRICS


def collect_runs(work_dirs: list[str]) -> dict[str, dict[str, dict[str, float]]]:
    """{run name: {dataset abbr: {metric: value}}} from each DIR/results/<model>/<dataset>.json.

    Metrics keep the file's order (the evaluator's), and a ``primary_metric`` name is kept as is."""
    runs: dict[str, dict[str, dict[str, float]]] = {}
    for work_dir in work_dirs:
        root = Path(work_dir) / "results"
        if not root.is_dir():
            raise HarnessError(f"{work_dir} has no results/ folder; pass a --work_dir of harness/tasks/infer.py")
        models = sorted(p for p in root.iterdir() if p.is_dir())
        for model_dir in models:
            name = Path(work_dir).name if len(models) == 1 else f"{Path(work_dir).name}/{model_dir.name}"
            if name in runs:
                name = f"{work_dir}/{model_dir.name}"
            runs[name] = {}
            for file in sorted(model_dir.glob("*.json")):
                runs[name][file.stem] = read_metrics(file)
    return runs


def read_metrics(file: Path) -> dict:
    """A results file's numeric metrics in the file's order, and its ``primary_metric`` name if any."""
    try:
        metrics = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        metrics = None
    if not isinstance(metrics, dict):
        raise HarnessError(f"{file} is not a results file (a JSON object of metrics); remove it or rerun harness/tasks/eval.py")
    kept = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    named = metrics.get(PRIMARY)
    if named is not None:
        if named not in kept:
            raise HarnessError(f"{file}: primary_metric {named!r} is not among its metrics {sorted(kept)}; fix or drop it")
        kept[PRIMARY] = named
    return kept


def primary_metric(metrics: dict) -> str | None:
    """The name of a dataset's averaged metric: the one the file names, else the first one reported."""
    return metrics.get(PRIMARY) or next(iter(metric_names(metrics)), None)


def metric_names(metrics: dict) -> list[str]:
    """The metric rows of a results dict, in the file's order (no spreads, no primary_metric name)."""
    return [m for m in metrics if m != PRIMARY and not is_spread(m)]


def is_spread(metric: str) -> bool:
    """Keys that describe another metric's spread over repeated runs (random pruning)."""
    return metric.endswith("_std") or metric == "num_runs"


def build_table(runs: dict[str, dict[str, dict[str, float]]]) -> tuple[list[str], list[list], list[str]]:
    """Header, rows (dataset, metric, value per run) and the names of the missing results.

    A metric averaged over repeated runs shows as ``mean ± std (n runs)``; the average row uses means.
    A dataset's primary metric is decided by the first run (in command-line order) that has it.
    """
    names = list(runs)
    primary: dict[str, str] = {}
    for name in names:
        for dataset, metrics in runs[name].items():
            if dataset not in primary and primary_metric(metrics) is not None and averaged(dataset, metrics):
                primary[dataset] = primary_metric(metrics)
    keys = sorted({(d, m) for run in runs.values() for d, metrics in run.items() for m in metric_names(metrics)})
    rows, missing = [], []
    for dataset, metric in keys:
        row = [dataset, metric]
        for name in names:
            metrics = runs[name].get(dataset, {})
            value = metrics.get(metric)
            if value is None:
                missing.append(f"{name}: {dataset} {metric}")
            row.append(MISSING if value is None else _cell(value, metrics.get(f"{metric}_std"), metrics.get("num_runs")))
        rows.append(row)
    if len(primary) > 1 and names:
        rows.extend(_average_row(runs, names, primary))
    return ["dataset", "metric"] + names, rows, missing


def _average_row(runs, names: list[str], primary: dict[str, str]) -> list[list]:
    """The mean over datasets of each one's primary metric, for the datasets every run has."""
    complete = sorted(d for d, m in primary.items() if all(m in runs[name].get(d, {}) for name in names))
    if not complete:
        return []
    label = "average" if len(complete) == len(primary) else f"average ({len(complete)} of {len(primary)} datasets)"
    by_metric: dict[str, list[str]] = {}
    for dataset in complete:
        by_metric.setdefault(primary[dataset], []).append(dataset)
    if len(by_metric) == 1:
        what = next(iter(by_metric))
    else:
        what = "; ".join(f"{metric}: {', '.join(datasets)}" for metric, datasets in by_metric.items())
    values = [sum(runs[name][d][primary[d]] for d in complete) / len(complete) for name in names]
    return [[label, what] + values]


def _cell(value: float, std: float | None, num_runs: float | None):
    if std is None:
        return value
    runs = f" ({int(num_runs)} runs)" if num_runs else ""
    return f"{value:.2f} ± {std:.2f}{runs}"


def render(header: list[str], rows: list[list], fmt: str) -> str:
    rows = [[f"{v:.2f}" if isinstance(v, (int, float)) else v for v in row] for row in rows]
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(header)
        writer.writerows(rows)
        return buffer.getvalue()
    return tabulate(rows, headers=header, tablefmt="github" if fmt == "md" else "simple", disable_numparse=True) + "\n"


@main_guard
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("work_dirs", nargs="+", metavar="DIR")
    parser.add_argument("--format", choices=["md", "csv", "txt"], default="md")
    parser.add_argument("--out", help="also write the table to this file")
    args = parser.parse_args(argv)

    runs = collect_runs(args.work_dirs)
    if not any(runs.values()):
        raise HarnessError(f"no result files under {' '.join(args.work_dirs)}; run harness/tasks/infer.py first")
    header, rows, missing = build_table(runs)
    text = render(header, rows, args.format)
    if args.format != "csv":
        text += legend(rows)
    sys.stdout.write(text)
    for item in missing:
        print(f"missing result: {item}", file=sys.stderr)
    if args.out:
        atomic_write_text(args.out, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
