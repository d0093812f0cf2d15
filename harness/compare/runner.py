"""Run a comparison suite on one loaded model: the full model, then every method at every budget.

The work is cut into *units*, one evaluated plan each, laid out like ``infer.py``'s output so
``tools/summarize.py`` and ``tools/plot.py`` read them too:

    DIR/full/                              the uncompressed model (results, efficiency reference)
    DIR/budget_<B>/<label>/                one plan: plan.safetensors, predictions/, results/, status.json
    DIR/budget_<B>/<random label>/seed_<S>/    one unit per seed
    DIR/budget_<B>/<search label>/         the search's ledger (search/), <finalist>_plan.safetensors,
                                           and one unit per finalist in <finalist>/
    DIR/calibration/                       the one shared calibration pass (harness/runner.py's store)

Each unit's ``status.json`` holds the row's spec (a resumed row must match it), the seconds of each
finished part and the last error. Every file is written atomically as soon as its part finishes,
so after a kill -9 a rerun reuses the saved plan, skips finished benchmarks through the prediction
files' fingerprints (``harness.io.PredictionStore``) and finished efficiency measurements, and
continues where it stopped. A part that raises is recorded as failed and the next one runs.
"""
from __future__ import annotations

import copy
import gc
import json
import logging
import time
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace

from harness.compare.suite import CD_MOE, Row, Suite
from harness.compress import load_plan
from harness.compress.adapters import decoder_layers, resolve
from harness.errors import HarnessError
from harness.io import atomic_write_json, results_path
from harness.pipeline import EvalTask
from harness.runner import PlanRunner
from harness.run import Run

log = logging.getLogger("harness.compare")
STATUS = "status.json"


