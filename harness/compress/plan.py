"""The CompressionPlan type: what to do to each MoE layer and decoder block of a model.

One type covers the methods of the field (expert pruning, expert merging, EEP's router mapping,
top-k reduction, NAEE dynamic skipping, CD-MoE condensing, Layer Drop, Block Drop). Files in every
supported format load into it (``harness.compress.load_plan``); ``apply_plan`` applies it in place.

Semantics for one MoE layer with E original experts and B kept slots:
    W'_i = sum_e merge[i, e] * W_e                (each expert matrix independently)
    p    = softmax(router logits over the E original experts)
    q    = router @ p                              (B values; when ``router`` is None the gate rows
                                                    of the kept experts are sliced instead, which
                                                    needs one-hot ``merge`` rows)
    top-k of q, then the architecture's own renormalisation / scaling.

Routing after top-k (M-SMoE, HC-SMoE: ``expert_to_slot`` set, ``router`` None): the model's own
router scores and picks its top-k over the E original experts (groups, correction bias,
renormalisation and scaling exactly as the family does); each picked expert e then sends its weight
to slot ``expert_to_slot[e]``, and two picks landing in one slot add up. Only the B merged experts
are kept. ``permutations`` (E, I) re-orders each original expert's intermediate neurons before
merging (neuron alignment): expert e's gate and up rows and down columns are taken in the order
``permutations[e]``, which leaves that expert's own function unchanged.
"""
from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from harness.errors import HarnessError

LAYER_MODES = ("routed", "condensed", "dropped")
# Bounds no real plan comes near (the deepest MoE models have about 100 decoder layers, the widest
# 256 routed experts); checked before anything is built from a file, so a hostile file fails fast.
MAX_LAYERS = 512
MAX_EXPERTS = 1024


def is_one_hot(matrix: torch.Tensor) -> bool:
    """Each row has exactly one non-zero entry and it is exactly 1.0 (a pruning row, no merging)."""
    return bool(((matrix != 0).sum(dim=1) == 1).all() and (matrix.sum(dim=1) == 1).all())


def one_hot_rows(expert_ids: Sequence[int], num_experts: int) -> torch.Tensor:
    """The (len(ids), E) float32 merge matrix that keeps exactly the experts ``expert_ids``."""
    return torch.eye(num_experts, dtype=torch.float32)[list(expert_ids)].clone()


@dataclass
class LayerPlan:
    """The plan for one MoE layer (decoder layer index ``l``)."""

    mode: str = "routed"
    # (B_l, E) float32 expert-merging matrix. One-hot rows mean pruning. None: experts unchanged.
    merge: torch.Tensor | None = None
    # (B_l, E) float32 router mapping applied to softmax probabilities. None: slice the gate rows.
    router: torch.Tensor | None = None
    # Number of active experts per token after compression. None: the model's own top-k.
    top_k: int | None = None
    # NAEE dynamic skip: drop the second expert when its weight < beta * the first's. None: off.
    skip_threshold: float | None = None
    # mode == "condensed": (B_l,) fixed weights of the B_l (merged) experts, active for every token.
    condensed_weights: torch.Tensor | None = None
    # (E,) int64: routing after top-k; original expert e's picks go to slot expert_to_slot[e]. None: off.
    expert_to_slot: torch.Tensor | None = None
    # (E, I) int64: per original expert, the order of its intermediate neurons before merging. None: as is.
    permutations: torch.Tensor | None = None

    def budget(self, num_experts: int) -> int:
        """B_l: the experts this layer keeps (0 when the layer is dropped)."""
        if self.mode == "dropped":
            return 0
        if self.merge is not None:
            return int(self.merge.shape[0])
        if self.router is not None:
            return int(self.router.shape[0])
        return num_experts

    def kept_experts(self, num_experts: int) -> list[int] | None:
        """Original expert ids kept, in slot order, or None when some slot merges several experts."""
        if self.mode == "dropped":
            return []
        if self.merge is None:
            return list(range(num_experts))
        if not is_one_hot(self.merge) or self.expert_to_slot is not None:
            return None
        return [int(e) for e in self.merge.argmax(dim=1)]

    def groups(self) -> list[list[int]] | None:
        """Routing after top-k: the original experts routed to each slot (slot order), else None."""
        if self.expert_to_slot is None:
            return None
        slots = self.expert_to_slot.tolist()
        return [[e for e, s in enumerate(slots) if s == slot] for slot in range(self.budget(len(slots)))]

    def is_pure_pruning(self) -> bool:
        """One-hot merge rows (or none) and a router that is absent or equal to the merge rows."""
        if self.expert_to_slot is not None:
            return False
        if self.merge is None:
            return self.router is None
        if not is_one_hot(self.merge):
            return False
        return self.router is None or torch.equal(self.router.to(self.merge.dtype), self.merge)


