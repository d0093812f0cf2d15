"""Reading and writing compression plans: the project's format, EEP coefficient files, mask files.

Formats (documented in ``searched_coeff/README.md``), detected by content, not by extension:

- **harness** (ours): one ``.safetensors`` file. Tensors ``layers.{l}.merge``, ``layers.{l}.router``,
  ``layers.{l}.condensed_weights`` (float32); the safetensors metadata key ``harness_plan`` holds a
  JSON header (``format_version``, sizes, skip_blocks, per-layer mode / top_k / skip_threshold, free
  metadata). Bytes: 8-byte little-endian header length, then ``{``. Version 2 adds the int64
  tensors ``layers.{l}.expert_to_slot`` (routing after top-k) and ``layers.{l}.permutations``
  (neuron alignment); a plan without them is still written as version 1, byte for byte as before.
- **eep**: the EEP release's ``torch.save`` dict (a zip starting with ``PK``) of (B, E) tensors
  keyed ``layers.N`` / ``layers.[a-b]`` / ``others`` (merging) and ``transfer.N`` /
  ``transfer.[a-b]`` / ``others_transfer`` (router mapping). Always read with weights_only=True.
- **mask**: JSON, ``{"num_experts": 8, "kept": {"0": [0, 3, 5, 7], ...}, "num_layers": 32,
  "top_k": 2}`` or a plain list of lists (one per layer): pure pruning, gate rows sliced.

Saving is byte-stable: the same plan gives the same file bytes every time, whatever its dicts'
insertion order (sorted JSON, tensors by name; ``.pth`` records under torch's fixed ``archive/``
name rather than the temporary file's). Reading checks sizes, nesting and layer counts before
building anything, against bounds no real plan comes near (``MAX_PLAN_BYTES``, ``MAX_MASK_BYTES``,
``MAX_JSON_DEPTH``, ``plan.MAX_LAYERS``).
"""
from __future__ import annotations

import json
import os
import re
import struct
from pathlib import Path

import torch

from harness.compress.plan import MAX_EXPERTS, MAX_LAYERS, CompressionPlan, LayerPlan, check_count
from harness.errors import HarnessError
from harness.io import atomic_write
from harness.safe_load import safe_torch_load

FORMAT_VERSION = 2  # the newest version of the harness format this harness reads; newer files are refused
V2_FIELDS = ("expert_to_slot", "permutations")  # int64 tensors only version 2 has
HEADER_KEY = "harness_plan"  # safetensors metadata key of the JSON header
EEP_NUM_LAYERS = 32  # Mixtral-8x7B, the model the released EEP files were searched for
SAVE_FORMATS = ("harness", "eep")
# A full plan (merge and router, float32) of 512 layers x 256 experts: 512 * 2 * 256 * 256 * 4 bytes.
# The largest real models (about 100 layers, 128-256 experts) need a tenth of it or less.
MAX_PLAN_BYTES = 256 * 2**20
# A mask lists kept expert ids: 512 layers x 256 ids of a few characters is under 1 MiB.
MAX_MASK_BYTES = 16 * 2**20
MAX_JSON_DEPTH = 64  # a plan's JSON nests about 4 deep; free metadata gets room to spare

_TENSOR_NAME = re.compile(r"^layers\.(\d+)\.(merge|router|condensed_weights|expert_to_slot|permutations)$")
_EEP_KEY = re.compile(r"^(layers|transfer)\.(?:(\d+)|\[(\d+)-(\d+)\])$")
_MASK_KEYS = {"num_experts", "kept", "num_layers", "top_k", "metadata"}


# ----------------------------------------------------------------------------------------------
# Entry points.


def load_plan_for_config(path: str | os.PathLike, config) -> CompressionPlan:
    """``load_plan`` with the layer and expert counts of a model's transformers config, which EEP
    and mask files do not record (an EEP file of a 4-layer model would otherwise read as 32)."""
    from harness.compress.adapters import expert_count

    return load_plan(
        path,
        num_layers=int(config.num_hidden_layers),
        num_experts=expert_count(config),
        hidden_size=getattr(config, "hidden_size", None),
    )


