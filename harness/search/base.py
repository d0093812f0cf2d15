"""The interface every search implements; ``harness/runner.py`` drives it.

    @SEARCHES.register_module(name="my_search")
    class MySearch(Search):
        def __init__(self, **settings): ...        # from --search_cfg's `search = dict(...)`
        def settings(self) -> dict: ...            # what a resumed search must match
        def run(self, space, ledger, fitness, on_result=None) -> dict[int, dict]: ...
        def finalists(self, records) -> dict[str, list[int]]: ...

A search proposes ``Candidate``s of a ``PlanSpace``, scores them with ``fitness(candidate) ->
(value, metrics)`` and persists each result in the ``Ledger`` as ``{"fitness", "metrics",
"candidate", ...}`` records by slot, so it can be stopped, resumed and shared by several workers.
``finalists`` names the plans the search outputs, each with its best slots first; the runner
re-scores them on dev data when there is some, saves ``<name>_plan.safetensors`` and evaluates it.
"""
from __future__ import annotations

from harness.registry import SEARCHES, get


class Search:
    top_k: int | None = None  # the reduced-top-k variant, when the search has one

    def settings(self) -> dict:
        raise NotImplementedError

    def run(self, space, ledger, fitness, on_result=None) -> dict[int, dict]:
        raise NotImplementedError

    def finalists(self, records: dict[int, dict]) -> dict[str, list[int]]:
        raise NotImplementedError


def search(name: str, **settings) -> Search:
    """The registered search ``name`` with its settings (an unknown name lists the known ones)."""
    return get(SEARCHES, name)(**settings)
