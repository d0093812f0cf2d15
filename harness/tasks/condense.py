"""CD-MoE as a task: find the condensed layers (greedy expert and layer search), save the plan, evaluate it.

    python harness/tasks/condense.py CONFIG --model_path P --condense_layers N --condense_experts K
        --work_dir DIR [--calib_data FILE | --calib_cfg CFG [CFG ...]] [--calib_samples 100]
        [--calib_seq_len 256] [--calib_batch_size 8] [--beam 1] [--weight_rule gate|routed]
        [--skip_efficiency] [--data_root DIR] [--batch_size N] [--max_num N]

Calibration (the paper's recipe): the first ``--calib_samples`` documents of ``--calib_data`` (JSONL
with a ``text`` field; default the first C4 train shard in ../shared/data/c4), each cut to
``--calib_seq_len`` tokens (default 256, at most the model's max_seq_len), or the prompts of one
or more dataset configs (``--calib_cfg``, shared between them in turn; ``--max_num`` caps them too). Every MoE layer gets its greedy expert order (up to K), then N layers are
chosen greedily (beam ``--beam``), each condensed to its first K experts with their mean gate
weights; K=0 keeps only the shared experts. See docs/CD_MOE.md.

Writes DIR/cd_moe/expert_weights.json, DIR/cd_moe/expert_orders.json (per MoE layer the ordered
experts and each step's divergence), DIR/cd_moe/layer_order.e<K>.beam<B>.json (every evaluated layer
sequence, the kept beams per step, the order), DIR/plan.safetensors, DIR/results/<model>/efficiency.json
(memory and speed of the condensed model against the full one, measured in the same process by
``harness/tasks/efficiency.py``'s functions, so ``tools/summarize.py`` shows it beside the accuracies),
DIR/cd_moe/summary.json (the choices, the divergence and those numbers) and the evaluation of CONFIG
with the plan (DIR/predictions, DIR/results, as infer.py). Every result is saved as soon as it is
found: rerun a killed command and it continues where it stopped, with the same result.
"""
from __future__ import annotations

import copy
import gc
import hashlib
import json
import logging
from pathlib import Path
from types import SimpleNamespace

import torch

from harness import distributed
from harness.cli import main_guard
from harness.compress.adapters import resolve
from harness.compress.condensed import CondensedExperts
from harness.efficiency.memory import storage_bytes
from harness.errors import HarnessError
from harness.io import atomic_write_json, results_path
from harness.methods import cd_moe
from harness.methods.calibration import task_texts
from harness.run import Run, add_run_arguments, int_at_least, make_parser, positive_int
from harness.runner import PlanRunner
from harness.tasks import efficiency

log = logging.getLogger("harness.condense")
# The paper's calibration: the first 100 documents of C4 train shard 00000 (../shared beside the repository).
DEFAULT_CALIB = str(Path(__file__).resolve().parents[2].parent / "shared" / "data" / "c4" /
                    "c4-train.00000-of-01024.first1041.jsonl")
DEFAULT_SEQ_LEN = 256


non_negative_int = int_at_least(0)


def parse_args(argv=None):
    parser = make_parser(__doc__)
    add_run_arguments(parser)
    parser.add_argument("--condense_layers", type=positive_int, required=True, help="N: MoE layers to condense")
    parser.add_argument("--condense_experts", type=non_negative_int, required=True,
                        help="K: experts each condensed layer keeps (0: shared experts only)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--calib_data", help=f"JSONL file with a `text` field (default {DEFAULT_CALIB})")
    source.add_argument("--calib_cfg", nargs="+", help="dataset config(s) whose prompts calibrate instead")
    parser.add_argument("--calib_samples", type=positive_int, default=100, help="calibration documents (default 100)")
    parser.add_argument("--calib_seq_len", type=positive_int,
                        help=f"tokens per document (default {DEFAULT_SEQ_LEN}, at most the model's max_seq_len)")
    parser.add_argument("--calib_batch_size", type=positive_int, default=8, help="documents per forward (default 8)")
    parser.add_argument("--beam", type=positive_int, default=1, help="beam width of the layer search (default 1)")
    parser.add_argument("--weight_rule", choices=cd_moe.WEIGHT_RULES, default="gate",
                        help="gate: mean score over all E given selection, not renormalised (the paper's); "
                             "routed: the weight the model applies (renormalised / scaled)")
    parser.add_argument("--skip_efficiency", action="store_true",
                        help="do not measure the condensed model's memory and speed (efficiency.json)")
    return parser.parse_args(argv)


