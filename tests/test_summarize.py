"""tools/summarize.py on crafted result folders: the average row takes one metric per dataset (its
primary metric), against sums written out by hand."""
from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
import summarize  # noqa: E402


def write_results(root: Path, run: str, results: dict[str, dict], model: str = "m") -> Path:
    folder = root / run / "results" / model
    folder.mkdir(parents=True, exist_ok=True)
    for dataset, metrics in results.items():
        (folder / f"{dataset}.json").write_text(json.dumps(metrics), encoding="utf-8")
    return root / run


def table(capsys, *dirs) -> tuple[list[list[str]], str]:
    capsys.readouterr()
    assert summarize.main([str(d) for d in dirs] + ["--format", "csv"]) == 0
    out, err = capsys.readouterr()
    return list(csv.reader(io.StringIO(out))), err


FULL = {
    "boolq": {"accuracy": 80.0, "accuracy_norm": 20.0},   # PPL: primary accuracy, not its _norm twin
    "squad": {"em": 40.0, "f1": 70.0},
    "xsum": {"rouge1": 30.0, "rouge2": 10.0, "rougeL": 25.0},
}
PRUNED = {
    "boolq": {"accuracy": 60.0, "accuracy_norm": 90.0},
    "squad": {"em": 10.0, "f1": 50.0},
    "xsum": {"rouge1": 20.0, "rouge2": 5.0, "rougeL": 15.0},
}


def test_average_takes_each_datasets_first_metric(tmp_path, capsys):
    rows, err = table(capsys, write_results(tmp_path, "full", FULL), write_results(tmp_path, "pruned", PRUNED))
    assert rows[0] == ["dataset", "metric", "full", "pruned"]
    assert rows[1:-1] == [
        ["boolq", "accuracy", "80.00", "60.00"], ["boolq", "accuracy_norm", "20.00", "90.00"],
        ["squad", "em", "40.00", "10.00"], ["squad", "f1", "70.00", "50.00"],
        ["xsum", "rouge1", "30.00", "20.00"], ["xsum", "rouge2", "10.00", "5.00"], ["xsum", "rougeL", "25.00", "15.00"],
    ]
    # by hand: (80 + 40 + 30) / 3 = 50 and (60 + 10 + 20) / 3 = 30; the mean of all seven rows would be
    # 275/7 = 39.29 and 245/7 = 35.00
    assert rows[-1] == ["average", "accuracy: boolq; em: squad; rouge1: xsum", "50.00", "30.00"]
    assert err == ""


def test_a_results_file_may_name_its_primary_metric(tmp_path, capsys):
    full = {**FULL, "squad": {"em": 40.0, "f1": 70.0, "primary_metric": "f1"}}
    rows, _ = table(capsys, write_results(tmp_path, "full", full))
    assert all(r[1] != "primary_metric" for r in rows)  # a name, not a metric row
    # by hand: (80 + 70 + 30) / 3 = 60
    assert rows[-1] == ["average", "accuracy: boolq; f1: squad; rouge1: xsum", "60.00"]


def test_one_metric_name_for_all_datasets_is_named_once(tmp_path, capsys):
    work = write_results(tmp_path, "w", {"a": {"accuracy": 10.0, "accuracy_norm": 99.0}, "b": {"accuracy": 40.0}})
    rows, _ = table(capsys, work)
    assert rows[-1] == ["average", "accuracy", "25.00"]


def test_a_one_dataset_table_has_no_average_row(tmp_path, capsys):
    rows, err = table(capsys, write_results(tmp_path, "full", {"squad": {"em": 40.0, "f1": 70.0}}),
                      write_results(tmp_path, "pruned", {"squad": {"em": 10.0, "f1": 50.0}}))
    assert rows == [["dataset", "metric", "full", "pruned"], ["squad", "em", "40.00", "10.00"],
                    ["squad", "f1", "70.00", "50.00"]]
    assert err == ""


