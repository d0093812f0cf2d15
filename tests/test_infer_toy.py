"""End-to-end runs on what the repository itself holds (the toy MoE, data/toy, the toy configs), so
they never skip: infer.py's command line writes predictions and results, accuracy agrees with a
recomputation from the saved predictions, a rerun reuses the files without a model forward, and
the summary tool reads the result folder. Only the entry points' ``main(argv)`` are used."""
from __future__ import annotations

import csv
import io
import json
import shutil
import sys
from pathlib import Path

import pytest

from harness.tasks import infer

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "models" / "toy-moe"
MAX_NUM = 8
CORRUPTED = (1, 3, 6)  # items whose gold answer is made wrong, so accuracy cannot be a trivial 100
CONFIGS = {"toy_sort": "dataset_cfgs/toy-moe_sort_eval.py", "toy_sort_ppl": "dataset_cfgs/toy-moe_sort_ppl.py"}


def read_json(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


def wrong_answer(row: dict) -> dict:
    """The same item with a wrong answer in both reference columns (generation and PPL)."""
    return {**row, "answer": row["answer"] + " 0", "label": (row["label"] + 1) % len(row["choices"])}


@pytest.fixture(scope="module")
def toy_rows(tmp_path_factory) -> tuple[Path, list[dict]]:
    """A --data_root holding data/toy with some golds corrupted, and the eval rows as written."""
    root = tmp_path_factory.mktemp("data")
    shutil.copytree(REPO / "data" / "toy", root / "toy")
    path = root / "toy" / "sort" / "eval.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    rows = [wrong_answer(r) if i in CORRUPTED else r for i, r in enumerate(rows)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return root, rows


def run(config: str, work: Path, data_root: Path) -> int:
    return infer.main([str(REPO / config), "--model_path", str(MODEL), "--work_dir", str(work),
                       "--data_root", str(data_root), "--max_num", str(MAX_NUM)])


@pytest.fixture(scope="module")
def work(tmp_path_factory, toy_rows) -> Path:
    """One work dir holding a generation run and a PPL run of the toy model."""
    work = tmp_path_factory.mktemp("work")
    for config in CONFIGS.values():
        assert run(config, work, toy_rows[0]) == 0
    return work


def test_both_runs_write_predictions_and_results(work):
    for abbr in CONFIGS:
        predictions = read_json(work / "predictions" / "toy-moe" / f"{abbr}.json")
        assert sorted(predictions, key=int) == [str(i) for i in range(MAX_NUM)]
        assert "accuracy" in read_json(work / "results" / "toy-moe" / f"{abbr}.json")
        assert not (work / "predictions" / "toy-moe" / f"{abbr}.partial.jsonl").exists()
    assert list((work / "configs").glob("*_toy-moe_sort_eval.py")) and list((work / "logs").glob("*.log"))


def test_generation_accuracy_equals_a_recomputation(work, toy_rows):
    rows = toy_rows[1]
    predictions = read_json(work / "predictions" / "toy-moe" / "toy_sort.json")
    records = [predictions[str(i)] for i in range(MAX_NUM)]
    assert [r["index"] for r in records] == list(range(MAX_NUM))
    assert [r["gold"] for r in records] == [row["answer"] for row in rows[:MAX_NUM]]
    assert all(r["origin_prompt"] == row["prompt"] for r, row in zip(records, rows))
    # the config's post-processor is 'strip' and its evaluator exact match, in percent
    right = [r["prediction"].strip() == r["gold"] for r in records]
    assert read_json(work / "results" / "toy-moe" / "toy_sort.json") == {"accuracy": 100.0 * sum(right) / MAX_NUM}
    assert not any(right[i] for i in CORRUPTED)  # a corrupted gold can never be matched


def test_ppl_accuracy_equals_a_recomputation_from_the_label_scores(work, toy_rows):
    rows = toy_rows[1]
    predictions = read_json(work / "predictions" / "toy-moe" / "toy_sort_ppl.json")
    records = [predictions[str(i)] for i in range(MAX_NUM)]
    assert [r["gold"] for r in records] == [row["label"] for row in rows[:MAX_NUM]]
    for record, row in zip(records, rows):
        scores = {int(label): s for label, s in record["label_scores"].items()}
        assert sorted(scores) == list(range(len(row["choices"])))
        # the choice is the highest log-likelihood; _norm divides by the continuation's characters
        assert record["prediction"] == max(scores, key=lambda k: scores[k]["loglikelihood"])
        assert record["prediction_norm"] == max(scores, key=lambda k: scores[k]["loglikelihood"] / scores[k]["num_chars"])
    accuracy = 100.0 * sum(r["prediction"] == r["gold"] for r in records) / MAX_NUM
    accuracy_norm = 100.0 * sum(r["prediction_norm"] == r["gold"] for r in records) / MAX_NUM
    assert read_json(work / "results" / "toy-moe" / "toy_sort_ppl.json") == {
        "accuracy": accuracy, "accuracy_norm": accuracy_norm}


def test_a_rerun_reuses_the_files_without_a_model_forward(work, toy_rows, tmp_path, monkeypatch):
    from transformers.models.mixtral.modeling_mixtral import MixtralModel

    before = {p: p.read_bytes() for p in (work / "predictions").rglob("*.json")}
    results = {p: read_json(p) for p in (work / "results").rglob("*.json")}

    class ForwardCalled(Exception):
        pass

    def no_forward(*args, **kwargs):
        raise ForwardCalled("the rerun ran the model; finished datasets must be reused")

    # the decoder stack: generation, packed scoring and KV-cache scoring all go through it
    monkeypatch.setattr(MixtralModel, "forward", no_forward)
    for config in CONFIGS.values():
        assert run(config, work, toy_rows[0]) == 0
        with pytest.raises(ForwardCalled):  # the patch bites: a fresh work dir needs the model
            run(config, tmp_path / "fresh", toy_rows[0])
    assert {p: p.read_bytes() for p in (work / "predictions").rglob("*.json")} == before
    assert {p: read_json(p) for p in (work / "results").rglob("*.json")} == results


def test_the_summary_of_the_work_dir_averages_each_datasets_accuracy(work, capsys):
    sys.path.insert(0, str(REPO / "tools"))
    import summarize

    gen = read_json(work / "results" / "toy-moe" / "toy_sort.json")
    ppl = read_json(work / "results" / "toy-moe" / "toy_sort_ppl.json")
    capsys.readouterr()
    assert summarize.main([str(work), "--format", "csv"]) == 0
    out, err = capsys.readouterr()
    rows = list(csv.reader(io.StringIO(out)))
    assert rows == [
        ["dataset", "metric", work.name],
        ["toy_sort", "accuracy", f"{gen['accuracy']:.2f}"],
        ["toy_sort_ppl", "accuracy", f"{ppl['accuracy']:.2f}"],
        ["toy_sort_ppl", "accuracy_norm", f"{ppl['accuracy_norm']:.2f}"],
        ["average", "accuracy", f"{(gen['accuracy'] + ppl['accuracy']) / 2:.2f}"],  # not the _norm row
    ]
    assert err == ""
