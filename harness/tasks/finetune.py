"""Recovery fine-tuning of a compressed MoE model: distillation from the full model, or language
modelling / supervised fine-tuning of the kept experts (docs/FINETUNE.md).

    python harness/tasks/finetune.py --model_path P [--coeff_path PLAN] --recipe kd|lm|sft
        (--train_cfg DATASET_CFG | --train_data FILE) [--finetune_cfg FILE] --work_dir DIR
        [--model_cfg FILE] [--data_root DIR] [--max_num N]

The student is the model with the plan applied; for ``kd`` the teacher is the same checkpoint
without it. ``--train_cfg``: the loss counts the gold answer tokens of the config's (one) dataset,
prompted as the harness prompts it; ``--train_data``: plain language modelling on a .jsonl/.txt
corpus. The finetune config (default: the recipe's paper settings in finetune_cfgs/) picks the
trainable parts, LoRA, the distillation weights and transformers' TrainingArguments.

Writes DIR/model (what ``infer.py CONFIG --model_path DIR/model`` evaluates, with finetune.json),
DIR/train_log.json, DIR/loss.png, checkpoints under DIR/trainer, a log and the finetune config.
Rerunning the same command after an interruption resumes from the last whole checkpoint.
"""
from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

from harness.cli import main_guard
from harness.config import dataset_configs, load_config, model_config
from harness.errors import HarnessError, one_line
from harness.io import atomic_write_json
from harness.pipeline import EvalTask
from harness.run import Run, check_files, check_work_dir, make_parser, positive_int

log = logging.getLogger("harness.finetune")


def parse_args(argv=None):
    parser = make_parser(__doc__)
    parser.add_argument("--model_path", help="model folder or hub id; replaces the model config's path")
    parser.add_argument("--model_cfg", help="model config file (default: the train config's `models`)")
    parser.add_argument("--coeff_path", help="compression plan applied to the student")
    data = parser.add_mutually_exclusive_group(required=True)
    data.add_argument("--train_cfg", help="dataset config with one dataset: train on its gold answers")
    data.add_argument("--train_data", help="text corpus (.jsonl with a text field, or .txt): language modelling")
    parser.add_argument("--recipe", required=True, choices=("kd", "lm", "sft"),
                        help="kd: task loss + alpha * KL to the unplanned model; lm / sft: cross-entropy only")
    parser.add_argument("--finetune_cfg", help="finetune config (default: finetune_cfgs/ paper settings of the recipe)")
    parser.add_argument("--work_dir", required=True, help="output folder")
    parser.add_argument("--data_root", help="replaces the ./data prefix of the train config's data paths")
    parser.add_argument("--max_num", type=positive_int, help="train on the first N items / documents only")
    return parser.parse_args(argv)


def check_recipe(args, settings) -> None:
    if args.recipe == "lm" and args.train_cfg:
        raise HarnessError("--recipe lm is language modelling on a text corpus: pass --train_data FILE, "
                           "or use --recipe sft for a dataset config's answers")
    if args.recipe == "sft" and args.train_data:
        raise HarnessError("--recipe sft trains on a dataset config's gold answers: pass --train_cfg, "
                           "or use --recipe lm for a text corpus")
    if settings.needs_teacher and not args.coeff_path and not settings.teacher_path:
        raise HarnessError("--recipe kd needs a teacher: the same checkpoint without a plan (pass --coeff_path) "
                           "or teacher_path in the finetune config")


def prepare(args):
    """Everything read and checked (settings, paths, configs); nothing written or loaded."""
    from harness.training.settings import load_settings

    check_files(finetune_cfg=args.finetune_cfg, coeff_path=args.coeff_path, train_cfg=args.train_cfg,
                train_data=args.train_data, model_cfg=args.model_cfg)
    settings = load_settings(args.recipe, args.finetune_cfg)
    check_recipe(args, settings)
    work_dir = check_work_dir(args.work_dir)
    tasks, source = [], None
    if args.train_cfg:
        source = load_config(args.train_cfg)
        datasets = dataset_configs(source)
        if len(datasets) != 1:
            raise HarnessError(f"--train_cfg {args.train_cfg} defines {len(datasets)} datasets; it must define one")
        tasks = [EvalTask(datasets[0], args.data_root, args.max_num)]
    if args.model_cfg:
        source = load_config(args.model_cfg)
    from mmengine.config import Config

    model_cfg = model_config(source if source is not None else Config({}), args.model_path)
    return Run(args, load_config(settings.source), model_cfg, tasks, work_dir, extra={"settings": settings})


def build_examples(run, lm):
    from harness.training import data

    settings = run.extra["settings"]
    args = run.args
    if run.tasks:
        return data.examples_from_task(run.tasks[0], lm, settings.data), {"train_cfg": args.train_cfg,
                                                                          "dataset": run.tasks[0].abbr}
    texts = data.read_corpus(args.train_data, settings.data["text_field"])[: args.max_num or None]
    return data.examples_from_corpus(texts, lm, settings.data), {"train_data": args.train_data}


