"""Likelihood (PPL) inferencer: rank each item's label candidates by the model's likelihood.

Two scores, selected with ``mode``:
- ``'loglikelihood'`` (lm-evaluation-harness): the sum of log-probabilities of the continuation
  tokens given the context; the prediction is the label with the highest sum, and
  ``prediction_norm`` the highest sum per character of the choice text (lm-eval's ``acc_norm``):
  the continuation less one leading ``target_delimiter`` (default ``' '``), because lm-eval divides
  by ``len(choice)`` and scores ``target_delimiter + choice``. The denominator is each label's
  ``num_chars`` in the predictions.
  An item with a single continuation (LAMBADA: a context and its true ending) has nothing to rank;
  its prediction is ``{'loglikelihood', 'is_greedy', 'num_tokens'}`` for ``LoglikelihoodEvaluator``.
- ``'ppl'`` (OpenCompass): the average negative log-likelihood of every token of the whole label
  prompt; the prediction is the label with the lowest value.

Tokenisation follows lm-eval: the context is encoded alone and together with the continuation, and
the continuation tokens are the tail of the joint encoding; trailing spaces of the context move to
the continuation. All labels of an item share the context, which the model runs once.
"""
from __future__ import annotations

from dataclasses import dataclass

from harness.errors import HarnessError
from harness.io import PredictionStore
from harness.models.api import ScoreRequest
from harness.openicl.inferencers.base import Inferencer, PromptInputs, fingerprint, progress
from harness.openicl.prompt_template import fill_text
from harness.registry import INFERENCERS

MODES = ("loglikelihood", "ppl")


@dataclass
class Choice:
    """One label candidate of an item: what the model is given and what it is scored on."""

    label: object
    context: str
    continuation: str


def split_trailing_space(context: str, continuation: str) -> tuple[str, str]:
    """Move the context's trailing spaces to the continuation (as lm-eval does)."""
    stripped = context.rstrip(" ")
    return stripped, context[len(stripped) :] + continuation


def split_at_shared_prefix(texts: list[str]) -> tuple[str, list[str]]:
    """(shared context, per-text continuation) of whole label prompts: the context is their common
    prefix, cut back to the last whitespace unless it already ends at a word boundary, so every
    continuation is non-empty and starts at a word (" yes" / " no"). Texts that share no word keep
    an empty context (the whole prompt is scored)."""
    if len(texts) < 2:
        return "", list(texts)
    first, last = min(texts), max(texts)  # the common prefix of all is that of the extremes
    n = 0
    while n < len(first) and first[n] == last[n]:
        n += 1
    at_boundary = n > 0 and all(len(t) > n for t in texts) and (
        first[n - 1].isspace() or all(t[n].isspace() for t in texts))
    if not at_boundary:
        n = max(0, max(first.rfind(" ", 0, n), first.rfind("\n", 0, n)))
    return texts[0][:n], [t[n:] for t in texts]