def detect_format(path: str | os.PathLike) -> str:
    """'harness', 'eep' or 'mask', from the first bytes of the file; HarnessError otherwise."""
    file = Path(path)
    if not file.is_file():
        raise HarnessError(f"plan file {file} not found; check --coeff_path / the plan path")
    size = file.stat().st_size
    with open(file, "rb") as fh:
        head = fh.read(16)
    if not head:
        raise HarnessError(f"plan file {file} is empty; re-create it")
    if len(head) >= 9 and head[8:9] == b"{":
        (header_len,) = struct.unpack("<Q", head[:8])
        if header_len < 2**40:  # a JSON text here would give a length >= 2**56 (printable bytes)
            if 8 + header_len > size:
                raise HarnessError(f"plan file {file} is a truncated safetensors file; re-create or re-copy it")
            return "harness"
    if head[:2] == b"PK" or head[:1] == b"\x80":  # torch zip, or a legacy torch / plain pickle
        return "eep"
    if head.lstrip()[:1] in (b"{", b"["):
        return "mask"
    raise HarnessError(
        f"plan file {file} is in no known format (not safetensors, torch .pth or JSON); see searched_coeff/README.md"
    )


def load_plan(
    path: str | os.PathLike,
    *,
    num_layers: int | None = None,
    num_experts: int | None = None,
    hidden_size: int | None = None,
    max_bytes: int | None = None,
) -> CompressionPlan:
    """Read a plan in any supported format, validate it, and record the file in metadata['source'].

    ``num_layers`` / ``num_experts`` build EEP and mask plans (EEP default: 32 layers when the
    keys allow, E from the tensors) and are checked against a harness file's own values.
    ``max_bytes`` overrides the size bound of the format (``MAX_PLAN_BYTES`` / ``MAX_MASK_BYTES``).
    """
    file = Path(path)
    fmt = detect_format(file)
    check_size(file, fmt, max_bytes)
    if num_layers is not None:
        check_count(str(file), "num_layers", num_layers, MAX_LAYERS)
    if fmt == "harness":
        plan = read_harness_plan(file)
        earlier = plan.metadata.get("source")
        if earlier and earlier != str(file):
            plan.metadata["derived_from"] = earlier  # the file the plan was first imported from
    elif fmt == "eep":
        plan = plan_from_eep(safe_torch_load(file), num_layers=num_layers, num_experts=num_experts, source=str(file))
    else:
        plan = plan_from_mask(_read_json(file), num_layers=num_layers, num_experts=num_experts, source=str(file))
    plan.metadata["source"] = str(file)
    plan.metadata["format"] = fmt
    return plan.validate(num_layers=num_layers, num_experts=num_experts, hidden_size=hidden_size, source=str(file))


def check_size(file: Path, fmt: str, max_bytes: int | None = None) -> None:
    """HarnessError when ``file`` is larger than any real plan in format ``fmt`` could be."""
    bound = max_bytes if max_bytes is not None else MAX_MASK_BYTES if fmt == "mask" else MAX_PLAN_BYTES
    size = file.stat().st_size
    if size > bound:
        raise HarnessError(
            f"plan file {file} is {size:,} bytes, more than any real {fmt} plan ({bound:,} bytes at most); "
            "check that --coeff_path names a compression plan"
        )


def save_plan(plan: CompressionPlan, path: str | os.PathLike, format: str = "harness") -> Path:
    """Write ``plan`` atomically as ``format`` ('harness': ours, lossless; 'eep': EEP's .pth dict).

    The bytes depend only on the plan's content (see the module docstring).
    """
    if format not in SAVE_FORMATS:
        raise HarnessError(f"unknown plan format {format!r}; choose one of {', '.join(SAVE_FORMATS)}")
    plan.validate()
    if format == "eep":
        coeffs = plan.to_eep_dict()  # fixed key order, one fresh tensor per key (no shared storages)
        return atomic_write(path, lambda tmp: _torch_save(coeffs, tmp))
    return write_harness_plan(plan, path)


