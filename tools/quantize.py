"""Quantise a model's linear weights with GPTQ or AWQ through llmcompressor (compressed-tensors format).

    python tools/quantize.py --model_path P --scheme gptq|awq [--bits 4]
        (--calib_data FILE | --calib_cfg CFG) [--calib_samples 128] [--calib_seq_len 2048]
        [--group_size 128] [--targets experts|all] --out DIR

P may be a trimmed (``tools/materialize.py``) and/or slimmed (``tools/slim.py``) folder, so "drop
experts, then quantise" is two commands. Routers (``mlp.gate``, ``shared_expert_gate``) and the LM
head are never quantised; ``--targets experts`` (default) quantises routed and shared experts only,
``all`` every other linear layer too (attention). The folder is written by llmcompressor's
``save_pretrained(save_compressed=True)`` (compressed-tensors: one quantised linear per expert, which
vLLM reads and ``harness/models/quantized.py`` unpacks into transformers' fused experts when
``infer.py --model_path DIR`` loads it), into a temporary folder renamed into place, with
``quantization_record.json`` beside it.

The backend is llmcompressor; it is not in this project's environment (0.14 pins transformers <=
5.17 and the project runs 5.24; gptqmodel 7.7 needs torch >= 2.14.1, the project pins 2.13). Without
it the command stops with a one-line error before the model loads; docs/SLIMMING.md gives the GPU
environment in which it runs. Every other argument is checked first, also without the library.
"""
from __future__ import annotations

import importlib.util
import shlex
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tools.slim, when run as a script

from harness.cli import main_guard
from harness.errors import HarnessError

SCHEMES = {  # scheme -> (llmcompressor preset per bit width)
    "gptq": {4: "W4A16", 8: "W8A16"},
    "awq": {4: "W4A16_ASYM"},
}
ROUTER_IGNORE = ["lm_head", "re:.*mlp\\.gate$", "re:.*shared_expert_gate$", "re:.*router.*"]
RECORD_FILE = "quantization_record.json"
INSTALL_HINT = ("pip install llmcompressor in its own environment on a GPU machine (it pins "
                "transformers<=5.17), see docs/SLIMMING.md")


def parse_args(argv):
    from harness.run import make_parser, positive_int

    parser = make_parser(__doc__)
    parser.add_argument("--model_path", required=True, help="a transformers model folder (trimmed or slimmed ones too)")
    parser.add_argument("--scheme", required=True, help="gptq or awq")
    parser.add_argument("--bits", type=positive_int, default=4, help="weight bits (gptq: 4 or 8; awq: 4)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--calib_data", help="JSONL calibration corpus with a 'text' field")
    source.add_argument("--calib_cfg", help="dataset config whose prompts are the calibration samples")
    parser.add_argument("--calib_samples", type=positive_int, default=128, help="calibration samples (default 128)")
    parser.add_argument("--calib_seq_len", type=positive_int, default=2048, help="tokens per sample (default 2048)")
    parser.add_argument("--data_root", help="replaces the ./data prefix of --calib_cfg's data paths")
    parser.add_argument("--group_size", type=positive_int, default=128,
                        help="weights per quantisation group (default 128); must divide hidden and intermediate sizes")
    parser.add_argument("--targets", default="experts", choices=("experts", "all"),
                        help="experts (default): routed and shared experts; all: every linear but routers and lm_head")
    parser.add_argument("--out", required=True, help="the folder to write (must not exist or be empty)")
    parser.add_argument("--dequantised_out", help="also write the quantised weights dequantised to a plain float checkpoint "
                        "(what loading --out does in memory; for tools that read only plain folders)")
    return parser.parse_args(argv)


def check_args(args) -> str:
    """Everything but the backend, before anything loads; returns the llmcompressor preset."""
    if args.scheme not in SCHEMES:
        raise HarnessError(f"--scheme {args.scheme!r} is not one of {', '.join(SCHEMES)}")
    presets = SCHEMES[args.scheme]
    if args.bits not in presets:
        raise HarnessError(f"--bits {args.bits} is not supported with --scheme {args.scheme}; use "
                           f"{' or '.join(map(str, presets))}")
    if not (Path(args.model_path) / "config.json").is_file():
        raise HarnessError(f"--model_path {args.model_path} has no config.json; pass a transformers model folder")
    for name in ("calib_data", "calib_cfg"):
        value = getattr(args, name)
        if value and not Path(value).is_file():
            raise HarnessError(f"--{name} {value} not found; pass an existing file")
    check_group_size(args)
    for name in ("out", "dequantised_out"):
        out = getattr(args, name) and Path(getattr(args, name))
        if out and out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise HarnessError(f"--{name} {out} already exists and is not empty; choose a new folder")
    return presets[args.bits]


