"""Write a compressed model to disk as a real, smaller checkpoint, and load it back.

Two kinds of folder come out of ``materialize``:

- **plain** (pure pruning, the same B experts kept in every MoE layer, one top-k, nothing
  skipped or dropped): the ordinary architecture with fewer experts. The config's expert count
  and top-k are updated (DeepSeek group settings too, when groups cannot be kept), the router rows
  are sliced, and ``save_pretrained`` writes the usual per-expert keys. Load it with
  ``AutoModelForCausalLM.from_pretrained`` like any model; ``load_compressed`` also accepts it.
- **compressed** (anything else: merging, router mapping, per-layer budgets, NAEE skipping,
  condensed / dropped layers, skipped blocks): ``config.json`` of the *original* model,
  ``compression_plan.safetensors`` (the plan, in the project's plan format) and
  ``compressed_model.safetensors`` (the state dict of the compressed model, only B_l experts per
  layer). Only ``load_compressed(path)`` can load it: it builds the original architecture on the
  meta device, applies the plan to get the compressed shapes, then loads the tensors.

The model wrapper should call ``load_compressed(path, dtype=..., device=...)`` whenever
``is_compressed_checkpoint(path)`` is true, and ``from_pretrained`` otherwise.
"""
from __future__ import annotations

import copy
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from harness.compress.adapters import resolve
from harness.compress.apply import apply_plan, native_router_settings
from harness.compress.plan import CompressionPlan, LayerPlan
from harness.errors import HarnessError

PLAN_FILE = "compression_plan.safetensors"
STATE_FILE = "compressed_model.safetensors"


@dataclass(frozen=True)
class ParameterStats:
    count: int
    bytes: int


def parameter_stats(model) -> ParameterStats:
    """Number of parameters and their bytes (shared parameters counted once)."""
    params = list(model.parameters())
    return ParameterStats(sum(p.numel() for p in params), sum(p.numel() * p.element_size() for p in params))


def plain_config_updates(model, plan: CompressionPlan) -> dict | None:
    """Config changes that make ``plan`` an ordinary smaller checkpoint, or None if it is not one."""
    if plan.skip_blocks:
        return None
    moe = resolve(model)
    seen = set()
    for index in moe.moe_layers:
        settings = native_router_settings(moe, plan.layers.get(index, LayerPlan()))
        if settings is None:  # merging, mapping, skipping, condensed or dropped
            return None
        seen.add(tuple(sorted((k, v) for k, v in settings.items() if k != "kept")))
    if len(seen) != 1:
        return None
    settings = dict(seen.pop())
    adapter = moe.adapter
    updates = {adapter.expert_count_key: settings.pop("num_experts"), adapter.top_k_key: settings.pop("top_k")}
    config_keys = dict(adapter.group_router_keys)  # router attribute -> config key
    for name, value in settings.items():
        updates[config_keys[name]] = value
    return updates


@dataclass(frozen=True)
class MaterializeResult:
    path: Path
    kind: str  # "plain" or "compressed"
    before: ParameterStats
    after: ParameterStats


def materialize(model, plan: CompressionPlan, out_dir, tokenizer=None) -> MaterializeResult:
    """Apply ``plan`` to ``model`` in place (unless already applied) and write it to ``out_dir``.

    The folder is written next to ``out_dir`` under a temporary name and renamed into place, so a
    failure leaves nothing half-written. ``out_dir`` must not exist or be empty.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise HarnessError(f"--out {out_dir} already exists and is not empty; choose a new folder")
    applied = getattr(model, "compression_plan", None)
    if applied is not None and applied is not plan:
        raise HarnessError("the model already has a different plan applied; materialize needs the same plan")
    before = parameter_stats(model) if applied is None else None
    updates = plain_config_updates(model, plan)
    if applied is None:
        apply_plan(model, plan)
    after = parameter_stats(model)
    kind = "plain" if updates is not None else "compressed"

    def write(tmp: Path) -> None:
        if updates is not None:
            for key, value in updates.items():
                setattr(model.config, key, value)
            model.save_pretrained(tmp)
        else:
            _write_compressed(model, plan, tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)

    _atomic_dir(out_dir, write)
    return MaterializeResult(out_dir, kind, before or after, after)


def _atomic_dir(out_dir: Path, write) -> None:
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's folder is private (0700); the output is an ordinary folder
        if out_dir.exists():
            out_dir.rmdir()
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _original_config(model):
    """The model's config as before the plan (apply_plan rewrites expert count and top-k)."""
    config = copy.deepcopy(model.config)
    for key, value in resolve(model).config_values().items():
        setattr(config, key, value)
    return config


