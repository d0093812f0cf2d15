"""Average accuracy against memory ratio and against speed-up, one point per method and budget.

Repeated seeds are one point at their mean with sample-std error bars (as ``tools/plot.py`` draws
them); the full model is a dashed reference line; rows lacking a number (failed, not run) are left
out and listed in the legend's title so no point disappears silently.
"""
from __future__ import annotations

import io
from pathlib import Path

from harness.io import atomic_write_bytes

AXES = {"memory_ratio": "memory ratio (model bytes / full model)", "speedup": "decode speed-up over the full model"}
MARKERS = "os^Dv<>phX*"


def draw(rows: list[dict], x: str, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    budgets = sorted({r["budget"] for r in rows if r["budget"] is not None})
    left_out = []
    for row in rows:
        (px, sx), (py, sy) = row["cells"][x], row["cells"]["average"]
        if row["budget"] is None:
            if isinstance(py, float):
                ax.axhline(py, linestyle="--", color="gray", label=f"full model ({py:.1f})")
            continue
        if not (isinstance(px, float) and isinstance(py, float)):
            left_out.append(f"{row['label']} {row['size']}")
            continue
        marker = MARKERS[budgets.index(row["budget"]) % len(MARKERS)]
        ax.errorbar(px, py, xerr=sx, yerr=sy, fmt=marker, capsize=3)
        ax.annotate(f"{row['label']} {row['size']}", (px, py), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel(AXES[x])
    ax.set_ylabel("average accuracy")
    ax.grid(alpha=0.3)
    title = "marker per budget: " + ", ".join(f"{MARKERS[i % len(MARKERS)]} B={b}" for i, b in enumerate(budgets))
    ax.set_title(title, fontsize=8)
    if ax.get_legend_handles_labels()[0] or left_out:
        ax.legend(loc="lower right", fontsize=7, title=("not plotted: " + ", ".join(left_out))[:120] if left_out else None,
                  title_fontsize=6)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=130)
    plt.close(fig)
    return atomic_write_bytes(path, buffer.getvalue())


def write_plots(rows: list[dict], work_dir: Path) -> list[Path]:
    return [draw(rows, "memory_ratio", work_dir / "accuracy_vs_memory.png"),
            draw(rows, "speedup", work_dir / "accuracy_vs_speedup.png")]
