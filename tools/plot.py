"""Accuracy against efficiency across result folders, in the seed papers' figure style.

    python tools/plot.py DIR [DIR ...] --x memory_ratio|speedup|active_params [--y average|DATASET]
        [--out plot.png] [--repeat_pattern REGEX]

One point per run, labelled with its name: x from the run's ``results/<model>/efficiency.json``
(``harness/tasks/efficiency.py``), y the summary's average (the mean of each dataset's primary
metric over the accuracy datasets every run has, as ``tools/summarize.py``) or one dataset's
primary metric. Runs whose names differ only by ``--repeat_pattern`` (default: a trailing
``_seed<N>``/``-seed<N>``/``_run<N>``) are repeated runs (random pruning seeds): one point at their
mean with standard-deviation error bars. The full model (memory ratio and speed-up 1, no plan) is
drawn as a dashed reference line. Writes the PNG and an SVG beside it. A folder lacking the
requested metric is an error naming it: no point is dropped silently.
"""
from __future__ import annotations

import argparse
import io
import re
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import summarize  # noqa: E402

from harness.cli import main_guard  # noqa: E402
from harness.errors import HarnessError  # noqa: E402
from harness.io import atomic_write_bytes  # noqa: E402

X_METRICS = {"memory_ratio": "memory ratio (model bytes / full model)", "speedup": "decode speed-up over the full model",
             "active_params": "active parameters per token"}
REPEAT = r"[-_](?:seed|run)\d+$"


def y_values(runs: dict, y: str) -> dict[str, float]:
    """Per run: the summary's average, or the primary metric of dataset ``y``."""
    if y != "average":
        lacking = [name for name, data in runs.items() if y not in data]
        if lacking:
            raise HarnessError(f"--y {y}: no results/<model>/{y}.json in {', '.join(lacking)}; run that dataset there "
                               "or drop those folders")
        return {name: data[y][summarize.primary_metric(data[y])] for name, data in runs.items()}
    _, rows, _ = summarize.build_table(runs)
    average = [row for row in rows if str(row[0]).startswith("average")]
    if not average:
        raise HarnessError("--y average needs at least two accuracy datasets that every folder has; pass --y DATASET")
    return dict(zip(runs, average[0][2:]))


def x_values(runs: dict, x: str) -> dict[str, float]:
    lacking = [name for name, data in runs.items() if x not in data.get(summarize.EFFICIENCY, {})]
    if lacking:
        raise HarnessError(f"--x {x}: no {x} in results/<model>/efficiency.json of {', '.join(lacking)}; run "
                           "harness/tasks/efficiency.py with --work_dir on those folders")
    return {name: data[summarize.EFFICIENCY][x] for name, data in runs.items()}


def points(xs: dict, ys: dict, pattern: str) -> list[tuple[str, float, float, float, float, int]]:
    """(label, x, y, x std, y std, number of runs) per group of repeated runs."""
    groups: dict[str, list[str]] = {}
    for name in xs:
        groups.setdefault(re.sub(pattern, "", name), []).append(name)
    out = []
    for label, names in groups.items():
        px, py = [xs[n] for n in names], [ys[n] for n in names]
        spread = (statistics.stdev(px), statistics.stdev(py)) if len(names) > 1 else (0.0, 0.0)
        out.append((label, statistics.mean(px), statistics.mean(py), *spread, len(names)))
    return out


def is_full_model(data: dict) -> bool:
    eff = data.get(summarize.EFFICIENCY, {})
    return eff.get("memory_ratio") == 1.0 and eff.get("speedup", 1.0) == 1.0


def draw(pts, full_y: float | None, x: str, y: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for label, px, py, sx, sy, n in pts:
        ax.errorbar(px, py, xerr=sx or None, yerr=sy or None, fmt="o", capsize=3)
        ax.annotate(label if n == 1 else f"{label} ({n} runs)", (px, py), textcoords="offset points", xytext=(5, 5),
                    fontsize=8)
    if full_y is not None:
        ax.axhline(full_y, linestyle="--", color="gray", label="full model")
        ax.legend(loc="lower right")
    ax.set_xlabel(X_METRICS[x])
    ax.set_ylabel("average accuracy" if y == "average" else y)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig, plt


@main_guard
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("work_dirs", nargs="+", metavar="DIR")
    parser.add_argument("--x", choices=sorted(X_METRICS), required=True)
    parser.add_argument("--y", default="average", help="'average' or a dataset abbr (its primary metric)")
    parser.add_argument("--out", default="plot.png", help="PNG path; the SVG goes beside it")
    parser.add_argument("--repeat_pattern", default=REPEAT, help="regex removed from run names to group repeats")
    args = parser.parse_args(argv)
    if not args.out.endswith(".png"):
        raise HarnessError(f"--out {args.out} must end in .png (the SVG is written beside it)")
    runs = summarize.collect_runs(args.work_dirs)
    xs, ys = x_values(runs, args.x), y_values(runs, args.y)
    full = [name for name, data in runs.items() if is_full_model(data)]
    fig, plt = draw(points(xs, ys, args.repeat_pattern), ys[full[0]] if full else None, args.x, args.y)
    for suffix in (".png", ".svg"):
        buffer = io.BytesIO()
        fig.savefig(buffer, format=suffix[1:], dpi=150)
        atomic_write_bytes(Path(args.out).with_suffix(suffix), buffer.getvalue())
    plt.close(fig)
    print(f"wrote {args.out} and {Path(args.out).with_suffix('.svg')} ({len(xs)} runs)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
