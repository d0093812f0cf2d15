"""tools/compare.py on the committed toy MoE: the table's numbers are the single commands' numbers,
a kill -9 resumes to the same table without redoing finished cells, a failing method is recorded,
bad input is one line before any model loads."""
from __future__ import annotations

import importlib.util
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.compress import load_plan
from harness.config import dataset_configs, load_config, model_config
from harness.methods.base import Method
from harness.registry import METHODS
from harness.tasks import compress, condense, efficiency, infer, search
from tests.tiny import require_shared

REPO = Path(__file__).resolve().parents[1]
TOY = REPO / "models" / "toy-moe"
CAP = 12
SORT, COPY, TEXT = "toy_sort_ppl", "toy_copy_ppl", "toy_text_ppl"


def load_compare():
    spec = importlib.util.spec_from_file_location("compare_tool", REPO / "tools" / "compare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


compare = load_compare()


def toy_datasets() -> list[dict]:
    """The toy suite's three benchmarks as dataset dicts (two toy tasks, a toy-prompt corpus)."""
    datasets = [d for name in ("sort", "copy") for d in dataset_configs(load_config(str(REPO / f"dataset_cfgs/toy-moe_{name}_ppl.py")))]
    suite = load_config(str(REPO / "compare_cfgs" / "toy_moe.py"))
    return datasets + [dict(suite["benchmarks"][2]["dataset"])]


def write_suite(path: Path, methods: str, benchmarks: str | None = None, calibration: str | None = None) -> str:
    benchmarks = benchmarks or "[" + ", ".join(
        f"dict(dataset={d!r}, max_num={CAP}{', metric=' + repr('token_perplexity') if d['abbr'] == TEXT else ''})"
        for d in toy_datasets()) + "]"
    calibration = calibration or "dict(calib_cfg='dataset_cfgs/toy-moe_sort_train.py', calib_samples=8, seed=0)"
    path.write_text(f"""_base_ = [{str(REPO / 'model_cfgs' / 'toy-moe.py')!r}]
benchmarks = {benchmarks}
calibration = {calibration}
efficiency = dict(context_lengths=[16], batch_sizes=[1], decode_context=8, decode_tokens=2, repeats=1, warmup=0)
methods = {methods}
""")
    return str(path)


def rows_of(work: Path) -> dict[tuple, dict]:
    data = json.loads((work / "comparison.json").read_text())
    return {(r["label"], r["budget"]): r for r in data["rows"]}


def result(work: Path, dataset: str) -> dict:
    return json.loads((work / "results" / "toy-moe" / f"{dataset}.json").read_text())


@pytest.fixture(autouse=True)
def at_repo_root(monkeypatch):
    monkeypatch.chdir(REPO)  # the configs' ./data and ./models paths are relative to the repository root


# ------------------------------------------------------------------------------ equal to the single commands

METHODS_EQUAL = """[
    dict(name='frequency'),
    dict(name='naee'),
    dict(name='random', seeds=[0, 1]),
    dict(name='layer_drop', drop_n='match'),
    dict(name='cd_moe', condense_experts=2, condense_layers=3, calib_samples=4, calib_seq_len=32),
    dict(name='eep', search_cfg='search_cfgs/toy.py', settings=dict(init_random=2, prune_evals=3, total_evals=4,
         rescore_top=1), train=dict(benchmark='toy_sort_ppl', range=[12, 20])),
]"""


def test_the_table_holds_the_numbers_of_the_single_commands(tmp_path):
    suite = write_suite(tmp_path / "suite.py", METHODS_EQUAL)
    work = tmp_path / "cmp"
    assert compare.main([suite, "--budget", "4", "--work_dir", str(work)]) == 0
    rows = rows_of(work)
    assert (work / "comparison.md").read_text().startswith("| method | budget | toy_sort_ppl | toy_copy_ppl | average |")
    assert (work / "accuracy_vs_memory.png").stat().st_size > 0 and (work / "accuracy_vs_speedup.png").stat().st_size > 0

    # the same evaluation data as a plain dataset config for the single commands
    config = tmp_path / "eval.py"
    config.write_text(f"_base_ = [{str(REPO / 'model_cfgs' / 'toy-moe.py')!r}]\ndatasets = {toy_datasets()!r}\n")
    common = [str(config), "--max_num", str(CAP)]
    calib = ["--calib_cfg", "dataset_cfgs/toy-moe_sort_train.py", "--calib_samples", "8", "--seed", "0"]

    def single(label, budget, ref_dir):
        cells = rows[(label, budget)]["cells"]
        assert rows[(label, budget)]["errors"] == []
        for abbr, metric in ((SORT, "accuracy"), (COPY, "accuracy"), (TEXT, "token_perplexity")):
            assert cells[abbr][0] == pytest.approx(result(ref_dir, abbr)[metric], abs=1e-9), (label, abbr)
        assert cells["average"][0] == pytest.approx((result(ref_dir, SORT)["accuracy"] + result(ref_dir, COPY)["accuracy"]) / 2)

    assert infer.main(common + ["--work_dir", str(tmp_path / "full")]) == 0
    single("full model", None, tmp_path / "full")
    assert rows[("full model", None)]["cells"]["memory_ratio"] == [1.0, None]

    for name in ("frequency", "naee"):
        assert compress.main(common + calib + ["--method", name, "--budget", "4", "--work_dir", str(tmp_path / name)]) == 0
        single(name, 4, tmp_path / name)
        assert load_plan(str(tmp_path / name / "plan.safetensors")).fingerprint() == \
            load_plan(str(work / "budget_4" / name / "plan.safetensors")).fingerprint()

    # the memory ratio is efficiency.py's on the same plan
    assert efficiency.main(["--model_path", str(TOY), "--coeff_path", str(tmp_path / "frequency" / "plan.safetensors"),
                            "--work_dir", str(tmp_path / "eff"), "--context_lengths", "16", "--batch_sizes", "1",
                            "--decode_context", "8", "--decode_tokens", "2", "--repeats", "1", "--warmup", "0"]) == 0
    eff = json.loads((tmp_path / "eff" / "results" / "toy-moe" / "efficiency.json").read_text())
    assert rows[("frequency", 4)]["cells"]["memory_ratio"][0] == pytest.approx(eff["memory_ratio"])

    # random: mean and sample std over the seeds' single runs
    per_seed = []
    for seed in (0, 1):
        out = tmp_path / f"random{seed}"
        assert compress.main(common + ["--method", "random", "--budget", "4", "--seed", str(seed), "--work_dir", str(out)]) == 0
        per_seed.append(result(out, SORT)["accuracy"])
    mean, std = rows[("random (2 seeds)", 4)]["cells"][SORT]
    assert mean == pytest.approx(statistics.fmean(per_seed)) and std == pytest.approx(statistics.stdev(per_seed))

    # layer drop at a matching memory: 4 MoE layers x (8 - 4) / 8 = 2 layers
    assert rows[("layer_drop", 4)]["size"] == "drop_n 2"
    assert compress.main(common + calib + ["--method", "layer_drop", "--drop_n", "2", "--work_dir", str(tmp_path / "ld")]) == 0
    single("layer_drop", 4, tmp_path / "ld")

    # CD-MoE: condense.py with the same calibration documents
    assert condense.main(common + ["--condense_layers", "3", "--condense_experts", "2", "--calib_cfg",
                                   "dataset_cfgs/toy-moe_sort_train.py", "--calib_samples", "4", "--calib_seq_len", "32",
                                   "--work_dir", str(tmp_path / "cd")]) == 0
    single("cd_moe", 4, tmp_path / "cd")
    from harness.methods.cd_moe import DEVIATIONS
    cd_plans = [load_plan(str(path)) for path in sorted((tmp_path / "cd").rglob("plan.safetensors"))
                + sorted((work / "budget_4" / "cd_moe").rglob("plan.safetensors"))]
    assert len(cd_plans) >= 2 and all(p.metadata.get("deviations") == list(DEVIATIONS) for p in cd_plans)

    # EEP: search.py with the fitness on the same train items finds the same plans
    sort, = [d for d in toy_datasets() if d["abbr"] == SORT]
    train = {**sort, "abbr": f"{SORT}_train", "subset": dict(range=[12, 20])}
    evaluated = {**sort, "reader_cfg": {**sort["reader_cfg"], "test_range": f"[0:{CAP}]"}}
    (tmp_path / "train.py").write_text(f"datasets = [{train!r}]\n")
    (tmp_path / "sort.py").write_text(f"_base_ = [{str(REPO / 'model_cfgs' / 'toy-moe.py')!r}]\ndatasets = [{evaluated!r}]\n")
    settings = {**load_config(str(REPO / "search_cfgs" / "toy.py"))["search"],
                **dict(init_random=2, prune_evals=3, total_evals=4, rescore_top=1)}
    (tmp_path / "search.py").write_text(f"search = {settings!r}\n")
    assert search.main([str(tmp_path / "sort.py"), "--budget", "4", "--train_cfg", str(tmp_path / "train.py"),
                        "--search_cfg", str(tmp_path / "search.py"), "--work_dir", str(tmp_path / "eep")]) == 0
    for phase, label in (("best", "eep"), ("prune_only", "eep (prune_only)")):
        assert load_plan(str(tmp_path / "eep" / f"{phase}_plan.safetensors")).fingerprint() == \
            load_plan(str(work / "budget_4" / "eep" / phase / "plan.safetensors")).fingerprint()
        ref = tmp_path / "eep" if phase == "best" else tmp_path / "eep" / phase
        assert rows[(label, 4)]["cells"][SORT][0] == pytest.approx(result(ref, SORT)["accuracy"])


# ------------------------------------------------------------------------------ resume after kill -9

METHODS_RESUME = "[dict(name='frequency'), dict(name='naee'), dict(name='reap'), dict(name='keep_first')]"


def comparable(rows: dict) -> dict:
    """Every number of the table except the measured speed-up and wall time."""
    return {key: {c: v for c, v in row["cells"].items() if c != "speedup"} | {"errors": row["errors"]}
            for key, row in rows.items()}


def test_a_kill_9_resumes_skipping_finished_cells_to_the_same_table(tmp_path, monkeypatch):
    suite = write_suite(tmp_path / "suite.py", METHODS_RESUME)
    work = tmp_path / "killed"
    argv = [suite, "--budget", "4", "--budget", "6", "--work_dir", str(work)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, str(REPO / "tools" / "compare.py"), *argv], cwd=REPO, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    target = work / "budget_4" / "naee" / "status.json"  # kill once NAEE (the second method) is under way
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None:
        status = json.loads(target.read_text()) if target.exists() else {}
        if any(k.startswith("benchmark:") for k in status.get("seconds", {})):
            break
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()

    finished = {}  # unit folder -> benchmarks finished before the kill
    for status_file in work.rglob("status.json"):
        seconds = json.loads(status_file.read_text())["seconds"]
        finished[status_file.parent] = {k.split(":", 1)[1] for k in seconds if k.startswith("benchmark:")}
    assert finished[work / "full"] == {SORT, COPY, TEXT} and finished[target.parent]
    saved_plans = {p.parent for p in work.rglob("plan.safetensors")}
    assert target.parent in saved_plans

    from harness.openicl.inferencers.ppl import PPLInferencer
    from harness.openicl.inferencers.rolling import RollingPPLInferencer
    from harness.runner import PlanRunner

    pending, built = {}, []
    for cls in (PPLInferencer, RollingPPLInferencer):
        original = cls.infer

        def counting(self, model, items, store, *a, original=original, **k):
            pending[store.final_path] = len(items) - len(store.done)
            return original(self, model, items, store, *a, **k)
        monkeypatch.setattr(cls, "infer", counting)
    original_make = PlanRunner.make_plan
    monkeypatch.setattr(PlanRunner, "make_plan", lambda self, name, *a, **k: built.append(name) or original_make(self, name, *a, **k))

    assert compare.main(argv) == 0
    for folder, done in finished.items():
        for abbr in done:
            assert pending[folder / "predictions" / "toy-moe" / f"{abbr}.json"] == 0, (folder, abbr)
    assert len(built) == 8 - len(saved_plans)  # only the plans not saved before the kill are made (2 budgets x 4)
    assert built.count("naee") == 1  # budget 6's: budget 4's was saved

    fresh = tmp_path / "fresh"
    assert compare.main([suite, "--budget", "4", "--budget", "6", "--work_dir", str(fresh)]) == 0
    assert comparable(rows_of(work)) == comparable(rows_of(fresh))


# ------------------------------------------------------------------------------ failures and bad input


class Broken(Method):
    """A method that breaks at run time."""

    def build(self, inputs):
        raise RuntimeError("boom at build time\nsecond line")


def test_a_failing_method_is_recorded_and_the_others_run(tmp_path):
    METHODS.register_module(name="broken_for_compare", module=Broken, force=True)
    try:
        suite = write_suite(tmp_path / "suite.py", "[dict(name='broken_for_compare'), dict(name='keep_first'), "
                                                   "dict(name='random', settings=dict(groups='99'))]")
        work = tmp_path / "cmp"
        assert compare.main([suite, "--budget", "4", "--work_dir", str(work)]) == 0
    finally:
        METHODS.module_dict.pop("broken_for_compare", None)
    rows = rows_of(work)
    assert rows[("broken_for_compare", 4)]["errors"] == ["plan: RuntimeError: boom at build time"]
    assert rows[("broken_for_compare", 4)]["cells"][SORT] == ["failed", None]
    assert "groups" in rows[("random", 4)]["errors"][0]
    assert rows[("keep_first", 4)]["errors"] == [] and isinstance(rows[("keep_first", 4)]["cells"][SORT][0], float)
    table = (work / "comparison.md").read_text()
    assert "| broken_for_compare | B=4 | failed |" in table and "plan: RuntimeError: boom at build time |" in table


@pytest.mark.parametrize("methods, extra, calibration, message", [
    ("[dict(name='no_such_method')]", [], None, "unknown method 'no_such_method'; known: "),
    ("[dict(name='frequency', typo=1)]", [], None, "unknown keys ['typo']"),
    ("[dict(name='frequency')]", ["--budget", "8"], None, "has 8 experts per MoE layer and routes each token to 2; pass budgets from 2 to 7"),
    ("[dict(name='frequency')]", ["--budget", "1"], None, "pass budgets from 2 to 7"),
    ("[dict(name='frequency')]", [], "dict(calib_data='missing.jsonl')", "calibration calib_data missing.jsonl not found"),
    ("[dict(name='eep', train=dict(benchmark='nope', range=[12, 20]))]", [], None, "trains on benchmark 'nope'"),
    ("[dict(name='eep', train=dict(benchmark='toy_sort_ppl', range=[0, 20]))]", [], None, "overlap the evaluated first 12"),
])
def test_bad_input_is_one_line_before_the_model_loads(tmp_path, capsys, monkeypatch, methods, extra, calibration, message):
    from harness.models.hf_causal_lm import HFCausalLM

    monkeypatch.setattr(HFCausalLM, "__init__", lambda *a, **k: pytest.fail("the model was loaded"))
    suite = write_suite(tmp_path / "suite.py", methods, calibration=calibration)
    work = tmp_path / "cmp"
    assert compare.main([suite, *(extra or ["--budget", "4"]), "--work_dir", str(work)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and message in err, err
    assert not work.exists()


def test_an_unknown_benchmark_config_is_named(tmp_path, capsys):
    suite = write_suite(tmp_path / "suite.py", "[dict(name='frequency')]", benchmarks="[dict(cfg='dataset_cfgs/nope.py')]")
    assert compare.main([suite, "--budget", "4", "--work_dir", str(tmp_path / "cmp")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: config file dataset_cfgs/nope.py not found; pass the path of a file in dataset_cfgs/"


def test_the_shipped_suites_read_and_list_every_registered_method():
    from harness.compare.suite import read_suite, registered
    from harness.registry import SEARCHES

    require_shared()  # the real suites calibrate on ../shared's C4
    for name in ("toy_moe.py", "cpu_small_moe.py", "gpu_moe.py"):
        suite = read_suite(str(REPO / "compare_cfgs" / name))
        names = {row.name for row in suite.rows}
        assert "cd_moe" in names and registered(SEARCHES) <= names, name
        classes = {METHODS.get(n) for n in names if n in registered(METHODS)}  # aliases (msmoe) name one class
        assert {METHODS.get(n) for n in registered(METHODS) if n != "broken_for_compare"} <= classes, name


@pytest.mark.parametrize("cfg, shape, budgets", [
    ("olmoe-1b-7b-0924.py", "OLMoE-1B-7B", (32, 48)),
    ("qwen1.5-moe-a2.7b.py", "Qwen1.5-MoE-A2.7B", (30, 45)),
    ("mixtral-8x7b-v0.1.py", "Mixtral-8x7B", (4, 6)),
])
def test_the_gpu_model_configs_and_their_documented_budgets_fit(cfg, shape, budgets):
    """The budgets docs/COMPARISON.md gives a GPU user pass the suite's check on the model's real config."""
    from bench.common import REAL_SHAPES
    from harness.compare.setup import budget_range
    from harness.compress.adapters import ResolvedMoE

    model = model_config(load_config(str(REPO / "model_cfgs" / cfg)), None)
    assert model["type"] == "HFCausalLM" and model["device_map"] == "auto"
    moe = ResolvedMoE.from_config(dict(REAL_SHAPES[shape]))
    budget_range(moe.num_experts, moe.top_k, list(budgets), shape)
    with pytest.raises(Exception, match="pass budgets from"):
        budget_range(moe.num_experts, moe.top_k, [moe.num_experts], shape)


def test_matched_layer_drop_frees_the_bytes_of_the_budget_not_the_layer_count():
    """With a shared expert as large as the routed ones together, a dropped MoE sub-layer frees twice
    the routed experts' bytes, so half as many layers match budget 4 of 8 as the layer count says."""
    from transformers import AutoModelForCausalLM

    from harness.compare.runner import matching_drop_count
    from tests.tiny import tiny_config

    h, i, e, layers = 32, 16, 8, 8
    config = tiny_config("qwen2_moe", num_hidden_layers=layers, num_experts=e, num_experts_per_tok=2,
                         moe_intermediate_size=i, shared_expert_intermediate_size=e * i, mlp_only_layers=[],
                         decoder_sparse_step=1)
    model = AutoModelForCausalLM.from_config(config)
    routed = e * 3 * h * i * 4  # float32 bytes of one layer's routed experts
    block = routed + 3 * h * (e * i) * 4 + e * h * 4 + h * 4  # + shared expert, router, shared-expert gate
    for budget in (4, 6):
        expected = round(layers * routed * (e - budget) / e / block)
        assert matching_drop_count(model, budget, "layer_drop") == expected
    assert matching_drop_count(model, 4, "layer_drop") == 2  # not 8 * 4 / 8 = 4


def test_a_rerun_where_match_resolves_to_another_size_remakes_the_plan(tmp_path, monkeypatch):
    """Same suite and work dir, but 'match' now resolves layer_drop to 2 layers instead of 1 (the matching
    rule or the model changed): the saved 1-layer plan is not reused under the label 'drop_n 2'; the new
    plan drops 2 layers and the row's cells are its own. (Changed settings stop before the model loads.)"""
    from harness.compare import runner

    work = tmp_path / "cmp"
    suite = write_suite(tmp_path / "suite.py", "[dict(name='layer_drop', drop_n='match')]")
    monkeypatch.setattr(runner, "matching_drop_count", lambda model, budget, what: 1)
    assert compare.main([suite, "--budget", "4", "--work_dir", str(work)]) == 0
    plan_path = work / "budget_4" / "layer_drop" / "plan.safetensors"
    assert sum(lp.mode == "dropped" for lp in load_plan(str(plan_path)).layers.values()) == 1
    cells_before = rows_of(work)[("layer_drop", 4)]["cells"]
    monkeypatch.setattr(runner, "matching_drop_count", lambda model, budget, what: 2)
    assert compare.main([suite, "--budget", "4", "--work_dir", str(work)]) == 0
    assert sum(lp.mode == "dropped" for lp in load_plan(str(plan_path)).layers.values()) == 2
    row = rows_of(work)[("layer_drop", 4)]
    assert row["size"] == "drop_n 2" and row["cells"]["memory_ratio"][0] < cells_before["memory_ratio"][0]
