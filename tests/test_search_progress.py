"""A search's terminal progress (issue 19): one line per evaluation with the best fitness so far and
the time left, the resume announced with what is cached, the dev re-scoring announced."""
import re

import pytest

from harness.search.evolution import EEPSearch
from harness.search.ledger import Ledger
from harness.search.progress import SearchProgress
from tests.test_search import fake_fitness, small_space


def test_lines_give_count_best_so_far_rate_and_time_left():
    lines, now = [], [100.0]
    progress = SearchProgress(10, {}, "W/search", phase=lambda s: "init" if s < 2 else "prune",
                              out=lines.append, clock=lambda: now[0])
    assert lines == ["search: 10 evaluations to run, results in W/search; one line per evaluation below"]
    now[0] = 112.0  # the first evaluation took 12 s: 9 left at 12 s each, 108 s
    assert progress.update(0, 30.0, {}) == ("search: evaluation 0 done (1/10, init phase): fitness 30.00; "
                                            "best 30.00 (evaluation 0); 12 s per evaluation, about 2 min left")
    now[0] = 160.0  # 2 done in 60 s: 30 s each, 8 left = 240 s = 4 min
    line = progress.update(2, 25.0, {0: {"fitness": 30.0}})
    assert "(2/10, prune phase): fitness 25.00; best 30.00 (evaluation 0); 30 s per evaluation, about 4 min left" in line
    # another worker's record seen in the ledger counts, for the best and for the rate
    now[0] = 200.0
    line = progress.update(3, 10.0, {0: {"fitness": 30.0}, 1: {"fitness": 55.5}, 2: {"fitness": 25.0}})
    assert "(4/10, prune phase)" in line and "best 55.50 (evaluation 1)" in line
    assert "25 s per evaluation, about 2 min left" in line  # 100 s / 4 new evaluations, 6 left: 150 s


def test_resume_is_announced_with_the_cached_count_and_the_rate_counts_new_evaluations_only():
    lines, now = [], [0.0]
    cached = {0: {"fitness": 1.0}, 1: {"fitness": 7.0}, 2: {"fitness": 7.0}}
    progress = SearchProgress(8, cached, "W", phase=lambda s: "merge", out=lines.append, clock=lambda: now[0])
    assert lines == ["search: resuming from W: 3 of 8 evaluations cached (best fitness 7.00, evaluation 1); "
                     "continuing at evaluation 3, merge phase"]
    now[0] = 4.0
    assert progress.update(3, 2.0, cached).endswith("best 7.00 (evaluation 1); 4.0 s per evaluation, about 16 s left")
    lines.clear()
    SearchProgress(3, cached, "W", out=lines.append)
    assert lines == ["search: all 3 evaluations cached in W (best fitness 7.00, evaluation 1)"]


def _line_numbers(text):
    return [tuple(map(int, m)) for m in re.findall(r"evaluation (\d+) done \((\d+)/(\d+)", text)]


def test_eep_search_reports_every_evaluation_and_its_resume(tmp_path, capsys):
    search = EEPSearch(init_random=3, prune_evals=6, total_evals=9, seed=2, rescore_top=2)
    calls = []

    def stops_after_four(candidate):
        if len(calls) == 4:
            raise KeyboardInterrupt
        calls.append(1)
        return fake_fitness(candidate)

    with pytest.raises(KeyboardInterrupt):
        search.run(small_space(), Ledger(tmp_path), stops_after_four)
    first = capsys.readouterr().out
    assert f"search: 9 evaluations to run, results in {tmp_path}" in first
    assert _line_numbers(first) == [(0, 1, 9), (1, 2, 9), (2, 3, 9), (3, 4, 9)]

    records = search.run(small_space(), Ledger(tmp_path), fake_fitness)
    second = capsys.readouterr().out
    best4 = max(range(4), key=lambda s: (records[s]["fitness"], -s))
    assert (f"search: resuming from {tmp_path}: 4 of 9 evaluations cached (best fitness "
            f"{records[best4]['fitness']:.2f}, evaluation {best4}); continuing at evaluation 4, prune phase") in second
    assert _line_numbers(second) == [(s, s + 1, 9) for s in range(4, 9)]
    # each line's best is the best of the ledger's records up to that evaluation
    for slot, best in re.findall(r"evaluation (\d+) done .*; best ([\d.-]+) ", second):
        assert float(best) == pytest.approx(round(max(records[s]["fitness"] for s in range(int(slot) + 1)), 2), abs=0.006)


def test_dev_rescoring_is_announced_with_its_cached_count(tmp_path, capsys):
    from harness.tasks.search import announce_rescoring

    dev = Ledger(tmp_path / "dev")
    dev.record(7, {"fitness": 50.0, "metrics": {}})
    announce_rescoring("best", [7, 3, 9], "toy_sort_dev", dev)
    assert capsys.readouterr().out == (f"best: re-scoring its 3 best candidates by train fitness on toy_sort_dev "
                                       f"(1 cached in {tmp_path / 'dev'}) to choose the plan\n")
