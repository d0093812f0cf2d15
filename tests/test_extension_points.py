"""A new method, search or inferencer is one registered class: the task runners pick it up by name."""
from __future__ import annotations

import json

import pytest

from harness.compress import load_plan
from harness.compress.plan import CompressionPlan
from harness.errors import HarnessError
from harness.methods.base import Method
from harness.openicl.inferencers.base import Inferencer, fingerprint
from harness.pipeline import EvalTask
from harness.registry import INFERENCERS, METHODS, SEARCHES
from harness.search.base import Search
from harness.search.evolution import best_slots
from harness.tasks import prune_baseline, search
from tests.test_search import REPO, toy_config


@pytest.fixture
def registered():
    """Register test components and remove them afterwards (registries are process-wide)."""
    added = []

    def register(registry, name, cls):
        registry.register_module(name=name, module=cls, force=True)
        added.append((registry, name))
        return cls

    yield register
    for registry, name in added:
        registry.module_dict.pop(name, None)


class KeepLast(Method):
    """Keep the last B experts of every MoE layer."""

    def build(self, inputs):
        first = inputs.shape.num_experts - inputs.budget
        kept = {layer: list(range(first, inputs.shape.num_experts)) for layer in inputs.shape.moe_layers}
        return CompressionPlan.from_kept(kept, inputs.shape.num_experts, num_layers=inputs.shape.num_layers)


def test_a_new_method_runs_through_the_task_by_name(tmp_path, tiny_mixtral_path, registered):
    registered(METHODS, "keep_last", KeepLast)
    work = tmp_path / "keep_last"
    argv = [toy_config(tmp_path), "--model_path", str(tiny_mixtral_path), "--budget", "3", "--method", "keep_last",
            "--work_dir", str(work), "--data_root", str(REPO / "data")]
    assert prune_baseline.main(argv) == 0
    plan = load_plan(work / "plan.safetensors")
    assert all(plan.kept_experts(layer) == [5, 6, 7] for layer in plan.layers)
    assert plan.metadata["method"] == "keep_last" and plan.metadata["budget"] == 3
    assert (work / "results/tiny-mixtral/toy_sort_ppl.json").is_file()


def test_an_unknown_method_lists_the_registered_ones_before_writing(tmp_path, tiny_mixtral_path, capsys):
    work = tmp_path / "nope"
    argv = [toy_config(tmp_path), "--model_path", str(tiny_mixtral_path), "--budget", "3", "--method", "nope",
            "--work_dir", str(work), "--data_root", str(REPO / "data")]
    assert prune_baseline.main(argv) == 2
    err = capsys.readouterr().err
    assert "unknown compression method type 'nope'" in err and "frequency" in err and "keep_first" in err
    assert not work.exists()


class FirstCandidates(Search):
    """Evaluate ``evals`` keep-first-style prunings that shift by one expert each; output the best."""

    def __init__(self, evals: int = 3, seed: int = 0):
        self.evals, self.seed = evals, seed

    def settings(self):
        return {"evals": self.evals, "seed": self.seed}

    def run(self, space, ledger, fitness, on_result=None):
        for slot in range(self.evals):
            if slot in ledger.finished() or not ledger.claim(slot):
                continue
            kept = [[(slot + i) % space.num_experts for i in range(space.budget)] for _ in space.groups]
            candidate = space.pruning(kept)
            value, metrics = fitness(candidate)
            ledger.record(slot, {"fitness": value, "metrics": metrics, "candidate": candidate.to_dict()})
        return ledger.finished()

    def finalists(self, records):
        return {"best": best_slots(records, range(self.evals), 1)}


def test_a_new_search_runs_through_the_task_by_name(tmp_path, tiny_mixtral_path, registered):
    registered(SEARCHES, "first_candidates", FirstCandidates)
    work = tmp_path / "searched"
    argv = [toy_config(tmp_path), "--model_path", str(tiny_mixtral_path), "--budget", "4", "--search",
            "first_candidates", "--work_dir", str(work), "--data_root", str(REPO / "data"), "--groups", "layer",
            "--train_cfg", toy_config(tmp_path, "train", 8, "train.py")]
    assert search.main(argv) == 0
    records = {int(p.stem): json.loads(p.read_text()) for p in (work / "search" / "evals").glob("*.json")}
    assert sorted(records) == [0, 1, 2]
    best = max(records, key=lambda s: (records[s]["fitness"], -s))
    plan = load_plan(work / "best_plan.safetensors")
    assert plan.metadata["slot"] == best and plan.metadata["method"] == "first_candidates_search"
    assert all(plan.kept_experts(layer) == sorted((best + i) % 8 for i in range(4)) for layer in plan.layers)
    assert json.loads((work / "search/settings.json").read_text())["search"] == "first_candidates"


def test_an_unknown_search_is_refused_before_writing(tmp_path, tiny_mixtral_path, capsys):
    work = tmp_path / "nope"
    argv = [toy_config(tmp_path), "--model_path", str(tiny_mixtral_path), "--budget", "4", "--search", "nope",
            "--work_dir", str(work), "--data_root", str(REPO / "data")]
    assert search.main(argv) == 2
    assert "unknown search type 'nope'" in capsys.readouterr().err and not work.exists()


class PromptLength(Inferencer):
    """Predicts the number of tokens of each prompt: an inferencer in a dozen lines."""

    def build_items(self, inputs):
        return [inputs.render(inputs.template.render(row, ex), "gen") for row, ex in zip(inputs.rows, inputs.examples)]

    def fingerprint(self, model, items):
        return fingerprint("length", model.identity, items)

    def infer(self, model, items, store, desc="", select=None):
        todo, _ = self.unfinished([1] * len(items), store, select)
        store.add({i: {"origin_prompt": items[i], "prediction": str(len(model.encode(items[i])))} for i in todo})


def test_a_new_inferencer_runs_through_eval_task(tmp_path, registered):
    from tests.test_model_api import TableBackend

    registered(INFERENCERS, "PromptLength", PromptLength)
    rows = [{"text": "ab", "n": "4"}, {"text": "abcd", "n": "5"}]  # "x: " + text + " ?" is 3 + len + 2 chars
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = EvalTask(dict(abbr="lengths", reader_cfg=dict(type="jsonl", path=str(tmp_path / "rows.jsonl"),
                                                         input_columns=["text"], output_column="n"),
                         infer_cfg=dict(prompt_template=dict(template="x: {text} ?"),
                                        inferencer=dict(type="PromptLength"))))
    backend = TableBackend({})
    assert task.run(backend, tmp_path / "work") == {"accuracy": 0.0}  # 7 and 9 characters, not 4 and 5
    predictions = json.loads((tmp_path / "work/predictions/table/lengths.json").read_text())
    assert [predictions[k]["prediction"] for k in ("0", "1")] == ["7", "9"]


def test_registries_refuse_unknown_names_listing_known_ones():
    from harness.methods.base import method

    with pytest.raises(HarnessError, match="registered: .*frequency.*keep_first.*random"):
        method("no_such_method")
