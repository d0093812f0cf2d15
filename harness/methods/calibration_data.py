"""Where calibration tokens come from: a plain-text corpus or a dataset config's prompts.

Corpus (NAEE's and HC-SMoE's recipe): JSONL documents with a ``text`` field, shuffled with a seed,
encoded, concatenated and cut into N samples of L tokens. Fewer tokens than N * L: the samples that
exist are used (the last one shorter) and ``note`` says how many; none at all is an error.
Prompts (EEP's and MC-SMoE's task-specific calibration): each prompt of the tasks is one sample.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from harness.errors import HarnessError


@dataclass
class CalibrationData:
    samples: list[list[int]]  # token ids, one list per sample
    source: str  # for the plan's metadata: file or config, and how much was used
    note: str = ""  # set when less than requested was available


def read_corpus(path: str, argument: str = "--calib_data") -> list[str]:
    """The ``text`` fields of a JSONL file; a one-line error for a missing, empty or text-less file."""
    file = Path(path)
    if not file.is_file():
        raise HarnessError(f"{argument} {path} not found; pass a JSONL file with a 'text' field per line")
    texts = []
    with file.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise HarnessError(f"{argument} {path}: line {number} is not JSON; pass a JSONL file") from None
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise HarnessError(f"{argument} {path}: line {number} has no 'text' string field; each line needs one")
            texts.append(record["text"])
    if not texts:
        raise HarnessError(f"{argument} {path} is empty; pass a JSONL file with documents in it")
    return texts


def corpus_samples(path: str, encode, num_samples: int, seq_len: int, seed: int = 42) -> CalibrationData:
    """``num_samples`` chunks of ``seq_len`` tokens from the shuffled, concatenated documents."""
    texts = read_corpus(path)
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    wanted = num_samples * seq_len
    stream: list[int] = []
    for i in order:
        stream += encode(texts[i])
        if len(stream) >= wanted:
            break
    stream = stream[:wanted]
    if not stream:
        raise HarnessError(f"--calib_data {path}: its documents encode to no tokens; pass a file with text")
    samples = [stream[i: i + seq_len] for i in range(0, len(stream), seq_len)]
    source = f"{path} ({len(samples)} x {seq_len} tokens, seed {seed})"
    note = ""
    if len(stream) < wanted:
        note = (f"--calib_data {path} holds {len(stream)} tokens, fewer than the {num_samples} x {seq_len} = "
                f"{wanted} requested; using {len(samples)} samples")
        source = f"{path} ({len(stream)} tokens in {len(samples)} samples of up to {seq_len}, seed {seed})"
    return CalibrationData(samples, source, note)


def prompt_samples(tasks, lm, limit: int, seq_len: int | None, what: str) -> CalibrationData:
    """The prompts of ``tasks`` (at most ``limit``) as samples, each cut to ``seq_len`` tokens."""
    from harness.methods.calibration import task_texts

    texts: list[str] = []
    for task in tasks:
        texts += task_texts(task, lm, limit - len(texts))
        if len(texts) >= limit:
            break
    cap = min(seq_len or lm.max_seq_len, lm.max_seq_len)
    samples = [s for s in (lm.encode(t)[:cap] for t in texts[:limit]) if s]
    if not samples:
        raise HarnessError(f"{what}: its prompts hold no tokens; pass a config with data")
    note = "" if len(samples) >= limit else f"{what} has {len(samples)} prompts, fewer than the {limit} requested"
    return CalibrationData(samples, f"{what} ({len(samples)} prompts)", note)