def _torch_save(obj, file: Path) -> None:
    """``torch.save`` through a file object: torch then names the zip records ``archive/...``; given
    a path it would name them after the (temporary, random) file name."""
    with open(file, "wb") as fh:
        torch.save(obj, fh)


# ----------------------------------------------------------------------------------------------
# The harness format.


def file_version(plan: CompressionPlan) -> int:
    """2 when the plan routes after top-k or permutes neurons, else 1 (older readers still read it)."""
    uses_v2 = any(getattr(lp, name) is not None for lp in plan.layers.values() for name in V2_FIELDS)
    return 2 if uses_v2 else 1


def plan_header(plan: CompressionPlan) -> dict:
    """The JSON header stored under ``harness_plan`` (everything but the tensors)."""
    return {
        "format_version": file_version(plan),
        "num_layers": plan.num_layers,
        "num_experts": plan.num_experts,
        "hidden_size": plan.hidden_size,
        "skip_blocks": list(plan.skip_blocks),
        "layers": {
            str(index): {"mode": lp.mode, "top_k": lp.top_k, "skip_threshold": lp.skip_threshold}
            for index, lp in sorted(plan.layers.items())
        },
        "metadata": plan.metadata,
    }


def write_harness_plan(plan: CompressionPlan, path: str | os.PathLike) -> Path:
    """Write the plan as one safetensors file (float32 and int64 tensors, header JSON in the metadata)."""
    tensors = {}
    for index, lp in plan.layers.items():
        for name in ("merge", "router", "condensed_weights", *V2_FIELDS):
            value = getattr(lp, name)
            if value is not None:
                tensors[f"layers.{index}.{name}"] = value
    try:
        header = json.dumps(plan_header(plan), default=str, ensure_ascii=False, sort_keys=True)
    except TypeError as exc:  # sort_keys needs comparable keys
        raise HarnessError(f"plan metadata cannot be written as JSON ({exc}); use string keys") from None
    data = safetensors_bytes(tensors, {HEADER_KEY: header, "format": "pt"})
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def safetensors_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    """A safetensors file of ``tensors`` (floats as float32, integers as int64), written here so its
    bytes are fixed: header JSON with sorted keys (the safetensors library orders metadata by a
    per-process hash), data by name."""
    header: dict = {"__metadata__": metadata}
    chunks, offset = [], 0
    for name in sorted(tensors):
        integer = not (tensors[name].is_floating_point() or tensors[name].is_complex())
        dtype, code, numpy_type = (torch.int64, "I64", "<i8") if integer else (torch.float32, "F32", "<f4")
        values = tensors[name].detach().to("cpu", dtype).contiguous()
        chunk = values.numpy().astype(numpy_type, copy=False).tobytes()
        header[name] = {"dtype": code, "shape": list(values.shape), "data_offsets": [offset, offset + len(chunk)]}
        chunks.append(chunk)
        offset += len(chunk)
    text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned, as the library writes it
    return struct.pack("<Q", len(text)) + text + b"".join(chunks)


def read_harness_plan(path: str | os.PathLike) -> CompressionPlan:
    """Read a harness-format file; HarnessError for a newer/unknown version or a malformed file."""
    from safetensors import safe_open

    file = Path(path)
    try:
        with safe_open(str(file), framework="pt", device="cpu") as fh:
            metadata = fh.metadata() or {}
            tensors = {name: fh.get_tensor(name) for name in fh.keys()}
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise HarnessError(f"plan file {file} is not a readable safetensors file ({exc}); re-create it") from None
    if HEADER_KEY not in metadata:
        raise HarnessError(
            f"{file} is a safetensors file without a '{HEADER_KEY}' header: model weights, not a compression plan"
        )
    try:
        header = json.loads(metadata[HEADER_KEY])
    except json.JSONDecodeError as exc:
        raise HarnessError(f"plan file {file}: the '{HEADER_KEY}' header is not valid JSON ({exc})") from None
    except RecursionError:
        raise _too_deep(file) from None
    _check_depth(file, header)
    if not isinstance(header, dict):
        raise HarnessError(f"plan file {file}: the '{HEADER_KEY}' header must be a JSON object")
    _check_version(file, header.get("format_version"))
    return _plan_from_header(file, header, tensors)


