"""tools/plot.py on crafted result folders: one point per run (repeated seeds as mean and std),
PNG and SVG written, folders lacking the metric named."""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
import plot  # noqa: E402


def run_folder(root: Path, name: str, boolq: float, rte: float, efficiency: dict | None) -> Path:
    folder = root / name / "results" / "m"
    folder.mkdir(parents=True)
    (folder / "boolq.json").write_text(json.dumps({"accuracy": boolq}))
    (folder / "rte.json").write_text(json.dumps({"accuracy": rte}))
    if efficiency is not None:
        (folder / "efficiency.json").write_text(json.dumps({**efficiency, "details": {}}))
    return root / name


@pytest.fixture
def folders(tmp_path):
    return [
        run_folder(tmp_path, "full", 80, 70, {"memory_ratio": 1.0, "speedup": 1.0, "active_params": 100}),
        run_folder(tmp_path, "random_seed0", 60, 50, {"memory_ratio": 0.5, "speedup": 1.2, "active_params": 90}),
        run_folder(tmp_path, "random_seed1", 64, 58, {"memory_ratio": 0.5, "speedup": 1.4, "active_params": 90}),
        run_folder(tmp_path, "searched", 75, 69, {"memory_ratio": 0.5, "speedup": 1.3, "active_params": 90}),
    ]


def test_points_average_repeated_runs(folders):
    runs = plot.summarize.collect_runs([str(f) for f in folders])
    pts = {p[0]: p[1:] for p in plot.points(plot.x_values(runs, "speedup"), plot.y_values(runs, "average"), plot.REPEAT)}
    assert pts["full"] == (1.0, 75.0, 0.0, 0.0, 1)
    assert pts["searched"] == (1.3, 72.0, 0.0, 0.0, 1)
    label = pts["random"]
    assert label[0] == pytest.approx(1.3) and label[1] == pytest.approx(58.0)
    assert label[2] == pytest.approx(statistics.stdev([1.2, 1.4])) and label[3] == pytest.approx(statistics.stdev([55, 61]))
    assert label[4] == 2


def test_plot_writes_png_and_svg(folders, tmp_path):
    out = tmp_path / "figs" / "acc_vs_memory.png"
    out.parent.mkdir()
    assert plot.main([str(f) for f in folders] + ["--x", "memory_ratio", "--out", str(out)]) == 0
    import matplotlib.image

    assert matplotlib.image.imread(out).shape[2] in (3, 4)
    svg = out.with_suffix(".svg").read_text()
    assert svg.startswith("<?xml") and "full model" in svg and "random (2 runs)" in svg


def test_a_folder_without_the_metric_is_named(folders, tmp_path, capsys):
    bare = run_folder(tmp_path, "no_efficiency", 50, 50, None)
    assert plot.main([str(f) for f in folders] + [str(bare), "--x", "speedup", "--out", str(tmp_path / "p.png")]) == 2
    err = capsys.readouterr().err
    assert "no speedup in results/<model>/efficiency.json of no_efficiency" in err
    assert not (tmp_path / "p.png").exists()
    assert plot.main([str(f) for f in folders] + ["--x", "speedup", "--y", "squad", "--out", str(tmp_path / "p.png")]) == 2
    assert "--y squad: no results/<model>/squad.json in full, random_seed0" in capsys.readouterr().err
