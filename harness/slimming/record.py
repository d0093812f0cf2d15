"""The slimming record (``slimming.json`` beside the weights) and sparsity measured on a model.

The record says how a checkpoint was slimmed (method, sparsity or pattern, targets, calibration
data and tokens, per-layer measured sparsity, tokens routed to each expert). ``measure`` counts
zeros in the targets of a loaded model, so the efficiency results report what the weights hold,
not what the record claims.
"""
from __future__ import annotations

import json
from pathlib import Path

from harness.errors import HarnessError
from harness.slimming.targets import model_targets

RECORD_FILE = "slimming.json"


def read_record(model_path) -> dict | None:
    """The record of a slimmed checkpoint folder, or None for any other model."""
    path = Path(str(model_path)) / RECORD_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise HarnessError(f"{path} is not a readable slimming record ({exc}); re-run tools/slim.py") from None


def measure(model, kinds) -> dict:
    """Fraction of exact zeros in the targets of ``kinds``: per decoder layer and kind, and overall."""
    layers, zeros, total = {}, 0, 0
    for index, targets in model_targets(model, tuple(kinds)).items():
        per_kind: dict[str, list[int]] = {}
        seen = set()
        for t in targets:
            key = (id(t.tensor), t.kind)
            if key in seen:  # a fused tensor holds all experts: count it once
                continue
            seen.add(key)
            z, n = int((t.tensor.data == 0).sum()), t.tensor.numel()
            acc = per_kind.setdefault(t.kind, [0, 0])
            acc[0] += z
            acc[1] += n
        layers[str(index)] = {kind: z / n for kind, (z, n) in per_kind.items()}
        layer_z = sum(z for z, _ in per_kind.values())
        layer_n = sum(n for _, n in per_kind.values())
        layers[str(index)]["all"] = layer_z / layer_n
        zeros, total = zeros + layer_z, total + layer_n
    return {"overall": zeros / total if total else 0.0, "zeros": zeros, "weights": total, "layers": layers}


def pattern_groups_kept(model, kinds, n: int, m: int) -> float:
    """Share of the targets' groups of ``m`` consecutive inputs holding at most ``n`` non-zeros: 1.0 for
    a checkpoint slimmed N:M, less once a later step (GPTQ's error updates) refilled pruned weights."""
    kept = groups = 0
    seen = set()
    for targets in model_targets(model, tuple(kinds)).values():
        for t in targets:
            if id(t.tensor) in seen:
                continue
            seen.add(id(t.tensor))
            counts = (t.tensor.data.reshape(-1, m) != 0).sum(dim=-1)
            kept, groups = kept + int((counts <= n).sum()), groups + counts.numel()
    return kept / groups if groups else 1.0


def efficiency_entry(model, model_path) -> dict | None:
    """What the efficiency results show of a slimmed checkpoint: its record's settings and the
    sparsity measured on the loaded weights (None when ``model_path`` holds no record)."""
    record = read_record(model_path)
    if record is None:
        return None
    measured = measure(model, record.get("targets", ["routed"]))
    keys = ("method", "sparsity", "pattern", "targets", "calibration")
    return {**{k: record[k] for k in keys if k in record}, "measured_sparsity": measured["overall"],
            "nonzero_target_weights": measured["weights"] - measured["zeros"],
            "target_weights": measured["weights"], "measured_sparsity_per_layer": measured["layers"],
            **({"pattern_groups_kept": pattern_groups_kept(model, record.get("targets", ["routed"]),
                                                           *map(int, record["pattern"].split(":")))}
               if record.get("pattern") else {})}