def _check_version(file: Path, version) -> None:
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise HarnessError(f"plan file {file}: format_version {version!r} is unknown; this harness reads version {FORMAT_VERSION}")
    if version > FORMAT_VERSION:
        raise HarnessError(
            f"plan file {file} has format_version {version}, newer than this harness reads ({FORMAT_VERSION}); "
            "upgrade the harness or re-save the plan with the version that wrote it"
        )


def _plan_from_header(file: Path, header: dict, tensors: dict[str, torch.Tensor]) -> CompressionPlan:
    for key in ("num_layers", "num_experts", "layers"):
        if key not in header:
            raise HarnessError(f"plan file {file}: header lacks {key!r}; the file is damaged or not a plan")
    layer_fields = header["layers"]
    if not isinstance(layer_fields, dict):
        raise HarnessError(f"plan file {file}: header 'layers' must be an object of layer -> settings")
    check_count(str(file), "num_layers", header["num_layers"], MAX_LAYERS)
    check_count(str(file), "num_experts", header["num_experts"], MAX_EXPERTS)
    _check_layer_entries(file, "header 'layers'", len(layer_fields))
    layers: dict[int, LayerPlan] = {}
    for key, fields in layer_fields.items():
        if not str(key).isdigit() or not isinstance(fields, dict):
            raise HarnessError(f"plan file {file}: header layer entry {key!r} must be a layer number -> settings object")
        # Values are checked by CompressionPlan.validate, which load_plan calls next.
        layers[int(key)] = LayerPlan(
            mode=fields.get("mode", "routed"), top_k=fields.get("top_k"), skip_threshold=fields.get("skip_threshold")
        )
    for name, tensor in tensors.items():
        match = _TENSOR_NAME.match(name)
        if match is None:
            raise HarnessError(f"plan file {file}: unexpected tensor {name!r}; expected layers.<l>.merge/router/condensed_weights")
        index, field_name = int(match.group(1)), match.group(2)
        if index not in layers:
            raise HarnessError(f"plan file {file}: tensor {name!r} has no entry for layer {index} in the header")
        integer = not (tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool)
        if field_name in V2_FIELDS and not integer:
            raise HarnessError(f"plan file {file}: layer {index}: {field_name} must hold integers, got {tensor.dtype}")
        # Values (slot ranges, permutations, ...) are checked by CompressionPlan.validate.
        setattr(layers[index], field_name, tensor.long() if field_name in V2_FIELDS else tensor.to(torch.float32))
    metadata = header.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise HarnessError(f"plan file {file}: header 'metadata' must be a JSON object")
    return CompressionPlan(
        num_layers=header["num_layers"],
        num_experts=header["num_experts"],
        layers=layers,
        skip_blocks=list(header.get("skip_blocks") or []),
        hidden_size=header.get("hidden_size"),
        metadata=dict(metadata),
    )


# ----------------------------------------------------------------------------------------------
# EEP coefficient files.


def parse_eep_key(key: str) -> tuple[str, tuple[int, int] | None]:
    """('merge' | 'router', inclusive layer range or None for others); HarnessError when unknown."""
    if key == "others":
        return "merge", None
    if key == "others_transfer":
        return "router", None
    match = _EEP_KEY.match(key) if isinstance(key, str) else None
    if match is None:
        raise HarnessError(
            f"key {key!r} is not an EEP coefficient key (layers.N, layers.[a-b], others, transfer.N, transfer.[a-b], others_transfer)"
        )
    kind = "merge" if match.group(1) == "layers" else "router"
    if match.group(2) is not None:
        return kind, (int(match.group(2)), int(match.group(2)))
    first, last = int(match.group(3)), int(match.group(4))
    if first > last:
        raise HarnessError(f"EEP key {key!r}: the range [{first}-{last}] is empty (a > b)")
    return kind, (first, last)