@dataclass
class CompressionPlan:
    """A whole-model plan. Layers absent from ``layers`` are left unchanged."""

    num_layers: int  # decoder layers of the model the plan was made for
    num_experts: int  # routed experts per MoE layer of the original model (E)
    layers: dict[int, LayerPlan] = field(default_factory=dict)
    skip_blocks: list[int] = field(default_factory=list)  # decoder blocks skipped entirely (Block Drop)
    hidden_size: int | None = None  # checked against the model when known
    metadata: dict = field(default_factory=dict)  # provenance: source file, method, command, ...

    # ------------------------------------------------------------------------------------------
    # Constructors.

    @classmethod
    def identity(cls, num_layers: int, num_experts: int, **fields) -> "CompressionPlan":
        """The plan that changes nothing (no layer entries, so dense layers of a model are fine)."""
        return cls(num_layers=num_layers, num_experts=num_experts, **fields)

    @classmethod
    def from_kept(
        cls,
        kept: Mapping[int, Sequence[int]] | Sequence[Sequence[int]],
        num_experts: int,
        num_layers: int | None = None,
        top_k: int | None = None,
        **fields,
    ) -> "CompressionPlan":
        """A pure-pruning plan: layer -> the original experts it keeps (sorted; gate rows sliced).

        ``kept`` is a dict (layer -> ids) or a list (one entry per layer, from layer 0). Layers not
        named stay unchanged. ``num_layers`` defaults to the list length or the largest layer + 1.
        """
        where = fields.get("metadata", {}).get("source") or "kept-experts list"
        items = dict(kept) if isinstance(kept, Mapping) else dict(enumerate(kept))
        layers = {}
        for key, ids in items.items():
            layer = _as_index(key, f"{where}: layer key {key!r}")
            if isinstance(ids, (str, bytes)) or not isinstance(ids, Sequence):
                raise HarnessError(f"{where}: layer {layer}: kept experts must be a list of ints, got {ids!r}")
            ids = [_as_index(e, f"{where}: layer {layer}: expert id {e!r}") for e in ids]
            if len(set(ids)) != len(ids):
                raise HarnessError(f"{where}: layer {layer}: kept experts {ids} list an expert twice")
            bad = [e for e in ids if e >= num_experts]
            if bad:
                raise HarnessError(f"{where}: layer {layer}: expert ids {bad} are not in [0, {num_experts})")
            if not ids:
                raise HarnessError(f"{where}: layer {layer}: keeps no experts; keep at least one (or drop the layer)")
            layers[layer] = LayerPlan(merge=one_hot_rows(sorted(ids), num_experts), top_k=top_k)
        if num_layers is None:
            num_layers = len(kept) if not isinstance(kept, Mapping) else max(layers, default=-1) + 1
        return cls(num_layers=num_layers, num_experts=num_experts, layers=layers, **fields)

    # ------------------------------------------------------------------------------------------
    # Questions about the plan.

    def layer(self, index: int) -> LayerPlan:
        """The plan of decoder layer ``index`` (a default, unchanged LayerPlan when absent)."""
        return self.layers.get(index) or LayerPlan()

    def budget(self, index: int) -> int:
        """B_l of decoder layer ``index`` (E when the plan leaves it unchanged, 0 when dropped)."""
        return self.layer(index).budget(self.num_experts)

    def kept_experts(self, index: int) -> list[int] | None:
        """Original expert ids the layer keeps (slot order), or None when it merges experts."""
        return self.layer(index).kept_experts(self.num_experts)

    @property
    def is_pure_pruning(self) -> bool:
        """Every routed layer only keeps experts (one-hot merge, router absent or equal to merge)."""
        return all(lp.is_pure_pruning() for lp in self.layers.values() if lp.mode == "routed")

    @property
    def uniform_budget(self) -> int | None:
        """B when every routed layer of the plan keeps the same number of experts, else None.

        Layers absent from the plan are not counted (they may be dense layers of the model); a plan
        with no layer entries keeps all E experts.
        """
        if not self.layers:
            return self.num_experts
        budgets = {lp.budget(self.num_experts) for lp in self.layers.values() if lp.mode == "routed"}
        return budgets.pop() if len(budgets) == 1 else None

    # ------------------------------------------------------------------------------------------
    # Validation and export.

    def validate(
        self,
        num_layers: int | None = None,
        num_experts: int | None = None,
        hidden_size: int | None = None,
        source: str | None = None,
    ) -> "CompressionPlan":
        """Raise HarnessError naming the file, the layer and the mismatch; return the plan if fine.

        ``num_layers`` / ``num_experts`` / ``hidden_size``: what the target model has, when known.
        ``source`` defaults to ``metadata['source']`` (the file the plan was read from).
        """
        where = str(source or self.metadata.get("source") or "compression plan")
        for name, value, bound in (("num_layers", self.num_layers, MAX_LAYERS), ("num_experts", self.num_experts, MAX_EXPERTS)):
            check_count(where, name, value, bound)
        expected = (("num_layers", num_layers, self.num_layers), ("num_experts", num_experts, self.num_experts),
                    ("hidden_size", hidden_size, self.hidden_size))
        for name, wanted, have in expected:
            if wanted is not None and have is not None and wanted != have:
                raise HarnessError(f"{where}: plan has {name}={have} but the model has {wanted}; use a plan made for this model")
        for index in self.skip_blocks:
            if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < self.num_layers:
                raise HarnessError(f"{where}: skip_blocks entry {index!r} is not a decoder layer in [0, {self.num_layers})")
        for index, lp in sorted(self.layers.items(), key=_layer_sort_key):
            if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < self.num_layers:
                raise HarnessError(f"{where}: layer {index!r} is out of range: the plan has {self.num_layers} layers [0, {self.num_layers})")
            _validate_layer(f"{where}: layer {index}", lp, self.num_experts)
        return self

    def fingerprint(self) -> str:
        """16 hex digits naming what the plan does to a model's outputs (cache identities use it).

        A sha256 over the sizes, ``skip_blocks`` (as a set) and, per layer in index order, the mode,
        top_k, skip threshold and each tensor's shape and float32 bytes (``expert_to_slot`` and
        ``permutations`` too; permutations that leave every expert in order count as absent). Metadata, dict insertion
        order, the tensors' dtype, layout and device, and -0.0 versus 0.0 do not count; a layer
        entry that changes nothing (a default ``LayerPlan``, or an identity merge with no router)
        counts as absent. The same plan read back from any format it can be written in gives the
        same fingerprint.
        """
        digest = hashlib.sha256()
        scalars = {
            "num_layers": self.num_layers,
            "num_experts": self.num_experts,
            "hidden_size": self.hidden_size,
            "skip_blocks": sorted(set(self.skip_blocks)),
            "layers": {},
        }
        tensors = []
        for index in sorted(self.layers):
            lp = self.layers[index]
            merge = lp.merge
            if merge is not None and lp.router is None and _is_identity(merge):
                merge = None  # keeps every expert in order, with the gate rows sliced: unchanged
            if lp.mode == "dropped":  # nothing else of a dropped layer reaches the outputs
                scalars["layers"][str(index)] = {"mode": "dropped"}
                continue
            entry = {"mode": lp.mode, "top_k": lp.top_k,
                     "skip_threshold": None if lp.skip_threshold is None else float(lp.skip_threshold)}
            named = {"merge": merge, "router": lp.router, "condensed_weights": lp.condensed_weights,
                     "expert_to_slot": lp.expert_to_slot, "permutations": _unless_identity_rows(lp.permutations)}
            if entry == {"mode": "routed", "top_k": None, "skip_threshold": None} and not any(
                    t is not None for t in named.values()):
                continue
            entry["tensors"] = {}
            for name, tensor in named.items():
                if tensor is not None:
                    entry["tensors"][name] = list(tensor.shape)
                    tensors.append(tensor)
            scalars["layers"][str(index)] = entry
        digest.update(json.dumps(scalars, sort_keys=True, separators=(",", ":")).encode())
        for tensor in tensors:
            values = tensor.detach().to("cpu", torch.float32).contiguous() + 0.0  # + 0.0 turns -0.0 into 0.0
            digest.update(values.numpy().tobytes())
        return digest.hexdigest()[:16]

    def to_eep_dict(self) -> dict[str, torch.Tensor]:
        """EEP's coefficient dict, one key per layer: ``layers.N`` (merge) and ``transfer.N`` (router).

        Only routed layers without top-k / skip changes can be written; layers absent from the plan
        are written as the identity (EEP files cover every layer).
        """
        where = str(self.metadata.get("source") or "compression plan")
        if self.skip_blocks:
            raise HarnessError(f"{where}: skip_blocks cannot be saved in EEP format; save with format='harness'")
        for index, lp in sorted(self.layers.items()):
            if lp.expert_to_slot is not None or lp.permutations is not None:
                raise HarnessError(f"{where}: layer {index}: routing after top-k and neuron permutations cannot be "
                                   "saved in EEP format (it maps before top-k); save with format='harness'")
        coeffs = {}
        for index in range(self.num_layers):
            lp = self.layer(index)
            if lp.mode != "routed" or lp.top_k is not None or lp.skip_threshold is not None:
                raise HarnessError(
                    f"{where}: layer {index}: mode {lp.mode!r} / top_k / skip_threshold cannot be saved in EEP "
                    "format (merging and router mapping only); save with format='harness'"
                )
            merge = lp.merge if lp.merge is not None else torch.eye(self.num_experts)
            router = lp.router if lp.router is not None else merge
            coeffs[f"layers.{index}"] = merge.detach().to("cpu", torch.float32).contiguous().clone()
            coeffs[f"transfer.{index}"] = router.detach().to("cpu", torch.float32).contiguous().clone()
        return coeffs


