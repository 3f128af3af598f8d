"""Many writer and reader processes on one registry: no torn record, no lost record, no leftover.

Eight writer processes each publish, rewrite and clean up their own record
again and again while four reader processes call ``entries()``, ``list()`` and
``find()`` in a loop. The workers are this file run as a script.

How "every record is seen" is proven: a reader that sees a record creates a
marker file, named after its session id, in a shared folder. A writer does not
go on to its next step (the rewrite, or the cleanup) until the marker for the
record it just published exists. So a record that no reader ever saw stops its
writer, which fails after a bounded wait.

A torn or half-written record would reach a reader as an invalid entry (it
does not decode) or as a record whose checksum field does not match its
session id; both make the reader fail.

Run it longer with ``pytest tests/test_concurrency.py --stress-seconds 600``.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import runregistry.backends.file as backend
from conftest import Spawn
from runregistry import AmbiguousRunError, NoRunError, Record, Registry

WRITERS = 8
READERS = 4
# Each writer goes through at least this many rounds, however short
# --stress-seconds is. A round is a write, a rewrite and two cleanups, so
# every writer writes its record at least twice this often.
MIN_ROUNDS = 100
# How long a writer waits for a reader to see its record before failing.
SEEN_TIMEOUT = 30.0
ADDR = "http://127.0.0.1:8765"


def checksum(session_id: str) -> str:
    """The ``agent`` of every stress record: a digest of its session id."""
    return hashlib.sha256(session_id.encode()).hexdigest()


def stress_record(pid: int, round_number: int, phase: str) -> Record:
    session_id = f"w{pid}-{round_number}-{phase}."
    return Record(pid, ADDR, session_id, checksum(session_id))


def check_record(record: Record, path: str | None = None) -> None:
    """Raise unless *record* is a whole stress record, stored under its own pid."""
    if record.agent != checksum(record.session_id):
        raise AssertionError(f"torn record: agent does not match session {record.session_id!r}")
    if not record.session_id.startswith(f"w{record.pid}-"):
        raise AssertionError(f"record of pid {record.pid} has session {record.session_id!r}")
    if path is not None and os.path.basename(path) != f"{record.pid}.json":
        raise AssertionError(f"record of pid {record.pid} stored as {path}")


def wait_until_seen(seen: Path, record: Record) -> None:
    marker = seen / record.session_id
    deadline = time.monotonic() + SEEN_TIMEOUT
    while not marker.exists():
        if time.monotonic() > deadline:
            raise AssertionError(
                f"no reader saw record {record.session_id!r} within {SEEN_TIMEOUT:.0f} s"
            )
        time.sleep(0.0005)


def run_writer(directory: Path, seen: Path, seconds: float) -> dict[str, int]:
    """Publish, rewrite and clean up this process's record until time is up."""
    registry = Registry(directory)
    pid = os.getpid()
    own_file = directory / f"{pid}.json"
    deadline = time.monotonic() + seconds
    rounds = 0
    while rounds < MIN_ROUNDS or time.monotonic() < deadline:
        first = registry.write(stress_record(pid, rounds, "a"))
        wait_until_seen(seen, first.record)
        second = registry.write(stress_record(pid, rounds, "b"))
        wait_until_seen(seen, second.record)

        # The older cleanup must leave the newer record in place.
        first()
        if not own_file.exists():
            raise AssertionError(f"cleanup of an older record removed {own_file}")
        second()
        if own_file.exists():
            raise AssertionError(f"cleanup left {own_file} behind")
        rounds += 1
    return {"pid": pid, "rounds": rounds}


def run_reader(directory: Path, seen: Path, stop: Path) -> dict[str, int]:
    """Read the registry in a loop until *stop* exists, checking every record read."""
    registry = Registry(directory)
    marked: set[str] = set()
    cycles = finds = 0
    while not stop.exists():
        # list() first and markers at once, so that writers wait no longer than needed.
        records = registry.list()
        for record in records:
            check_record(record)
            if record.session_id not in marked:
                (seen / record.session_id).touch()
                marked.add(record.session_id)

        # entries() shows what list() leaves out: files that do not decode.
        for entry in registry.entries():
            if entry.kind != "record" or entry.record is None:
                raise AssertionError(f"reader saw {entry.kind} {entry.path}: {entry.problem}")
            check_record(entry.record, entry.path)

        if records:
            finds += find_checked(registry, records[cycles % len(records)])
        cycles += 1
    return {"cycles": cycles, "finds": finds, "marked": len(marked)}


