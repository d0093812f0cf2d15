"""Evaluated candidates on disk: progress that survives a kill, and work sharing between workers.

Every evaluation slot ``i`` of a search ends as ``evals/<i>.json`` (written atomically as soon as
the candidate is scored). A worker takes a slot by creating ``claims/<i>.claim`` exclusively, so
processes on one machine, or machines sharing the folder, never evaluate the same slot twice. A
claim whose process is gone (same host, dead pid) or that is older than ``stale_after_s`` is taken
over, so a killed worker's slot is redone by whoever runs next.
"""
from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from harness.io import atomic_write_json


class Ledger:
    def __init__(self, root: str | os.PathLike, stale_after_s: float = 6 * 3600):
        self.root = Path(root)
        self.evals = self.root / "evals"
        self.claims = self.root / "claims"
        self.evals.mkdir(parents=True, exist_ok=True)
        self.claims.mkdir(parents=True, exist_ok=True)
        self.stale_after_s = stale_after_s
        self._records: dict[int, dict] = {}  # finished records read so far, by slot

    # ------------------------------------------------------------------ results
    def _eval_path(self, slot: int) -> Path:
        return self.evals / f"{slot:06d}.json"

    def finished(self) -> dict[int, dict]:
        """Every finished slot's record, by slot. Records are written once, so each file is read
        once; later calls only look for new files (the search loop asks before every candidate)."""
        for path in self.evals.glob("*.json"):
            try:
                slot = int(path.stem)
                if slot not in self._records:
                    self._records[slot] = json.loads(path.read_text(encoding="utf-8"))
            except (ValueError, json.JSONDecodeError):
                continue  # not ours, or unreadable: ignore
        return dict(self._records)

    def record(self, slot: int, entry: dict) -> None:
        atomic_write_json(self._eval_path(slot), {"slot": slot, **entry})
        self._claim_path(slot).unlink(missing_ok=True)

    # ------------------------------------------------------------------ claims
    def _claim_path(self, slot: int) -> Path:
        return self.claims / f"{slot:06d}.claim"

    def claim(self, slot: int) -> bool:
        """Take ``slot`` for this process; False if another live worker holds it or it is done."""
        if self._eval_path(slot).exists():
            return False
        path = self._claim_path(slot)
        if path.exists() and self._is_stale(path):
            path.unlink(missing_ok=True)
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as fh:
            json.dump({"host": socket.gethostname(), "pid": os.getpid(), "time": time.time()}, fh)
        if self._eval_path(slot).exists():  # finished between our check and our claim
            path.unlink(missing_ok=True)
            return False
        return True

    def release(self, slot: int) -> None:
        self._claim_path(slot).unlink(missing_ok=True)

    def is_claimed(self, slot: int) -> bool:
        path = self._claim_path(slot)
        return path.exists() and not self._is_stale(path)

    def _is_stale(self, path: Path) -> bool:
        try:
            info = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return True  # torn claim file: its writer died while writing it
        if info.get("host") == socket.gethostname() and info.get("pid") != os.getpid():
            return not _pid_alive(int(info.get("pid", -1)))
        if info.get("host") == socket.gethostname() and info.get("pid") == os.getpid():
            return False
        return time.time() - float(info.get("time", 0)) > self.stale_after_s


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
