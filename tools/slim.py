"""Expert slimming: prune weights inside experts with Wanda or SparseGPT and save the checkpoint.

    python tools/slim.py --model_path P [--coeff_path PLAN] --method wanda|sparsegpt
        (--sparsity 0.5 | --pattern 2:4) [--calib_data FILE | --calib_cfg CFG] --out DIR
        [--targets routed,shared,attention] [--calib_samples N] [--calib_seq_len L]
        [--one_pass] [--blocksize 128] [--damp 0.01] [--dtype auto] [--batch_size 8] [--data_root D]

Routed experts by default (each expert's statistics over the tokens routed to it), shared experts
and attention on request; routers never. ``--coeff_path`` applies a trimming plan first and slims
the experts that remain (the folder is then written as ``tools/materialize.py`` writes that plan).
Calibration: ``--calib_data`` a JSONL corpus with a ``text`` field (shuffled with seed 42, cut into
--calib_samples x --calib_seq_len tokens; default 128 x 2048, at most the model's max_seq_len),
or ``--calib_cfg`` a dataset config whose prompts are the samples (default 128).
Writes DIR (temporary folder renamed into place) with the weights, the tokenizer and
``slimming.json``: method, sparsity or pattern, targets, calibration, tokens routed to each expert
and the sparsity measured per layer. ``harness/tasks/infer.py CONFIG --model_path DIR`` evaluates it.
"""
from __future__ import annotations

import logging
import shlex
import sys
import time
from pathlib import Path

from harness.cli import apply_compression, main_guard
from harness.errors import HarnessError
from harness.io import atomic_write_json

log = logging.getLogger("harness.slim")
DEFAULT_SAMPLES, DEFAULT_SEQ_LEN = 128, 2048


def parse_args(argv):
    from harness.config import DTYPES
    from harness.run import make_parser, positive_int

    parser = make_parser(__doc__)
    parser.add_argument("--model_path", required=True, help="a transformers model folder (or a materialized one)")
    parser.add_argument("--coeff_path", help="a trimming plan applied before slimming")
    parser.add_argument("--method", required=True, help="wanda or sparsegpt")
    size = parser.add_mutually_exclusive_group(required=True)
    size.add_argument("--sparsity", type=float, help="unstructured: fraction of each weight pruned, in (0, 1)")
    size.add_argument("--pattern", help="N:M: N weights kept of every M consecutive inputs (2:4, 4:8)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--calib_data", help="JSONL calibration corpus with a 'text' field")
    source.add_argument("--calib_cfg", help="dataset config whose prompts are the calibration samples")
    parser.add_argument("--calib_samples", type=positive_int, help=f"calibration samples (default {DEFAULT_SAMPLES})")
    parser.add_argument("--calib_seq_len", type=positive_int, help="tokens per sample (default 2048, at most max_seq_len)")
    parser.add_argument("--data_root", help="replaces the ./data prefix of --calib_cfg's data paths")
    parser.add_argument("--targets", default="routed", help="comma-separated: routed (default), shared, attention")
    parser.add_argument("--one_pass", action="store_true",
                        help="all layers' statistics from one pass of the unpruned model (default: layer by layer)")
    parser.add_argument("--blocksize", type=positive_int, default=128, help="SparseGPT column block (default 128)")
    parser.add_argument("--damp", type=float, default=0.01, help="SparseGPT dampening of the Hessian (default 0.01)")
    parser.add_argument("--dtype", default="auto", choices=DTYPES, help="load and save dtype (default: the checkpoint's)")
    parser.add_argument("--batch_size", type=positive_int, default=8, help="calibration batch size")
    parser.add_argument("--out", required=True, help="the folder to write (must not exist or be empty)")
    return parser.parse_args(argv)


def check_args(args):
    """Every argument checked before the model loads; returns (Sparsity, target kinds)."""
    from harness.slimming.masks import parse_pattern, unstructured
    from harness.slimming.slim import METHODS
    from harness.slimming.targets import parse_kinds

    if args.method not in METHODS:
        raise HarnessError(f"--method {args.method!r} is not one of {', '.join(METHODS)}")
    sparsity = unstructured(args.sparsity) if args.sparsity is not None else parse_pattern(args.pattern)
    kinds = parse_kinds(args.targets)
    if not args.damp > 0:
        raise HarnessError(f"--damp {args.damp} must be positive (the reference uses 0.01)")
    if not (Path(args.model_path) / "config.json").is_file():
        raise HarnessError(f"--model_path {args.model_path} has no config.json; pass a transformers model folder")
    for name in ("coeff_path", "calib_data", "calib_cfg"):
        value = getattr(args, name)
        if value and not Path(value).is_file():
            raise HarnessError(f"--{name} {value} not found; pass an existing file")
    check_widths(args.model_path, sparsity, kinds)
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise HarnessError(f"--out {out} already exists and is not empty; choose a new folder")
    return sparsity, kinds


