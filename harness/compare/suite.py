"""A comparison suite config (``compare_cfgs/*.py``, an mmengine python file), read and checked.

    benchmarks = [dict(cfg='dataset_cfgs/ppl_boolq.py', max_num=100, metric='accuracy'), ...]
                  # or dict(dataset=dict(abbr=..., reader_cfg=..., ...)) inline; metric: the column's
                  # metric (default: the evaluator's first, token_perplexity for a perplexity corpus)
    calibration = dict(calib_data='FILE.jsonl' | calib_cfg='CFG.py', calib_samples=32, calib_seq_len=512,
                       seed=0, cache_tokens=...)       # compress.py's --calib_* arguments, shared by all
    efficiency = dict(context_lengths=[128], batch_sizes=[1], decode_context=64, decode_tokens=16,
                      repeats=3, warmup=1)             # harness/tasks/efficiency.py's arguments
    methods = [dict(name='frequency'), dict(name='random', seeds=[0, 1, 2]),
               dict(name='layer_drop', drop_n='match'), dict(name='cd_moe', condense_experts=2),
               dict(name='eep', settings=dict(total_evals=20), train=dict(benchmark='arc_easy', range=[100, 164])),
               ...]
    data_root = '../shared/data'   # optional; --data_root overrides
    models = [...]                 # optional model config; --model_cfg / --model_path override

A method row names a registered method (``harness.registry.METHODS``; settings from
``method_cfgs/<name>.py`` or ``method_cfg=FILE``, then ``settings=dict(...)`` on top), ``cd_moe``
(``harness/tasks/condense.py``'s search) or a registered search (``harness.registry.SEARCHES``).
``label`` names the row and its folder (default: the name). ``drop_n='match'`` (layer and block
drop, CD-MoE's ``condense_layers``) picks the count whose removed parameters match the expert
methods' at each budget. Everything is checked here, before a model loads.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from harness.config import check_output_name, dataset_configs, load_config
from harness.errors import HarnessError
from harness.pipeline import EvalTask
from harness.registry import METHODS, SEARCHES, _import_builtin_components

PERPLEXITY_METRICS = ("loss", "token_perplexity", "word_perplexity", "byte_perplexity", "bits_per_byte")
CD_MOE = "cd_moe"
CD_MOE_DEFAULTS = dict(condense_experts=2, condense_layers="match", calib_samples=100, calib_seq_len=256,
                       calib_batch_size=8, beam=1, weight_rule="gate")
EFFICIENCY_DEFAULTS = dict(context_lengths=[128, 512], batch_sizes=[1, 8], decode_context=128, decode_tokens=32,
                           repeats=3, warmup=1)
CALIBRATION_KEYS = ("calib_data", "calib_cfg", "calib_samples", "calib_seq_len", "seed", "cache_tokens")
ROW_KEYS = {
    "method": {"name", "label", "method_cfg", "settings", "seeds", "drop_n"},
    CD_MOE: {"name", "label", *CD_MOE_DEFAULTS},
    "search": {"name", "label", "search_cfg", "settings", "groups", "train"},
}


@dataclass
class Benchmark:
    abbr: str
    dataset: dict  # the dataset config dict
    max_num: int | None
    metric: str | None  # None: the evaluator's first metric

    @property
    def is_perplexity(self) -> bool:
        infer = (self.dataset.get("infer_cfg") or {}).get("inferencer") or {}
        return infer.get("type") == "RollingPPLInferencer" or self.metric in PERPLEXITY_METRICS


@dataclass
class Row:
    """One method of the suite (expanded per budget by the runner)."""

    label: str
    kind: str  # 'method', 'cd_moe' or 'search'
    name: str
    settings: dict = field(default_factory=dict)
    seeds: list[int] | None = None  # random: several seeds -> mean and sample std
    drop_n: int | str | None = None  # layer/block drop: a count or 'match'
    options: dict = field(default_factory=dict)  # cd_moe's and the search's own settings

    def spec(self) -> dict:
        """What the row's results depend on (a resumed row must match it)."""
        return json.loads(json.dumps({"kind": self.kind, "name": self.name, "settings": self.settings,
                                      "seeds": self.seeds, "drop_n": self.drop_n, "options": self.options},
                                     sort_keys=True, default=str))


