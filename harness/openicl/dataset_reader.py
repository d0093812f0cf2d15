"""Read a dataset config's data: load the file, slice ``test_range``, pick the subset.

Order of operations (the EEP protocol's): loader -> test split -> row transforms
(``reader_cfg.row_transforms``, see ``transforms.py``) -> ``test_range`` slice -> subset (index
file or range). Where train and test are one list, few-shot examples that are evaluated
items are refused (see ``harness/openicl/retrievers.py``; opt in with ``allow_test_examples=True``). Each kept row remembers its position in the loader's test split, which for
the one-file loaders is its record number in the source file.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from harness.config import check_output_name
from harness.errors import HarnessError
from harness.openicl.retrievers import check_no_test_examples
from harness.openicl.transforms import apply_row_transforms
from harness.registry import LOADERS, RETRIEVERS, build, get

READER_KEYS = {"type", "path", "input_columns", "output_column", "train_split", "test_split", "test_range",
               "row_transforms"}
_SLICE = re.compile(r"^\[\s*(-?\d*)\s*:\s*(-?\d*)\s*(?::\s*(-?\d*)\s*)?\]$")


@dataclass
class EvalData:
    """The rows one dataset config evaluates, with their references and source positions."""

    abbr: str
    test_rows: list[dict]
    indices: list[int]  # position of each test row in the loader's test split
    train_rows: list[dict] = field(default_factory=list)
    input_columns: list[str] = field(default_factory=list)
    output_column: str | None = None

    @property
    def references(self) -> list:
        if self.output_column is None:
            return [None] * len(self.test_rows)
        return [row.get(self.output_column) for row in self.test_rows]


def resolve_data_path(path: str, data_root: str | None) -> str:
    """Replace the leading ``./data`` (or ``data``) of a config path by ``data_root``."""
    if not data_root or not isinstance(path, str):
        return path
    for prefix in ("./data/", "data/"):
        if path.startswith(prefix):
            return str(Path(data_root) / path[len(prefix):])
    if path in ("./data", "data"):
        return str(data_root)
    return path


def parse_range(text: str, where: str) -> slice:
    """``'[0:500]'`` -> ``slice(0, 500)``, without ``eval``."""
    match = _SLICE.match(str(text).strip())
    if not match:
        raise HarnessError(f"{where}: test_range {text!r} is not a python slice like '[0:500]'")
    start, stop, step = (int(g) if g not in (None, "") else None for g in match.groups())
    return slice(start, stop, step)


def load_index_list(path: str) -> list[int]:
    """Read a subset index file: .pth (pickled ints, numpy ints allowed, no code runs), .json, .txt."""
    file = Path(path)
    if not file.is_file():
        raise HarnessError(f"subset index file {path} not found; fix subset.index_file or --data_root")
    if file.suffix == ".json":
        values = json.loads(file.read_text())
    elif file.suffix == ".txt":
        values = [line.strip() for line in file.read_text().splitlines() if line.strip()]
    else:
        from harness.safe_load import safe_torch_load

        values = safe_torch_load(file)
    if hasattr(values, "tolist"):
        values = values.tolist()
    try:
        return [int(v) for v in values]
    except (TypeError, ValueError) as exc:
        raise HarnessError(f"subset index file {path} must hold a list of integers ({exc})") from None


def select_subset(num_rows: int, subset: dict | None, where: str) -> list[int]:
    """Positions (ascending) of the rows a subset config keeps among ``num_rows`` rows."""
    if not subset:
        return list(range(num_rows))
    if "index_file" in subset:
        wanted = sorted(set(load_index_list(subset["index_file"])))
        bad = [i for i in wanted if not 0 <= i < num_rows]
        if bad:
            raise HarnessError(
                f"{where}: subset index file {subset['index_file']} has indices {bad[:5]} outside the "
                f"{num_rows} rows left after test_range"
            )
        return wanted
    if "range" in subset:
        start, stop = subset["range"]
        return list(range(num_rows))[slice(start, stop)]
    if "start_ratio" in subset or "end_ratio" in subset:
        start = int(num_rows * float(subset.get("start_ratio", 0.0)))
        stop = int(num_rows * float(subset.get("end_ratio", 1.0)))
        return list(range(start, stop))
    raise HarnessError(f"{where}: subset needs one of index_file, range or start_ratio/end_ratio, got {subset}")


def load_eval_data(dataset_cfg: dict, data_root: str | None = None) -> EvalData:
    """Load a dataset config's train rows and (range- and subset-selected) test rows."""
    abbr = dataset_cfg.get("abbr")
    if not abbr:
        raise HarnessError("every dataset config needs an 'abbr' (it names the output files)")
    check_output_name(abbr, "dataset abbr")
    reader = dict(dataset_cfg.get("reader_cfg") or {})
    if "type" not in reader or "path" not in reader:
        raise HarnessError(f"dataset {abbr}: reader_cfg needs 'type' (a loader) and 'path'")
    loader = get(LOADERS, reader["type"])
    kwargs = {k: resolve_data_path(v, data_root) for k, v in reader.items() if k not in READER_KEYS}
    path = resolve_data_path(reader["path"], data_root)
    try:
        loaded = loader(path, **kwargs)
    except FileNotFoundError as exc:
        raise HarnessError(
            f"dataset {abbr}: data file {exc.filename or path} not found; put the data there or pass --data_root"
        ) from None

    train_rows, test_rows, train_is_test = _splits(loaded, reader, abbr)
    if reader.get("row_transforms"):  # lm-eval's process_docs: every row, before slicing and column checks
        test_rows = apply_row_transforms(test_rows, reader["row_transforms"], f"dataset {abbr}")
        train_rows = test_rows if train_is_test else apply_row_transforms(
            train_rows, reader["row_transforms"], f"dataset {abbr} (train split)")
    positions = list(range(len(test_rows)))
    if reader.get("test_range"):
        positions = positions[parse_range(reader["test_range"], f"dataset {abbr}")]
    subset = {k: resolve_data_path(v, data_root) for k, v in (dataset_cfg.get("subset") or {}).items()}
    keep = select_subset(len(positions), subset, f"dataset {abbr}")
    indices = [positions[i] for i in keep]
    if not indices:
        raise HarnessError(f"dataset {abbr}: the subset is empty (check test_range and subset in the config)")

    if train_is_test:
        retriever_cfg = (dataset_cfg.get("infer_cfg") or {}).get("retriever") or {"type": "ZeroRetriever"}
        check_no_test_examples(build(RETRIEVERS, retriever_cfg), len(train_rows), indices, f"dataset {abbr}")

    output_column = reader.get("output_column")
    rows = [test_rows[i] for i in indices]
    if output_column is not None and output_column not in rows[0]:
        raise HarnessError(
            f"dataset {abbr}: output_column {output_column!r} is not among the columns {sorted(rows[0])}"
        )
    input_columns = list(reader.get("input_columns") or [])
    missing = [c for c in input_columns if c not in rows[0]]
    if missing:
        raise HarnessError(f"dataset {abbr}: input_columns {missing} are not among the columns {sorted(rows[0])}")
    return EvalData(abbr, rows, indices, train_rows, input_columns, output_column)


def _splits(loaded, reader: dict, abbr: str) -> tuple[list[dict], list[dict], bool]:
    """Train rows, test rows, and whether they are one list (a one-file loader, or no train split)."""
    if isinstance(loaded, dict):
        test_split = reader.get("test_split", "test")
        train_split = reader.get("train_split", "train")
        if test_split not in loaded:
            raise HarnessError(f"dataset {abbr}: test_split {test_split!r} not among the splits {sorted(loaded)}")
        same = train_split == test_split or train_split not in loaded
        return list(loaded[train_split if not same else test_split]), list(loaded[test_split]), same
    rows = list(loaded)
    return rows, rows, True
