"""Output files under failure: kills at every write, torn lines, orphan temp files, modes, full disks."""
import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness import io
from harness.errors import HarnessError
from harness.io import PredictionStore, atomic_write, atomic_write_json
from harness.search.ledger import Ledger

REPO = Path(__file__).resolve().parents[1]


class Killed(BaseException):
    """Stands for the process dying: not an Exception, so no handler of the code under test catches it."""


def kill_at_replace(monkeypatch, n):
    """Make the ``n``-th ``os.replace`` from now die before renaming (the earlier ones succeed)."""
    real, calls = os.replace, []

    def replace(src, dst):
        calls.append(dst)
        if len(calls) == n:
            raise Killed
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    return calls


def records(tag, n=5):
    return {i: {"prediction": f"{tag}{i}", "gold": "A"} for i in range(n)}


def paths(tmp_path):
    folder = tmp_path / "predictions" / "m"
    return folder / "d.json", folder / "d.partial.jsonl"


def run(final, partial, fingerprint, done):
    store = PredictionStore(final, partial, fingerprint)
    store.add({i: r for i, r in done.items() if i not in store.done})
    return store.finalize(len(done))


# ------------------------------------------------------------------ 1. finalisation is one unit
@pytest.mark.parametrize("kill_at", [1, 2, 3])
def test_a_killed_finalize_never_passes_off_one_runs_predictions_as_anothers(tmp_path, monkeypatch, kill_at):
    final, partial = paths(tmp_path)
    run(final, partial, "run-a", records("a"))
    calls = kill_at_replace(monkeypatch, kill_at)
    try:
        run(final, partial, "run-b", records("b"))
    except Killed:
        pass
    monkeypatch.undo()
    assert len(calls) >= min(kill_at, 2)  # the kill fell inside finalize (or after it, for the last case)

    assert PredictionStore(final, partial, "run-b").done == records("b")  # from the partial or the final file
    assert PredictionStore(final, partial, "run-a").done in ({}, records("a"))


def test_a_fingerprint_newer_than_the_predictions_beside_it_is_not_trusted(tmp_path):
    """The older plain-text fingerprint file: written before the predictions, so one newer than
    them stands beside an earlier run's file (the reproduced 14.0-for-another-plan case)."""
    final, _ = paths(tmp_path)
    stamp = final.with_name(".d.fingerprint")
    final.parent.mkdir(parents=True)
    stamp.write_text("run-b\n")
    final.write_text(json.dumps({"0": {"prediction": "b0"}}))
    os.utime(stamp, (time.time() - 60,) * 2)
    assert PredictionStore(final, None, "run-b").done == {0: {"prediction": "b0"}}  # a finished old-format run

    os.utime(final, (time.time() - 3600,) * 2)  # the run-b stamp now postdates the file: run-a's predictions
    assert PredictionStore(final, None, "run-b").done == {}


def test_a_predictions_file_changed_after_finalize_is_not_reused(tmp_path):
    final, partial = paths(tmp_path)
    run(final, partial, "run-a", records("a"))
    assert PredictionStore(final, partial, "run-a").done == records("a")
    edited = json.loads(final.read_text())
    edited["0"]["prediction"] = "x"
    final.write_text(json.dumps(edited))
    assert PredictionStore(final, partial, "run-a").done == {}


# ------------------------------------------------------------------ 2. torn partial lines
def test_resume_after_a_torn_line_keeps_everything_written_after_it(tmp_path):
    final, partial = paths(tmp_path)
    first = {i: {"prediction": f"p{i}"} for i in range(11)}
    store = PredictionStore(final, partial, "fp")
    for i, record in first.items():
        store.add({i: record})
    size = partial.stat().st_size
    os.truncate(partial, size - 7)  # the process died writing item 10's line

    store = PredictionStore(final, partial, "fp")
    assert store.done == {i: first[i] for i in range(10)}
    second = {i: {"prediction": f"q{i}"} for i in range(10, 30)}
    for i in range(10, 30, 4):
        store.add({j: second[j] for j in range(i, min(i + 4, 30))})

    expected = {**{i: first[i] for i in range(10)}, **second}
    assert PredictionStore(final, partial, "fp").done == expected
    assert all(json.loads(line) for line in partial.read_text().splitlines())


