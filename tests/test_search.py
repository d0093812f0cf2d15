"""Search runners: determinism, stop-and-resume, work sharing, the random and frequency baselines."""
import json
import multiprocessing
import random
import statistics
from pathlib import Path

import pytest
import torch

from harness.compress import load_plan
from harness.methods.calibration import calibrate
from harness.methods.frequency import top_experts
from harness.search.evolution import EvolutionConfig, propose, random_pruning, run_evolution
from harness.search.fitness import PlanEvaluator
from harness.search.ledger import Ledger
from harness.search.space import Candidate, PlanSpace, layer_groups
from harness.tasks import prune_baseline, random_prune, search

REPO = Path(__file__).resolve().parents[1]

TOY_SORT = """
models = [dict(type='HFCausalLM', abbr='tiny-mixtral', max_seq_len=128, batch_size=16)]
sort_datasets = [dict(
    abbr='toy_sort_ppl',
    reader_cfg=dict(type='jsonl', path='./data/toy/sort/{split}.jsonl', input_columns=['prompt'], output_column='label'),
    subset=dict(range=[0, {n}]),
    infer_cfg=dict(prompt_template=dict(template='{prompt}'),
                   inferencer=dict(type='PPLInferencer', continuations='choices')),
    eval_cfg=dict(evaluator=dict(type='AccEvaluator')),
)]
"""

SMALL_SEARCH = "search = dict(init_random=4, prune_evals=8, total_evals=12, rescore_top=2, seed=7)\n"


def toy_config(tmp_path, split="eval", n=12, name=None):
    path = tmp_path / (name or f"toy_{split}.py")
    path.write_text(TOY_SORT.replace("{split}", split).replace("{n}", str(n)))
    return str(path)


def small_space(groups="4"):
    return PlanSpace.for_model(list(range(8)), 8, 8, 4, groups)


def fake_fitness(candidate):
    """A deterministic fitness with structure: experts 1, 3, 5 are 'good' everywhere."""
    weights = torch.tensor([0.1, 2.0, 0.3, 1.5, 0.2, 1.0, 0.0, 0.4])
    value = float((candidate.merge.abs() @ weights).sum() - 0.3 * (candidate.router - candidate.merge).abs().sum())
    return round(value, 6), {"accuracy": value}


# ---------------------------------------------------------------------------------------------- space
def test_layer_groups_match_eep():
    assert layer_groups(32, "4") == [list(range(0, 8)), list(range(8, 16)), list(range(16, 24)), list(range(24, 32))]
    assert layer_groups(32, "32") == [[i] for i in range(32)] == layer_groups(32, "layer")
    assert layer_groups(4, [[0, 3], [1, 2]]) == [[0, 3], [1, 2]]


def test_random_pruning_draws_b_distinct_sorted_experts_per_group():
    space = small_space()
    candidate = random_pruning(space, random.Random(3))
    assert candidate.is_pruning and candidate.merge.shape == (4, 4, 8)
    for g in range(4):
        kept = candidate.merge[g].argmax(-1).tolist()
        assert kept == sorted(set(kept)) and len(kept) == 4
    plan = space.to_plan(candidate)
    assert sorted(plan.layers) == list(range(8)) and plan.layers[0].router is None
    assert torch.equal(plan.layers[1].merge, candidate.merge[0]) and torch.equal(plan.layers[2].merge, candidate.merge[1])


def test_proposals_follow_the_phases():
    cfg = EvolutionConfig(init_random=3, prune_evals=6, total_evals=10, seed=1)
    space = small_space()
    history = []
    for slot in range(10):
        candidate = propose(slot, history, space, cfg)
        if slot < 6:
            assert candidate.is_pruning  # init and pruning phase keep one-hot rows and R == M
            kept = candidate.merge.argmax(-1)
            assert all(len(set(kept[g].tolist())) == 4 for g in range(4))
        history.append((candidate, fake_fitness(candidate)[0]))
    assert not all(c.is_pruning for c, _ in history[6:])  # merging phase perturbs coefficients


# ---------------------------------------------------------------------------------------------- loop
def run_small(root, cfg, stop_after=None):
    calls = []

    def fitness(candidate):
        if stop_after is not None and len(calls) == stop_after:
            raise KeyboardInterrupt
        calls.append(1)
        return fake_fitness(candidate)

    return run_evolution(small_space(), cfg, Ledger(root), fitness, poll_seconds=0.01), len(calls)


