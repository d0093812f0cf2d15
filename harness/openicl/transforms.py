"""Row transforms: named functions applied to each row before templating.

Templates only substitute columns, so what lm-eval writes in a task's ``process_docs`` or
``doc_to_text`` (drop a premise's final full stop, pick "because"/"therefore" from a column,
lower-case a choice's first letter) is a registered function here, named in the dataset config
with its arguments::

    reader_cfg=dict(type='superglue', path='./data/COPA/val.jsonl', output_column='label',
                    row_transforms=[dict(type='lm_eval_copa')])      # or a bare name: ['lm_eval_copa']

Each transform is ``fn(row: dict, **kwargs) -> dict`` and gets a copy of the row, so it may edit
and return it. Transforms run in order on every row the loader returns, before ``test_range``,
the subset and the column checks, so they may add the columns a template uses. An unknown name
lists the registered ones; a transform that raises is reported with the row and the function, all
before a model loads.

The ``lm_eval_*`` transforms render rows as lm-evaluation-harness 0.4 does: ``query`` (the
context), ``choices`` (the choice texts, scored after lm-eval's target delimiter ``' '``) and
``label`` (the gold position), for a config with ``template='{query}'``,
``continuations='choices'``, ``choice_template=' {choice}'``. COPA's choices themselves start
with a space (its ``doc_to_choice`` adds one), so the scored continuation starts with **two**
spaces, as in lm-eval; issue 19 measured that one space changes 8 of 100 real COPA predictions.
"""
from __future__ import annotations

from harness.errors import HarnessError
from harness.openicl.prompt_template import fill_text
from harness.registry import ROW_TRANSFORMS, get

COPA_CONNECTORS = {"cause": "because", "effect": "therefore"}


def apply_row_transforms(rows: list[dict], specs, where: str) -> list[dict]:
    """``rows`` after every transform of ``specs`` (a list of names or ``dict(type=name, **kwargs)``)."""
    if not specs:
        return rows
    if isinstance(specs, (str, dict)):
        specs = [specs]
    steps = []
    for spec in specs:
        name, kwargs = _name_and_kwargs(spec, where)
        steps.append((name, get(ROW_TRANSFORMS, name), kwargs))
    out = []
    for number, row in enumerate(rows):
        for name, fn, kwargs in steps:
            try:
                row = fn(dict(row), **kwargs)
            except HarnessError as exc:
                raise HarnessError(f"{where}: row transform {name!r} failed on row {number}: {exc}") from None
            except Exception as exc:  # a config's function on a row it did not expect
                raise HarnessError(f"{where}: row transform {name!r} failed on row {number}: "
                                   f"{type(exc).__name__}: {exc}") from None
            if not isinstance(row, dict):
                raise HarnessError(f"{where}: row transform {name!r} returned {type(row).__name__} for row {number}; "
                                   "a transform must return the row (a dict)")
        out.append(row)
    return out


def _name_and_kwargs(spec, where: str) -> tuple[str, dict]:
    if isinstance(spec, str):
        return spec, {}
    if isinstance(spec, dict) and isinstance(spec.get("type"), str):
        return spec["type"], {k: v for k, v in spec.items() if k != "type"}
    raise HarnessError(f"{where}: each reader_cfg.row_transforms entry must be a name or dict(type=name, ...), "
                       f"got {spec!r}")


def lower_first_letter(text: str) -> str:
    """lm-eval's COPA ``convert_choice``: the first character lower-cased, the rest unchanged."""
    return text[:1].lower() + text[1:]


# ---------------------------------------------------------------------------------- building blocks
@ROW_TRANSFORMS.register_module(name="strip_suffix")
def strip_suffix(row: dict, column: str, suffix: str = ".", into: str | None = None) -> dict:
    """``row[into or column]`` = the column's text stripped of surrounding spaces and one ``suffix``."""
    text = str(row[column]).strip()
    row[into or column] = text[: -len(suffix)] if suffix and text.endswith(suffix) else text
    return row


