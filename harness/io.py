"""Atomic file writes, the output layout of a work dir, and the resume contract.

Nothing half-written may be left behind: every file is written to a temporary name in the same
folder (``.<name>.<pid>@<host>.<random>.tmp``), flushed to disk and renamed into place, which is
atomic on POSIX file systems. Files get the mode ``0o666 & ~umask`` (folders the default mkdir
mode), like any other file the user creates, so machines sharing a work dir can read each other's
outputs. Temporary files that a killed writer left for the same target are removed by the next
write of that target: at once when their writer was a process of this host that is gone, after
``STALE_TMP_S`` otherwise (another host's writer, or the old ``mkstemp`` names). A failed write
(disk full, read-only file system, no permission, a path component that is a file) is a one-line
``HarnessError`` naming the path, and the temporary file is removed.

Resume contract, per dataset of a run (``X`` = ``predictions/<model_abbr>/<dataset_abbr>``):

1. While the dataset runs, ``X.partial.jsonl`` holds a header line ``{"fingerprint": ...}`` and then
   one line ``{"pos": i, "record": {...}}`` per finished item, appended and fsynced batch by batch.
   A resume trusts the newline-terminated lines that parse, when the header's fingerprint is the
   run's; a torn tail (the process died mid-write) is cut off before new lines are appended, and a
   file of another fingerprint is deleted.
2. ``finalize`` writes ``X.json`` (the object ``{"0": record, ...}`` that eval and summarize read),
   then ``.X.fingerprint`` holding ``{"fingerprint": ..., "sha256": <of X.json's bytes>}``, then
   deletes the partial file. A resume trusts ``X.json`` only when that fingerprint file names the
   run's fingerprint and the sha256 of the bytes on disk; so a death between any two steps leaves
   either the partial file to resume from or a mismatch, never an earlier run's predictions
   accepted under the new fingerprint. (A fingerprint file of the older plain-text format is
   trusted only if it is not newer than ``X.json``: that format was written before the predictions.)
3. ``results/<model_abbr>/<dataset_abbr>.json`` is written after ``X.json``; nothing resumes from it.

The fingerprint (``harness.openicl.inferencers.base.fingerprint``) covers the prompts, the model
identity (weights, plan) and the inferencer settings that change predictions, but never the batch
size: log-likelihoods are not bit-identical across batch sizes (measured up to 5.7e-6 apart, with
identical predictions), so a run resumed with another ``--batch_size`` reuses the finished items.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import socket
import time
from pathlib import Path
from typing import Any, Callable

from harness.errors import HarnessError

# A temporary file this old is not being written any more, whoever made it.
STALE_TMP_S = 3600.0

MKDIR = "create the folder"

_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:32] or "host"


# ---------------------------------------------------------------------------------- failures
def write_error(path: str | os.PathLike, exc: OSError, verb: str = "write") -> HarnessError:
    """The one-line HarnessError for an OSError while writing ``path``: the cause and what to do."""
    path = Path(path)
    reason = exc.strerror or str(exc)
    code = exc.errno
    if code in (errno.ENOTDIR, errno.EEXIST):
        blocker = _file_in_the_way(path if verb == MKDIR else path.parent)
        if blocker is not None:
            return HarnessError(f"cannot {verb} {path}: {blocker} is a file, not a folder; "
                                f"move it away or pass another --work_dir")
    if verb == "read":
        fix = "check its permissions, or delete it to start that dataset over"
    elif code in (errno.ENOSPC, errno.EDQUOT):
        fix = "free space or pass another --work_dir"
    elif code == errno.EROFS:
        fix = "the file system is read-only; pass another --work_dir"
    elif code in (errno.EACCES, errno.EPERM):
        fix = f"give yourself write permission on {path.parent} or pass another --work_dir"
    else:
        fix = "check the folder or pass another --work_dir"
    return HarnessError(f"cannot {verb} {path}: {reason}; {fix}")


def _file_in_the_way(folder: Path) -> Path | None:
    """The nearest existing one of ``folder`` and its ancestors, when it is not a folder."""
    for candidate in (folder, *folder.parents):
        if candidate.exists() or candidate.is_symlink():
            return None if candidate.is_dir() else candidate
    return None


def make_dirs(folder: str | os.PathLike) -> Path:
    """``mkdir -p`` whose failure is a HarnessError naming the folder."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(folder, exc, verb=MKDIR) from None
    return folder


