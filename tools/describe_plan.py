"""Describe a compression plan: kept experts per layer, parameters and bytes saved, a heatmap.

    python tools/describe_plan.py --coeff_path FILE [--model_path DIR] [--heatmap OUT.png]
        [--convert OUT.safetensors|OUT.pth]

--model_path reads the model's config.json (no weights) so savings are given in parameters and
bytes. --convert writes the plan in the project's format (.safetensors) or EEP's (.pth).

Without --model_path, the layer count is the plan file's own: the harness and mask formats record
it; an EEP .pth does not, so it is the largest layer the file names + 1, except for a file with an
``others`` key (which covers every layer it does not name), read as EEP's 32-layer Mixtral and
said so. A method is shown only when the file records one (EEP files and masks record none).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from harness.cli import main_guard
from harness.compress import load_plan, load_plan_for_config, save_plan
from harness.compress.describe import describe_plan, plan_heatmap
from harness.compress.formats import EEP_NUM_LAYERS, detect_format, parse_eep_key
from harness.errors import HarnessError
from harness.safe_load import safe_torch_load


def eep_layer_count(path: str) -> tuple[int | None, str]:
    """The layer count an EEP file implies without a model, and a note saying where it comes from."""
    keys = list(safe_torch_load(path))
    spans = []
    for key in keys:
        try:
            spans.append(parse_eep_key(key)[1])
        except HarnessError:
            return None, ""  # load_plan reports the bad key
    if any(span is None for span in spans):
        return None, (f"the file has an 'others' key and does not record the model's depth: read as EEP's "
                      f"{EEP_NUM_LAYERS}-layer Mixtral; pass --model_path to describe it for another model")
    count = max(span[1] for span in spans) + 1
    return count, (f"the file names layers 0-{count - 1} and does not record the model's depth; "
                   "pass --model_path to describe it against a model")


def uniform_budget_note(plan, config) -> str | None:
    """A correction when the description's "uniform budget" leaves out layers that keep every expert:
    layers the plan does not change are counted where they have experts (all of them without a model)."""
    budget = plan.uniform_budget
    if budget is None or budget == plan.num_experts:
        return None
    moe_layers = set(range(plan.num_layers))
    if config is not None:
        from harness.compress.adapters import ADAPTERS, ResolvedMoE, config_value

        if config_value(config, "model_type", None) in ADAPTERS:
            moe_layers = set(ResolvedMoE.from_config(config).moe_layers)
    untouched = sorted(i for i in moe_layers if i not in plan.layers and i not in plan.skip_blocks)
    if not untouched:
        return None
    changed = len(plan.layers)
    return (f"not uniform: {budget} experts in the {changed} layer{'s' * (changed != 1)} the plan changes, all "
            f"{plan.num_experts} in the {len(untouched)} it leaves unchanged")


@main_guard
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("--coeff_path", required=True, help="plan file (EEP .pth, mask .json, .safetensors)")
    parser.add_argument("--model_path", help="model folder whose config.json gives expert sizes")
    parser.add_argument("--heatmap", help="write a PNG heatmap of layers x experts here")
    parser.add_argument("--convert", help="write the plan again: .safetensors (ours) or .pth (EEP)")
    args = parser.parse_args(argv)

    config = None
    if args.model_path:
        from transformers import AutoConfig

        if not Path(args.model_path).exists():
            raise HarnessError(f"--model_path {args.model_path} does not exist")
        config = AutoConfig.from_pretrained(args.model_path)
    # EEP files do not record the model's depth: take it from the model when given, else from the file
    note = ""
    if config is not None:
        plan = load_plan_for_config(args.coeff_path, config)
    elif detect_format(args.coeff_path) == "eep":
        num_layers, note = eep_layer_count(args.coeff_path)
        plan = load_plan(args.coeff_path, num_layers=num_layers)
    else:
        plan = load_plan(args.coeff_path)
    if plan.metadata.get("format") in ("eep", "mask"):
        plan.metadata.pop("method", None)  # the EEP reader's "eep" names the file format, not how the plan was made
    text = describe_plan(plan, model_config=config)
    correction = uniform_budget_note(plan, config)
    if correction:
        text = text.replace(f"; uniform budget: {plan.uniform_budget}\n", f"; budget: {correction}\n", 1)
    print(text if not note else text.replace("\n", f"\n{note}\n", 1))
    if args.heatmap:
        print(f"heatmap: {plan_heatmap(plan, args.heatmap, title=Path(args.coeff_path).name)}")
    if args.convert:
        fmt = "eep" if args.convert.endswith(".pth") else "harness"
        print(f"written: {save_plan(plan, args.convert, format=fmt)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
