"""The comparison table: one row per method and budget, read back from the units' saved files.

Columns: each accuracy benchmark's metric, their average, each perplexity corpus's metric (lower is
better, never averaged), memory ratio and decode speed-up (``efficiency.json``), the wall time of
the row (plan + evaluations + efficiency, as first measured) and its status. Repeated seeds show
``mean ± sample std``. A failed part shows as ``failed`` in its column, its one-line error in the
status; a part not run yet shows as ``-``.
"""
from __future__ import annotations

import statistics

from harness.compare.runner import STATUS, Comparison, Entry, read_json
from harness.io import atomic_write_json, atomic_write_text, results_path
from harness.search.fitness import primary_metric

MISSING, FAILED = "-", "failed"


def metric_of(metrics: dict, wanted: str | None) -> float:
    return primary_metric(metrics, wanted)


def entry_values(comparison: Comparison, entry: Entry) -> dict:
    """{column: list of per-unit values (None: missing)} plus errors and seconds of one entry."""
    abbr = comparison.lm.abbr
    out = {"label": entry.label, "budget": entry.budget, "size": entry.size, "values": {}, "errors": [],
           "seconds": 0.0, "complete": True}
    for unit in entry.units:
        status = read_json(unit.folder / STATUS) or {}
        errors = status.get("errors") or {}
        out["errors"] += [f"{part}: {message}" for part, message in errors.items()
                          if f"{part}: {message}" not in out["errors"]]  # seeds failing alike: once
        out["seconds"] += sum((status.get("seconds") or {}).values())
        for bench in comparison.suite.benchmarks:
            part = f"benchmark:{bench.abbr}"
            metrics = read_json(results_path(unit.folder, abbr, bench.abbr)) if part in status.get("seconds", {}) else None
            value = FAILED if part in errors or "plan" in errors else (
                metric_of(metrics, bench.metric or ("token_perplexity" if bench.is_perplexity else None))
                if metrics else None)
            out["values"].setdefault(bench.abbr, []).append(value)
        eff = read_json(results_path(unit.folder, abbr, "efficiency")) if "efficiency" in status.get("seconds", {}) else None
        for key in ("memory_ratio", "speedup"):
            value = FAILED if "efficiency" in errors or "plan" in errors else (eff or {}).get(key)
            out["values"].setdefault(key, []).append(value)
    return out


def aggregate(values: list) -> tuple[float | str | None, float | None]:
    """(mean, sample std or None) of the units' values; a failed or missing one decides the cell."""
    if any(v == FAILED for v in values):
        return FAILED, None
    if any(v is None for v in values):
        return None, None
    if len(values) == 1:
        return float(values[0]), None
    return statistics.fmean(values), statistics.stdev(values)


def table_rows(comparison: Comparison) -> list[dict]:
    """Machine-readable rows (also DIR/comparison.json): cells as (mean, std) per column."""
    accuracy = [b.abbr for b in comparison.suite.accuracy_benchmarks]
    rows = []
    for entry in comparison.entries:
        raw = entry_values(comparison, entry)
        cells = {column: aggregate(values) for column, values in raw["values"].items()}
        if accuracy and all(isinstance(cells[a][0], float) for a in accuracy):
            per_unit = [statistics.fmean(raw["values"][a][i] for a in accuracy) for i in range(len(entry.units))]
            cells["average"] = aggregate(per_unit)
        else:
            cells["average"] = (FAILED if any(cells[a][0] == FAILED for a in accuracy) else None, None)
        done = all(cell[0] is not None for cell in cells.values())
        rows.append({"label": raw["label"], "budget": raw["budget"], "size": raw["size"], "cells": cells,
                     "errors": raw["errors"], "seconds": raw["seconds"], "complete": done,
                     "units": [str(u.folder.relative_to(comparison.work_dir)) for u in entry.units]})
    return rows


def _cell(cell, digits: int = 2) -> str:
    mean, std = cell
    if mean is None:
        return MISSING
    if mean == FAILED:
        return FAILED
    return f"{mean:.{digits}f}" if std is None else f"{mean:.{digits}f} ± {std:.{digits}f}"


def markdown(comparison: Comparison, rows: list[dict]) -> str:
    suite = comparison.suite
    accuracy = [b.abbr for b in suite.accuracy_benchmarks]
    perplexity = [b.abbr for b in suite.perplexity_benchmarks]
    header = ["method", "budget", *accuracy, "average", *[f"{p} (ppl)" for p in perplexity], "memory ratio",
              "speed-up", "wall s", "status"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        c = row["cells"]
        status = "; ".join(row["errors"]) if row["errors"] else ("ok" if row["complete"] else "not finished")
        values = [row["label"], row["size"] or "-", *[_cell(c[a]) for a in accuracy], _cell(c["average"]),
                  *[_cell(c[p]) for p in perplexity], _cell(c["memory_ratio"], 3), _cell(c["speedup"], 2),
                  f"{row['seconds']:.1f}", status.replace("|", "/")]
        lines.append("| " + " | ".join(values) + " |")
    caps = ", ".join(f"{b.abbr} {task_size(comparison, b.abbr)}" for b in suite.benchmarks)
    metrics = ", ".join(f"{b.abbr}: {b.metric or ('token_perplexity' if b.is_perplexity else 'first metric')}"
                        for b in suite.benchmarks)
    shared = ", ".join(f"{k} {v:.0f} s" for k, v in comparison.timings.items())
    lines += ["", f"Items per benchmark: {caps}. Metrics: {metrics}.",
              "Memory ratio: model bytes / the full model's; speed-up: decode tokens/s over the full model's "
              f"(batch {suite.efficiency['batch_sizes'][0]}). Wall s: plan + evaluations + efficiency of the row, "
              "as first measured (a resumed part keeps its time)."]
    if shared:
        lines.append(f"Shared parts: {shared}.")
    return "\n".join(lines) + "\n"


def task_size(comparison: Comparison, abbr: str) -> int:
    return next(len(t.data.test_rows) for t in comparison.tasks if t.abbr == abbr)


def write_table(comparison: Comparison) -> tuple[str, list[dict]]:
    """DIR/comparison.md and DIR/comparison.json, atomically; returns the markdown and the rows."""
    rows = table_rows(comparison)
    text = markdown(comparison, rows)
    atomic_write_text(comparison.work_dir / "comparison.md", text)
    atomic_write_json(comparison.work_dir / "comparison.json", {"rows": rows, "timings": comparison.timings})
    return text, rows