# ---------------------------------------------------------------------------- atomic writes
def _tmp_pattern(name: str) -> re.Pattern:
    """Temporary names of target ``name``: ours (``<pid>@<host>.<random>``) and mkstemp's (8 chars)."""
    return re.compile(rf"\.{re.escape(name)}\.(?:(?P<pid>\d+)@(?P<host>[A-Za-z0-9-]+)\.)?[a-z0-9_]{{8}}\.tmp")


def remove_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Delete temporary files a killed writer of ``path`` left behind; returns those removed.

    Only names of ``path``'s own atomic writes are touched, and only when no live writer can own
    them: a process of this host that no longer exists, or a file untouched for ``STALE_TMP_S``.
    """
    path = Path(path)
    pattern = _tmp_pattern(path.name)
    removed = []
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if match is None:
            continue
        try:
            age = now - entry.stat(follow_symlinks=False).st_mtime
        except OSError:
            continue  # already gone
        pid = int(match["pid"]) if match["pid"] else None
        dead_here = match["host"] == _HOST and pid is not None and pid != os.getpid() and not pid_alive(pid)
        if dead_here or age > STALE_TMP_S:
            try:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
            except OSError:
                pass  # another cleaner was first, or we may not delete it: harmless
    return removed


def _create_tmp(path: Path) -> Path:
    """An empty new temporary file beside ``path``, mode 0o666 minus the umask."""
    while True:
        tmp = path.with_name(f".{path.name}.{os.getpid()}@{_HOST}.{os.urandom(4).hex()}.tmp")
        try:
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            return tmp
        except FileExistsError:
            continue


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` and rename the result to ``path``; clean up on failure.

    The data is fsynced before the rename, so a crash of the machine cannot leave ``path`` empty.
    """
    path = Path(path)
    make_dirs(path.parent)
    remove_stale_temps(path)
    try:
        tmp = _create_tmp(path)
    except OSError as exc:
        raise write_error(path, exc) from None
    try:
        write(tmp)
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise write_error(path, exc) from None
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_bytes(path, _json_bytes(obj))


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --------------------------------------------------------------------------------- layout
def predictions_path(work_dir: str | os.PathLike, model_abbr: str, dataset_abbr: str) -> Path:
    return Path(work_dir) / "predictions" / model_abbr / f"{dataset_abbr}.json"


def partial_predictions_path(work_dir: str | os.PathLike, model_abbr: str, dataset_abbr: str) -> Path:
    return Path(work_dir) / "predictions" / model_abbr / f"{dataset_abbr}.partial.jsonl"


def results_path(work_dir: str | os.PathLike, model_abbr: str, dataset_abbr: str) -> Path:
    return Path(work_dir) / "results" / model_abbr / f"{dataset_abbr}.json"


