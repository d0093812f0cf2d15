"""The run setup: bad arguments and files are one-line errors, and a refused command writes nothing."""
from __future__ import annotations

import json

import pytest

from harness.compress import save_plan
from harness.compress.plan import CompressionPlan
from harness.tasks import infer, prune_baseline, random_prune, search
from tests.test_search import REPO, toy_config


def base_args(tmp_path, model_path, work):
    return [toy_config(tmp_path), "--model_path", str(model_path), "--work_dir", str(work),
            "--data_root", str(REPO / "data")]


@pytest.mark.parametrize("option,value", [("--batch_size", "0"), ("--batch_size", "-3"), ("--max_num", "0"),
                                          ("--max_num", "-5")])
def test_counts_below_one_are_refused(tmp_path, tiny_mixtral_path, capsys, option, value):
    work = tmp_path / "w"
    with pytest.raises(SystemExit) as exit_info:
        infer.main([*base_args(tmp_path, tiny_mixtral_path, work), option, value])
    assert exit_info.value.code == 2
    assert f"{option}: must be at least 1, got {value}" in capsys.readouterr().err
    assert not work.exists()


def test_zero_random_runs_are_refused(tmp_path, tiny_mixtral_path, capsys):
    with pytest.raises(SystemExit):
        random_prune.main([*base_args(tmp_path, tiny_mixtral_path, tmp_path / "w"), "--budget", "4", "--num_runs", "0"])
    assert "--num_runs: must be at least 1" in capsys.readouterr().err


def test_abbreviated_options_and_hyphenated_spellings_are_not_guessed(tmp_path, tiny_mixtral_path, capsys):
    with pytest.raises(SystemExit):
        infer.main([*base_args(tmp_path, tiny_mixtral_path, tmp_path / "w"), "--coeff", "x.pth"])
    assert "unrecognized arguments: --coeff" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        infer.main([*base_args(tmp_path, tiny_mixtral_path, tmp_path / "w"), "--max-num", "3"])
    assert "spelled with underscores: --max_num" in capsys.readouterr().err


def test_a_work_dir_that_is_a_file_or_under_one_is_refused(tmp_path, tiny_mixtral_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for work in (blocker, blocker / "sub"):
        assert infer.main(base_args(tmp_path, tiny_mixtral_path, work)) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"{blocker} is a file, not a folder" in err


def test_an_unwritable_work_dir_is_refused_before_the_model_loads(tmp_path, tiny_mixtral_path, capsys, monkeypatch):
    import os

    from harness.models.hf_causal_lm import HFCausalLM

    (tmp_path / "ro").mkdir()
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # root ignores chmod; pretend the folder is read-only
    monkeypatch.setattr(HFCausalLM, "__init__", lambda *a, **k: pytest.fail("the model was loaded"))
    assert infer.main(base_args(tmp_path, tiny_mixtral_path, tmp_path / "ro" / "w")) == 2
    assert "is not writable" in capsys.readouterr().err


def test_a_missing_plan_file_is_found_before_the_model_loads(tmp_path, tiny_mixtral_path, capsys, monkeypatch):
    from harness.models.hf_causal_lm import HFCausalLM

    monkeypatch.setattr(HFCausalLM, "__init__", lambda *a, **k: pytest.fail("the model was loaded"))
    work = tmp_path / "w"
    assert infer.main([*base_args(tmp_path, tiny_mixtral_path, work), "--coeff_path", str(tmp_path / "no.pth")]) == 2
    assert "--coeff_path" in capsys.readouterr().err and not work.exists()


def test_a_plan_that_does_not_fit_leaves_no_work_dir(tmp_path, tiny_mixtral_path, capsys):
    plan = CompressionPlan.from_kept({0: [0, 1]}, 16, num_layers=2)  # the tiny model has 8 experts
    save_plan(plan, tmp_path / "plan.safetensors")
    work = tmp_path / "w"
    assert infer.main([*base_args(tmp_path, tiny_mixtral_path, work), "--coeff_path",
                       str(tmp_path / "plan.safetensors")]) == 2
    assert "experts" in capsys.readouterr().err and not work.exists()


def test_a_refused_budget_leaves_nothing_and_the_corrected_command_runs(tmp_path, tiny_mixtral_path, capsys):
    work = tmp_path / "search"
    settings = tmp_path / "small.py"
    settings.write_text("search = dict(init_random=2, prune_evals=3, total_evals=4, rescore_top=1, seed=1)\n")
    args = [*base_args(tmp_path, tiny_mixtral_path, work), "--search_cfg", str(settings), "--groups", "layer"]
    assert search.main([*args, "--budget", "10"]) == 2
    assert "--budget 10 must be between 1 and the model's 8 experts" in capsys.readouterr().err
    assert not work.exists()
    assert search.main([*args, "--budget", "4"]) == 0
    assert json.loads((work / "search/settings.json").read_text())["budget"] == 4
    for task, extra in ((prune_baseline, ["--method", "first"]), (random_prune, ["--num_runs", "1"])):
        other = tmp_path / task.__name__.rsplit(".", 1)[-1]
        assert task.main([*base_args(tmp_path, tiny_mixtral_path, other), "--budget", "9", *extra]) == 2
        assert not other.exists()


def test_a_rerun_of_random_pruning_reuses_every_finished_run(tmp_path, tiny_mixtral_path, monkeypatch):
    """Plans are byte-stable and predictions are keyed by the plan's content: nothing is recomputed."""
    from harness.models.hf_causal_lm import HFCausalLM

    args = [*base_args(tmp_path, tiny_mixtral_path, tmp_path / "random"), "--budget", "4", "--num_runs", "3",
            "--groups", "layer"]
    assert random_prune.main(args) == 0
    plans = [p.read_bytes() for p in sorted((tmp_path / "random/runs").glob("*/plan.safetensors"))]
    calls = []
    real = HFCausalLM._score_batch
    monkeypatch.setattr(HFCausalLM, "_score_batch", lambda self, groups: calls.append(1) or real(self, groups))
    assert random_prune.main(args) == 0
    assert calls == []
    assert [p.read_bytes() for p in sorted((tmp_path / "random/runs").glob("*/plan.safetensors"))] == plans