def test_a_partial_file_torn_inside_its_header_starts_over(tmp_path):
    final, partial = paths(tmp_path)
    partial.parent.mkdir(parents=True)
    partial.write_text('{"fingerpr')
    store = PredictionStore(final, partial, "fp")
    assert store.done == {}
    store.add({0: {"prediction": "p0"}})
    assert PredictionStore(final, partial, "fp").done == {0: {"prediction": "p0"}}


# ------------------------------------------------------------------ 3. orphan temp files
def die_while_writing(target, where):
    """A separate process that dies (os._exit) inside an atomic write of ``target``."""
    code = (
        "import os, sys\nfrom harness.io import atomic_write\n"
        f"target, where = {str(target)!r}, {where!r}\n"
        "def write(tmp):\n"
        "    if where == 'write': os._exit(3)\n"
        "    tmp.write_text('{\"half\": 1}')\n"
        "os.replace = lambda *a: os._exit(3)\n"
        "atomic_write(target, write)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 3, done.stderr


def temps_of(target):
    return sorted(p.name for p in target.parent.iterdir() if p.name.startswith(f".{target.name}.") and p.name.endswith(".tmp"))


def test_temp_files_of_killed_writers_are_removed_by_the_next_write(tmp_path):
    target = tmp_path / "out" / "d.json"
    die_while_writing(target, "replace")
    assert len(temps_of(target)) == 1
    die_while_writing(target, "write")  # the 0-byte kind (this write may already remove the first)
    assert temps_of(target)
    other = tmp_path / "out" / ".e.json.abcd1234.tmp"  # another target's: never touched
    other.write_text("")
    os.utime(other, (time.time() - 10 * 3600,) * 2)

    atomic_write_json(target, {"ok": 1})
    assert temps_of(target) == [] and other.exists()
    assert json.loads(target.read_text()) == {"ok": 1}


def test_old_style_temp_files_are_removed_only_once_stale(tmp_path):
    target = tmp_path / "d.json"
    old, fresh = tmp_path / ".d.json.k3j_x9aq.tmp", tmp_path / ".d.json.p0q1r2s3.tmp"  # mkstemp names
    old.write_text("")
    fresh.write_text("")
    os.utime(old, (time.time() - 2 * io.STALE_TMP_S,) * 2)
    atomic_write_json(target, [1])
    assert not old.exists() and fresh.exists()  # fresh: maybe a live writer elsewhere


def test_a_live_writers_temp_file_is_left_alone(tmp_path):
    target = tmp_path / "d.json"
    code = (
        "import sys\nfrom harness.io import atomic_write\n"
        f"atomic_write({str(target)!r}, lambda tmp: (tmp.write_text('[\"child\"]'), sys.stdin.readline()))\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdin=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while not temps_of(target) and time.time() < deadline:
            time.sleep(0.05)
        assert len(temps_of(target)) == 1
        atomic_write_json(target, ["parent"])
        assert len(temps_of(target)) == 1  # still the child's
        child.communicate("\n", timeout=60)
    finally:
        child.kill()
        child.wait()
    assert child.returncode == 0 and json.loads(target.read_text()) == ["child"] and temps_of(target) == []


# ------------------------------------------------------------------ 4. modes follow the umask
@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_written_files_and_folders_get_the_users_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        final, partial = paths(tmp_path / "w")
        store = PredictionStore(final, partial, "fp")
        store.add({0: {"prediction": "p"}})
        partial_mode = partial.stat().st_mode
        store.finalize(1)
        atomic_write(tmp_path / "w" / "plan.bin", lambda tmp: tmp.write_bytes(b"\0"))
        ledger = Ledger(tmp_path / "w" / "search")
        assert ledger.claim(3)
        claim_mode = (ledger.claims / "000003.claim").stat().st_mode
        ledger.record(3, {"fitness": 1.0})
    finally:
        os.umask(old)
    file_mode, dir_mode = 0o666 & ~umask, 0o777 & ~umask
    files = [final, final.with_name(".d.fingerprint"), tmp_path / "w" / "plan.bin", ledger.evals / "000003.json"]
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in files} == {p.name: oct(file_mode) for p in files}
    assert oct(partial_mode & 0o777) == oct(claim_mode & 0o777) == oct(file_mode)
    for folder in (final.parent, ledger.evals, ledger.claims):
        assert oct(folder.stat().st_mode & 0o777) == oct(dir_mode)


# ------------------------------------------------------------------ 5. disk full, read-only, ...
@pytest.mark.parametrize("code,fix", [
    (errno.ENOSPC, "free space or pass another --work_dir"),
    (errno.EROFS, "read-only; pass another --work_dir"),
    (errno.EACCES, "write permission on"),
])
def test_a_failed_write_is_one_line_naming_the_file_and_leaves_no_temp(tmp_path, code, fix):
    target = tmp_path / "predictions" / "m" / "d.json"
    atomic_write_json(target, {"old": 1})

    def write(tmp):
        tmp.write_text("{")
        raise OSError(code, os.strerror(code))

    with pytest.raises(HarnessError) as caught:
        atomic_write(target, write)
    message = str(caught.value)
    assert message.startswith(f"cannot write {target}: {os.strerror(code)};") and fix in message
    assert "\n" not in message
    assert temps_of(target) == [] and json.loads(target.read_text()) == {"old": 1}


def test_a_failed_rename_is_a_harness_error_too(tmp_path, monkeypatch):
    target = tmp_path / "d.json"

    def replace(src, dst):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(HarnessError, match=f"cannot write {target}: Read-only file system"):
        atomic_write_json(target, {})
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("blocker", ["predictions", "predictions/m"])
def test_a_file_in_place_of_a_folder_is_named(tmp_path, blocker):
    work = tmp_path / "work"
    (work / blocker).parent.mkdir(parents=True, exist_ok=True)
    (work / blocker).write_text("")
    target = work / "predictions" / "m" / "d.json"
    with pytest.raises(HarnessError) as caught:
        atomic_write_json(target, {})
    assert str(caught.value).startswith(f"cannot create the folder {target.parent}: {work / blocker} is a file")


def test_appending_predictions_on_a_full_disk_names_the_partial_file(tmp_path, monkeypatch):
    final, partial = paths(tmp_path)
    store = PredictionStore(final, partial, "fp")
    store.add({0: {"prediction": "p0"}})

    def fsync(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(HarnessError, match=f"cannot write {partial}: No space left on device"):
        store.add({1: {"prediction": "p1"}})


def test_ledger_folders_that_cannot_be_created_are_named(tmp_path):
    (tmp_path / "search").write_text("")
    with pytest.raises(HarnessError, match=f"{tmp_path / 'search'} is a file"):
        Ledger(tmp_path / "search" / "dev")


# ------------------------------------------------------------------ ledger resume
def test_a_torn_eval_record_does_not_count_as_finished(tmp_path):
    ledger = Ledger(tmp_path)
    (ledger.evals / "000002.json").write_text('{"slot": 2, "fitn')  # a crash tore it
    assert 2 not in ledger.finished()
    assert ledger.claim(2)  # so the slot is redone rather than waited on forever
    ledger.record(2, {"fitness": 5.0})
    assert Ledger(tmp_path).finished() == {2: {"slot": 2, "fitness": 5.0}}


def test_a_claim_still_being_written_is_not_taken_over(tmp_path):
    ledger = Ledger(tmp_path)
    claim = ledger.claims / "000004.claim"
    claim.write_text("")  # created, its content not written yet
    assert ledger.is_claimed(4) and not ledger.claim(4)
    os.utime(claim, (time.time() - 3600,) * 2)  # its creator died long ago
    assert not ledger.is_claimed(4) and ledger.claim(4)