def eep_key_for_layer(keys, layer: int, kind: str = "merge") -> str | None:
    """The key EEP uses for ``layer``: the first key (in file order) whose range holds it, else others."""
    fallback = None
    for key in keys:
        key_kind, span = parse_eep_key(key)
        if key_kind != kind:
            continue
        if span is None:
            fallback = fallback or key
        elif span[0] <= layer <= span[1]:
            return key
    return fallback


def plan_from_eep(
    coeffs,
    num_layers: int | None = None,
    num_experts: int | None = None,
    source: str | None = None,
) -> CompressionPlan:
    """A plan from EEP's coefficient dict: each layer gets the merge/router of the key it resolves to."""
    where = source or "EEP coefficients"
    if not isinstance(coeffs, dict) or not coeffs:
        raise HarnessError(f"{where} is not an EEP coefficient file (expected a non-empty dict of key -> (B, E) tensor)")
    _check_layer_entries(where, "EEP keys", len(coeffs), per_layer=2)
    if num_layers is not None:
        check_count(where, "num_layers", num_layers, MAX_LAYERS)
    spans = {}
    for key, value in coeffs.items():
        try:
            spans[key] = parse_eep_key(key)[1]
        except HarnessError as exc:
            raise HarnessError(f"{where}: {exc}") from None
        if not isinstance(value, torch.Tensor) or value.dim() != 2 or not value.is_floating_point():
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise HarnessError(f"{where}: key {key!r} must hold a 2-D float (B, E) tensor, got {shape}")
        if spans[key] is not None and spans[key][1] >= MAX_LAYERS:
            raise HarnessError(f"{where}: key {key!r} names layer {spans[key][1]}, more than any real model has "
                               f"(at most {MAX_LAYERS} layers); fix the plan file")
    widths = {int(value.shape[1]) for value in coeffs.values()}
    if len(widths) != 1:
        raise HarnessError(f"{where}: tensors disagree on the expert count (columns {sorted(widths)})")
    found_experts = widths.pop()
    if num_experts is not None and num_experts != found_experts:
        raise HarnessError(f"{where}: tensors have {found_experts} expert columns but num_experts={num_experts} was given")
    last_named = max((span[1] for span in spans.values() if span is not None), default=-1)
    if num_layers is None:
        if last_named < EEP_NUM_LAYERS:
            num_layers = EEP_NUM_LAYERS
        elif not any(span is None for span in spans.values()):
            num_layers = last_named + 1
        else:
            raise HarnessError(f"{where}: keys name layers up to {last_named}; pass num_layers (the model's layer count)")
    for key, span in spans.items():
        if span is not None and span[1] >= num_layers:
            raise HarnessError(f"{where}: key {key!r} names layer {span[1]}, out of range for a {num_layers}-layer model")
    layers = {}
    for index in range(num_layers):
        merge_key = eep_key_for_layer(coeffs, index, "merge")
        router_key = eep_key_for_layer(coeffs, index, "router")
        if merge_key is None and router_key is None:
            continue  # nothing covers this layer: it stays unchanged
        layers[index] = LayerPlan(
            merge=coeffs[merge_key].to(torch.float32).clone() if merge_key else None,
            router=coeffs[router_key].to(torch.float32).clone() if router_key else None,
        )
    metadata = {"method": "eep", "source": where}
    return CompressionPlan(num_layers=num_layers, num_experts=found_experts, layers=layers, metadata=metadata)


# ----------------------------------------------------------------------------------------------
# JSON mask files.


