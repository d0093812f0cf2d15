"""The evaluation flow for one dataset config, built once and run as often as needed.

    dataset config -> rows -> subset -> prompts (template + examples + meta template)
                   -> inferencer (ppl | gen) -> predictions -> post-processors -> evaluator -> metrics

``infer.py`` runs it once per dataset and writes files; a search runner keeps one ``EvalTask`` and
calls ``score`` for every candidate plan, so rows are read and prompts built only once.
"""
from __future__ import annotations

import logging
from pathlib import Path

from harness import distributed
from harness.errors import HarnessError
from harness.io import PredictionStore, atomic_write_json, partial_predictions_path, predictions_path, results_path
from harness.openicl.dataset_reader import EvalData, load_eval_data
from harness.openicl.inferencers.ppl import Choice, PPLInferencer
from harness.openicl.meta_template import render
from harness.openicl.prompt_template import PromptTemplate, fill_text
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
        self._prompt_cache: dict[int, list] = {}

    def _check_template_columns(self) -> None:
        row = self.data.test_rows[0]
        columns = set(row) if not self.data.input_columns else set(self.data.input_columns)
        if self.data.output_column:
            columns.add(self.data.output_column)
        where = f"dataset {self.abbr}"
        self.template.check_columns(columns, where)
        if self.ice_template is not None:
            self.ice_template.check_columns(columns, where + " (ice_template)")

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

    def prompts(self, model) -> list:
        """Generation prompts (strings) or PPL choices (lists of Choice), built once per model template."""
        key = id(model.meta_template)
        if key not in self._prompt_cache:
            examples = self._examples()
            rows = [self._row_for_prompt(r, blank_output=True) for r in self.data.test_rows]
            if isinstance(self.inferencer, PPLInferencer):
                built = [self._choices(row, raw, ex, model.meta_template)
                         for row, raw, ex in zip(rows, self.data.test_rows, examples)]
            else:
                built = [render(self.template.render(row, ex), model.meta_template, "gen")
                         for row, ex in zip(rows, examples)]
            self._prompt_cache[key] = built
        return self._prompt_cache[key]

    def _choices(self, row: dict, raw_row: dict, examples: list, meta_template) -> list[Choice]:
        inferencer: PPLInferencer = self.inferencer
        if self.template.labels is not None:  # OpenCompass style: one full template per label
            labels = inferencer.labels or self.template.labels
            return [self._label_choice(label, row, examples, meta_template) for label in labels]
        context = render(self.template.render(row, examples), meta_template, "gen")
        spec = inferencer.continuations
        if isinstance(spec, str):  # a column holding the list of choice texts; labels are positions
            if not isinstance(raw_row.get(spec), (list, tuple)):
                raise HarnessError(f"dataset {self.abbr}: PPLInferencer.continuations column {spec!r} must hold a list")
            template = inferencer.choice_template
            return [Choice(i, context, template.replace("{choice}", str(text))) for i, text in enumerate(raw_row[spec])]
        if isinstance(spec, dict):
            labels = inferencer.labels or list(spec)
            return [Choice(label, context, fill_text(spec[label], row)) for label in labels]
        raise HarnessError(
            f"dataset {self.abbr}: a PPL config needs a per-label template or PPLInferencer.continuations"
        )

    def _label_choice(self, label, row: dict, examples: list, meta_template) -> Choice:
        """Split a per-label prompt into the part shared with generation and the scored tail.

        A label's template may also give both parts itself, ``dict(context=..., continuation=...)``
        (e.g. WinoGrande's partial scoring: each option closes its own context and the same rest of
        the sentence is scored)."""
        spec = self.template.template[label]
        if isinstance(spec, dict) and "context" in spec:
            context = self.template.render(row, examples, label=None, template=spec["context"])
            return Choice(label, render(context, meta_template, "gen"), fill_text(spec.get("continuation", ""), row))
        filled = self.template.render(row, examples, label=label)
        full = render(filled, meta_template, "ppl")
        if isinstance(filled, list):
            context = render(filled, meta_template, "gen")
            if full.startswith(context):
                return Choice(label, context, full[len(context):])
        return Choice(label, "", full)

    # ------------------------------------------------------------------ running
    def infer(self, model, work_dir: str | Path | None = None) -> dict[str, dict]:
        """Predictions for every item, in dataset order; resumes from and writes to ``work_dir``."""
        prompts = self.prompts(model)
        if isinstance(self.inferencer, PPLInferencer) and self.template.labels is None and not prompts[0]:
            raise HarnessError(f"dataset {self.abbr}: the first item has no choices")
        final = partial = None
        if work_dir is not None:
            final = predictions_path(work_dir, model.abbr, self.abbr)
            partial = partial_predictions_path(work_dir, model.abbr, self.abbr)
        # what a resumed run is checked against; without files (search fitness) nothing reads it
        run_id = self.inferencer.run_fingerprint(model, prompts) if work_dir is not None else ""
        if distributed.is_distributed():
            return self._infer_sharded(model, prompts, run_id, final, partial)
        store = PredictionStore(final, partial, run_id)
        if store.done:
            log.info("%s: resuming, %d of %d items already done", self.abbr, len(store.done), len(prompts))
        self.inferencer.infer(model, prompts, store, desc=self.abbr)
        return self._finish(store)

    def _finish(self, store: PredictionStore) -> dict[str, dict]:
        references = self.data.references  # built from the rows on each access: once here
        for pos, record in store.done.items():
            record["gold"] = references[pos]
            record["index"] = self.data.indices[pos]
        return store.finalize(len(self.data.test_rows))

    def _infer_sharded(self, model, prompts, run_id: str, final, partial) -> dict[str, dict]:
        """torchrun: each rank infers its share (resumable per rank); rank 0 writes the whole file."""
        finished = PredictionStore(final, None, run_id)
        if len(finished.done) == len(prompts):
            return finished.finalize(len(prompts)) if distributed.is_main() else _ordered(finished.done)
        rank_partial = None
        if partial is not None:
            rank_partial = partial.with_name(
                partial.name.replace(".partial", f".rank{distributed.rank()}of{distributed.world_size()}.partial")
            )
        mine = PredictionStore(None, rank_partial, run_id)
        self.inferencer.infer(model, prompts, mine, desc=f"{self.abbr}[{distributed.rank()}]",
                              select=distributed.my_share)
        merged = distributed.gather_records(mine.done)
        distributed.barrier()
        if rank_partial is not None:
            rank_partial.unlink(missing_ok=True)
        whole = PredictionStore(final if distributed.is_main() else None, None, run_id)
        whole.done = merged
        return self._finish(whole)

    def evaluate(self, predictions: dict[str, dict]) -> dict[str, float]:
        """Post-process predictions and references, then score them."""
        ordered = [predictions[str(i)] for i in range(len(predictions))]
        references = [r["gold"] for r in ordered]
        if self.dataset_postprocessor is not None:
            references = [self.dataset_postprocessor(r) for r in references]
        metrics = self._score([r["prediction"] for r in ordered], references)
        if ordered and "prediction_norm" in ordered[0]:
            norm = self._score([r["prediction_norm"] for r in ordered], references)
            metrics.update({f"{k}_norm": v for k, v in norm.items()})
        return metrics

    def _score(self, predictions: list, references: list) -> dict[str, float]:
        if self.pred_postprocessor is not None:
            predictions = [self.pred_postprocessor(p) if isinstance(p, str) else p for p in predictions]
        metrics = self.evaluator.score(predictions, references)
        return {k: v for k, v in metrics.items() if k != "details"}

    def score(self, model) -> dict[str, float]:
        """Infer and evaluate without writing files (a search's fitness)."""
        return self.evaluate(self.infer(model))

    def run(self, model, work_dir: str | Path) -> dict[str, float]:
        """Infer (resuming), evaluate and write the results file (rank 0 only under torchrun)."""
        metrics = self.evaluate(self.infer(model, work_dir))
        if distributed.is_main():
            atomic_write_json(results_path(work_dir, model.abbr, self.abbr), metrics)
        return metrics


def _ordered(done: dict[int, dict]) -> dict[str, dict]:
    return {str(i): done[i] for i in sorted(done)}
