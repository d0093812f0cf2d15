"""Every run's log says what ran and what came out (issue 19: prune_baseline.py wrote logs holding
one line, infer.py's did not name the plan it applied)."""
import logging
from pathlib import Path

import pytest

from harness.tasks import infer, prune_baseline
from tests.test_search import REPO, toy_config


@pytest.fixture(autouse=True)
def _drop_log_handlers():
    """Each run adds a file handler to the root logger; remove them so runs do not write each other's logs."""
    before = list(logging.getLogger().handlers)
    yield
    for handler in logging.getLogger().handlers[len(before):]:
        logging.getLogger().removeHandler(handler)
        handler.close()


def log_text(work: Path) -> str:
    [log] = list((work / "logs").glob("*.log"))
    return log.read_text()


def test_prune_baseline_log_holds_the_command_results_and_plan(tmp_path, tiny_mixtral_path, capsys):
    work = tmp_path / "first"
    assert prune_baseline.main([toy_config(tmp_path), "--model_path", str(tiny_mixtral_path), "--budget", "4",
                                "--method", "first", "--data_root", str(REPO / "data"), "--work_dir", str(work)]) == 0
    out = capsys.readouterr().out
    text = log_text(work)
    assert "command: python " in text and "\"method\": \"keep_first\"" in text
    results = [line for line in out.splitlines() if "keep_first" in line and "accuracy" in line]
    assert results and all(line in text for line in results)  # each result printed is in the log too
    assert f"plan: {work / 'plan.safetensors'}" in text


def test_infer_log_names_the_plan_it_applied(tmp_path, tiny_mixtral_path, capsys):
    first = tmp_path / "first"
    assert prune_baseline.main([toy_config(tmp_path), "--model_path", str(tiny_mixtral_path), "--budget", "4",
                                "--method", "first", "--data_root", str(REPO / "data"), "--work_dir", str(first)]) == 0
    work = tmp_path / "infer"
    plan = str(first / "plan.safetensors")
    assert infer.main([toy_config(tmp_path), "--model_path", str(tiny_mixtral_path), "--coeff_path", plan,
                       "--data_root", str(REPO / "data"), "--work_dir", str(work)]) == 0
    text = log_text(work)
    assert f"compression plan {plan} applied" in text
    assert "tiny-mixtral/toy_sort_ppl: {\"accuracy\"" in text