def test_the_average_covers_only_datasets_every_run_has(tmp_path, capsys):
    pruned = {k: v for k, v in PRUNED.items() if k != "xsum"}
    rows, err = table(capsys, write_results(tmp_path, "full", FULL), write_results(tmp_path, "pruned", pruned))
    assert ["xsum", "rouge1", "30.00", "missing"] in rows
    # by hand: (80 + 40) / 2 = 60 and (60 + 10) / 2 = 35
    assert rows[-1] == ["average (2 of 3 datasets)", "accuracy: boolq; em: squad", "60.00", "35.00"]
    assert "missing result: pruned: xsum rouge1" in err


def test_repeated_runs_are_averaged_by_their_means(tmp_path, capsys):
    random = {"boolq": {"accuracy": 50.0, "accuracy_norm": 1.0, "accuracy_std": 4.0, "accuracy_norm_std": 1.0,
                        "num_runs": 3},
              "squad": {"em": 20.0, "f1": 30.0, "em_std": 2.0, "f1_std": 3.0, "num_runs": 3}}
    full = {k: FULL[k] for k in ("boolq", "squad")}
    rows, err = table(capsys, write_results(tmp_path, "full", full), write_results(tmp_path, "random", random))
    assert ["boolq", "accuracy", "80.00", "50.00 ± 4.00 (3 runs)"] in rows
    # by hand: (80 + 40) / 2 = 60 and (50 + 20) / 2 = 35
    assert rows[-1] == ["average", "accuracy: boolq; em: squad", "60.00", "35.00"]
    assert err == ""


def test_the_primary_metric_is_the_one_a_search_maximises():
    from harness.search.fitness import primary_metric as fitness_metric

    for metrics in [FULL["boolq"], FULL["xsum"], {"em": 3.0, "f1": 4.0}, {"accuracy": 5.0, "accuracy_std": 1.0}]:
        assert metrics[summarize.primary_metric(metrics)] == fitness_metric(metrics)


def test_a_primary_metric_the_file_lacks_is_a_one_line_error(tmp_path, capsys):
    work = write_results(tmp_path, "w", {"a": {"em": 1.0, "primary_metric": "f1"}, "b": {"em": 2.0}})
    assert summarize.main([str(work)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "a.json: primary_metric 'f1' is not among its metrics ['em']" in err


def test_a_broken_results_file_is_a_one_line_error(tmp_path, capsys):
    work = write_results(tmp_path, "w", {"a": {"em": 1.0}})
    (work / "results" / "m" / "b.json").write_text("{not json")
    assert summarize.main([str(work)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "b.json is not a results file" in err


def test_perplexity_and_efficiency_rows_stay_out_of_the_average(tmp_path, capsys):
    ppl = {"loss": 2.0, "token_perplexity": 7.389, "word_perplexity": 20.0, "byte_perplexity": 1.5,
           "bits_per_byte": 0.585, "primary_metric": "token_perplexity"}
    eff = {"params": 1000, "memory_ratio": 1.0, "speedup": 1.0, "details": {"model": {"params": 1000}}}
    full = write_results(tmp_path, "full", {**FULL, "c4_ppl": ppl, "efficiency": eff})
    pruned_eff = {"params": 600, "memory_ratio": 0.6, "speedup": 1.4, "details": {}}
    pruned = write_results(tmp_path, "pruned", {**PRUNED, "c4_ppl": {**ppl, "token_perplexity": 9.0},
                                                "efficiency": pruned_eff})
    rows, _ = table(capsys, full, pruned)
    by_key = {(r[0], r[1]): r[2:] for r in rows[1:]}
    assert by_key[("c4_ppl", "token_perplexity")] == ["7.39", "9.00"]
    assert by_key[("efficiency", "memory_ratio")] == ["1.00", "0.60"]
    assert by_key[("efficiency", "speedup")] == ["1.00", "1.40"]
    assert ("efficiency", "details") not in by_key
    # the average is still boolq accuracy, squad em and xsum rouge1 only
    assert rows[-1] == ["average", "accuracy: boolq; em: squad; rouge1: xsum",
                        f"{(80 + 40 + 30) / 3:.2f}", f"{(60 + 10 + 20) / 3:.2f}"]