def load_teacher(run, student):
    """The unplanned model (same checkpoint, or ``teacher_path``), frozen and in eval mode."""
    from harness.models.hf_causal_lm import HFCausalLM

    settings = run.extra["settings"]
    cfg = dict(run.model_cfg)
    if settings.teacher_path:
        cfg.update(path=settings.teacher_path, tokenizer_path=settings.teacher_path)
    cfg.pop("type", None)
    teacher = HFCausalLM(**cfg, tokenizer=student.tokenizer).model
    if teacher.get_output_embeddings().weight.shape[0] != student.model.get_output_embeddings().weight.shape[0]:
        raise HarnessError(f"teacher {cfg['path']} has another vocabulary than the student; distillation needs the same")
    if getattr(teacher, "compression_plan", None) is not None:
        raise HarnessError(f"teacher {cfg['path']} is a compressed folder; pass the full model as teacher_path")
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher.eval()


def training_arguments(settings, output_dir: Path):
    from transformers import TrainingArguments

    try:
        return TrainingArguments(output_dir=str(output_dir), report_to="none", remove_unused_columns=False,
                                 save_strategy="steps", label_names=["labels"], **settings.train)
    except (TypeError, ValueError) as exc:
        first = one_line(exc)
        raise HarnessError(f"finetune config {settings.source}: train settings rejected by TrainingArguments: {first}") from None


def run_identity(run, settings, data_fp: str, plan) -> dict:
    """What a resumed run must match (checked against DIR/trainer/run.json)."""
    return {"recipe": settings.recipe, "settings": settings.raw, "model_path": run.model_cfg["path"],
            "plan": None if plan is None else plan.fingerprint(), "data": data_fp}


@main_guard
def main(argv=None) -> int:
    from harness.training import data, parts, trainer as ft
    from harness.training.output import is_finished, save_finetuned

    args = parse_args(argv)
    run = prepare(args)
    settings = run.extra["settings"]
    out_dir = run.work_dir / "model"
    if is_finished(out_dir):
        print(f"already finished: {out_dir} (finetune.json); use a new --work_dir to train again")
        return 0
    lm = run.load_model(args.coeff_path)  # the student: the plan applied in place (a misfit is an error here)
    plan = getattr(lm.model, "compression_plan", None)
    examples, data_record = build_examples(run, lm)
    names = parts.check_trainable(lm.model, settings.parts)
    teacher = load_teacher(run, lm) if settings.needs_teacher else None
    trainer_dir = run.work_dir / "trainer"
    targs = training_arguments(settings, trainer_dir)
    identity = run_identity(run, settings, data.fingerprint(examples), plan)
    previous = trainer_dir / "run.json"
    if previous.is_file() and json.loads(previous.read_text()) != identity:
        raise HarnessError(f"{run.work_dir} holds a run with other settings, data, model or plan; use a new --work_dir")

    run.start()
    atomic_write_json(previous, identity)
    student = lm.model
    parts.freeze_all_but(student, names)
    if settings.lora is not None:
        student = parts.wrap_lora(student, names, settings.lora)
    trainable = parts.trainable_count(student)
    log.info("recipe %s, parts %s%s: %d trainable parameters, %d training rows", settings.recipe, settings.parts,
             " (LoRA)" if settings.lora else "", trainable, len(examples))
    trainer = ft.FinetuneTrainer(
        model=student, args=targs, train_dataset=data.ExampleDataset(examples),
        data_collator=data.Collator(lm.pad_token_id), teacher=teacher, kd=settings.kd if teacher is not None else None,
        callbacks=[ft.FinishedCheckpoints()],
    )
    if teacher is not None:
        teacher.to(targs.device)
    checkpoint = ft.last_finished_checkpoint(trainer_dir)
    if checkpoint is not None:
        run.print(f"resuming from {checkpoint}")
    started = time.time()
    result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    if not trainer.is_world_process_zero():
        return 0
    history = trainer.state.log_history
    atomic_write_json(run.work_dir / "train_log.json", history)
    ft.write_loss_curve(history, run.work_dir / "loss.png")
    model = student.merge_and_unload() if settings.lora is not None else student
    record = {
        "recipe": settings.recipe, "finetune_cfg": settings.source, "settings": settings.raw,
        "base_model": run.model_cfg["path"], "coeff_path": args.coeff_path,
        "plan_fingerprint": None if plan is None else plan.fingerprint(),
        "teacher": (settings.teacher_path or run.model_cfg["path"]) if teacher is not None else None,
        "data": {**data_record, "rows": len(examples), "counted_tokens": sum(sum(e.counted) for e in examples),
                 "fingerprint": identity["data"]},
        "trainable_parameters": trainable, "trainable_tensors": len(names), "global_step": trainer.state.global_step,
        "train_loss": result.training_loss, "train_seconds_this_process": round(time.time() - started, 1),
        "command": " ".join(["python", "harness/tasks/finetune.py", *(sys.argv[1:] if argv is None else argv)]),
    }
    kind = save_finetuned(model, lm.tokenizer, out_dir, record)
    run.print(f"fine-tuned model ({kind}) written to {out_dir}; loss log {run.work_dir / 'train_log.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