def _unless_identity_rows(permutations: torch.Tensor | None) -> torch.Tensor | None:
    """None when every row of ``permutations`` keeps the neurons in order (nothing is re-ordered)."""
    if permutations is None or not torch.equal(
            permutations.long(), torch.arange(permutations.shape[-1]).expand_as(permutations)):
        return permutations
    return None


def _is_identity(matrix: torch.Tensor) -> bool:
    return matrix.dim() == 2 and matrix.shape[0] == matrix.shape[1] and torch.equal(
        matrix.to(torch.float32), torch.eye(matrix.shape[0]))


def check_count(where: str, name: str, value, bound: int) -> int:
    """``value`` as a count in [1, bound], else HarnessError naming ``where`` and ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise HarnessError(f"{where}: {name} must be a positive int, got {value!r}")
    if value > bound:
        raise HarnessError(f"{where}: {name}={value} is more than any real model has (at most {bound}); fix the plan file")
    return value


def _layer_sort_key(item) -> tuple:
    """Sort layer entries by index; a bad (non-int) key sorts last so validation reports it."""
    key = item[0]
    return (0, key, "") if isinstance(key, int) else (1, 0, str(key))


def _as_index(value, what: str) -> int:
    """An int index from an int or a decimal string ("3"), else HarnessError."""
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise HarnessError(f"{what} must be a non-negative int")
    return value


def _validate_layer(where: str, lp: LayerPlan, num_experts: int) -> None:
    """Checks of one layer plan against the plan's expert count (``where`` names file and layer)."""
    if not isinstance(lp, LayerPlan):
        raise HarnessError(f"{where}: expected a LayerPlan, got {type(lp).__name__}")
    if lp.mode not in LAYER_MODES:
        raise HarnessError(f"{where}: mode {lp.mode!r} is not one of {', '.join(LAYER_MODES)}")
    for name in ("merge", "router"):
        _check_matrix(where, name, getattr(lp, name), num_experts)
    if lp.mode == "dropped":
        if lp.expert_to_slot is not None or lp.permutations is not None:
            raise HarnessError(f"{where}: a dropped layer has no experts; remove expert_to_slot / permutations")
        return
    slots = lp.budget(num_experts)
    if slots > num_experts:
        raise HarnessError(f"{where}: keeps B={slots} experts but the layer has only E={num_experts}; B must be <= E")
    if lp.merge is None and lp.router is not None and lp.router.shape[0] != num_experts:
        raise HarnessError(
            f"{where}: router has {lp.router.shape[0]} rows but merge is None (all {num_experts} experts kept); give a merge matrix"
        )
    if lp.merge is not None and lp.router is not None and lp.router.shape != lp.merge.shape:
        raise HarnessError(
            f"{where}: router shape {tuple(lp.router.shape)} differs from merge shape {tuple(lp.merge.shape)}; they must match"
        )
    if lp.mode == "condensed":
        weights = lp.condensed_weights
        if not isinstance(weights, torch.Tensor) or tuple(weights.shape) != (slots,):
            got = tuple(weights.shape) if isinstance(weights, torch.Tensor) else weights
            raise HarnessError(f"{where}: condensed mode needs condensed_weights of shape ({slots},), got {got}")
        if not torch.isfinite(weights).all():
            raise HarnessError(f"{where}: condensed_weights contains NaN or inf")
    elif lp.condensed_weights is not None:
        raise HarnessError(f"{where}: condensed_weights is set but mode is {lp.mode!r}; set mode='condensed' or remove it")
    _validate_after_top_k(where, lp, num_experts, slots)
    if lp.mode == "routed" and lp.router is None and lp.merge is not None and not is_one_hot(lp.merge) \
            and lp.expert_to_slot is None:
        raise HarnessError(f"{where}: merge rows are not one-hot (experts merged) but router is None; give a router mapping")
    if lp.top_k is not None and (isinstance(lp.top_k, bool) or not isinstance(lp.top_k, int) or not 1 <= lp.top_k <= slots):
        raise HarnessError(f"{where}: top_k {lp.top_k!r} must be an int in [1, B={slots}]")
    if lp.skip_threshold is not None:
        beta = lp.skip_threshold
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not math.isfinite(beta) or beta < 0:
            raise HarnessError(f"{where}: skip_threshold {beta!r} must be a finite number >= 0")


