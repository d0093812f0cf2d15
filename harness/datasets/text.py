"""The 'text' loader: a corpus for perplexity, as JSONL records with a text field or plain text.

    reader_cfg=dict(type='text', path='./data/c4/c4-validation....jsonl', field='text')

A ``.jsonl`` file (compressed variants included) gives one document per record, read from
``field``; any other file is plain text, one document for the whole file (``split='file'``), one
per blank-line-separated paragraph (``split='paragraph'``) or one per line (``split='line'``).
Every row is ``{'text': document}``. A missing file, a file without documents, a record lacking
the field (or holding no text there) are one-line errors naming the file and line, because a
corpus silently shorter than the user's file would give a perplexity of some other text.
"""
from __future__ import annotations

import re

from harness.datasets.files import find_data_file, parse_jsonl, plain_name, read_text
from harness.errors import HarnessError
from harness.registry import LOADERS

SPLITS = ("file", "paragraph", "line")


@LOADERS.register_module(name="text")
def load_text(path: str, field: str = "text", split: str = "file") -> list[dict]:
    """Documents of a corpus file as rows ``{'text': ...}`` (see the module docstring)."""
    if split not in SPLITS:
        raise HarnessError(f"text loader: split={split!r} is not one of {SPLITS}")
    file = find_data_file(path, "text")
    raw = read_text(file, "text")
    if plain_name(file).endswith(".jsonl"):
        documents = _jsonl_documents(raw, str(file), field)
    else:
        documents = _plain_documents(raw, split)
    if not documents:
        raise HarnessError(f"corpus {file} holds no text; point reader_cfg.path at a non-empty file")
    return [{"text": doc} for doc in documents]


def _jsonl_documents(raw: str, where: str, field: str) -> list[str]:
    documents = []
    numbers = [n for n, line in enumerate(raw.splitlines(), start=1) if line.strip()]
    for number, row in zip(numbers, parse_jsonl(raw, where)):
        value = row.get(field)
        if not isinstance(value, str):
            raise HarnessError(
                f"{where}:{number}: no text field {field!r} (columns: {sorted(row)}); set reader_cfg.field")
        if not value.strip():
            raise HarnessError(f"{where}:{number}: field {field!r} is empty; remove the record")
        documents.append(value)
    return documents


def _plain_documents(raw: str, split: str) -> list[str]:
    if split == "file":
        parts = [raw]
    elif split == "paragraph":
        parts = re.split(r"\n\s*\n", raw)
    else:
        parts = raw.splitlines()
    return [part for part in parts if part.strip()]
