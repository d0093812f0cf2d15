"""On the committed toy MoE, a searched budget-4 plan beats random pruning on the held-out eval split."""
import json
from pathlib import Path

import pytest

from harness.tasks import infer, random_prune, search

REPO = Path(__file__).resolve().parents[1]
TOY = REPO / "models" / "toy-moe"



def subset_config(tmp_path, name, source, first, count):
    """A dataset config of the repository restricted to ``count`` items (fast test runs)."""
    text = (REPO / "dataset_cfgs" / source).read_text().replace("'../model_cfgs/toy-moe.py'", repr(str(REPO / "model_cfgs/toy-moe.py")))
    text = text.replace("subset=dict(range=[0, 100]),", "")
    text = text.replace("infer_cfg=dict(", f"subset=dict(range=[{first}, {first + count}]),\n        infer_cfg=dict(", 1)
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def metric(work_dir, abbr):
    return json.loads((Path(work_dir) / "results" / "toy-moe" / f"{abbr}.json").read_text())["accuracy"]


def test_searched_plan_beats_random_pruning_on_sort(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # the model config's path is relative to the repository root
    eval_cfg = subset_config(tmp_path, "eval.py", "toy-moe_sort_eval.py", 0, 100)
    train_cfg = subset_config(tmp_path, "train.py", "toy-moe_sort_train.py", 0, 50)
    settings = tmp_path / "search.py"
    settings.write_text("search = dict(seed=1, init_random=12, prune_evals=36, total_evals=36, rescore_top=0)\n")

    assert infer.main([eval_cfg, "--work_dir", str(tmp_path / "full")]) == 0
    assert random_prune.main([eval_cfg, "--budget", "4", "--groups", "layer", "--num_runs", "4", "--seed", "0",
                              "--work_dir", str(tmp_path / "random")]) == 0
    assert search.main([eval_cfg, "--budget", "4", "--groups", "layer", "--train_cfg", train_cfg,
                        "--search_cfg", str(settings), "--work_dir", str(tmp_path / "searched")]) == 0

    full = metric(tmp_path / "full", "toy_sort")
    random_mean = metric(tmp_path / "random", "toy_sort")
    searched = metric(tmp_path / "searched", "toy_sort")
    assert full >= 95
    assert random_mean < full - 40  # pruning the wrong experts breaks sorting
    assert searched >= random_mean + 15, (full, random_mean, searched)


@pytest.mark.parametrize("task", ["sort", "count", "copy", "reverse"])
def test_committed_plans_load_for_the_toy_model_and_keep_the_skill(tmp_path, monkeypatch, task):
    """searched_coeff/toy-moe_<task>_budget_4.pth: an EEP-format file of a 4-layer model (the format
    does not record the depth; --coeff_path takes it from the model) evaluated on 100 eval items."""
    plan = REPO / "searched_coeff" / f"toy-moe_{task}_budget_4.pth"
    if not plan.is_file():
        pytest.skip(f"{plan.name} not committed")
    monkeypatch.chdir(REPO)
    eval_cfg = subset_config(tmp_path, "eval.py", f"toy-moe_{task}_eval.py", 0, 100)
    assert infer.main([eval_cfg, "--coeff_path", str(plan), "--work_dir", str(tmp_path / "w")]) == 0
    assert metric(tmp_path / "w", f"toy_{task}") >= 60  # random 4-of-8 pruning: 8-37% (models/toy-moe/README.md)