def _validate_after_top_k(where: str, lp: LayerPlan, num_experts: int, slots: int) -> None:
    """Checks of ``expert_to_slot`` (a map onto every slot) and ``permutations`` (true permutations)."""
    if lp.expert_to_slot is not None:
        slot_map = lp.expert_to_slot
        if not isinstance(slot_map, torch.Tensor) or slot_map.is_floating_point() or slot_map.is_complex() \
                or slot_map.dtype == torch.bool or tuple(slot_map.shape) != (num_experts,):
            got = (str(slot_map.dtype), tuple(slot_map.shape)) if isinstance(slot_map, torch.Tensor) else type(slot_map).__name__
            raise HarnessError(f"{where}: expert_to_slot must be an int tensor of shape ({num_experts},), got {got}")
        if lp.mode != "routed" or lp.router is not None or lp.merge is None or lp.skip_threshold is not None:
            raise HarnessError(f"{where}: expert_to_slot (routing after top-k) needs mode 'routed', a merge matrix, "
                               "no router mapping and no skip_threshold")
        bad = sorted({int(s) for s in slot_map.tolist() if not 0 <= int(s) < slots})
        if bad:
            raise HarnessError(f"{where}: expert_to_slot names slots {bad}, out of range for B={slots} slots [0, {slots})")
        missing = sorted(set(range(slots)) - {int(s) for s in slot_map.tolist()})
        if missing:
            raise HarnessError(f"{where}: expert_to_slot routes no expert to slots {missing}; every slot needs one")
    if lp.permutations is not None:
        perms = lp.permutations
        if not isinstance(perms, torch.Tensor) or perms.is_floating_point() or perms.is_complex() \
                or perms.dtype == torch.bool or perms.dim() != 2 or perms.shape[0] != num_experts or perms.shape[1] < 1:
            got = (str(perms.dtype), tuple(perms.shape)) if isinstance(perms, torch.Tensor) else type(perms).__name__
            raise HarnessError(f"{where}: permutations must be an int tensor of shape ({num_experts}, I), got {got}")
        if lp.merge is None:
            raise HarnessError(f"{where}: permutations re-order neurons before merging; give a merge matrix")
        order = torch.arange(perms.shape[1]).expand_as(perms)
        wrong = [e for e in range(num_experts) if not torch.equal(perms[e].long().sort().values, order[e])]
        if wrong:
            raise HarnessError(f"{where}: permutations rows {wrong[:5]} are not permutations of 0..{perms.shape[1] - 1}")


def _check_matrix(where: str, name: str, value, num_experts: int) -> None:
    if value is None:
        return
    if not isinstance(value, torch.Tensor) or value.dim() != 2 or not value.is_floating_point():
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise HarnessError(f"{where}: {name} must be a 2-D float (B, {num_experts}) tensor, got {shape}")
    if value.shape[1] != num_experts:
        raise HarnessError(
            f"{where}: {name} has shape {tuple(value.shape)}: {value.shape[1]} expert columns but the plan has "
            f"E={num_experts} experts per layer"
        )
    if value.shape[0] == 0:
        raise HarnessError(f"{where}: {name} has B=0 rows; a layer must keep at least one expert (or be dropped)")
    if not torch.isfinite(value).all():
        raise HarnessError(f"{where}: {name} contains NaN or inf coefficients")
