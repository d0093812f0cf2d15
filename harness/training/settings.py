"""The finetune config: a python file (mmengine ``Config``, like the dataset configs) with sections

    parts = 'experts'          # experts | experts+routers | routers | all   (see parts.py)
    lora = None                # or dict(r=8, alpha=16, dropout=0.0): peft adapters on those parts
    teacher_path = None        # kd: None = the student's checkpoint without the plan
    kd = dict(alpha=0.2, temperature=2.0)
    data = dict(max_length=None, answer_template=' {answer}', append_eos=True, text_field='text',
                max_samples=None)
    train = dict(...)          # transformers.TrainingArguments fields (lr, batch, schedule, ...)

Each section of the file updates ``BASE``'s section; without ``--finetune_cfg`` the recipe's paper
defaults in ``finetune_cfgs/`` are used (``RECIPE_CFGS``). Everything is checked here, before a
model loads, so a typo costs a second.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

from harness.errors import HarnessError

RECIPES = ("kd", "lm", "sft")
PARTS = ("experts", "experts+routers", "routers", "all")
CFG_DIR = Path(__file__).resolve().parents[2] / "finetune_cfgs"
RECIPE_CFGS = {"kd": "mc-smoe_kd.py", "lm": "cd-moe_lm.py", "sft": "cd-moe_sft.py"}

BASE = dict(
    parts="experts",
    lora=None,
    teacher_path=None,
    kd=dict(alpha=0.2, temperature=2.0),
    data=dict(max_length=None, answer_template=" {answer}", append_eos=True, text_field="text", max_samples=None),
    train=dict(
        learning_rate=1e-5, per_device_train_batch_size=8, gradient_accumulation_steps=1, num_train_epochs=1,
        lr_scheduler_type="linear", warmup_steps=0, weight_decay=0.0, save_steps=100, logging_steps=10, seed=0,
    ),
)
LORA_KEYS = {"r", "alpha", "dropout"}
# TrainingArguments the runner sets itself (where checkpoints go, what is logged, which columns stay)
RESERVED_TRAIN_KEYS = {"output_dir", "report_to", "remove_unused_columns", "resume_from_checkpoint", "save_strategy",
                       "label_names", "logging_dir"}


@dataclass
class FinetuneSettings:
    recipe: str
    parts: str
    lora: dict | None
    teacher_path: str | None
    kd: dict
    data: dict
    train: dict
    source: str  # the config file the settings came from
    raw: dict = field(default_factory=dict)  # as recorded in the output

    @property
    def needs_teacher(self) -> bool:
        return self.recipe == "kd"


def default_cfg_path(recipe: str) -> Path:
    path = CFG_DIR / RECIPE_CFGS[recipe]
    if not path.is_file():
        raise HarnessError(f"the default finetune config {path} is missing; pass --finetune_cfg FILE")
    return path


def load_settings(recipe: str, path: str | None) -> FinetuneSettings:
    """The checked settings of ``recipe`` from ``path`` (or the recipe's paper defaults)."""
    from harness.config import load_config

    if recipe not in RECIPES:
        raise HarnessError(f"--recipe {recipe!r} is not one of {', '.join(RECIPES)}")
    file = Path(path) if path else default_cfg_path(recipe)
    cfg = load_config(str(file)).to_dict()
    unknown = sorted(set(cfg) - set(BASE))
    if unknown:
        raise HarnessError(f"finetune config {file}: unknown key {unknown[0]!r}; the keys are {', '.join(BASE)}")
    merged = copy.deepcopy(BASE)
    for key, value in cfg.items():
        if isinstance(merged[key], dict) and isinstance(value, dict):
            merged[key].update(value)
        else:
            merged[key] = value
    settings = FinetuneSettings(recipe=recipe, source=str(file), raw=copy.deepcopy(merged), **merged)
    check_settings(settings)
    return settings


def check_settings(s: FinetuneSettings) -> None:
    where = f"finetune config {s.source}"
    if s.parts not in PARTS:
        raise HarnessError(f"{where}: parts={s.parts!r} is not one of {', '.join(PARTS)}")
    if s.lora is not None:
        if not isinstance(s.lora, dict) or set(s.lora) - LORA_KEYS:
            raise HarnessError(f"{where}: lora must be None or a dict with keys {sorted(LORA_KEYS)}")
        if int(s.lora.get("r", 8)) < 1:
            raise HarnessError(f"{where}: lora r must be at least 1")
    if float(s.kd.get("temperature", 0)) <= 0 or float(s.kd.get("alpha", -1)) < 0 or set(s.kd) - {"alpha", "temperature"}:
        raise HarnessError(f"{where}: kd needs alpha >= 0 and temperature > 0 (and no other keys)")
    unknown = set(s.data) - set(BASE["data"])
    if unknown:
        raise HarnessError(f"{where}: data.{sorted(unknown)[0]} is unknown; data keys are {', '.join(BASE['data'])}")
    for key in ("max_length", "max_samples"):
        value = s.data.get(key)
        if value is not None and (not isinstance(value, int) or value < 1):
            raise HarnessError(f"{where}: data.{key} must be a positive integer or None, got {value!r}")
    if "{answer}" not in str(s.data["answer_template"]):
        raise HarnessError(f"{where}: data.answer_template must contain {{answer}}")
    reserved = sorted(set(s.train) & RESERVED_TRAIN_KEYS)
    if reserved:
        raise HarnessError(f"{where}: train.{reserved[0]} is set by the runner; remove it")
    for key in ("save_steps", "logging_steps"):
        if not isinstance(s.train.get(key), int) or s.train[key] < 1:
            raise HarnessError(f"{where}: train.{key} must be a positive integer (checkpoints and the loss log need it)")
