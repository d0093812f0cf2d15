"""Command-line errors a newcomer hit (issue 19): one line naming the argument and the fix, before
anything is loaded or written."""
import json
import shutil
from pathlib import Path

import pytest

from harness.tasks import eval as eval_task
from harness.tasks import infer, search

REPO = Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "dataset_cfgs/toy-moe_sort_eval.py")


def run_infer(capsys, *argv) -> str:
    assert infer.main([CONFIG, *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    return err


def test_an_empty_model_folder_is_named_as_model_path_whole_before_any_load(tmp_path, capsys, monkeypatch):
    import harness.models.hf_causal_lm as hf

    monkeypatch.setattr(hf.HFCausalLM, "_load_tokenizer", lambda *a: pytest.fail("tokenizer loaded"))
    empty = tmp_path / "empty"
    empty.mkdir()
    work = tmp_path / "work"
    err = run_infer(capsys, "--model_path", str(empty), "--work_dir", str(work))
    assert f"--model_path {empty} has no config.json" in err and err.rstrip().endswith("tokenizer files")
    assert not work.exists()
    # a folder with a config but no tokenizer: named, with what it lacks
    shutil.copy(REPO / "models/toy-moe/config.json", empty / "config.json")
    err = run_infer(capsys, "--model_path", str(empty), "--work_dir", str(work))
    assert f"--model_path {empty} holds no tokenizer files (tokenizer.json" in err and not work.exists()
    err = run_infer(capsys, "--model_path", str(empty / "config.json"), "--work_dir", str(work))
    assert "is a file; pass the model's folder" in err


def test_a_missing_plan_is_refused_before_the_model_loads(tmp_path, capsys, monkeypatch):
    import harness.models.hf_causal_lm as hf

    monkeypatch.setattr(hf.HFCausalLM, "__init__", lambda *a, **k: pytest.fail("model loaded"))
    work = tmp_path / "work"
    err = run_infer(capsys, "--coeff_path", str(tmp_path / "nope.pth"), "--work_dir", str(work))
    assert f"--coeff_path {tmp_path / 'nope.pth'} not found" in err and not work.exists()


@pytest.mark.parametrize("module", [infer, search, eval_task])
def test_opencompass_hyphens_get_the_underscore_spelling(module, capsys):
    with pytest.raises(SystemExit):
        module.parse_args([CONFIG, "--work-dir", "out", "--budget", "4"])
    err = capsys.readouterr().err
    assert "unrecognized argument --work-dir (options are spelled with underscores: --work_dir)" in err
    with pytest.raises(SystemExit):  # no silent abbreviation either
        infer.parse_args([CONFIG, "--work_dir", "out", "--coeff", "p.pth"])


def test_eval_on_a_random_pruning_folder_points_at_its_runs(tmp_path, capsys):
    for r in range(3):
        predictions = tmp_path / "rand" / "runs" / f"run_{r:03d}" / "predictions" / "toy-moe"
        predictions.mkdir(parents=True)
        (predictions / "toy_sort.json").write_text(json.dumps({}))
    assert eval_task.main([CONFIG, "--work_dir", str(tmp_path / "rand")]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'rand'} is a random-pruning folder: its 3 runs' predictions are in" in err
    assert f"--work_dir {tmp_path / 'rand' / 'runs' / 'run_000'}" in err
    assert eval_task.main([CONFIG, "--work_dir", str(tmp_path / "other")]) == 2
    assert "run harness/tasks/infer.py first" in capsys.readouterr().err
