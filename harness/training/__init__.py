"""Recovery fine-tuning of compressed MoE models (``harness/tasks/finetune.py``).

    settings.py  the finetune config (recipe, trainable parts, LoRA, distillation, TrainingArguments)
    data.py      training rows: answer tokens of a dataset config's items, or a text corpus
    parts.py     which parameters train (kept experts, routers, everything) and the LoRA wrapping
    losses.py    token cross-entropy and the distillation term, padding never counted
    trainer.py   transformers' Trainer with that loss, finished-checkpoint markers, the loss log
    output.py    the fine-tuned model as a folder ``infer.py --model_path`` loads, with its record

The student is the model with the plan applied; for ``kd`` the teacher is the same checkpoint
without it (or ``teacher_path``), loaded separately and never trained.
"""
