"""Retrievers choose the in-context examples (rows of the train split) for each test item.

When the loader returns a single list, the train split *is* the evaluated file, so a few-shot
example could be the very item being asked, answer included. ``check_no_test_examples`` (called by
the dataset reader) refuses that unless the retriever config says ``allow_test_examples=True``:
set it only where a protocol deliberately draws its examples from the evaluated file.
"""
from __future__ import annotations

import random

from harness.errors import HarnessError
from harness.registry import RETRIEVERS


@RETRIEVERS.register_module(name="ZeroRetriever")
class ZeroRetriever:
    """No in-context examples (zero-shot)."""

    allow_test_examples = False

    def __init__(self, **unused):
        pass

    def retrieve(self, num_test: int, train_rows: list[dict]) -> list[list[int]]:
        return [[] for _ in range(num_test)]

    def example_ids(self, num_train: int) -> set[int]:
        return set()


@RETRIEVERS.register_module(name="FixedKRetriever")
class FixedKRetriever:
    """The same train rows, in the given order, for every test item (fixed k-shot).

    ``allow_test_examples=True`` permits ids that are also evaluated items (see the module docstring).
    """

    def __init__(self, fix_id_list: list[int], allow_test_examples: bool = False, **unused):
        self.fix_id_list = [int(i) for i in fix_id_list]
        self.allow_test_examples = bool(allow_test_examples)

    def retrieve(self, num_test: int, train_rows: list[dict]) -> list[list[int]]:
        bad = [i for i in self.fix_id_list if not 0 <= i < len(train_rows)]
        if bad:
            raise HarnessError(
                f"FixedKRetriever.fix_id_list has ids {bad} outside the train split of {len(train_rows)} rows"
            )
        return [list(self.fix_id_list) for _ in range(num_test)]

    def example_ids(self, num_train: int) -> set[int]:
        return set(self.fix_id_list)


@RETRIEVERS.register_module(name="RandomRetriever")
class RandomRetriever:
    """k train rows drawn per test item with a fixed seed (reproducible few-shot).

    It may draw any train row, so on a one-file dataset it needs ``allow_test_examples=True``.
    """

    def __init__(self, ice_num: int = 1, seed: int = 43, allow_test_examples: bool = False, **unused):
        self.ice_num = int(ice_num)
        self.seed = seed
        self.allow_test_examples = bool(allow_test_examples)

    def retrieve(self, num_test: int, train_rows: list[dict]) -> list[list[int]]:
        if self.ice_num > len(train_rows):
            raise HarnessError(f"RandomRetriever.ice_num={self.ice_num} exceeds the {len(train_rows)} train rows")
        rng = random.Random(self.seed)
        return [rng.sample(range(len(train_rows)), self.ice_num) for _ in range(num_test)]

    def example_ids(self, num_train: int) -> set[int]:
        return set(range(num_train)) if self.ice_num > 0 else set()


def check_no_test_examples(retriever, num_train: int, test_indices: list[int], where: str) -> None:
    """Refuse examples that are evaluated items, for a train split that is the test split.

    Overlap is decided by position, not by file: examples taken from rows outside the evaluated
    range or index file (disjoint ranges of one file) are fine.
    """
    if getattr(retriever, "allow_test_examples", False) or not hasattr(retriever, "example_ids"):
        return
    overlap = sorted(retriever.example_ids(num_train) & set(test_indices))
    if overlap:
        name = type(retriever).__name__
        raise HarnessError(
            f"{where}: {name} may show evaluated items {overlap[:5]}{' ...' if len(overlap) > 5 else ''} as "
            "their own few-shot examples (the loader returns one split, so train = test); take examples from "
            "rows outside test_range/subset or a separate train split, or set allow_test_examples=True in "
            "the retriever config if the protocol means it"
        )