@dataclass
class Suite:
    path: str
    benchmarks: list[Benchmark]
    rows: list[Row]
    calibration: dict
    efficiency: dict
    data_root: str | None
    cfg: object = field(repr=False, default=None)

    @property
    def accuracy_benchmarks(self) -> list[Benchmark]:
        return [b for b in self.benchmarks if not b.is_perplexity]

    @property
    def perplexity_benchmarks(self) -> list[Benchmark]:
        return [b for b in self.benchmarks if b.is_perplexity]

    def needs_calibration(self) -> bool:
        from harness.methods.base import method

        return any(r.kind == "method" and method(r.name, **r.settings).needs_calibration for r in self.rows)

    def tasks(self, data_root: str | None, max_num: int | None) -> list[EvalTask]:
        """Every benchmark as an EvalTask (data read and prompts checked now, before a model loads)."""
        root = data_root or self.data_root
        return [EvalTask(b.dataset, root, _cap(b.max_num, max_num)) for b in self.benchmarks]


def _cap(a: int | None, b: int | None) -> int | None:
    return min(x for x in (a, b) if x is not None) if (a is not None or b is not None) else None


def registered(registry) -> set[str]:
    """The names in a registry once the built-in components are imported."""
    _import_builtin_components()
    return set(registry.module_dict)


def known_rows() -> list[str]:
    return sorted(registered(METHODS) | {CD_MOE} | registered(SEARCHES))


def read_suite(path: str) -> Suite:
    """The suite at ``path`` with every name, setting and file checked (one-line errors)."""
    cfg = load_config(path)
    where = f"suite {path}"
    for key in ("benchmarks", "methods"):
        if not cfg.get(key):
            raise HarnessError(f"{where} defines no {key!r} list; see compare_cfgs/toy_moe.py for the format")
    benchmarks = [b for i, entry in enumerate(cfg["benchmarks"]) for b in _benchmarks(entry, f"{where}: benchmarks[{i}]")]
    seen: set[str] = set()
    for b in benchmarks:
        if b.abbr in seen:
            raise HarnessError(f"{where}: two benchmarks are named {b.abbr!r}; give each a distinct abbr")
        seen.add(b.abbr)
    rows = [_row(dict(entry), f"{where}: methods[{i}]") for i, entry in enumerate(cfg["methods"])]
    labels = [r.label for r in rows]
    for label in labels:
        if labels.count(label) > 1:
            raise HarnessError(f"{where}: two methods are labelled {label!r}; give one a distinct label")
        if label == "full":
            raise HarnessError(f"{where}: the label 'full' is the uncompressed model's row; pick another")
    for r in rows:
        if r.kind == "search" and r.options.get("train", {}).get("benchmark") not in (None, *seen):
            raise HarnessError(f"{where}: method {r.label!r} trains on benchmark {r.options['train']['benchmark']!r}, "
                               f"which is not in the suite; known: {', '.join(sorted(seen))}")
    calibration = _calibration(dict(cfg.get("calibration") or {}), where)
    efficiency = dict(EFFICIENCY_DEFAULTS)
    unknown = set(cfg.get("efficiency") or {}) - set(EFFICIENCY_DEFAULTS)
    if unknown:
        raise HarnessError(f"{where}: unknown efficiency settings {sorted(unknown)}; known: {sorted(EFFICIENCY_DEFAULTS)}")
    efficiency.update(dict(cfg.get("efficiency") or {}))
    return Suite(path, benchmarks, rows, calibration, efficiency, cfg.get("data_root"), cfg)


def _benchmarks(entry: dict, where: str) -> list[Benchmark]:
    entry = dict(entry)
    unknown = set(entry) - {"cfg", "dataset", "max_num", "metric"}
    if unknown or ("cfg" in entry) == ("dataset" in entry):
        raise HarnessError(f"{where} needs cfg='dataset_cfgs/FILE.py' or dataset=dict(...), plus optional max_num "
                           f"and metric{f'; unknown keys {sorted(unknown)}' if unknown else ''}")
    max_num = entry.get("max_num")
    if max_num is not None and (not isinstance(max_num, int) or max_num < 1):
        raise HarnessError(f"{where}: max_num {max_num!r} must be a positive integer")
    datasets = dataset_configs(load_config(entry["cfg"])) if "cfg" in entry else [dict(entry["dataset"])]
    out = []
    for dataset in datasets:
        abbr = check_output_name(dataset.get("abbr"), f"{where}: dataset abbr")
        out.append(Benchmark(abbr, dataset, max_num, entry.get("metric")))
    return out


