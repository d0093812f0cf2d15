"""A search for an expert pruning/merging plan (EEP's evolution by default), as a task.

    python harness/tasks/search.py CONFIG --model_path P --budget B --work_dir DIR
        [--search eep] [--train_cfg FILE] [--dev_cfg FILE] [--search_cfg FILE] [--groups 4|32|layer]
        [--seed S] [--top_k K] [--eep_format] [--data_root DIR] [--batch_size N] [--metric NAME] [--max_num N]

CONFIG is the dataset config of the final evaluation; fitness is the metric on --train_cfg's data
(defaults to CONFIG itself, with a warning), optional re-scoring of the best candidates on
--dev_cfg. The search settings default to the released values (harness/search/evolution.py);
--search_cfg is a python file with ``search = dict(...)`` overriding them. Searches are registered
by name (``harness.registry.SEARCHES``); ``--search`` picks one.

Writes DIR/search/evals/*.json (one per evaluated candidate, as soon as it is scored), DIR/fitness.png,
DIR/<finalist>_plan.safetensors for each of the search's finalists (EEP: prune_only and best; .pth
too with --eep_format), and the eval-split predictions/results of each (DIR/<finalist>/... and, for
best, DIR/...). Rerunning the command resumes; running it several times at once (several processes
or machines on one DIR, or torchrun ranks, each on its own GPU) shares the work. The result depends
on ``parallel_width`` (candidates proposed from one population snapshot), not on how many workers
ran: under torchrun it defaults to the number of ranks.

The terminal gets one line per finished evaluation (count, phase, fitness, best so far, time per
evaluation and time left; ``harness/search/progress.py``), a resume says how many evaluations were
cached, and the dev re-scoring of the finalists is announced.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from harness import distributed
from harness.cli import main_guard
from harness.config import load_config
from harness.errors import HarnessError
from harness.io import atomic_write, atomic_write_json
from harness.run import Run, add_run_arguments, make_parser, positive_int
from harness.runner import PlanRunner
from harness.search.base import search
from harness.search.ledger import Ledger
from harness.search.space import Candidate

log = logging.getLogger("harness.search")


def parse_args(argv=None):
    parser = make_parser(__doc__)
    add_run_arguments(parser, "dataset config of the final evaluation")
    parser.add_argument("--budget", type=positive_int, required=True, help="experts kept per MoE layer")
    parser.add_argument("--search", default="eep", help="registered search (default: eep)")
    parser.add_argument("--train_cfg", help="dataset config whose score is the fitness")
    parser.add_argument("--dev_cfg", help="dataset config to re-score the best candidates of each phase")
    parser.add_argument("--search_cfg", help="python file with `search = dict(...)` overriding the settings")
    parser.add_argument("--groups", default="4", help="4 (EEP), 32 or 'layer' (per layer), or any count")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--top_k", type=positive_int, help="also reduce the active experts per token to K")
    parser.add_argument("--eep_format", action="store_true", help="also write the plans as EEP .pth files")
    parser.add_argument("--metric", help="metric to maximise (default: the evaluator's first)")
    return parser.parse_args(argv)


def search_settings(args) -> dict:
    values = {}
    if args.search_cfg:
        values.update(dict(load_config(args.search_cfg).get("search") or {}))
    if distributed.launched_world_size() > 1:  # torchrun: every rank is a worker on the same population
        values.setdefault("parallel_width", distributed.launched_world_size())
    if args.seed is not None:
        values["seed"] = args.seed
    if args.top_k is not None:
        values["top_k"] = args.top_k
    return values


def check_same_search(work_dir: Path, settings: dict) -> None:
    """A work dir holds one search: refuse to resume with different settings (nothing is written)."""
    path = work_dir / "search" / "settings.json"
    if path.exists():
        previous = json.loads(path.read_text())
        if previous != settings:
            changed = sorted(k for k in set(previous) | set(settings) if previous.get(k) != settings.get(k))
            raise HarnessError(
                f"{work_dir} holds a search with other settings ({', '.join(changed)}); use a new --work_dir"
            )


def plot_fitness(records: dict[int, dict], boundary: int | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    slots = sorted(records)
    values = [records[i]["fitness"] for i in slots]
    running, best = [], float("-inf")
    for v in values:
        best = max(best, v)
        running.append(best)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.scatter(slots, values, s=8, alpha=0.6, label="candidate")
    ax.plot(slots, running, color="C3", label="best so far")
    if boundary is not None:
        ax.axvline(boundary - 0.5, color="grey", linestyle="--", linewidth=1)
    ax.set_xlabel("evaluation")
    ax.set_ylabel("fitness (train metric)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)


def announce_rescoring(name: str, ranked: list[int], dev_abbr: str, dev_ledger: Ledger) -> None:
    """Say that the finalists are re-scored on the dev data (one inference pass each, none for cached ones)."""
    cached = sum(slot in dev_ledger.finished() for slot in ranked)
    print(f"{name}: re-scoring its {len(ranked)} best candidates by train fitness on {dev_abbr} "
          f"({cached} cached in {dev_ledger.root}) to choose the plan", flush=True)


@main_guard
def main(argv=None) -> int:
    args = parse_args(argv)
    # search workers (torchrun ranks included) share the work through the ledger, not a process group
    run = Run.prepare(args, process_group=False, train_cfg=args.train_cfg, dev_cfg=args.dev_cfg,
                      search_cfg=args.search_cfg)
    if len(run.tasks) != 1:
        raise HarnessError(f"config {args.config} defines {len(run.tasks)} datasets; a search needs exactly one")
    eval_task = run.tasks[0]
    if args.train_cfg:
        train_task = run.task(args.train_cfg, "--train_cfg")
    else:
        log.warning("no --train_cfg: the fitness is measured on the evaluation data itself")
        train_task = eval_task
    dev_task = run.task(args.dev_cfg, "--dev_cfg") if args.dev_cfg else None
    chosen_search = search(args.search, **search_settings(args))
    settings = {"budget": args.budget, "groups": str(args.groups), "model": run.model_cfg["path"],
                "train": train_task.abbr, "metric": args.metric, **chosen_search.settings()}
    if args.search != "eep":  # EEP's settings files predate --search; others record their name
        settings["search"] = args.search
    check_same_search(run.work_dir, settings)

    runner = PlanRunner(run, run.load_model(), metric=args.metric)
    runner.check_budget(args.budget)
    space = runner.plan_space(args.budget, args.groups)
    run.start()
    atomic_write_json(run.work_dir / "search" / "settings.json", settings)

    records, ledger = runner.search(chosen_search, space, train_task)
    boundary = getattr(getattr(chosen_search, "cfg", None), "prune_evals", None)
    plot_fitness(records, boundary, run.work_dir / "fitness.png")
    if not runner.claim_final(ledger):
        print("another worker is running the final evaluation of this search")
        return 0

    dev_ledger = Ledger(run.work_dir / "search" / "dev") if dev_task is not None else None
    for name, ranked in chosen_search.finalists(records).items():
        if dev_task is not None:
            announce_rescoring(name, ranked, dev_task.abbr, dev_ledger)
        slot = runner.choose(records, ranked, space, dev_task, dev_ledger)
        if dev_task is not None:
            print(f"{name}: evaluation {slot} chosen, {dev_task.abbr} {dev_ledger.finished()[slot]['fitness']:.2f}; "
                  f"evaluating it on {eval_task.abbr}")
        plan = space.to_plan(Candidate.from_dict(records[slot]["candidate"]), metadata={
            "method": f"{args.search}_search", "phase": name, "slot": slot,
            "train_fitness": records[slot]["fitness"], "budget": args.budget, "groups": str(args.groups),
            "seed": chosen_search.settings().get("seed"),
        })
        runner.save(plan, run.work_dir / f"{name}_plan.safetensors", eep_format=args.eep_format)
        out_dir = run.work_dir if name == "best" else run.work_dir / name
        metrics = runner.evaluate(plan, out_dir, [eval_task])[eval_task.abbr]
        run.print(f"{name}: evaluation {slot}, train fitness {records[slot]['fitness']:.2f}, "
                  f"{eval_task.abbr} {json.dumps(metrics)}")
    runner.release_final(ledger)
    log.info("plan swaps: %d, %.3f s each", runner.evaluator.swaps,
             runner.evaluator.swap_seconds / max(1, runner.evaluator.swaps))
    run.print(f"best plan: {run.work_dir / 'best_plan.safetensors'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