def one_line(exc: BaseException) -> str:
    """``Type: first line of the message`` (what the table shows for a failed part)."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def matching_drop_count(model, budget: int, what: str) -> int:
    """How many MoE sub-layers (``layer_drop``) or decoder blocks (``block_drop``) to drop so that about
    as many bytes go as keeping ``budget`` of E routed experts in every MoE layer frees. Counted in
    bytes, not layers: a dropped MoE sub-layer also takes its shared experts and router, so with a
    large shared expert (Qwen-MoE, DeepSeek-MoE, the MoEfied SmolLM2) fewer layers free the same memory."""
    from harness.efficiency.memory import footprint, storage_bytes

    moe = resolve(model)
    e = moe.num_experts
    removed = footprint(model)["expert_bytes"] * (e - budget) / e
    units = decoder_layers(model) if what == "block_drop" else [block for _, block in moe.blocks()]
    per_unit = sum(storage_bytes(list(u.parameters())) for u in units) / len(units)
    return max(1, min(len(units) - 1, round(removed / per_unit)))


@dataclass
class Unit:
    """One plan to evaluate: its folder, how to make its plan, and what its row is."""

    folder: Path
    row: Row
    budget: int | None  # None: the full model
    make_plan: object = None  # callable -> CompressionPlan (None: the full model)
    size: str = ""  # 'B=4', 'drop_n 15', ... for the table

    def status(self) -> dict:
        return read_json(self.folder / STATUS) or {}


@dataclass
class Entry:
    """One table row: a label and the units whose results it shows (several seeds: mean and std)."""

    label: str
    budget: int | None
    units: list[Unit]
    size: str = ""


@dataclass
class Comparison:
    suite: Suite
    run: Run
    runner: PlanRunner
    budgets: list[int]
    tasks: list[EvalTask]
    calibration_args: SimpleNamespace | None = None
    timings: dict = field(default_factory=dict)  # shared parts: seconds
    entries: list[Entry] = field(default_factory=list)
    _config: object = None
    _calibration: object = None
    _reference: dict | None = None

    def __post_init__(self):
        self._config = copy.deepcopy(self.runner.lm.model.config)  # before any plan rewrites it
        self.entries = self.plan_entries()

    @property
    def lm(self):
        return self.runner.lm

    @property
    def work_dir(self) -> Path:
        return self.run.work_dir

    # ------------------------------------------------------------------ the rows, per budget
    def plan_entries(self) -> list[Entry]:
        full = Unit(self.work_dir / "full", Row("full", "full", "full"), None)
        entries = [Entry("full model", None, [full])]
        for budget in self.budgets:
            for row in self.suite.rows:
                entries += self.row_entries(row, budget)
        return entries

    def row_entries(self, row: Row, budget: int) -> list[Entry]:
        folder = self.work_dir / f"budget_{budget}" / row.label
        if row.kind == "search":
            search = SearchRow(self, row, budget, folder)
            return [Entry(row.label if name == "best" else f"{row.label} ({name})", budget,
                          [Unit(folder / name, row, budget, search.plan_maker(name), f"B={budget}")], f"B={budget}")
                    for name in search.finalist_names()]
        if row.kind == CD_MOE:
            k = row.options["condense_experts"]
            n = self.matched_count(row.options["condense_layers"], budget, "cd_moe", k)
            unit = Unit(folder, row, budget, lambda: self.cd_moe_plan(row, folder, n, k), f"N={n} K={k}")
            return [Entry(row.label, budget, [unit], unit.size)]
        from harness.methods.base import method

        chosen = method(row.name, **row.settings)
        drop_n = self.matched_count(row.drop_n, budget, row.name) if chosen.needs_drop_n else None
        size = f"drop_n {drop_n}" if drop_n is not None else f"B={budget}"
        plan_budget = None if chosen.needs_drop_n else budget
        if row.seeds:
            units = [Unit(folder / f"seed_{s}", row, budget, self.method_plan(row, plan_budget, drop_n, s), size)
                     for s in row.seeds]
            return [Entry(f"{row.label} ({len(units)} seeds)" if len(units) > 1 else row.label, budget, units, size)]
        seed = int(self.suite.calibration.get("seed", 0))
        return [Entry(row.label, budget, [Unit(folder, row, budget, self.method_plan(row, plan_budget, drop_n, seed),
                                               size)], size)]

    def matched_count(self, value, budget: int, what: str, keep: int = 0) -> int:
        """``value``, or for 'match' the count of layers/blocks (``matching_drop_count``) or of CD-MoE's
        condensed layers (as many routed experts removed as keeping ``budget`` of E everywhere)."""
        if value != "match":
            return int(value)
        if what == "cd_moe":  # a condensed layer keeps K of E routed experts; nothing else goes
            moe = resolve(self.lm.model)
            layers, e = len(moe.moe_layers), moe.num_experts
            return max(1, min(layers, round(layers * (e - budget) / max(1, e - keep))))
        return matching_drop_count(self.lm.model, budget, what)

    # ------------------------------------------------------------------ plan makers
    def calibration(self):
        """The suite's calibration samples (built once, as compress.py builds them)."""
        if self._calibration is None:
            from harness.tasks.compress import calibration_data

            self._calibration = calibration_data(self.calibration_args, self.run, self.runner)
        return self._calibration

    def calibrate_once(self) -> None:
        """The shared calibration pass, timed (read back from DIR/calibration when saved earlier)."""
        if not self.suite.needs_calibration():
            return
        start = time.perf_counter()
        self.runner.calibrate(self.calibration(), self.calibration_args.calib_cache_tokens)
        self.timings["calibration" if not self.runner.calibration_reused else "calibration (read back)"] = \
            time.perf_counter() - start

    def method_plan(self, row: Row, budget: int | None, drop_n: int | None, seed: int):
        def make():
            from harness.methods.base import method

            data = self.calibration() if method(row.name, **row.settings).needs_calibration else None
            self.runner.check_method(row.name, budget, drop_n, data, **row.settings)
            return self.runner.make_plan(row.name, budget, seed=seed, calibration=data, drop_n=drop_n,
                                         cache_tokens=self.calibration_args.calib_cache_tokens, **row.settings)
        return make

    def cd_moe_plan(self, row: Row, folder: Path, n: int, k: int):
        """CD-MoE's greedy expert and layer search: harness/tasks/condense.py's own ``search_plan``."""
        from harness.tasks import condense

        o, cal = row.options, self.suite.calibration
        condense.check_model(self.lm.model, n, k)
        args = SimpleNamespace(calib_cfg=[cal["calib_cfg"]] if cal.get("calib_cfg") else None,
                               calib_data=cal.get("calib_data"), calib_samples=o["calib_samples"],
                               calib_seq_len=o["calib_seq_len"], calib_batch_size=o["calib_batch_size"],
                               weight_rule=o["weight_rule"], beam=o["beam"])
        plan, _, _ = condense.search_plan(self.run, self.runner, args, n, k, folder)
        return plan

    # ------------------------------------------------------------------ running
    def run_order(self) -> list[Entry]:
        """The full model, then method by method, each at every budget: a run stopped early leaves
        whole methods (at both budgets) rather than one budget only."""
        rows = {row.label: i for i, row in enumerate(self.suite.rows)}
        return sorted(self.entries, key=lambda e: (e.budget is not None, rows.get(e.units[0].row.label, -1),
                                                   e.budget or 0))

    def run_all(self, on_progress=None) -> None:
        """Every unit (``run_order``); ``on_progress()`` after each (the table is rewritten there)."""
        self.calibrate_once()
        for entry in self.run_order():
            for unit in entry.units:
                self.run_unit(unit)
                if on_progress is not None:
                    on_progress()
        self.runner.evaluator.use(None)

    def run_unit(self, unit: Unit) -> None:
        status = unit.status()
        current = dict(spec=unit.row.spec(), budget=unit.budget, size=unit.size)
        saved_plan = unit.folder / "plan.safetensors"
        if saved_plan.is_file() and {k: status.get(k) for k in current} != current:
            # the suite changed this row's settings (or a 'match' resolves to another size): the saved
            # plan is another method's; its predictions are keyed by the plan and so are not reused either
            log.info("%s: settings changed (%s -> %s), remaking the plan", unit.folder, status.get("size"), unit.size)
            saved_plan.unlink()
            status = {}
        status.update(current)
        status.setdefault("seconds", {})
        errors = {}

        def save():
            status["errors"] = errors
            atomic_write_json(unit.folder / STATUS, status)

        def timed(part, work):
            start = time.perf_counter()
            try:
                value = work()
            except HarnessError as exc:
                errors[part] = str(exc)
            except Exception as exc:  # a method that breaks at run time: recorded, the others still run
                log.error("%s %s failed:\n%s", unit.folder, part, traceback.format_exc())
                errors[part] = one_line(exc)
            else:
                status["seconds"].setdefault(part, time.perf_counter() - start)  # first finished run's time
                return value
            status["seconds"].pop(part, None)
            return None

        log.info("unit %s (%s)", unit.folder.relative_to(self.work_dir), unit.size or "full model")
        plan = None
        if unit.make_plan is not None:
            plan = timed("plan", lambda: self.plan_of(unit))
            if plan is None:
                save()
                self.runner.evaluator.use(None)
                return
        self.runner.evaluator.use(plan)
        save()
        for task in self.tasks:
            timed(f"benchmark:{task.abbr}", lambda task=task: task.run(self.lm, unit.folder))
            save()
        timed("efficiency", lambda: self.efficiency(unit, plan))
        save()
        gc.collect()

    def plan_of(self, unit: Unit):
        """The unit's saved plan, else a new one (saved at once, so a rerun never rebuilds it)."""
        path = unit.folder / "plan.safetensors"
        if path.is_file():
            return load_plan(str(path))
        plan = unit.make_plan()
        self.runner.save(plan, path)
        return plan

    def efficiency(self, unit: Unit, plan) -> dict:
        """results/<model>/efficiency.json as harness/tasks/efficiency.py writes it (reused when its
        plan fingerprint matches), against the full model measured once in this work dir."""
        from harness.tasks.efficiency import measure, summary

        path = results_path(unit.folder, self.lm.abbr, "efficiency")
        fp = plan.fingerprint() if plan is not None else None
        settings = SimpleNamespace(**self.suite.efficiency)
        saved = read_json(path)
        if saved is not None and saved.get("details", {}).get("plan_fingerprint") == fp \
                and saved["details"].get("settings") == self.suite.efficiency:
            return saved
        reference = self.reference(settings)
        measured = reference if plan is None else measure(self.lm.model, settings, self._config, plan, None)
        result = summary(measured, reference, settings)
        result["details"] = {"model": measured, "reference": reference, "plan_fingerprint": fp,
                             "device": str(self.lm.device), "dtype": str(next(self.lm.model.parameters()).dtype),
                             "settings": self.suite.efficiency}
        atomic_write_json(path, result)
        return result

    def reference(self, settings) -> dict:
        """The full model's measurement: DIR/full's when saved, else measured now (plan swapped out)."""
        if self._reference is None:
            saved = read_json(results_path(self.work_dir / "full", self.lm.abbr, "efficiency"))
            if saved is not None and saved["details"].get("settings") == self.suite.efficiency:
                self._reference = saved["details"]["reference"]
            else:
                from harness.tasks.efficiency import measure

                installed = getattr(self.lm.model, "compression_plan", None)
                self.runner.evaluator.use(None)
                self._reference = measure(self.lm.model, settings, self._config, None, None)
                self.runner.evaluator.use(installed)
        return self._reference