# ----------------------------------------------------------------------------------------------
# Calibration documents.


def corpus_texts(path: str, limit: int) -> list[str]:
    """The ``text`` of the first ``limit`` records of a JSONL file that have one."""
    texts = []
    try:
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if len(texts) >= limit:
                    break
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    raise HarnessError(f"--calib_data {path}: line {number} is not JSON; pass a JSONL file") from None
                text = record.get("text") if isinstance(record, dict) else None
                if isinstance(text, str) and text.strip():
                    texts.append(text)
    except OSError as exc:
        raise HarnessError(f"--calib_data {path}: cannot be read ({exc.strerror}); pass a readable JSONL file") from None
    return texts


def calibration_length(lm, args) -> int:
    """Tokens per calibration document: ``--calib_seq_len`` (default 256), never past the model's positions."""
    requested = getattr(args, "calib_seq_len", None)
    if requested is None:
        return min(DEFAULT_SEQ_LEN, lm.max_seq_len)
    if requested > lm.max_seq_len:
        raise HarnessError(f"--calib_seq_len {requested} exceeds the model's max_seq_len {lm.max_seq_len}; pass a smaller one")
    return requested


def calibration_documents(run: Run, lm, args) -> tuple[list[list[int]], str]:
    """Token lists of the calibration documents and a description of their source."""
    if args.calib_cfg:
        tasks = [run.task(path, "--calib_cfg") for path in args.calib_cfg]
        share = -(-args.calib_samples // len(tasks))
        texts = [t for task in tasks for t in task_texts(task, lm, share)][: args.calib_samples]
        source, what = " ".join(args.calib_cfg), "--calib_cfg"
    else:
        source, what = args.calib_data or DEFAULT_CALIB, "--calib_data"
        texts = corpus_texts(source, args.calib_samples)
    length = calibration_length(lm, args)
    documents = [tokens for tokens in (lm.encode(t)[:length] for t in texts) if tokens]
    if not documents:
        raise HarnessError(f"{what} {source}: no text to calibrate on (need at least one non-empty sample)")
    if len(documents) < args.calib_samples:
        log.warning("%s %s gave %d of the %d calibration samples asked for", what, source, len(documents), args.calib_samples)
    return documents, source


def settings_fingerprint(lm, documents: list[list[int]], args) -> str:
    """Names what the searches' results depend on: model, calibration tokens, batching, weight rule."""
    digest = hashlib.sha256(json.dumps({"model": lm.identity, "batch": args.calib_batch_size,
                                        "weight_rule": args.weight_rule}, sort_keys=True, default=str).encode())
    digest.update(json.dumps(documents).encode())
    return digest.hexdigest()[:16]


# ----------------------------------------------------------------------------------------------
# Progress files (resume).


class Progress:
    """The search's JSON files in DIR/cd_moe, written atomically after every result (rank 0)."""

    def __init__(self, work_dir: Path, fingerprint: str, experts: int, beam: int):
        self.folder = work_dir / "cd_moe"
        self.fingerprint = fingerprint
        self.paths = {"weights": self.folder / "expert_weights.json", "experts": self.folder / "expert_orders.json",
                      "layers": self.folder / f"layer_order.e{experts}.beam{beam}.json"}
        self.data = {name: self._read(path) for name, path in self.paths.items()}

    def _read(self, path: Path) -> dict:
        if not path.exists():
            return {"fingerprint": self.fingerprint}
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise HarnessError(f"{path} cannot be read as JSON; delete it to search again") from None
        if not isinstance(data, dict) or data.get("fingerprint") != self.fingerprint:
            raise HarnessError(f"{path} holds a search with another model, calibration or weight rule; "
                               "use another --work_dir (or delete the file)")
        return data

    def write(self, name: str, **values) -> None:
        self.data[name].update(values)
        if distributed.is_main():
            atomic_write_json(self.paths[name], self.data[name])


def expert_weights(progress: Progress, calib: cd_moe.Calibration, weight_rule: str) -> None:
    """Use the saved weights of an earlier run (so a resumed search sees the same numbers), else save these."""
    saved = progress.data["weights"].get("layers")
    if saved:
        calib.weights = {int(k): torch.tensor(v["weights"], dtype=torch.float32) for k, v in saved.items()}
        return
    progress.write("weights", weight_rule=weight_rule, layers={
        str(i): {"weights": calib.weights[i].tolist(), "counts": calib.counts[i].tolist()} for i in sorted(calib.weights)})


def expert_orders(model, progress: Progress, calib: cd_moe.Calibration, k: int) -> dict[int, list[int]]:
    """The greedy expert order of every MoE layer, up to K (earlier results continue, never redone)."""
    layers = progress.data["experts"].setdefault("layers", {})
    orders = {}
    for index in resolve(model).moe_layers:
        saved = layers.get(str(index), {})

        def save(order, values, index=index):
            layers[str(index)] = {"experts": order, "divergences": values}
            progress.write("experts", layers=layers)
            log.info("layer %d: experts %s (divergence %.6g)", index, order, values[-1])

        order, _ = cd_moe.search_experts(model, calib, index, k, done=saved.get("experts"),
                                         divergences=saved.get("divergences"), on_step=save)
        orders[index] = order
    return orders


def layer_order(model, progress: Progress, calib: cd_moe.Calibration, experts: dict[int, list[int]],
                n: int, beam: int) -> list[dict]:
    data = progress.data["layers"]
    evaluated = data.setdefault("evaluated", [])
    known = {tuple(e["layers"]): e["divergence"] for e in evaluated}

    def save(sequence, value):
        evaluated.append({"layers": list(sequence), "divergence": value})
        progress.write("layers", evaluated=evaluated)

    steps = cd_moe.search_layers(model, calib, experts, n, beam=beam, known=known, on_result=save)
    saved_steps = data.get("steps", [])
    if len(steps) > len(saved_steps):
        progress.write("layers", steps=steps, order=steps[-1][0]["layers"])
    return steps


# ----------------------------------------------------------------------------------------------
# The condensed model's footprint and speed.


def efficiency_settings(lm, config, seq_len: int, batch_size: int) -> SimpleNamespace:
    """``harness/tasks/efficiency.py``'s settings at the calibration length: prefill at ``seq_len``,
    decode at batch 1 and the calibration batch size, all within the model's positions."""
    limit = min(lm.max_seq_len, getattr(config, "max_position_embeddings", None) or lm.max_seq_len)
    decode_context = max(1, min(128, limit // 2))
    decode_tokens = max(1, min(32, limit - decode_context))
    return SimpleNamespace(context_lengths=[min(seq_len, limit)], batch_sizes=sorted({1, batch_size}),
                           decode_context=decode_context, decode_tokens=decode_tokens, repeats=3, warmup=1)


def condensed_expert_bytes(model) -> int:
    """Bytes of the experts the condensed layers hold (efficiency.json's expert_bytes counts routed experts only)."""
    return storage_bytes([p for m in model.modules() if isinstance(m, CondensedExperts) for p in m.parameters()])


def measure_efficiency(runner: PlanRunner, plan, plan_path: Path, config, settings: SimpleNamespace) -> dict:
    """efficiency.json's numbers (``harness/tasks/efficiency.py``): the full model, then with the plan."""
    model = runner.lm.model
    efficiency.check_lengths(settings, config)
    runner.evaluator.use(None)
    reference = efficiency.measure(model, settings, config, None, None)
    runner.evaluator.use(plan)
    gc.collect()
    measured = efficiency.measure(model, settings, config, plan, None)
    result = efficiency.summary(measured, reference, settings)
    result["condensed_expert_bytes"] = condensed_expert_bytes(model)
    result["details"] = {"model": measured, "reference": reference, "plan": str(plan_path),
                         "device": str(runner.lm.device), "dtype": str(next(model.parameters()).dtype),
                         "settings": vars(settings)}
    return result


# ----------------------------------------------------------------------------------------------


def check_model(model, n: int, k: int) -> None:
    """N and K fit the model (one-line errors before anything is written)."""
    moe = resolve(model)
    if not moe.moe_layers:
        raise HarnessError(f"this {moe.model_type} model has no MoE layers; CD-MoE needs routed experts")
    if k > moe.num_experts:
        raise HarnessError(f"--condense_experts {k} is more than the model's {moe.num_experts} experts per layer")
    if n > len(moe.moe_layers):
        raise HarnessError(f"--condense_layers {n} is more than the model's {len(moe.moe_layers)} MoE layers")


def search_plan(run: Run, runner: PlanRunner, args, n: int, k: int, work_dir: Path):
    """CD-MoE's whole search on the loaded model: calibration documents, expert weights, each layer's
    expert order, the greedy layer order (each step saved in ``work_dir/cd_moe``, resumable), and the
    plan condensing the ``n`` chosen layers to ``k`` experts. Returns (plan, expert orders, layer steps).
    The comparison suite (harness/compare/runner.py) runs this same function."""
    model = runner.lm.model
    documents, source = calibration_documents(run, runner.lm, args)
    progress = Progress(work_dir, settings_fingerprint(runner.lm, documents, args), k, args.beam)
    batches = cd_moe.make_batches(documents, runner.lm.pad_token_id, args.calib_batch_size, runner.lm.device)
    runner.evaluator.use(None)
    calib = cd_moe.calibrate(model, batches, args.weight_rule)
    expert_weights(progress, calib, args.weight_rule)
    experts = expert_orders(model, progress, calib, k)
    steps = layer_order(model, progress, calib, experts, n, args.beam)
    chosen = steps[-1][0]["layers"]
    plan = cd_moe.condensed_plan(model, {i: experts[i] for i in chosen}, calib.weights, method="cd_moe",
                                 condense_layers=n, condense_experts=k, beam=args.beam, weight_rule=args.weight_rule,
                                 layer_order=chosen, calibration=f"{source} ({len(documents)} documents, "
                                 f"{calibration_length(runner.lm, args)} tokens at most)",
                                 calibration_fingerprint=progress.fingerprint, deviations=list(cd_moe.DEVIATIONS))
    del calib, batches  # the layer caches; the evaluation needs the memory
    gc.collect()
    return plan, experts, steps


@main_guard
def main(argv=None) -> int:
    args = parse_args(argv)
    calib_data = None if args.calib_cfg else (args.calib_data or DEFAULT_CALIB)
    run = Run.prepare(args, calib_data=calib_data)
    runner = PlanRunner(run, run.load_model())
    model, k, n = runner.lm.model, args.condense_experts, args.condense_layers
    check_model(model, n, k)
    config = copy.deepcopy(model.config)  # before a plan rewrites it, for the analytic FLOPs
    run.start()
    plan, experts, steps = search_plan(run, runner, args, n, k, run.work_dir)
    chosen = steps[-1][0]["layers"]
    plan_path = runner.save(plan, run.work_dir / "plan.safetensors")
    summary = {"layer_order": chosen, "experts": {str(i): experts[i] for i in chosen},
               "weights": {str(i): [float(w) for w in plan.layers[i].condensed_weights] if experts[i] else [] for i in chosen},
               "divergence": steps[-1][0]["divergence"]}
    if not args.skip_efficiency:
        settings = efficiency_settings(runner.lm, config, calibration_length(runner.lm, args), args.calib_batch_size)
        result = measure_efficiency(runner, plan, plan_path, config, settings)
        if distributed.is_main():
            atomic_write_json(results_path(run.work_dir, runner.lm.abbr, "efficiency"), result)
        summary["efficiency"] = {key: value for key, value in result.items() if key != "details"}
        prefill = result[f"prefill_speedup_ctx{settings.context_lengths[0]}"]
        run.print(f"condensed layers {chosen} (K={k}): {result['memory_ratio']:.1%} of the full model's bytes, "
                  f"prefill {prefill:.2f}x, decode {result['speedup']:.2f}x the full model's speed")
    if distributed.is_main():
        atomic_write_json(run.work_dir / "cd_moe" / "summary.json", summary)
    for abbr, metrics in runner.evaluate(plan, run.work_dir).items():
        runner.report(f"{runner.lm.abbr}/{abbr} cd_moe N={n} K={k}", metrics)
    run.print(f"plan: {plan_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