def find_checked(registry: Registry, target: Record) -> int:
    """Find *target* by session id, by pid and as the latest run; return how many were found."""
    found = 0
    for query in (target.session_id, str(target.pid), ""):
        try:
            record = registry.find(query)
        except NoRunError:
            # The writer cleaned up, or rewrote, since the list was read.
            continue
        except AmbiguousRunError as exc:
            raise AssertionError(f"find({query!r}) was ambiguous: {exc}") from None
        check_record(record)
        if query == target.session_id and record.session_id != query:
            raise AssertionError(f"find({query!r}) returned {record.session_id!r}")
        if query == str(target.pid) and record.pid != target.pid:
            raise AssertionError(f"find({query!r}) returned pid {record.pid}")
        found += 1
    return found


def start_worker(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, __file__, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(worker: subprocess.Popen[str], timeout: float) -> dict[str, int]:
    """Wait for *worker* and return its report; fail with its stderr if it failed."""
    stdout, stderr = worker.communicate(timeout=timeout)
    assert worker.returncode == 0, f"worker pid {worker.pid} failed:\n{stderr}"
    report: dict[str, int] = json.loads(stdout)
    return report


@pytest.mark.slow
def test_writers_and_readers_never_conflict(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    seconds = float(request.config.getoption("--stress-seconds"))
    directory = tmp_path / "registry" / "runs"
    seen = tmp_path / "seen"
    seen.mkdir()
    stop = tmp_path / "stop"

    readers = [start_worker("reader", str(directory), str(seen), str(stop)) for _ in range(READERS)]
    writers = [
        start_worker("writer", str(directory), str(seen), str(seconds)) for _ in range(WRITERS)
    ]
    try:
        written = [finish(writer, timeout=seconds + 90) for writer in writers]
        stop.touch()
        read = [finish(reader, timeout=30) for reader in readers]
    finally:
        stop.touch()
        for worker in [*writers, *readers]:
            if worker.poll() is None:
                worker.kill()
                worker.communicate(timeout=10)

    assert all(report["rounds"] >= MIN_ROUNDS for report in written)
    expected_markers = sum(2 * report["rounds"] for report in written)
    assert len(os.listdir(seen)) == expected_markers
    assert all(report["cycles"] > 0 for report in read)
    assert sum(report["finds"] for report in read) > 0
    assert os.listdir(directory) == []


def test_prune_racing_fresh_writer_keeps_fresh_record(
    registry: Registry, registry_dir: Path, spawn: Spawn, monkeypatch: pytest.MonkeyPatch
) -> None:
    gone = spawn("true")
    gone.wait(timeout=10)
    registry.write(Record(gone.pid, ADDR, "stale"))
    fresh: list[Record] = []

    def publish_fresh_record(name: str) -> None:
        monkeypatch.setattr(backend, "_before_prune", None)
        fresh.append(registry.write(Record(gone.pid, ADDR, "fresh")).record)

    monkeypatch.setattr(backend, "_before_prune", publish_fresh_record)
    removed = registry.prune()

    assert removed == []
    assert len(fresh) == 1
    stored = Record.from_json((registry_dir / f"{gone.pid}.json").read_bytes())
    assert stored == fresh[0]
    assert [entry.path for entry in registry.prune()] == [str(registry_dir / f"{gone.pid}.json")]


def test_rewrite_keeping_inode_size_and_mtime_read_anew(
    registry: Registry, registry_dir: Path, sleeper: Callable[[], subprocess.Popen[bytes]]
) -> None:
    # Two writes within one tick of the file system clock share an mtime, and
    # a freed inode number is soon reused: neither may serve the old record.
    child = sleeper()
    first = registry.write(Record(child.pid, ADDR, "session-one")).record
    path = registry_dir / f"{child.pid}.json"
    assert registry.list() == [first]
    before = path.stat()

    second = first.replace(session_id="session-two")
    with path.open("r+b") as handle:
        handle.write(second.to_json())
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()

    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (
        before.st_ino,
        before.st_size,
        before.st_mtime_ns,
    )
    assert registry.list() == [second]


def main(argv: list[str]) -> int:
    """Run one stress worker: ``writer DIR SEEN SECONDS`` or ``reader DIR SEEN STOP``."""
    role, directory, seen, last = argv
    if role == "writer":
        report = run_writer(Path(directory), Path(seen), float(last))
    else:
        report = run_reader(Path(directory), Path(seen), Path(last))
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
