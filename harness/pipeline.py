"""The evaluation flow for one dataset config, built once and run as often as needed.

    dataset config -> rows -> subset -> prompt inputs (template fields, in-context examples)
                   -> inferencer: items -> model requests -> predictions
                   -> post-processors -> evaluator -> metrics (and per-item details)

``EvalTask`` only moves data between these steps: what a kind of evaluation asks of the model is
the inferencer's (``harness/openicl/inferencers/``), how torchrun shares the items is
``distributed.py``'s, and where files go is ``io.py``'s. ``infer.py`` runs it once per dataset and
writes files; a search keeps one ``EvalTask`` and calls ``score`` for every candidate plan, so rows
are read and prompts built only once.
"""
from __future__ import annotations

import logging
from pathlib import Path

from harness import distributed
from harness.errors import HarnessError
from harness.io import (
    PredictionStore,
    atomic_write_json,
    partial_predictions_path,
    predictions_path,
    results_path,
)
from harness.openicl.dataset_reader import EvalData, load_eval_data
from harness.openicl.inferencers.base import PromptInputs
from harness.openicl.prompt_template import PromptTemplate
from harness.registry import (
    DATASET_POSTPROCESSORS,
    EVALUATORS,
    INFERENCERS,
    POSTPROCESSORS,
    RETRIEVERS,
    build,
    get_function,
)

log = logging.getLogger(__name__)