class SearchRow:
    """A registered search (EEP) at one budget, run through PlanRunner.search in its own folder,
    with the fitness measured on the row's train items; its finalists become units."""

    def __init__(self, comparison: Comparison, row: Row, budget: int, folder: Path):
        self.c, self.row, self.budget, self.folder = comparison, row, budget, folder
        self._plans = None

    def finalist_names(self) -> list[str]:
        return ["best", "prune_only"]  # EEP's finalists (harness/search/evolution.py: EEPSearch.finalists)

    def train_task(self) -> EvalTask:
        train = self.row.options["train"]
        if "cfg" in train:
            return self.c.run.task(train["cfg"], f"method {self.row.label} train cfg")
        bench = next(b for b in self.c.suite.benchmarks if b.abbr == train["benchmark"])
        if bench.dataset.get("subset"):
            raise HarnessError(f"method {self.row.label}: benchmark {bench.abbr} already has a subset; "
                               "give train=dict(cfg=...) instead")
        dataset = {**bench.dataset, "abbr": f"{bench.abbr}_train", "subset": dict(range=list(train["range"]))}
        return EvalTask(dataset, self.c.run.args.data_root)

    def plan_maker(self, name: str):
        def make():
            if self._plans is None:
                self._plans = self.search()
            if name not in self._plans:
                raise HarnessError(f"search {self.row.name} has no finalist {name!r}; it gives {sorted(self._plans)}")
            return self._plans[name]
        return make

    def search(self) -> dict:
        from harness.search.base import search
        from harness.search.space import Candidate
        from harness.tasks.search import check_same_search

        chosen = search(self.row.name, **self.row.settings)
        groups = self.row.options["groups"]
        train_task = self.train_task()
        settings = {"budget": self.budget, "groups": groups, "model": self.c.run.model_cfg["path"],
                    "train": train_task.abbr, "metric": None, **chosen.settings()}
        if self.row.name != "eep":
            settings["search"] = self.row.name
        check_same_search(self.folder, settings)
        runner = self.c.runner
        runner.check_budget(self.budget)
        space = runner.plan_space(self.budget, groups)
        atomic_write_json(self.folder / "search" / "settings.json", settings)
        shared_run, runner.run = runner.run, replace(self.c.run, work_dir=self.folder)  # the ledger's folder
        try:
            records, _ = runner.search(chosen, space, train_task)
        finally:
            runner.run = shared_run
        plans = {}
        for name, ranked in chosen.finalists(records).items():
            slot = runner.choose(records, ranked, space, None, None)
            plans[name] = space.to_plan(Candidate.from_dict(records[slot]["candidate"]), metadata={
                "method": f"{self.row.name}_search", "phase": name, "slot": slot,
                "train_fitness": records[slot]["fitness"], "budget": self.budget, "groups": groups,
                "seed": chosen.settings().get("seed")})
            runner.save(plans[name], self.folder / f"{name}_plan.safetensors")
        return plans
