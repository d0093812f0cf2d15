"""Training rows: token ids plus a mask of the tokens the loss counts.

- ``examples_from_task``: each item of a dataset config, as the harness renders it for the model
  (``EvalTask.prompts``), followed by its gold answer. Generation items: the prompt, then
  ``answer_template`` filled with the reference; PPL items: the gold label's choice (its context
  and continuation, exactly what ``PPLInferencer`` scores). Only the answer tokens count.
- ``examples_from_corpus``: plain language modelling on the documents of a ``.jsonl`` (one record
  per line, text in ``text_field``) or ``.txt`` file (one document per line); every token counts.

Prompts are encoded as ``HFCausalLM.encode`` does (special tokens included) and answers without
special tokens, so training conditions on exactly the tokens inference feeds the model. Rows longer
than ``max_length`` lose the start of their prompt (the answer is kept), as inference truncates.
``Collator`` pads on the right; padding never counts.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from harness.errors import HarnessError
from harness.training.losses import IGNORE, shift_targets


@dataclass
class Example:
    input_ids: list[int]
    counted: list[int]  # 1 where the loss counts the token


def _answer_ids(lm, text: str) -> list[int]:
    return lm.tokenizer(text, add_special_tokens=False)["input_ids"]


def _join(prompt_ids: list[int], answer_ids: list[int], eos: int | None, max_length: int) -> Example:
    if eos is not None:
        answer_ids = answer_ids + [eos]
    answer_ids = answer_ids[:max_length - 1] if len(answer_ids) >= max_length else answer_ids
    prompt_ids = prompt_ids[-(max_length - len(answer_ids)):] if prompt_ids else prompt_ids
    return Example(prompt_ids + answer_ids, [0] * len(prompt_ids) + [1] * len(answer_ids))


def examples_from_task(task, lm, data: dict) -> list[Example]:
    """The answer-token rows of an ``EvalTask`` (its ``max_num``/subset already applied)."""
    items = task.prompts(lm)
    references = task.data.references
    if task.data.output_column is None or not references or any(r is None or r == "" for r in references):
        raise HarnessError(f"train config dataset {task.abbr} has no gold answers (reader_cfg.output_column); "
                           "sft and kd on a dataset config train on its answers")
    eos = lm.tokenizer.eos_token_id if data["append_eos"] else None
    max_length = int(data["max_length"] or lm.max_seq_len)
    out = []
    for position, (item, gold) in enumerate(zip(items, references)):
        if isinstance(item, str):  # a generation prompt
            context, answer = item, str(data["answer_template"]).replace("{answer}", str(gold))
        else:  # PPL choices: the gold label's context and continuation
            match = [c for c in item if str(c.label) == str(gold)]
            if not match:
                raise HarnessError(f"train config dataset {task.abbr}: item {position}'s gold answer {gold!r} is none "
                                   f"of its labels {[c.label for c in item]}")
            context, answer = match[0].context, match[0].continuation
        out.append(_join(lm.encode(context) if context else [], _answer_ids(lm, answer), eos, max_length))
    return _limit(out, data)


def read_corpus(path: str, text_field: str) -> list[str]:
    """The documents of a ``.jsonl`` or ``.txt`` file (empty ones dropped)."""
    file = Path(path)
    if file.suffix not in (".jsonl", ".txt"):
        raise HarnessError(f"--train_data {path}: expected a .jsonl (one JSON record per line) or .txt file")
    texts = []
    with open(file, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            if file.suffix == ".txt":
                texts.append(line.rstrip("\n"))
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise HarnessError(f"--train_data {path}: line {number} is not JSON") from None
            if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
                raise HarnessError(f"--train_data {path}: line {number} has no text field {text_field!r} "
                                   "(set data.text_field in the finetune config)")
            if record[text_field].strip():
                texts.append(record[text_field])
    if not texts:
        raise HarnessError(f"--train_data {path} holds no documents")
    return texts


def examples_from_corpus(texts: list[str], lm, data: dict) -> list[Example]:
    """One row per document, cut to ``max_length`` tokens (CD-MoE's stage 1: C4, length 256)."""
    eos = lm.tokenizer.eos_token_id if data["append_eos"] else None
    max_length = int(data["max_length"] or lm.max_seq_len)
    out = []
    for text in texts[: data.get("max_samples") or None]:
        ids = lm.encode(text) + ([eos] if eos is not None else [])
        ids = ids[:max_length]
        if len(ids) >= 2:
            out.append(Example(ids, [0] + [1] * (len(ids) - 1)))  # the first token has no prediction
    return _limit(out, data)


def _limit(examples: list[Example], data: dict) -> list[Example]:
    examples = examples[: data.get("max_samples") or None]
    if not any(sum(e.counted) for e in examples):
        raise HarnessError("the training data has no token the loss could count")
    return examples


def fingerprint(examples: list[Example]) -> str:
    """A short hash of the training rows (recorded with the model, checked on resume)."""
    digest = hashlib.sha256()
    for e in examples:
        digest.update(json.dumps([e.input_ids, e.counted]).encode())
    return digest.hexdigest()[:16]


class ExampleDataset(torch.utils.data.Dataset):
    def __init__(self, examples: list[Example]):
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict:
        e = self.examples[i]
        return {"input_ids": e.input_ids, "counted": e.counted}


class Collator:
    """Right-pads a batch; ``labels`` (-100 where not counted) and ``shift_labels`` (what each
    position predicts) never count padding."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = int(pad_token_id)

    def __call__(self, rows: list[dict]) -> dict:
        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        counted = torch.zeros((len(rows), width), dtype=torch.long)
        for b, row in enumerate(rows):
            n = len(row["input_ids"])
            ids[b, :n] = torch.tensor(row["input_ids"])
            attention[b, :n] = 1
            counted[b, :n] = torch.tensor(row["counted"])
        counted = counted * attention
        labels = torch.where(counted.bool(), ids, IGNORE)
        return {"input_ids": ids, "attention_mask": attention, "labels": labels,
                "shift_labels": shift_targets(ids, counted)}