def check_widths(model_path, sparsity, kinds) -> None:
    """An N:M pattern must divide the routed experts' input widths (hidden size, expert width),
    read from config.json before the model loads; every target is checked again once loaded."""
    if not sparsity.is_nm or "routed" not in kinds:
        return
    import json

    from harness.compress.adapters import ResolvedMoE

    config = json.loads((Path(model_path) / "config.json").read_text(encoding="utf-8"))
    facts = ResolvedMoE.from_config(config)
    sparsity.check_width(facts.hidden_size, "the hidden size (gate_up_proj's input)")
    if facts.intermediate_size is not None:
        sparsity.check_width(facts.intermediate_size, "the expert width (down_proj's input)")


def calibration(args, lm):
    """The calibration samples (CalibrationData) the arguments name."""
    from harness.methods.calibration_data import corpus_samples, prompt_samples

    if args.calib_data:
        seq_len = args.calib_seq_len or min(DEFAULT_SEQ_LEN, lm.max_seq_len)
        if seq_len > lm.max_seq_len:
            raise HarnessError(f"--calib_seq_len {seq_len} exceeds the model's max_seq_len {lm.max_seq_len}; pass a smaller one")
        data = corpus_samples(args.calib_data, lm.encode, args.calib_samples or DEFAULT_SAMPLES, seq_len)
    else:
        from harness.config import dataset_configs, load_config
        from harness.pipeline import EvalTask

        datasets = dataset_configs(load_config(args.calib_cfg))
        if len(datasets) != 1:
            raise HarnessError(f"--calib_cfg {args.calib_cfg} defines {len(datasets)} datasets; it must define exactly one")
        task = EvalTask(datasets[0], args.data_root)
        data = prompt_samples([task], lm, args.calib_samples or DEFAULT_SAMPLES, args.calib_seq_len, args.calib_cfg)
    if data.note:
        log.warning(data.note)
    return data


def save(lm, plan, out: Path, record: dict) -> None:
    """The checkpoint and its record in a temporary folder beside ``out``, renamed into place."""
    from harness.compress import materialize
    from harness.compress.materialize import _atomic_dir
    from harness.slimming.record import RECORD_FILE

    def write(folder: Path) -> None:
        if plan is None:
            lm.model.save_pretrained(folder)
            lm.tokenizer.save_pretrained(folder)
        else:  # trimmed as tools/materialize.py writes the plan (the folder is empty: materialize takes it)
            record["checkpoint_kind"] = materialize(lm.model, plan, folder, tokenizer=lm.tokenizer).kind
        atomic_write_json(folder / RECORD_FILE, record)

    _atomic_dir(out, write)


def run(argv=None) -> int:
    args = parse_args(argv)
    sparsity, kinds = check_args(args)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from mmengine.config import Config

    from harness.config import model_config
    from harness.efficiency.memory import footprint
    from harness.registry import MODELS, build
    from harness.slimming.record import measure
    from harness.slimming.slim import check, slim

    lm = build(MODELS, model_config(Config({}), args.model_path, batch_size=args.batch_size, dtype=args.dtype))
    apply_compression(lm, args.coeff_path)
    model = lm.model
    check(model, args.method, sparsity, kinds)  # pattern widths and targets: before any weight changes
    data = calibration(args, lm)
    before = measure(model, kinds)
    started = time.time()
    seen = slim(model, data.samples, args.method, sparsity, kinds, pad_token_id=lm.pad_token_id,
                batch_size=args.batch_size, sequential=not args.one_pass, blocksize=args.blocksize, damp=args.damp)
    measured = measure(model, kinds)
    layers = {i: {"measured_sparsity": measured["layers"][i], **seen.get(i, {})} for i in measured["layers"]}
    record = {
        "format": 1,
        "method": args.method,
        **sparsity.describe(),
        "targets": list(kinds),
        "calibration": {"source": data.source, "samples": len(data.samples),
                        "tokens": sum(len(s) for s in data.samples)},
        "sequential": not args.one_pass,
        **({"blocksize": args.blocksize, "damp": args.damp} if args.method == "sparsegpt" else {}),
        "base_model": args.model_path,
        "coeff_path": args.coeff_path,
        "measured_sparsity": measured["overall"],
        "zeros_before": before["zeros"],
        "target_weights": measured["weights"],
        "layers": layers,
        "model_bytes": footprint(model)["model_bytes"],
        "seconds": round(time.time() - started, 1),
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "command": " ".join(shlex.quote(a) for a in ["python", "tools/slim.py", *(argv if argv is not None else sys.argv[1:])]),
    }
    save(lm, getattr(model, "compression_plan", None), Path(args.out), record)
    print(f"wrote {args.method} {sparsity.describe()} checkpoint to {args.out}: measured sparsity "
          f"{measured['overall']:.4f} of {measured['weights']:,} target weights")
    return 0


main = main_guard(run)

if __name__ == "__main__":
    raise SystemExit(main())