def check_group_size(args) -> None:
    """Every quantised linear's input size (hidden, expert intermediate) must be a multiple of the group."""
    import json

    config = json.loads((Path(args.model_path) / "config.json").read_text())
    config = config.get("text_config", config)
    sizes = {k: config[k] for k in ("hidden_size", "intermediate_size", "moe_intermediate_size",
                                    "shared_expert_intermediate_size") if config.get(k)}
    bad = {k: v for k, v in sizes.items() if v % args.group_size}
    if bad:
        raise HarnessError(f"--group_size {args.group_size} does not divide {', '.join(f'{k}={v}' for k, v in bad.items())} "
                           f"of {args.model_path}; pass a --group_size that divides them")


def check_backend(scheme: str) -> None:
    """llmcompressor must be importable; it runs GPTQ on CPU, AWQ only with a GPU (checked 2026-12-02)."""
    if importlib.util.find_spec("llmcompressor") is None:
        raise HarnessError(f"--scheme {scheme} needs llmcompressor, which is not installed here; {INSTALL_HINT}")
    import torch

    if scheme == "awq" and not torch.cuda.is_available():  # llmcompressor 0.14 pins AWQ activations (pin_memory)
        raise HarnessError("--scheme awq needs a CUDA GPU (llmcompressor's AWQ pins memory, which fails on CPU); "
                           "use --scheme gptq here or run on a GPU machine")


def recipe(scheme: str, bits: int, group_size: int, targets: str):
    """The llmcompressor modifier: GPTQ or AWQ on the expert (or all) linear layers, routers ignored;
    integer weights per group of ``group_size``, symmetric for GPTQ, asymmetric for AWQ (the
    W4A16 / W8A16 / W4A16_ASYM presets with a chosen group size), activations untouched."""
    ignore = list(ROUTER_IGNORE) + ([] if targets == "all" else ["re:.*self_attn.*"])
    weights = {"num_bits": bits, "type": "int", "symmetric": scheme == "gptq", "strategy": "group",
               "group_size": group_size}
    config_groups = {"group_0": {"targets": ["Linear"], "weights": weights}}
    if scheme == "gptq":
        from llmcompressor.modifiers.quantization import GPTQModifier

        return GPTQModifier(config_groups=config_groups, ignore=ignore)
    from llmcompressor.modifiers.awq import AWQModifier

    return AWQModifier(config_groups=config_groups, ignore=ignore)


def run(argv=None) -> int:
    args = parse_args(argv)
    preset = check_args(args)
    check_backend(args.scheme)
    from datasets import Dataset
    from llmcompressor import oneshot
    from mmengine.config import Config

    from harness.config import model_config
    from harness.io import atomic_write_json
    from harness.models.quantized import write_dequantised
    from harness.registry import MODELS, build
    from tools.slim import calibration

    lm = build(MODELS, model_config(Config({}), args.model_path, dtype="auto"))
    args.calib_seq_len = min(args.calib_seq_len, lm.max_seq_len)
    data = calibration(args, lm)
    dataset = Dataset.from_dict({"input_ids": data.samples, "attention_mask": [[1] * len(s) for s in data.samples]})
    from harness.compress.materialize import _atomic_dir

    def write(folder: Path) -> None:
        model = oneshot(model=lm.model, dataset=dataset, recipe=recipe(args.scheme, args.bits, args.group_size, args.targets),
                        max_seq_length=args.calib_seq_len, num_calibration_samples=len(data.samples))
        model.save_pretrained(folder, save_compressed=True)
        lm.tokenizer.save_pretrained(folder)
        if (Path(args.model_path) / "slimming.json").is_file():  # a slimmed model's record stays with it
            shutil.copy2(Path(args.model_path) / "slimming.json", folder / "slimming.json")
        atomic_write_json(folder / RECORD_FILE, {
            "scheme": args.scheme, "preset": preset, "bits": args.bits, "group_size": args.group_size,
            "targets": args.targets, "ignore": ROUTER_IGNORE, "base_model": args.model_path,
            "calibration": {"source": data.source, "samples": len(data.samples),
                            "tokens": sum(len(s) for s in data.samples)},
            "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            "command": " ".join(shlex.quote(a) for a in ["python", "tools/quantize.py", *(argv or sys.argv[1:])]),
        })

    out = Path(args.out)
    _atomic_dir(out, write)
    if (Path(args.model_path) / "slimming.json").is_file():
        print("note: GPTQ/AWQ update the pruned (zero) weights too, so the slimmed sparsity and any N:M pattern are "
              "not kept; harness/tasks/efficiency.py --model_path OUT measures what is left (measured_sparsity, "
              "pattern_groups_kept)", file=sys.stderr)
    print(f"wrote {args.scheme} {preset} checkpoint to {out}")
    if args.dequantised_out:
        _atomic_dir(Path(args.dequantised_out), lambda folder: write_dequantised(out, folder))
        print(f"wrote its dequantised float copy to {args.dequantised_out}")
    return 0


main = main_guard(run)

if __name__ == "__main__":
    raise SystemExit(main())