def _read_json(file: Path):
    try:
        value = json.loads(file.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise HarnessError(f"plan file {file} is not UTF-8 JSON; see searched_coeff/README.md for the mask format") from None
    except json.JSONDecodeError as exc:
        raise HarnessError(f"plan file {file} is not valid JSON ({exc}); fix the mask file") from None
    except RecursionError:
        raise _too_deep(file) from None
    _check_depth(file, value)
    return value


def _too_deep(file) -> HarnessError:
    return HarnessError(f"plan file {file} nests JSON more than {MAX_JSON_DEPTH} deep, unlike any plan; fix the file")


def _check_depth(file, value) -> None:
    """HarnessError when ``value`` (parsed JSON) nests deeper than ``MAX_JSON_DEPTH``; no recursion."""
    level = [value]
    for _ in range(MAX_JSON_DEPTH + 1):
        level = [child for item in level if isinstance(item, (dict, list))
                 for child in (item.values() if isinstance(item, dict) else item)]
        if not level:
            return
    raise _too_deep(file)


def _check_layer_entries(where, what: str, count: int, per_layer: int = 1) -> None:
    """HarnessError, before anything is built, for more layer entries than any real model has."""
    if count > per_layer * MAX_LAYERS + 2:
        raise HarnessError(
            f"{where}: {what} has {count:,} entries, more than any real model's {MAX_LAYERS} layers; fix the plan file"
        )


def plan_from_mask(
    mask,
    num_layers: int | None = None,
    num_experts: int | None = None,
    source: str | None = None,
) -> CompressionPlan:
    """A pure-pruning plan from a mask object (the dict form, or a list of kept-expert lists)."""
    where = source or "mask"
    top_k, extra = None, {}
    if isinstance(mask, list):
        kept = mask
        if num_experts is None:
            raise HarnessError(
                f"{where}: a plain list of kept experts does not say how many experts a layer has; "
                'use the {"num_experts": E, "kept": {...}} form or pass num_experts'
            )
    elif isinstance(mask, dict):
        unknown = sorted(set(mask) - _MASK_KEYS)
        if unknown:
            raise HarnessError(f"{where}: unknown keys {unknown}; a mask file has {sorted(_MASK_KEYS)}")
        if "kept" not in mask or "num_experts" not in mask:
            raise HarnessError(f"{where}: a mask file needs 'num_experts' and 'kept' (layer -> kept expert ids)")
        kept = mask["kept"]
        file_experts = _mask_int(where, "num_experts", mask["num_experts"])
        if num_experts is not None and num_experts != file_experts:
            raise HarnessError(f"{where}: num_experts is {file_experts} but the model has {num_experts}")
        num_experts = file_experts
        if mask.get("num_layers") is not None:
            file_layers = _mask_int(where, "num_layers", mask["num_layers"])
            if num_layers is not None and num_layers != file_layers:
                raise HarnessError(f"{where}: num_layers is {file_layers} but the model has {num_layers}")
            num_layers = file_layers
        if mask.get("top_k") is not None:
            top_k = _mask_int(where, "top_k", mask["top_k"])
        extra = dict(mask.get("metadata") or {})
    else:
        raise HarnessError(f"{where}: a mask file holds a JSON object or a list of lists, got {type(mask).__name__}")
    if not isinstance(kept, (dict, list)) or not kept:
        raise HarnessError(f"{where}: 'kept' must be a non-empty object (layer -> ids) or list of lists")
    _check_layer_entries(where, "'kept'", len(kept))
    if num_experts is not None:
        check_count(where, "num_experts", num_experts, MAX_EXPERTS)
    metadata = {"method": "mask", **extra, "source": where}
    return CompressionPlan.from_kept(kept, num_experts, num_layers=num_layers, top_k=top_k, metadata=metadata)


def _mask_int(where: str, name: str, value) -> int:
    bound = {"num_layers": MAX_LAYERS, "num_experts": MAX_EXPERTS}.get(name, MAX_EXPERTS)
    return check_count(where, name, value, bound)


__all__ = [
    "FORMAT_VERSION", "V2_FIELDS", "file_version", "HEADER_KEY", "MAX_PLAN_BYTES", "MAX_MASK_BYTES", "MAX_JSON_DEPTH", "check_size",
    "detect_format", "load_plan", "save_plan", "plan_header", "safetensors_bytes",
    "read_harness_plan", "write_harness_plan", "parse_eep_key", "eep_key_for_layer", "plan_from_eep",
    "plan_from_mask",
]
