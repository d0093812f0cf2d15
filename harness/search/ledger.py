"""Evaluated candidates on disk: progress that survives a kill, and work sharing between workers.

Every evaluation slot ``i`` of a search ends as ``evals/<i>.json`` (written atomically as soon as
the candidate is scored). A worker takes a slot by creating ``claims/<i>.claim`` exclusively, so
processes on one machine, or machines sharing the folder, never evaluate the same slot twice. A
claim whose process is gone (same host, dead pid) or that is older than ``stale_after_s`` is taken
over, so a killed worker's slot is redone by whoever runs next.

Resume trusts only what is complete: a slot is finished when its record file parses (a record is
written whole, then the claim is deleted, so a death in between leaves a finished slot with a dead
claim); a claim file that cannot be read is its creator's only until ``CLAIM_GRACE_S`` has passed
(the creator writes its host and pid right after creating it, or died doing so). Folders or files
that cannot be written are a one-line HarnessError naming the path.
"""
from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from harness.io import atomic_write_json, make_dirs, pid_alive, write_error

# An unreadable claim younger than this may be one whose creator is still writing it.
CLAIM_GRACE_S = 60.0


class Ledger:
    def __init__(self, root: str | os.PathLike, stale_after_s: float = 6 * 3600):
        self.root = Path(root)
        self.evals = make_dirs(self.root / "evals")
        self.claims = make_dirs(self.root / "claims")
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
            except ValueError:
                continue  # not ours
            if slot not in self._records:
                record = _read_record(path)
                if record is not None:  # unreadable: not finished, the slot is redone
                    self._records[slot] = record
        return dict(self._records)

    def _is_finished(self, slot: int) -> bool:
        return slot in self._records or _read_record(self._eval_path(slot)) is not None

    def record(self, slot: int, entry: dict) -> None:
        atomic_write_json(self._eval_path(slot), {"slot": slot, **entry})
        self._claim_path(slot).unlink(missing_ok=True)

    # ------------------------------------------------------------------ claims
    def _claim_path(self, slot: int) -> Path:
        return self.claims / f"{slot:06d}.claim"

    def claim(self, slot: int) -> bool:
        """Take ``slot`` for this process; False if another live worker holds it or it is done."""
        if self._is_finished(slot):
            return False
        path = self._claim_path(slot)
        if path.exists() and self._is_stale(path):
            path.unlink(missing_ok=True)
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            return False
        except OSError as exc:
            raise write_error(path, exc) from None
        info = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "time": time.time()})
        try:
            try:
                os.write(fd, info.encode("utf-8"))
            finally:
                os.close(fd)
        except OSError as exc:
            path.unlink(missing_ok=True)
            raise write_error(path, exc) from None
        if self._is_finished(slot):  # finished between our check and our claim
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
            if not isinstance(info, dict):
                raise ValueError(info)
        except FileNotFoundError:
            return True  # released meanwhile
        except (OSError, ValueError):  # torn: its writer died writing it, or is writing it now
            try:
                return time.time() - path.stat().st_mtime > CLAIM_GRACE_S
            except FileNotFoundError:
                return True
        if info.get("host") == socket.gethostname() and info.get("pid") != os.getpid():
            return not pid_alive(int(info.get("pid", -1)))
        if info.get("host") == socket.gethostname() and info.get("pid") == os.getpid():
            return False
        return time.time() - float(info.get("time", 0)) > self.stale_after_s


def _read_record(path: Path) -> dict | None:
    """The record in ``path``, or None when it is absent or unreadable (torn by a crash)."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None

