"""tools/summarize.py says what each metric means (issue 19): a legend under md and txt tables."""
from __future__ import annotations

import sys
from pathlib import Path

from tests.test_summarize import write_results

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
import summarize  # noqa: E402


def run(capsys, *argv) -> str:
    capsys.readouterr()
    assert summarize.main([str(a) for a in argv]) == 0
    return capsys.readouterr().out


def test_each_metric_shown_gets_its_unit_and_direction(tmp_path, capsys):
    a = write_results(tmp_path, "a", {"squad": {"em": 40.0, "f1": 70.0, "HasAns_f1": 60.0},
                                      "c4": {"token_perplexity": 12.0, "primary_metric": "token_perplexity"},
                                      "efficiency": {"memory_ratio": 0.5, "decode_speedup_bs8": 1.4},
                                      "x": {"mystery": 3.0}})
    out = run(capsys, a)
    legend = dict(line[2:].split(": ", 1) for line in out.split("\nMetrics:\n", 1)[1].splitlines())
    assert legend == {
        "decode_speedup_bs8": "decode tokens/s / the uncompressed model's at batch size 8, higher is faster",
        "memory_ratio": "model bytes / the uncompressed model's, lower is smaller",
        "HasAns_f1": "on questions with an answer, token-overlap F1 with the best reference, % (0-100), higher is better",
        "em": "exact match after answer normalisation, % (0-100), higher is better",
        "f1": "token-overlap F1 with the best reference, % (0-100), higher is better",
        "token_perplexity": "exp(loss), lower is better",
        "mystery": "not a harness metric; see the evaluator that wrote it",
        "average": "mean over datasets of each one's primary metric (named in the row)",
    }


def test_one_dataset_md_table_has_a_legend_and_no_average_and_csv_stays_plain(tmp_path, capsys):
    full = write_results(tmp_path, "full", {"toy_sort": {"accuracy": 100.0}})
    rand = write_results(tmp_path, "random", {"toy_sort": {"accuracy": 8.4, "accuracy_std": 4.68, "num_runs": 5}})
    out = run(capsys, full, rand)
    assert "average" not in out
    assert out.endswith("Metrics:\n- accuracy: items whose prediction equals the gold answer (likelihood tasks: the "
                        "gold choice ranked first), % (0-100), higher is better\n- a ± b (n runs): mean and sample "
                        "standard deviation over n seeded runs (random pruning)\n")
    assert "Metrics" not in run(capsys, full, rand, "--format", "csv")
    assert "Metrics:\n- accuracy" in run(capsys, full, "--format", "txt")


def test_options_are_not_abbreviated(tmp_path, capsys):
    import pytest

    full = write_results(tmp_path, "full", {"toy_sort": {"accuracy": 100.0}})
    with pytest.raises(SystemExit):
        summarize.main([str(full), "--form", "csv"])
    assert "unrecognized arguments: --form" in capsys.readouterr().err
