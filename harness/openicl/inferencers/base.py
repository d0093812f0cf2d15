"""The inferencer protocol: items from prompts, requests to a model, predictions into a store.

An inferencer is the one place that knows how a kind of evaluation turns a dataset's rows into
model requests and the model's results into prediction records:

    build_items(inputs)            -> one item per test row (a prompt, a list of choices, a text)
    fingerprint(model, items)      -> what a resumed run must match
    infer(model, items, store)     -> requests for the unfinished items, records into ``store``

``EvalTask`` only moves data between these steps, so a new inferencer (rolling perplexity, say) is
one new module registered in ``INFERENCERS``. Inferencers talk to models through the protocol of
``harness/models/api.py`` only.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Callable

from tqdm import tqdm

from harness.io import PredictionStore
from harness.openicl.meta_template import render


def fingerprint(*parts) -> str:
    """A short stable hash of a run's inputs, so a resumed run is known to be the same run."""
    blob = json.dumps(parts, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


@dataclass
class PromptInputs:
    """What an inferencer builds its items from (``EvalTask.prompt_inputs``)."""

    abbr: str  # the dataset's, for error messages
    template: object  # PromptTemplate of the evaluated item
    rows: list[dict]  # per test item: the fields a template may use, the answer blanked
    raw_rows: list[dict]  # per test item: the whole row (e.g. a column holding choice lists)
    examples: list[list]  # per test item: its rendered in-context examples
    meta_template: dict | None  # the model's

    def render(self, prompt, mode: str) -> str:
        """A template's output through the model's meta template (``mode``: 'gen' or 'ppl')."""
        return render(prompt, self.meta_template, mode)


class Inferencer:
    """Base class: the shared request cache and the loop over unfinished items."""

    mode = ""

    def __init__(self, batch_size: int | None = None):
        self.batch_size = batch_size
        self._cache: tuple | None = None  # (key, requests): items are tokenised once per model

    def build_items(self, inputs: PromptInputs) -> list:
        raise NotImplementedError

    def fingerprint(self, model, items: list) -> str:
        raise NotImplementedError

    def infer(self, model, items: list, store: PredictionStore, desc: str = "", select=None) -> None:
        raise NotImplementedError

    def cached_requests(self, model, items: list, build: Callable[[object], object], *key) -> list:
        """``[build(item) for item in items]``, computed once for these items on this model."""
        full_key = (id(items), len(items), id(model), model.max_seq_len, *key)
        if self._cache is None or self._cache[0] != full_key:
            self._cache = (full_key, [build(item) for item in items])
        return self._cache[1]

    @staticmethod
    def unfinished(lengths: list[int], store: PredictionStore, select=None) -> tuple[list[int], int]:
        """Positions still to run (this rank's share under torchrun) and how many are in the share."""
        mine = select(lengths) if select is not None else set(range(len(lengths)))
        return sorted(i for i in mine if i not in store.done), len(mine)


def progress(store: PredictionStore, todo: list[int], total: int, desc: str, make_record):
    """An ``on_batch`` callback that stores each finished item's record and moves a progress bar;
    returns (callback, bar). ``make_record(position, result)`` builds the record."""
    bar = tqdm(total=total, initial=total - len(todo), desc=desc, leave=False)

    def on_batch(positions: list[int], results: list) -> None:
        store.add({todo[p]: make_record(todo[p], result) for p, result in zip(positions, results)})
        bar.update(len(positions))

    return on_batch, bar