def test_same_seed_same_result_and_search_improves(tmp_path):
    cfg = EvolutionConfig(init_random=5, prune_evals=20, total_evals=40, seed=3)
    a, _ = run_small(tmp_path / "a", cfg)
    b, _ = run_small(tmp_path / "b", cfg)
    assert a == b
    c, _ = run_small(tmp_path / "c", EvolutionConfig(init_random=5, prune_evals=20, total_evals=40, seed=4))
    assert [r["candidate"] for r in c.values()] != [r["candidate"] for r in a.values()]
    init_best = max(a[i]["fitness"] for i in range(5))
    assert max(r["fitness"] for r in a.values()) > init_best


def test_stop_and_resume_gives_the_uninterrupted_result(tmp_path):
    cfg = EvolutionConfig(init_random=4, prune_evals=10, total_evals=18, seed=5)
    clean, _ = run_small(tmp_path / "clean", cfg)
    with pytest.raises(KeyboardInterrupt):
        run_small(tmp_path / "cut", cfg, stop_after=7)
    assert len(Ledger(tmp_path / "cut").finished()) == 7
    resumed, evaluated = run_small(tmp_path / "cut", cfg)
    assert evaluated == 18 - 7  # finished evaluations are not repeated
    assert resumed == clean


def _worker(root, seed):
    cfg = EvolutionConfig(init_random=4, prune_evals=10, total_evals=20, seed=seed, parallel_width=2)
    run_small(root, cfg)


