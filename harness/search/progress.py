"""What a running search tells the terminal: one line per finished evaluation, and its resume.

A candidate's evaluation is a whole inference pass (on a real model, minutes in one batch whose
progress bar sits at 0%), so the search itself says, after each one, how far it is, the fitness
just measured, the best so far, the time per evaluation and the time left. The rate counts every
evaluation finished since this worker started, its own and other workers' on the same ledger, so
the estimate holds when several workers share a search.
"""
from __future__ import annotations

import time
from typing import Callable


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _print(line: str) -> None:
    from tqdm import tqdm

    tqdm.write(line)  # between the inference bars, not through them


class SearchProgress:
    """Progress of a search over ``total`` evaluation slots, given the records already finished.

    ``phase(slot)`` names a slot's phase (EEP: init / prune / merge); ``out`` receives each line;
    ``clock`` returns seconds (monotonic)."""

    def __init__(self, total: int, finished: dict[int, dict], where: str, phase: Callable[[int], str] | None = None,
                 out: Callable[[str], None] = _print, clock: Callable[[], float] = time.monotonic):
        self.total = total
        self.phase = phase
        self.out = out
        self.clock = clock
        self.start = clock()
        done = {slot: record for slot, record in finished.items() if slot < total}
        self.done_at_start = len(done)
        self.best: tuple[float, int] | None = None
        for slot, record in sorted(done.items()):
            self._see(slot, record["fitness"])
        if not done:
            out(f"search: {total} evaluations to run, results in {where}; one line per evaluation below")
        elif len(done) == total:
            out(f"search: all {total} evaluations cached in {where}{self._best_text()}")
        else:
            following = min(s for s in range(total) if s not in done)
            out(f"search: resuming from {where}: {len(done)} of {total} evaluations cached{self._best_text()}; "
                f"continuing at evaluation {following}{self._phase_text(following)}")

    def _see(self, slot: int, value: float) -> None:
        if self.best is None or value > self.best[0] or value == self.best[0] and slot < self.best[1]:
            self.best = (value, slot)

    def _best_text(self) -> str:
        return "" if self.best is None else f" (best fitness {self.best[0]:.2f}, evaluation {self.best[1]})"

    def _phase_text(self, slot: int) -> str:
        return f", {self.phase(slot)} phase" if self.phase is not None else ""

    def update(self, slot: int, value: float, finished: dict[int, dict]) -> str:
        """Report evaluation ``slot`` (fitness ``value``); ``finished``: the ledger's records now."""
        for other, record in finished.items():
            if other < self.total:
                self._see(other, record["fitness"])
        self._see(slot, value)
        count = len({s for s in finished if s < self.total} | {slot})
        line = (f"search: evaluation {slot} done ({count}/{self.total}{self._phase_text(slot)}): fitness {value:.2f}; "
                f"best {self.best[0]:.2f} (evaluation {self.best[1]})")
        new = count - self.done_at_start
        if new > 0:
            per = (self.clock() - self.start) / new
            line += f"; {_duration(per)} per evaluation, about {_duration(per * (self.total - count))} left"
        self.out(line)
        return line