def _row(entry: dict, where: str) -> Row:
    from harness.tasks.compress import method_settings  # method_cfgs/<name>.py, as compress.py reads them

    name = entry.get("name")
    if name in registered(METHODS):
        kind = "method"
    elif name == CD_MOE:
        kind = CD_MOE
    elif name in registered(SEARCHES):
        kind = "search"
    else:
        raise HarnessError(f"{where}: unknown method {name!r}; known: {', '.join(known_rows())}")
    unknown = set(entry) - ROW_KEYS[kind]
    if unknown:
        raise HarnessError(f"{where} ({name}): unknown keys {sorted(unknown)}; known: {sorted(ROW_KEYS[kind])}")
    label = check_output_name(entry.get("label", name), f"{where}: label")
    if kind == CD_MOE:
        options = {**CD_MOE_DEFAULTS, **{k: v for k, v in entry.items() if k in CD_MOE_DEFAULTS}}
        return Row(label, kind, name, options=options)
    if kind == "search":
        return _search_row(entry, label, where)
    from harness.methods.base import method

    settings = {**method_settings(name, entry.get("method_cfg")), **dict(entry.get("settings") or {})}
    try:
        chosen = method(name, **settings)
    except TypeError as exc:
        raise HarnessError(f"{where} ({name}): bad settings {settings} ({exc})") from None
    drop_n = entry.get("drop_n")
    if chosen.needs_drop_n:
        drop_n = "match" if drop_n is None else drop_n
        if drop_n != "match" and (not isinstance(drop_n, int) or drop_n < 1):
            raise HarnessError(f"{where} ({name}): drop_n {drop_n!r} must be a positive integer or 'match'")
    elif drop_n is not None:
        raise HarnessError(f"{where} ({name}): method {name!r} takes the budget, not drop_n")
    seeds = entry.get("seeds")
    if seeds is not None and (not seeds or not all(isinstance(s, int) for s in seeds)):
        raise HarnessError(f"{where} ({name}): seeds {seeds!r} must be a non-empty list of integers")
    return Row(label, kind, name, settings, list(seeds) if seeds else None, drop_n)


def _search_row(entry: dict, label: str, where: str) -> Row:
    from harness.search.base import search

    settings = {}
    if entry.get("search_cfg"):
        settings.update(dict(load_config(entry["search_cfg"]).get("search") or {}))
    settings.update(dict(entry.get("settings") or {}))
    try:
        search(entry["name"], **settings)
    except TypeError as exc:
        raise HarnessError(f"{where} ({entry['name']}): bad search settings ({exc})") from None
    train = dict(entry.get("train") or {})
    unknown = set(train) - {"benchmark", "range", "cfg", "max_num"}
    if unknown or ("benchmark" in train) == ("cfg" in train):
        raise HarnessError(f"{where} ({entry['name']}): train needs benchmark=ABBR with range=[START, STOP] (items "
                           "beyond the evaluated ones) or cfg='dataset_cfgs/FILE.py' with optional max_num")
    if "benchmark" in train:
        r = train.get("range")
        if not (isinstance(r, (list, tuple)) and len(r) == 2 and all(isinstance(v, int) for v in r) and 0 <= r[0] < r[1]):
            raise HarnessError(f"{where} ({entry['name']}): train range {r!r} must be [START, STOP] with 0 <= START < STOP")
        train["range"] = list(r)
    return Row(label, "search", entry["name"], settings,
               options={"groups": str(entry.get("groups", "4")), "train": train})


def _calibration(values: dict, where: str) -> dict:
    unknown = set(values) - set(CALIBRATION_KEYS)
    if unknown:
        raise HarnessError(f"{where}: unknown calibration settings {sorted(unknown)}; known: {list(CALIBRATION_KEYS)}")
    if values.get("calib_data") and values.get("calib_cfg"):
        raise HarnessError(f"{where}: calibration takes calib_data or calib_cfg, not both")
    for key in ("calib_data", "calib_cfg"):
        if values.get(key) and not Path(values[key]).is_file():
            raise HarnessError(f"{where}: calibration {key} {values[key]} not found; pass an existing file")
    return values