@INFERENCERS.register_module(name="PPLInferencer")
class PPLInferencer(Inferencer):
    """Scores label candidates; see the module docstring for the two modes and where choices come from."""

    def __init__(
        self,
        mode: str = "loglikelihood",
        labels: list | None = None,
        continuations: dict | str | None = None,
        choice_template: str = "{choice}",
        batch_size: int | None = None,
        target_delimiter: str = " ",
    ):
        if mode not in MODES:
            raise HarnessError(f"PPLInferencer mode {mode!r} is not one of {MODES}")
        super().__init__(batch_size)
        self.mode = mode
        self.labels = labels
        # dict label -> continuation template, or the name of a column holding a list of choices
        self.continuations = continuations
        self.choice_template = choice_template  # how a choice of such a column is written, e.g. " {choice}\n"
        # what joins context and choice in lm-eval; not counted by the *_norm denominator
        self.target_delimiter = target_delimiter

    def check_columns(self, row: dict, where: str) -> None:
        """A continuations column must exist (checked on the first row, before the model loads)."""
        spec = self.continuations
        if isinstance(spec, str) and spec not in row:
            raise HarnessError(f"{where}: PPLInferencer.continuations column {spec!r} is not among the columns "
                               f"{sorted(row)}; name an existing column or add it with a row transform")

    # ------------------------------------------------------------------ items
    def build_items(self, inputs: PromptInputs) -> list[list[Choice]]:
        """Every item's choices; an item without choices is an error."""
        items = [self.choices(inputs, row, raw, examples)
                 for row, raw, examples in zip(inputs.rows, inputs.raw_rows, inputs.examples)]
        if items and not items[0]:
            raise HarnessError(f"dataset {inputs.abbr}: the first item has no choices")
        return items

    def choices(self, inputs: PromptInputs, row: dict, raw_row: dict, examples: list) -> list[Choice]:
        template = inputs.template
        if template.labels is not None:  # OpenCompass style: one full template per label
            labels = self.labels or template.labels
            return self._label_choices(inputs, labels, row, examples)
        context = inputs.render(template.render(row, examples), "gen")
        spec = self.continuations
        if isinstance(spec, str):  # a column holding the list of choice texts (labels are positions) or one text
            if isinstance(raw_row.get(spec), str):
                return [Choice(0, context, self.choice_template.replace("{choice}", raw_row[spec]))]
            if not isinstance(raw_row.get(spec), (list, tuple)):
                raise HarnessError(f"dataset {inputs.abbr}: PPLInferencer.continuations column {spec!r} must hold "
                                   f"a list of choices or one continuation text")
            return [Choice(i, context, self.choice_template.replace("{choice}", str(text)))
                    for i, text in enumerate(raw_row[spec])]
        if isinstance(spec, dict):
            labels = self.labels or list(spec)
            return [Choice(label, context, fill_text(spec[label], row)) for label in labels]
        raise HarnessError(
            f"dataset {inputs.abbr}: a PPL config needs a per-label template or PPLInferencer.continuations"
        )

    def _label_choices(self, inputs: PromptInputs, labels: list, row: dict, examples: list) -> list[Choice]:
        """Split each label's prompt into a context and the scored continuation.

        - A label may give both parts itself, ``dict(context=..., continuation=...)`` (WinoGrande's
          partial scoring: each option closes its own context, the same rest of the sentence is scored).
        - A round template's context is what generation would see (up to the answer turn); the rest
          of the rendered label prompt is the continuation.
        - A plain-string template has no answer turn: the context is the prefix all labels' prompts
          share (cut back to a word), the continuation the rest (``split_at_shared_prefix``).
        """
        template = inputs.template
        choices: list[Choice | None] = [None] * len(labels)
        whole: dict[int, str] = {}  # plain-string labels: the whole rendered prompt
        for k, label in enumerate(labels):
            spec = template.template[label]
            if isinstance(spec, dict) and "context" in spec:
                context = template.render(row, examples, label=None, template=spec["context"])
                choices[k] = Choice(label, inputs.render(context, "gen"), fill_text(spec.get("continuation", ""), row))
                continue
            filled = template.render(row, examples, label=label)
            full = inputs.render(filled, "ppl")
            if isinstance(filled, list):
                context = inputs.render(filled, "gen")
                if full.startswith(context):
                    choices[k] = Choice(label, context, full[len(context):])
                    continue
            whole[k] = full
        if whole:
            context, tails = split_at_shared_prefix(list(whole.values()))
            for k, tail in zip(whole, tails):
                choices[k] = Choice(labels[k], context, tail)
        return choices

    # ------------------------------------------------------------------ requests
    def requests(self, model, choices: list[Choice]) -> list[ScoreRequest]:
        """Token sequences to score for one item's choices."""
        out = []
        for choice in choices:
            if self.mode == "ppl":
                tokens = model.encode(choice.context + choice.continuation)
                out.append(ScoreRequest(tokens, 1))
                continue
            context, continuation = split_trailing_space(choice.context, choice.continuation)
            context_tokens = model.encode(context)
            whole = model.encode(context + continuation)
            if not context_tokens:  # nothing to condition on: start from the end-of-text token, as lm-eval
                start = model.prefix_token_id
                context_tokens, whole = [start], [start] + whole
            if len(whole) <= len(context_tokens):
                raise HarnessError(f"label {choice.label!r}: the continuation {continuation!r} encodes to no tokens")
            out.append(ScoreRequest(whole, max(1, len(context_tokens))))
        return out

    def fingerprint(self, model, items: list[list[Choice]]) -> str:
        flat = [[(str(c.label), c.context, c.continuation) for c in item] for item in items]
        # the delimiter decides prediction_norm, so predictions saved under another one are not reused
        return fingerprint("ppl", self.mode, model.identity, flat, {"norm": "choice", "delimiter": self.target_delimiter})

    # ------------------------------------------------------------------ inference
    def infer(self, model, items: list[list[Choice]], store: PredictionStore, desc: str = "", select=None) -> None:
        requests = self.cached_requests(model, items, lambda item: self.requests(model, item), self.mode)
        todo, total = self.unfinished([max(len(r.tokens) for r in group) for group in requests], store, select)
        on_batch, bar = progress(store, todo, total, desc, lambda i, scores: self.record(items[i], scores))
        with bar:
            model.score([requests[i] for i in todo], on_batch=on_batch, batch_size=self.batch_size)

    def norm_chars(self, continuation: str) -> int:
        """The *_norm denominator: characters of the choice text, i.e. the scored continuation
        without one leading target delimiter (lm-eval: ``len(choice)``, scored as delimiter + choice)."""
        delimiter = self.target_delimiter
        if delimiter and continuation.startswith(delimiter):
            return len(continuation) - len(delimiter)
        return len(continuation)

    def record(self, choices: list[Choice], scores) -> dict:
        """The prediction record of one item: every label's score and the chosen label."""
        label_scores = {}
        for choice, score in zip(choices, scores):
            avg_nll = -score.logprob / score.num_tokens
            label_scores[str(choice.label)] = {
                "loglikelihood": score.logprob,
                "num_tokens": score.num_tokens,
                "num_chars": self.norm_chars(split_trailing_space(choice.context, choice.continuation)[1]),
                "avg_nll": avg_nll,
                "is_greedy": score.is_greedy,
            }
        labels = [c.label for c in choices]
        details = [label_scores[str(label)] for label in labels]
        if len(choices) == 1 and self.mode == "loglikelihood":  # LAMBADA-style: nothing to rank
            only = details[0]
            prediction = {k: only[k] for k in ("loglikelihood", "is_greedy", "num_tokens")}
            return {"origin_prompt": choices[0].context + choices[0].continuation, "prediction": prediction,
                    "label_scores": label_scores}
        if self.mode == "ppl":
            best = min(range(len(labels)), key=lambda k: details[k]["avg_nll"])
            record = {"prediction": labels[best]}
        else:
            best = max(range(len(labels)), key=lambda k: details[k]["loglikelihood"])
            best_norm = max(
                range(len(labels)), key=lambda k: details[k]["loglikelihood"] / max(1, details[k]["num_chars"])
            )
            record = {"prediction": labels[best], "prediction_norm": labels[best_norm]}
        return {"origin_prompt": choices[best].context + choices[best].continuation, **record,
                "label_scores": label_scores}
