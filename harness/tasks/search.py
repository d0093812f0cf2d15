"""EEP's evolutionary search for an expert pruning/merging plan, as a task.

    python harness/tasks/search.py CONFIG --model_path P --budget B --work_dir DIR
        [--train_cfg FILE] [--dev_cfg FILE] [--search_cfg FILE] [--groups 4|32|layer]
        [--seed S] [--top_k K] [--eep_format] [--data_root DIR] [--batch_size N] [--metric NAME]

CONFIG is the dataset config of the final evaluation; fitness is the metric on --train_cfg's data
(defaults to CONFIG itself, with a warning), optional re-scoring of the best candidates on
--dev_cfg. The search settings default to the released values (harness/search/evolution.py);
--search_cfg is a python file with ``search = dict(...)`` overriding them.

Writes DIR/search/evals/*.json (one per evaluated candidate, as soon as it is scored), DIR/fitness.png,
DIR/prune_only_plan.safetensors and DIR/best_plan.safetensors (and .pth with --eep_format), and the
eval-split predictions/results of both (DIR/prune_only/... and DIR/...). Rerunning the command
resumes; running it several times at once (several processes or machines on one DIR, or torchrun
ranks, each on its own GPU) shares the work. The result depends on ``parallel_width`` (candidates
proposed from one population snapshot), not on how many workers ran: under torchrun it defaults
to the number of ranks.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from harness import distributed
from harness.cli import add_run_arguments, main_guard, record_plan_identity, run_model_config, setup_work_dir
from harness.compress import save_plan
from harness.config import dataset_configs, load_config
from harness.errors import HarnessError
from harness.io import atomic_write, atomic_write_json
from harness.pipeline import EvalTask
from harness.registry import MODELS, build
from harness.search.evolution import EvolutionConfig, best_slots, run_evolution
from harness.search.fitness import PlanEvaluator
from harness.search.ledger import Ledger
from harness.search.space import Candidate

log = logging.getLogger("harness.search")
FINAL_CLAIM = 10**6  # ledger slot used as a lock so one worker runs the final evaluation


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(parser, "dataset config of the final evaluation")
    parser.add_argument("--budget", type=int, required=True, help="experts kept per MoE layer")
    parser.add_argument("--train_cfg", help="dataset config whose score is the fitness")
    parser.add_argument("--dev_cfg", help="dataset config to re-score the best candidates of each phase")
    parser.add_argument("--search_cfg", help="python file with `search = dict(...)` overriding the settings")
    parser.add_argument("--groups", default="4", help="4 (EEP), 32 or 'layer' (per layer), or any count")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--top_k", type=int, help="also reduce the active experts per token to K")
    parser.add_argument("--eep_format", action="store_true", help="also write the plans as EEP .pth files")
    parser.add_argument("--metric", help="metric to maximise (default: the evaluator's first)")
    return parser.parse_args(argv)


def search_settings(args) -> EvolutionConfig:
    values = {}
    if args.search_cfg:
        values.update(dict(load_config(args.search_cfg).get("search") or {}))
    if distributed.launched_world_size() > 1:  # torchrun: every rank is a worker on the same population
        values.setdefault("parallel_width", distributed.launched_world_size())
    if args.seed is not None:
        values["seed"] = args.seed
    if args.top_k is not None:
        values["top_k"] = args.top_k
    return EvolutionConfig.from_dict(values)


def single_task(path: str, data_root: str | None, what: str) -> EvalTask:
    datasets = dataset_configs(load_config(path))
    if len(datasets) != 1:
        raise HarnessError(f"{what} {path} defines {len(datasets)} datasets; a search needs exactly one")
    return EvalTask(datasets[0], data_root)


def check_same_search(work_dir: Path, settings: dict) -> None:
    """A work dir holds one search: refuse to resume with different settings."""
    path = work_dir / "search" / "settings.json"
    if path.exists():
        previous = json.loads(path.read_text())
        if previous != settings:
            changed = sorted(k for k in set(previous) | set(settings) if previous.get(k) != settings.get(k))
            raise HarnessError(
                f"{work_dir} holds a search with other settings ({', '.join(changed)}); use a new --work_dir"
            )
    else:
        atomic_write_json(path, settings)


def plot_fitness(records: dict[int, dict], cfg: EvolutionConfig, path: Path) -> None:
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
    ax.axvline(cfg.prune_evals - 0.5, color="grey", linestyle="--", linewidth=1)
    ax.set_xlabel("evaluation")
    ax.set_ylabel("fitness (train metric)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)


def choose(records, slots, cfg, dev_task, evaluator, space, dev_ledger) -> int:
    """The best slot of a phase: by train fitness, or by dev score among the top candidates."""
    top = best_slots(records, slots, max(1, cfg.rescore_top if dev_task else 1))
    if dev_task is None:
        return top[0]
    scores = {}
    for slot in top:
        done = dev_ledger.finished()
        if slot not in done:
            value, metrics = evaluator.score(space.to_plan(Candidate.from_dict(records[slot]["candidate"])), dev_task)
            dev_ledger.record(slot, {"fitness": value, "metrics": metrics})
            done = dev_ledger.finished()
        scores[slot] = done[slot]["fitness"]
    return max(top, key=lambda s: (scores[s], records[s]["fitness"], -s))


@main_guard
def main(argv=None) -> int:
    args = parse_args(argv)
    cfg = load_config(args.config)
    model_cfg = run_model_config(args, cfg)
    eval_task = single_task(args.config, args.data_root, "config")
    if args.train_cfg:
        train_task = single_task(args.train_cfg, args.data_root, "--train_cfg")
    else:
        log.warning("no --train_cfg: the fitness is measured on the evaluation data itself")
        train_task = eval_task
    dev_task = single_task(args.dev_cfg, args.data_root, "--dev_cfg") if args.dev_cfg else None
    settings = search_settings(args)
    work_dir = Path(args.work_dir)
    check_same_search(work_dir, {"budget": args.budget, "groups": str(args.groups), "model": model_cfg["path"],
                                 "train": train_task.abbr, "metric": args.metric, **settings.to_dict()})
    setup_work_dir(args.work_dir, cfg)

    if distributed.device_for_rank():
        model_cfg["device"] = distributed.device_for_rank()
    lm = build(MODELS, model_cfg)
    evaluator = PlanEvaluator(lm, metric=args.metric)
    space = evaluator.plan_space(args.budget, args.groups)
    ledger = Ledger(work_dir / "search")

    def fitness(candidate: Candidate):
        return evaluator.score(space.to_plan(candidate), train_task)

    records = run_evolution(space, settings, ledger, fitness,
                            on_result=lambda slot, value: log.info("evaluation %d: fitness %.2f", slot, value))
    plot_fitness(records, settings, work_dir / "fitness.png")
    if not ledger.claim(FINAL_CLAIM) and not (work_dir / "best_plan.safetensors").exists():
        print("another worker is running the final evaluation of this search")
        return 0

    dev_ledger = Ledger(work_dir / "search" / "dev")
    prune_slots = range(min(settings.prune_evals, settings.total_evals))
    chosen = {
        "prune_only": choose(records, prune_slots, settings, dev_task, evaluator, space, dev_ledger),
        "best": choose(records, range(settings.total_evals), settings, dev_task, evaluator, space, dev_ledger),
    }
    for name, slot in chosen.items():
        candidate = Candidate.from_dict(records[slot]["candidate"])
        plan = space.to_plan(candidate, metadata={
            "method": "eep_search", "phase": name, "slot": slot, "train_fitness": records[slot]["fitness"],
            "budget": args.budget, "groups": str(args.groups), "seed": settings.seed,
        })
        plan_path = work_dir / f"{name}_plan.safetensors"
        save_plan(plan, plan_path)
        if args.eep_format:
            save_plan(plan, plan_path.with_suffix(".pth"), format="eep")
        evaluator.use(plan)
        record_plan_identity(lm, plan_path)
        out_dir = work_dir if name == "best" else work_dir / "prune_only"
        metrics = eval_task.run(lm, out_dir)
        print(f"{name}: evaluation {slot}, train fitness {records[slot]['fitness']:.2f}, "
              f"{eval_task.abbr} {json.dumps(metrics)}")
    ledger.release(FINAL_CLAIM)
    log.info("plan swaps: %d, %.3f s each", evaluator.swaps, evaluator.swap_seconds / max(1, evaluator.swaps))
    print(f"best plan: {work_dir / 'best_plan.safetensors'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