def test_two_workers_share_one_population_without_duplicates(tmp_path):
    cfg = EvolutionConfig(init_random=4, prune_evals=10, total_evals=20, seed=9, parallel_width=2)
    alone, _ = run_small(tmp_path / "alone", cfg)
    ctx = multiprocessing.get_context("fork")
    workers = [ctx.Process(target=_worker, args=(tmp_path / "shared", 9)) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
    assert all(w.exitcode == 0 for w in workers)
    shared = Ledger(tmp_path / "shared").finished()
    assert shared == alone  # same result however many workers ran it
    assert not list((tmp_path / "shared" / "claims").iterdir())


# ---------------------------------------------------------------------------------------------- runners
def test_search_runner_end_to_end_and_resume(tmp_path, tiny_mixtral_path, monkeypatch):
    settings = tmp_path / "search_cfg.py"
    settings.write_text(SMALL_SEARCH)
    args = [toy_config(tmp_path, "eval"), "--model_path", str(tiny_mixtral_path), "--budget", "4",
            "--train_cfg", toy_config(tmp_path, "train"), "--dev_cfg", toy_config(tmp_path, "dev"),
            "--search_cfg", str(settings), "--data_root", str(REPO / "data"), "--eep_format", "--groups", "layer"]
    work = tmp_path / "work"
    assert search.main([*args, "--work_dir", str(work)]) == 0
    for name in ("best_plan.safetensors", "prune_only_plan.safetensors", "best_plan.pth", "fitness.png"):
        assert (work / name).is_file(), name
    assert len(list((work / "search" / "evals").glob("*.json"))) == 12
    plan = load_plan(work / "best_plan.safetensors")
    # the saved plan is the chosen slot's candidate, with that slot's train fitness
    slot = plan.metadata["slot"]
    record = json.loads((work / "search" / "evals" / f"{slot:06d}.json").read_text())
    assert plan.metadata["train_fitness"] == record["fitness"]
    space = PlanSpace.for_model(sorted(plan.layers), plan.num_layers, 8, 4, "layer")
    expected = space.to_plan(Candidate.from_dict(record["candidate"]))
    for layer, lp in plan.layers.items():
        assert torch.equal(lp.merge, expected.layers[layer].merge)
        assert (lp.router is None) == (expected.layers[layer].router is None)
    results = json.loads((work / "results" / "tiny-mixtral" / "toy_sort_ppl.json").read_text())
    assert set(results) >= {"accuracy"}

    # the same command stopped half way and rerun ends with the same plan
    real_score = PlanEvaluator.score
    count = []

    def dies(self, plan, task):
        if len(count) == 5:
            raise KeyboardInterrupt
        count.append(1)
        return real_score(self, plan, task)

    monkeypatch.setattr(PlanEvaluator, "score", dies)
    cut = tmp_path / "cut"
    assert search.main([*args, "--work_dir", str(cut)]) == 130
    monkeypatch.setattr(PlanEvaluator, "score", real_score)
    assert search.main([*args, "--work_dir", str(cut)]) == 0
    assert load_plan(cut / "best_plan.safetensors").layers.keys() == plan.layers.keys()
    for layer, lp in plan.layers.items():
        assert torch.equal(load_plan(cut / "best_plan.safetensors").layers[layer].merge, lp.merge)
    # byte-identical plan files: the same command writes the same bytes, interrupted or not
    for name in ("best_plan.safetensors", "prune_only_plan.safetensors", "best_plan.pth"):
        assert (cut / name).read_bytes() == (work / name).read_bytes(), name

    # other settings in the same work dir are refused
    assert search.main([*args, "--work_dir", str(work), "--seed", "99"]) == 2


def test_random_prune_runner_reports_mean_and_std_of_its_runs(tmp_path, tiny_mixtral_path):
    work = tmp_path / "random"

    def argv(work_dir):
        return [toy_config(tmp_path), "--model_path", str(tiny_mixtral_path), "--budget", "4", "--num_runs", "3",
                "--seed", "1", "--work_dir", str(work_dir), "--data_root", str(REPO / "data"), "--groups", "layer"]

    assert random_prune.main(argv(work)) == 0
    runs = sorted((work / "runs").iterdir())
    assert len(runs) == 3
    accs = [json.loads((r / "results/tiny-mixtral/toy_sort_ppl.json").read_text())["accuracy"] for r in runs]
    summary = json.loads((work / "results/tiny-mixtral/toy_sort_ppl.json").read_text())
    assert summary["accuracy"] == pytest.approx(statistics.fmean(accs))
    assert summary["accuracy_std"] == pytest.approx(statistics.stdev(accs))
    assert summary["num_runs"] == 3
    plans = [load_plan(r / "plan.safetensors") for r in runs]
    kept = [[p.kept_experts(layer) for layer in sorted(p.layers)] for p in plans]
    assert kept[0] != kept[1] and all(len(k) == 4 for p in kept for k in p)
    # the same seed draws the same plans
    again = tmp_path / "again"
    assert random_prune.main(argv(again)) == 0
    assert load_plan(again / "runs/run_001/plan.safetensors").layers[1].merge.equal(plans[1].layers[1].merge)


def test_routing_counts_equal_a_direct_count(tiny_mixtral_path):
    from harness.models.hf_causal_lm import HFCausalLM

    lm = HFCausalLM(str(tiny_mixtral_path), batch_size=3, max_seq_len=64)
    texts = ["sort: 3 1 2 =", "count 4: 4 4 1 =", "copy: 9 8 7 6 5 4 =", "reverse: 1 2 ="]
    counts = calibrate(lm, texts).counts
    expected = {i: torch.zeros(8, dtype=torch.long) for i in counts}
    for text in texts:  # one text at a time: no padding at all
        enc = lm.tokenizer(text, return_tensors="pt")
        with torch.no_grad():
            out = lm.model(**enc, output_router_logits=True)
        for i, logits in enumerate(out.router_logits):
            top = torch.topk(torch.softmax(logits.float(), -1), 2, dim=-1).indices
            expected[i] += torch.bincount(top.reshape(-1), minlength=8)
    for i in counts:
        assert torch.equal(counts[i], expected[i])
    assert top_experts(torch.tensor([5, 9, 9, 1, 0, 7, 7, 2]), 3) == [1, 2, 5]


def test_frequency_and_keep_first_runners_write_plans(tmp_path, tiny_mixtral_path):
    for method in ("frequency", "first"):
        work = tmp_path / method
        argv = [toy_config(tmp_path), "--model_path", str(tiny_mixtral_path), "--budget", "3", "--method", method,
                "--work_dir", str(work), "--data_root", str(REPO / "data"), "--calib_cfg", toy_config(tmp_path, "train", 8, "calib.py")]
        assert prune_baseline.main(argv) == 0
        plan = load_plan(work / "plan.safetensors")
        assert plan.is_pure_pruning and plan.uniform_budget == 3
        assert (work / "results/tiny-mixtral/toy_sort_ppl.json").is_file()
        if method == "first":
            assert all(plan.kept_experts(layer) == [0, 1, 2] for layer in plan.layers)


def test_reduced_top_k_variant_sets_top_k_on_every_candidate(tmp_path):
    cfg = EvolutionConfig(init_random=3, prune_evals=6, total_evals=9, seed=2, top_k=1)
    records, _ = run_small(tmp_path / "topk", cfg)
    plans = [small_space().to_plan(Candidate.from_dict(r["candidate"])) for r in records.values()]
    assert all(lp.top_k == 1 for plan in plans for lp in plan.layers.values())


def test_torchrun_ranks_default_to_one_population_batch_each(monkeypatch):
    import argparse

    monkeypatch.setenv("WORLD_SIZE", "4")
    args = argparse.Namespace(search_cfg=None, seed=None, top_k=None)
    assert search.search_settings(args)["parallel_width"] == 4
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert "parallel_width" not in search.search_settings(args)  # the search's own default (1)
