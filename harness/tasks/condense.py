"""CD-MoE as a task: find the condensed layers (greedy expert and layer search), save the plan, evaluate it.

    python harness/tasks/condense.py CONFIG --model_path P --condense_layers N --condense_experts K
        --work_dir DIR [--calib_data FILE | --calib_cfg CFG [CFG ...]] [--calib_samples 100]
        [--calib_seq_len 256] [--calib_batch_size 8] [--beam 1] [--weight_rule gate|routed]
        [--data_root DIR] [--batch_size N] [--max_num N]

Calibration (the paper's recipe): the first ``--calib_samples`` documents of ``--calib_data`` (JSONL
with a ``text`` field; default the first C4 train shard in ../shared/data/c4), each cut to
``--calib_seq_len`` tokens, or the prompts of one or more dataset configs (``--calib_cfg``, shared
between them in turn). Every MoE layer gets its greedy expert order (up to K), then N layers are
chosen greedily (beam ``--beam``), each condensed to its first K experts with their mean gate
weights; K=0 keeps only the shared experts. See docs/CD_MOE.md.

Writes DIR/cd_moe/expert_weights.json, DIR/cd_moe/expert_orders.json (per MoE layer the ordered
experts and each step's divergence), DIR/cd_moe/layer_order.e<K>.beam<B>.json (every evaluated layer
sequence, the kept beams per step, the order), DIR/plan.safetensors, DIR/cd_moe/summary.json (memory
and speed of the condensed model against the full one) and the evaluation of CONFIG with the plan
(DIR/predictions, DIR/results, as infer.py). Every result is saved as soon as it is found: rerun a
killed command and it continues where it stopped, with the same result.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import torch

from harness import distributed
from harness.cli import main_guard
from harness.compress.adapters import resolve
from harness.compress.materialize import parameter_stats
from harness.errors import HarnessError
from harness.io import atomic_write_json
from harness.methods import cd_moe
from harness.methods.calibration import task_texts
from harness.run import Run, add_run_arguments, int_at_least, make_parser, positive_int
from harness.runner import PlanRunner

log = logging.getLogger("harness.condense")
DEFAULT_CALIB = "../shared/data/c4/c4-train.00000-of-01024.first1041.jsonl"


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
    parser.add_argument("--calib_seq_len", type=positive_int, default=256, help="tokens per document (default 256)")
    parser.add_argument("--calib_batch_size", type=positive_int, default=8, help="documents per forward (default 8)")
    parser.add_argument("--beam", type=positive_int, default=1, help="beam width of the layer search (default 1)")
    parser.add_argument("--weight_rule", choices=cd_moe.WEIGHT_RULES, default="gate",
                        help="gate: mean score over all E given selection, not renormalised (the paper's); "
                             "routed: the weight the model applies (renormalised / scaled)")
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
    documents = [tokens for tokens in (lm.encode(t)[: args.calib_seq_len] for t in texts) if tokens]
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


def forward_seconds(model, batches: list[cd_moe.Batch], repeats: int = 3) -> float:
    """Best of ``repeats`` timings of one forward over every calibration batch."""
    best = float("inf")
    with torch.no_grad():
        for _ in range(repeats):
            start = time.perf_counter()
            for batch in batches:
                model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - start)
    return best


def footprint(runner: PlanRunner, plan, batches: list[cd_moe.Batch]) -> dict:
    model = runner.lm.model
    tokens = sum(int(b.attention_mask.sum()) for b in batches)
    runner.evaluator.use(None)
    full, full_s = parameter_stats(model), forward_seconds(model, batches)
    runner.evaluator.use(plan)
    condensed, condensed_s = parameter_stats(model), forward_seconds(model, batches)
    return {"parameters": {"full": full.count, "condensed": condensed.count},
            "parameter_bytes": {"full": full.bytes, "condensed": condensed.bytes,
                                "ratio": round(condensed.bytes / full.bytes, 4)},
            "forward_tokens_per_second": {"full": round(tokens / full_s, 1), "condensed": round(tokens / condensed_s, 1),
                                          "speedup": round(full_s / condensed_s, 3)}}


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


@main_guard
def main(argv=None) -> int:
    args = parse_args(argv)
    calib_data = None if args.calib_cfg else (args.calib_data or DEFAULT_CALIB)
    run = Run.prepare(args, calib_data=calib_data)
    runner = PlanRunner(run, run.load_model())
    model, k, n = runner.lm.model, args.condense_experts, args.condense_layers
    check_model(model, n, k)
    documents, source = calibration_documents(run, runner.lm, args)
    run.start()
    progress = Progress(run.work_dir, settings_fingerprint(runner.lm, documents, args), k, args.beam)
    batches = cd_moe.make_batches(documents, runner.lm.pad_token_id, args.calib_batch_size, runner.lm.device)
    runner.evaluator.use(None)
    calib = cd_moe.calibrate(model, batches, args.weight_rule)
    expert_weights(progress, calib, args.weight_rule)
    experts = expert_orders(model, progress, calib, k)
    steps = layer_order(model, progress, calib, experts, n, args.beam)
    chosen = steps[-1][0]["layers"]
    plan = cd_moe.condensed_plan(model, {i: experts[i] for i in chosen}, calib.weights, method="cd_moe",
                                 condense_layers=n, condense_experts=k, beam=args.beam, weight_rule=args.weight_rule,
                                 layer_order=chosen, calibration=f"{source} ({len(documents)} documents)",
                                 calibration_fingerprint=progress.fingerprint)
    del calib  # the layer caches; the evaluation needs the memory
    plan_path = runner.save(plan, run.work_dir / "plan.safetensors")
    summary = {"layer_order": chosen, "experts": {str(i): experts[i] for i in chosen},
               "divergence": steps[-1][0]["divergence"], **footprint(runner, plan, batches)}
    if distributed.is_main():
        atomic_write_json(progress.folder / "summary.json", summary)
    run.print(f"condensed layers {chosen} (K={k}): parameters {summary['parameter_bytes']['ratio']:.1%} of the full "
              f"model's bytes, forward {summary['forward_tokens_per_second']['speedup']}x the full model's speed")
    for abbr, metrics in runner.evaluate(plan, run.work_dir).items():
        runner.report(f"{runner.lm.abbr}/{abbr} cd_moe N={n} K={k}", metrics)
    run.print(f"plan: {plan_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