@ROW_TRANSFORMS.register_module(name="lower_first")
def lower_first(row: dict, columns: list[str] | str, into: str | None = None) -> dict:
    """Lower-case the first letter of each column (or of one column, written to ``into``)."""
    names = [columns] if isinstance(columns, str) else list(columns)
    if into is not None and len(names) != 1:
        raise HarnessError("lower_first: `into` needs exactly one column")
    for name in names:
        row[into or name] = lower_first_letter(str(row[name]))
    return row


@ROW_TRANSFORMS.register_module(name="map_value")
def map_value(row: dict, column: str, mapping: dict, into: str | None = None) -> dict:
    """``row[into or column] = mapping[row[column]]`` (e.g. COPA's question -> "because"/"therefore")."""
    value = row[column]
    if value not in mapping:
        raise HarnessError(f"map_value: {column}={value!r} is not among the mapping keys {list(mapping)}")
    row[into or column] = mapping[value]
    return row


@ROW_TRANSFORMS.register_module(name="fill")
def fill(row: dict, template: str, into: str) -> dict:
    """``row[into]`` = ``template`` with ``{column}`` placeholders replaced (plain substitution)."""
    row[into] = fill_text(template, row)
    return row


@ROW_TRANSFORMS.register_module(name="collect")
def collect(row: dict, columns: list[str], into: str = "choices") -> dict:
    """``row[into]`` = the list of the named columns' values (e.g. PIQA's sol1, sol2 -> choices)."""
    row[into] = [row[name] for name in columns]
    return row


# ---------------------------------------------------------------------------------- lm-eval renderings
@ROW_TRANSFORMS.register_module(name="lm_eval_copa")
def lm_eval_copa(row: dict) -> dict:
    """SuperGLUE COPA as lm-eval's ``copa`` task (super_glue/copa/utils.py): ``query`` = the premise
    without its last character (the full stop) + ``' because'``/``' therefore'``; ``choices`` =
    ``' ' + choice`` with its first letter lower-cased (so two spaces once the delimiter is added)."""
    connector = COPA_CONNECTORS.get(row["question"])
    if connector is None:
        raise HarnessError(f"question {row['question']!r} is not 'cause' or 'effect'; is this COPA?")
    row["query"] = str(row["premise"]).strip()[:-1] + f" {connector}"
    row["choices"] = [" " + lower_first_letter(str(row["choice1"])), " " + lower_first_letter(str(row["choice2"]))]
    return row


@ROW_TRANSFORMS.register_module(name="lm_eval_piqa")
def lm_eval_piqa(row: dict) -> dict:
    """PIQA as lm-eval's ``piqa`` task: ``query`` = ``'Question: {goal}\\nAnswer:'``, ``choices`` =
    ``[sol1, sol2]`` (``label``, 0/1, comes from the ``piqa`` loader's labels file)."""
    row["query"] = f"Question: {row['goal']}\nAnswer:"
    row["choices"] = [row["sol1"], row["sol2"]]
    return row


@ROW_TRANSFORMS.register_module(name="lm_eval_arc")
def lm_eval_arc(row: dict) -> dict:
    """ARC-Easy/Challenge as lm-eval's ``arc_easy``: ``query`` = ``'Question: {question}\\nAnswer:'``;
    ``choices`` and ``label`` as the ``arc`` loader gives them (load with ``num_choices=None``:
    lm-eval keeps the items with 3 or 5 choices)."""
    row["query"] = f"Question: {row['question']}\nAnswer:"
    row["choices"] = list(row["choices"])
    return row


@ROW_TRANSFORMS.register_module(name="lm_eval_lambada")
def lm_eval_lambada(row: dict, column: str = "text") -> dict:
    """LAMBADA as lm-eval's ``lambada_openai``: ``context`` = the text without its last word
    (split on single spaces), ``continuation`` = ``' ' + last word`` (scored without a delimiter)."""
    words = str(row[column]).split(" ")
    if len(words) < 2:
        raise HarnessError(f"{column!r} has fewer than two words; nothing to predict")
    row["context"] = " ".join(words[:-1])
    row["continuation"] = " " + words[-1]
    return row