def _write_compressed(model, plan: CompressionPlan, folder: Path) -> None:
    from safetensors.torch import save_file

    from harness.compress import save_plan

    _original_config(model).save_pretrained(folder)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(folder)
    state, seen = {}, {}
    for name, tensor in model.state_dict().items():
        key = (tensor.data_ptr(), tensor.shape, tensor.dtype)
        if tensor.data_ptr() != 0 and key in seen:  # tied weights are restored by tie_weights()
            continue
        seen[key] = name
        state[name] = tensor.detach().to("cpu").contiguous()
    save_file(state, str(folder / STATE_FILE), metadata={"format": "pt", "harness": "compressed_model"})
    save_plan(plan, folder / PLAN_FILE)


def is_compressed_checkpoint(path) -> bool:
    """True for a folder written by ``materialize`` in the compressed (non-plain) layout."""
    path = Path(path)
    return (path / STATE_FILE).is_file() and (path / PLAN_FILE).is_file()


def load_compressed(path, dtype: torch.dtype | None = None, device: str | torch.device = "cpu",
                    device_map: str | dict | None = None):
    """Load a folder written by ``materialize`` (either kind) as an eval-mode causal LM.

    ``device_map`` ("auto", "balanced", ... or a module -> device dict) spreads the model over the
    visible GPUs with accelerate, as ``from_pretrained`` would: loaded on CPU first, then dispatched.
    """
    if device_map is not None:
        return dispatch_over_devices(load_compressed(path, dtype=dtype, device="cpu"), device_map)
    from transformers import AutoConfig, AutoModelForCausalLM

    path = Path(path)
    if not is_compressed_checkpoint(path):
        if not (path / "config.json").is_file():
            raise HarnessError(f"{path} is not a model folder (no config.json); pass a folder written by materialize")
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or "auto", device_map=device)
        return model.eval()
    from safetensors.torch import load_file

    from harness.compress import load_plan

    config = AutoConfig.from_pretrained(path)
    plan = load_plan(path / PLAN_FILE)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    apply_plan(model, plan)
    state = load_file(str(path / STATE_FILE), device=str(device))
    if dtype is not None:
        params = dict(model.named_parameters())
        state = {k: v.to(dtype) if k in params and v.is_floating_point() else v for k, v in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    tied = {name for name in missing if _is_tied(model, name)}
    unexpected = [name for name in unexpected if not name.startswith(_skipped_prefixes(model, plan))]
    if set(missing) - tied or unexpected:
        raise HarnessError(
            f"{path / STATE_FILE} does not match its plan and config (missing {sorted(set(missing) - tied)[:3]}, "
            f"unexpected {sorted(unexpected)[:3]}); re-run materialize"
        )
    model.tie_weights()
    _rebuild_meta_buffers(model, device)
    return model.eval()


def dispatch_over_devices(model, device_map: str | dict):
    """Place ``model``'s modules over the visible accelerators; without any, it stays on the CPU."""
    from accelerate import dispatch_model, infer_auto_device_map
    from accelerate.utils import get_balanced_memory

    if isinstance(device_map, str):
        if not torch.cuda.is_available():
            return model
        no_split = getattr(model, "_no_split_modules", None) or []
        max_memory = None
        if device_map != "sequential":
            max_memory = get_balanced_memory(model, no_split_module_classes=no_split,
                                             low_zero=device_map == "balanced_low_0")
        device_map = infer_auto_device_map(model, max_memory=max_memory, no_split_module_classes=no_split)
    return dispatch_model(model, device_map=device_map)


def _skipped_prefixes(model, plan: CompressionPlan) -> tuple[str, ...]:
    """State-dict prefixes of the plan's skipped blocks: folders written before Block Drop left the
    model's parameters still hold those layers' weights, which are not needed."""
    layers = resolve(model).layers
    name = next((n for n, module in model.named_modules() if module is layers), "model.layers")
    return tuple(f"{name}.{index}." for index in plan.skip_blocks)


def _is_tied(model, name: str) -> bool:
    return bool(getattr(model.config, "tie_word_embeddings", False)) and name.endswith("lm_head.weight")


def _rebuild_meta_buffers(model, device) -> None:
    """Non-persistent buffers (rotary frequencies) are not in the state dict: rebuild their modules."""
    for module_name, module in list(model.named_modules()):
        if not any(b.is_meta for b in module.buffers(recurse=False)):
            continue
        try:
            fresh = type(module)(config=model.config)
        except TypeError as exc:
            raise HarnessError(f"cannot rebuild {module_name} ({type(module).__name__}) while loading: {exc}") from exc
        for name, buffer in fresh.named_buffers(recurse=False):
            setattr(module, name, buffer.to(device))
    leftover = [name for name, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if leftover:
        raise HarnessError(f"loading left tensors unset: {leftover[:3]}; the checkpoint is incomplete")