# ---------------------------------------------------------------------------- predictions
class PredictionStore:
    """Per-item predictions of one run, saved as they come so an interrupted run can resume.

    See the module docstring for the files and what a resume trusts. A rerun with the same
    fingerprint reuses a finished predictions file, or skips the items already in the partial
    file; a different fingerprint starts over.
    """

    def __init__(self, final_path: str | os.PathLike | None, partial_path: str | os.PathLike | None, fingerprint: str):
        self.final_path = Path(final_path) if final_path else None
        self.partial_path = Path(partial_path) if partial_path else None
        self.fingerprint = fingerprint
        self.done: dict[int, dict] = {}
        finished = self._read_current_final() if self.final_path is not None else None
        if finished is not None:
            self.done = finished
        elif self.partial_path is not None and self.partial_path.exists():
            self._load_partial()

    @property
    def _fingerprint_path(self) -> Path:
        return self.final_path.with_name(f".{self.final_path.stem}.fingerprint")

    def _read_current_final(self) -> dict[int, dict] | None:
        """The finished predictions of this run (see the resume contract), else None."""
        try:
            stamp_text = self._fingerprint_path.read_text(encoding="utf-8")
            data = self.final_path.read_bytes()
        except (OSError, UnicodeDecodeError):
            return None
        try:
            stamp = json.loads(stamp_text)
        except json.JSONDecodeError:
            stamp = None
        if isinstance(stamp, dict):
            if stamp.get("fingerprint") != self.fingerprint or stamp.get("sha256") != hashlib.sha256(data).hexdigest():
                return None
        elif not self._legacy_stamp_matches(stamp_text):
            return None
        try:
            return {int(k): v for k, v in json.loads(data).items()}
        except (ValueError, AttributeError):
            return None

    def _legacy_stamp_matches(self, stamp_text: str) -> bool:
        """The plain-text fingerprint of older versions, written before the predictions file: it
        vouches for that file only if it is not newer (else it stands beside an earlier run's)."""
        try:
            newer = self._fingerprint_path.stat().st_mtime_ns > self.final_path.stat().st_mtime_ns
        except OSError:
            return False
        return stamp_text.strip() == self.fingerprint and not newer

    def _load_partial(self) -> None:
        """Load the complete lines of this run's partial file and cut off a torn tail."""
        try:
            data = self.partial_path.read_bytes()
        except OSError as exc:
            raise write_error(self.partial_path, exc, verb="read") from None
        lines = data.split(b"\n")[:-1]  # newline-terminated lines only; the rest is torn
        header = _parse_line(lines[0]) if lines else None
        if header is None or header.get("fingerprint") != self.fingerprint:
            self.partial_path.unlink(missing_ok=True)
            return
        good = len(lines[0]) + 1
        for line in lines[1:]:
            entry = _parse_line(line)
            if entry is None or "pos" not in entry or "record" not in entry:
                break  # torn write at the end
            self.done[int(entry["pos"])] = entry["record"]
            good += len(line) + 1
        if good < len(data):
            try:
                os.truncate(self.partial_path, good)
            except OSError as exc:
                raise write_error(self.partial_path, exc) from None

    def add(self, records: dict[int, dict]) -> None:
        """Record finished items (position -> record) and persist them before returning."""
        self.done.update(records)
        if self.partial_path is None:
            return
        lines = []
        if not self.partial_path.exists():
            lines.append(json.dumps({"fingerprint": self.fingerprint}))
        lines += [json.dumps({"pos": pos, "record": record}, ensure_ascii=False) for pos, record in records.items()]
        make_dirs(self.partial_path.parent)
        try:
            with open(self.partial_path, "a", encoding="utf-8") as fh:
                fh.write("".join(line + "\n" for line in lines))
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            raise write_error(self.partial_path, exc) from None

    def finalize(self, num_items: int) -> dict[str, dict]:
        """All items in dataset order under keys "0".."n-1"; written (see the resume contract) when
        a path is set."""
        missing = [i for i in range(num_items) if i not in self.done]
        if missing:
            raise RuntimeError(f"predictions missing for items {missing[:5]}")
        predictions = {str(i): self.done[i] for i in range(num_items)}
        if self.final_path is not None:
            data = _json_bytes(predictions)
            atomic_write_bytes(self.final_path, data)
            stamp = {"fingerprint": self.fingerprint, "sha256": hashlib.sha256(data).hexdigest()}
            atomic_write_json(self._fingerprint_path, stamp)
        if self.partial_path is not None:
            self.partial_path.unlink(missing_ok=True)
        return predictions


def _parse_line(line: bytes) -> dict | None:
    try:
        value = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None
