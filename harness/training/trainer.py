"""transformers' ``Trainer`` with the fine-tuning loss, checkpoints that say when they are whole,
and the loss log.

- ``FinetuneTrainer.compute_loss``: ``losses.token_loss`` on the student's logits (plus the
  teacher's under ``torch.no_grad`` for distillation), divided by the token count of the whole
  accumulated batch (``num_items_in_batch``, counted from ``shift_labels``).
- Checkpoints hold the trainable tensors only, by parameter name (``trainable.safetensors``):
  ``save_pretrained`` would write transformers 5's per-expert keys, which the Trainer's own
  non-strict reload into the fused expert tensors silently skips; frozen weights come back from
  the checkpoint and the plan anyway.
- A checkpoint (``checkpoint-N``, written by the Trainer every ``save_steps``) counts only once
  ``FinishedCheckpoints`` has written its marker after the Trainer finished saving it; a run
  killed mid-save leaves a folder without one, which ``last_finished_checkpoint`` skips and
  removes, so a resumed run continues from the last whole checkpoint (RNG, optimiser, scheduler
  and data order included) and ends with the weights an uninterrupted run has.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback

from harness.errors import HarnessError
from harness.io import atomic_write, atomic_write_json
from harness.training.losses import token_loss

log = logging.getLogger("harness.training")
MARKER = "harness_checkpoint_complete.json"
TRAINABLE_FILE = "trainable.safetensors"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


class FinetuneTrainer(Trainer):
    """A Trainer whose loss is ``token_loss`` (CE on counted tokens, + alpha * KD with a teacher)."""

    # the loss below is normalised over the accumulated batch already (num_items_in_batch)
    loss_is_scaled_for_ga = True

    def __init__(self, *args, teacher=None, kd: dict | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.teacher = teacher
        self.kd = dict(kd or {})
        self.model_accepts_loss_kwargs = True  # so the Trainer counts num_items_in_batch for us
        self._sums = {"ce": 0.0, "kl": 0.0, "tokens": 0}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        shift_labels = inputs.pop("shift_labels")
        inputs.pop("labels", None)
        outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=False)
        teacher_logits = None
        if self.teacher is not None:
            with torch.no_grad():
                teacher_logits = self.teacher(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                                              use_cache=False).logits
        parts = token_loss(outputs.logits, shift_labels, teacher_logits, alpha=float(self.kd.get("alpha", 0.0)),
                           temperature=float(self.kd.get("temperature", 1.0)), num_items=num_items_in_batch)
        if model.training:
            self._sums["ce"] += float(parts.ce)
            self._sums["kl"] += float(parts.kl) if parts.kl is not None else 0.0
            self._sums["tokens"] += parts.tokens
        return (parts.loss, outputs) if return_outputs else parts.loss

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        """A checkpoint's weights: the trainable tensors by name (see the module docstring)."""
        from safetensors.torch import save_file

        if not self.args.should_save:
            return
        output_dir = output_dir or self.args.output_dir
        os.makedirs(output_dir, exist_ok=True)
        model = self.accelerator.unwrap_model(self.model)
        tensors = {n: p.detach().to("cpu").contiguous() for n, p in model.named_parameters() if p.requires_grad}
        save_file(tensors, os.path.join(output_dir, TRAINABLE_FILE), metadata={"format": "pt"})

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        from safetensors.torch import load_file

        model = self.accelerator.unwrap_model(model if model is not None else self.model)
        file = Path(resume_from_checkpoint) / TRAINABLE_FILE
        if not file.is_file():
            raise HarnessError(f"{resume_from_checkpoint} has no {TRAINABLE_FILE}; remove it or use a new --work_dir")
        state = load_file(str(file))
        params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        if set(state) != set(params) or any(state[n].shape != params[n].shape for n in state):
            raise HarnessError(f"{file} holds other trainable tensors than this run trains; use a new --work_dir")
        with torch.no_grad():
            for name, tensor in state.items():
                params[name].copy_(tensor)

    def log(self, logs: dict, *args, **kwargs) -> None:
        """Adds the per-token task loss (and distillation term) since the last log line."""
        if "loss" in logs and self._sums["tokens"]:
            logs["ce"] = round(self._sums["ce"] / self._sums["tokens"], 6)
            if self.teacher is not None:
                logs["kl"] = round(self._sums["kl"] / self._sums["tokens"], 6)
            self._sums = {"ce": 0.0, "kl": 0.0, "tokens": 0}
        super().log(logs, *args, **kwargs)


class FinishedCheckpoints(TrainerCallback):
    """Marks ``checkpoint-N`` as whole once the Trainer has finished writing it."""

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if folder.is_dir():
                atomic_write_json(folder / MARKER, {"global_step": state.global_step})
        return control


class StopAfter(TrainerCallback):
    """Raises ``KeyboardInterrupt`` once step ``step`` is saved: how the tests interrupt a run."""

    def __init__(self, step: int):
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            raise KeyboardInterrupt(f"stopped after step {state.global_step}")
        return control


def last_finished_checkpoint(folder: Path) -> Path | None:
    """The newest checkpoint with its marker; unfinished ones (a kill while saving) are removed."""
    if not folder.is_dir():
        return None
    found = []
    for child in folder.iterdir():
        match = _CHECKPOINT.match(child.name)
        if match and child.is_dir():
            if (child / MARKER).is_file():
                found.append((int(match.group(1)), child))
            else:
                log.warning("removing %s: it was not finished (the run stopped while saving it)", child)
                shutil.rmtree(child, ignore_errors=True)
    return max(found)[1] if found else None


def write_loss_curve(history: list[dict], path: Path) -> Path | None:
    """``loss`` (and ``ce`` / ``kl``) against the step, as a PNG; None without any logged loss."""
    rows = [h for h in history if "loss" in h and "step" in h]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for key in ("loss", "ce", "kl"):
        points = [(h["step"], h[key]) for h in rows if key in h]
        if points:
            ax.plot(*zip(*points), label=key, marker="." if len(points) < 30 else None)
    ax.set_xlabel("step")
    ax.set_ylabel("per-token loss")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    finally:
        plt.close(fig)