class EvalTask:
    """One dataset config: its data, prompts, inferencer and evaluator."""

    def __init__(self, dataset_cfg: dict, data_root: str | None = None, max_num: int | None = None):
        self.cfg = dataset_cfg
        self.data: EvalData = load_eval_data(dataset_cfg, data_root)
        if max_num is not None:
            self.data.test_rows = self.data.test_rows[:max_num]
            self.data.indices = self.data.indices[:max_num]
        self.abbr = self.data.abbr
        infer_cfg = dataset_cfg.get("infer_cfg") or {}
        if "prompt_template" not in infer_cfg or "inferencer" not in infer_cfg:
            raise HarnessError(f"dataset {self.abbr}: infer_cfg needs a prompt_template and an inferencer")
        self.template = PromptTemplate(**infer_cfg["prompt_template"])
        self.ice_template = PromptTemplate(**infer_cfg["ice_template"]) if infer_cfg.get("ice_template") else None
        self.retriever = build(RETRIEVERS, infer_cfg.get("retriever") or {"type": "ZeroRetriever"})
        self.inferencer = build(INFERENCERS, infer_cfg["inferencer"])
        eval_cfg = dataset_cfg.get("eval_cfg") or {}
        self.evaluator = build(EVALUATORS, eval_cfg.get("evaluator") or {"type": "AccEvaluator"})
        self.pred_postprocessor = get_function(POSTPROCESSORS, eval_cfg.get("pred_postprocessor"))
        self.dataset_postprocessor = get_function(DATASET_POSTPROCESSORS, eval_cfg.get("dataset_postprocessor"))
        self._check_template_columns()
        self._items_cache: dict[int, list] = {}

    def _check_template_columns(self) -> None:
        row = self.data.test_rows[0]
        columns = set(row) if not self.data.input_columns else set(self.data.input_columns)
        if self.data.output_column:
            columns.add(self.data.output_column)
        where = f"dataset {self.abbr}"
        self.template.check_columns(columns, where)
        if self.ice_template is not None:
            self.ice_template.check_columns(columns, where + " (ice_template)")
        if hasattr(self.inferencer, "check_columns"):  # e.g. a PPL continuations column
            self.inferencer.check_columns(row, where)
        if self.data.output_column is None and getattr(self.evaluator, "needs_references", False):
            # without references every item would count wrong: a score of 0 that means nothing
            raise HarnessError(f"{where}: {type(self.evaluator).__name__} compares predictions with references, "
                               "but reader_cfg has no output_column; name the reference column")

    # ------------------------------------------------------------------ prompts
    def _row_for_prompt(self, row: dict, blank_output: bool) -> dict:
        """The fields a template may use; the answer is blanked for the item being asked."""
        keys = self.data.input_columns or list(row)
        fields = {k: row[k] for k in keys if k in row}
        out = self.data.output_column
        if out is not None:
            fields[out] = "" if blank_output else row.get(out, "")
        return fields

    def _examples(self) -> list[list]:
        """The rendered in-context examples of every test item."""
        ids = self.retriever.retrieve(len(self.data.test_rows), self.data.train_rows)
        if not any(ids):
            return [[] for _ in ids]
        template = self.ice_template or self.template
        return [
            [template.render(self._row_for_prompt(self.data.train_rows[i], blank_output=False)) for i in item_ids]
            for item_ids in ids
        ]

    def prompt_inputs(self, meta_template) -> PromptInputs:
        """What the inferencer builds its items from."""
        return PromptInputs(
            abbr=self.abbr,
            template=self.template,
            rows=[self._row_for_prompt(r, blank_output=True) for r in self.data.test_rows],
            raw_rows=self.data.test_rows,
            examples=self._examples(),
            meta_template=meta_template,
        )

    def prompts(self, model) -> list:
        """The inferencer's items (generation prompts, PPL choices, ...), built once per model template."""
        key = id(model.meta_template)
        if key not in self._items_cache:
            self._items_cache[key] = self.inferencer.build_items(self.prompt_inputs(model.meta_template))
        return self._items_cache[key]

    # ------------------------------------------------------------------ running
    def infer(self, model, work_dir: str | Path | None = None) -> dict[str, dict]:
        """Predictions for every item, in dataset order; resumes from and writes to ``work_dir``."""
        items = self.prompts(model)
        if work_dir is None:  # a search's fitness: nothing is read or written
            store = PredictionStore(None, None, "")
            self.inferencer.infer(model, items, store, desc=self.abbr)
            return self._finish(store)
        final = predictions_path(work_dir, model.abbr, self.abbr)
        partial = partial_predictions_path(work_dir, model.abbr, self.abbr)
        run_id = self.inferencer.fingerprint(model, items)
        if distributed.is_distributed():
            return distributed.infer_sharded(self.inferencer, model, items, final, partial, run_id, self._finish,
                                             desc=self.abbr)
        store = PredictionStore(final, partial, run_id)
        if len(store.done) < len(items):
            # results of an earlier run of this dataset no longer describe what is being computed
            self._forget_results(work_dir, model.abbr)
            if store.done:
                log.info("%s: resuming, %d of %d items already done", self.abbr, len(store.done), len(items))
        self.inferencer.infer(model, items, store, desc=self.abbr)
        return self._finish(store)

    def _forget_results(self, work_dir, model_abbr: str) -> None:
        if distributed.is_main():
            results_path(work_dir, model_abbr, self.abbr).unlink(missing_ok=True)
            details_path(work_dir, model_abbr, self.abbr).unlink(missing_ok=True)

    def _finish(self, store: PredictionStore) -> dict[str, dict]:
        references = self.data.references  # built from the rows on each access: once here
        for pos, record in store.done.items():
            record["gold"] = references[pos]
            record["index"] = self.data.indices[pos]
        return store.finalize(len(self.data.test_rows))

    def evaluate(self, predictions: dict[str, dict]) -> dict[str, float]:
        """Post-process predictions and references, then score them."""
        return self.evaluate_with_details(predictions, details=False)[0]

    def evaluate_with_details(self, predictions: dict[str, dict], details: bool = True) -> tuple[dict, list | None]:
        """Metrics, and the evaluator's per-item details (None when it gives none)."""
        ordered = [predictions[str(i)] for i in range(len(predictions))]
        references = [r["gold"] for r in ordered]
        if self.dataset_postprocessor is not None:
            references = [self.dataset_postprocessor(r) for r in references]
        predicted = self._postprocess([r["prediction"] for r in ordered])
        metrics = dict(self.evaluator.score(predicted, references))
        item_details = metrics.pop("details", None)  # OpenCompass's evaluators return them with the metrics
        if item_details is None and details and hasattr(self.evaluator, "details"):
            item_details = self.evaluator.details(predicted, references)
        if ordered and "prediction_norm" in ordered[0]:
            norm = dict(self.evaluator.score(self._postprocess([r["prediction_norm"] for r in ordered]), references))
            norm.pop("details", None)
            metrics.update({f"{k}_norm": v for k, v in norm.items()})
        return metrics, item_details

    def _postprocess(self, predictions: list) -> list:
        if self.pred_postprocessor is None:
            return predictions
        return [self.pred_postprocessor(p) if isinstance(p, str) else p for p in predictions]

    def score(self, model) -> dict[str, float]:
        """Infer and evaluate without writing files (a search's fitness)."""
        return self.evaluate(self.infer(model))

    def run(self, model, work_dir: str | Path) -> dict[str, float]:
        """Infer (resuming), evaluate and write the results file (rank 0 only under torchrun);
        per-item details of the evaluator go beside the predictions."""
        metrics, details = self.evaluate_with_details(self.infer(model, work_dir))
        if distributed.is_main():
            write_results(work_dir, model.abbr, self.abbr, metrics, details)
        return metrics


def details_path(work_dir, model_abbr: str, dataset_abbr: str) -> Path:
    """``predictions/<model>/<dataset>.details.json``: the evaluator's per-item judgements."""
    return predictions_path(work_dir, model_abbr, dataset_abbr).with_name(f"{dataset_abbr}.details.json")


def write_results(work_dir, model_abbr: str, dataset_abbr: str, metrics: dict, details: list | None) -> None:
    """The results file, and the evaluator's per-item details beside the predictions."""
    if details is not None:
        atomic_write_json(details_path(work_dir, model_abbr, dataset_abbr), details)
    atomic_write_json(results_path(work_dir, model_abbr, dataset_abbr), metrics)
