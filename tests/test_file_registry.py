"""The file backend's basics on real files: write, list, latest, find, register, cleanup."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from conftest import python_child
from runregistry import (
    AmbiguousRunError,
    InvalidRecordError,
    NoRunError,
    Record,
    Registry,
    RegistryError,
)
from runregistry._liveness import local_hostname
from runregistry.backends import _directory

Sleeper = Callable[[], "subprocess.Popen[bytes]"]


def _record_for(pid: int, session_id: str, *, seconds: float = 0, port: int = 0) -> Record:
    """A record for another live process, started_at *seconds* after now."""
    return Record(
        pid,
        f"http://127.0.0.1:{port or 20000 + pid % 30000}",
        session_id,
        "test",
        datetime.now(timezone.utc) + timedelta(seconds=seconds),
    )


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask_value(request: pytest.FixtureRequest) -> Iterator[int]:
    """Set the process umask to the parametrized value for the test, then restore it."""
    value: int = request.param
    previous = os.umask(value)
    yield value
    os.umask(previous)


# Permissions


@pytest.mark.parametrize("umask_value", [0o000, 0o077, 0o022], indirect=True)
def test_write_creates_private_directories(
    registry: Registry, registry_dir: Path, umask_value: int
) -> None:
    cleanup = registry.write(Record(os.getpid(), "http://127.0.0.1:8765", "s"))

    assert _mode(registry_dir) == 0o700
    assert _mode(registry_dir.parent) == 0o700
    assert _mode(registry_dir / f"{os.getpid()}.json") == 0o600
    cleanup()


@pytest.mark.parametrize("umask_value", [0o000, 0o077], indirect=True)
def test_record_for_other_pid_is_0600(
    registry: Registry, registry_dir: Path, sleeper: Sleeper, umask_value: int
) -> None:
    child = sleeper()

    registry.write(_record_for(child.pid, "other"))

    assert _mode(registry_dir / f"{child.pid}.json") == 0o600


def test_existing_parent_keeps_its_mode(tmp_path: Path) -> None:
    parent = tmp_path / "shared"
    parent.mkdir(mode=0o755)
    parent.chmod(0o755)

    Registry(parent / "runs").write(Record(os.getpid(), "http://127.0.0.1:1", "s"))

    assert _mode(parent) == 0o755
    assert _mode(parent / "runs") == 0o700


def test_loose_registry_directory_is_tightened_on_write(
    registry: Registry, registry_dir: Path
) -> None:
    registry_dir.mkdir(parents=True)
    registry_dir.chmod(0o755)

    registry.write(Record(os.getpid(), "http://127.0.0.1:1", "s"))

    assert _mode(registry_dir) == 0o700


def test_loose_registry_directory_is_tightened_on_list(
    registry: Registry, registry_dir: Path
) -> None:
    registry_dir.mkdir(parents=True)
    registry_dir.chmod(0o777)

    assert registry.list() == []
    assert _mode(registry_dir) == 0o700


# Atomic publication


def test_temporary_file_never_ends_in_json(
    registry: Registry, registry_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Observes the directory at the last moment before each rename; the
    # rename itself is the real one.
    seen: list[list[str]] = []
    real_replace = _directory.Directory.replace

    def observe(self: _directory.Directory, source: str, target: str) -> None:
        seen.append(sorted(os.listdir(registry_dir)))
        real_replace(self, source, target)

    monkeypatch.setattr(_directory.Directory, "replace", observe)
    registry.write(Record(os.getpid(), "http://127.0.0.1:1", "first"))
    registry.write(Record(os.getpid(), "http://127.0.0.1:1", "second"))

    temporaries = [name for names in seen for name in names if name != f"{os.getpid()}.json"]
    assert len(temporaries) == 2
    for name in temporaries:
        assert not name.endswith(".json")
        assert name.startswith(".")
    assert os.listdir(registry_dir) == [f"{os.getpid()}.json"]


def test_concurrent_reader_never_sees_torn_record(
    registry: Registry, registry_dir: Path, spawn: Callable[..., subprocess.Popen[bytes]]
) -> None:
    registry.write(Record(os.getpid(), "http://127.0.0.1:1", "start"))
    stop = registry_dir.parent / "stop"
    reader = spawn(
        *python_child(_TORN_READER),
        str(registry_dir),
        str(stop),
        stdout=subprocess.PIPE,
    )
    assert reader.stdout is not None
    assert reader.stdout.readline() == b"ready\n"

    for i in range(300):
        # Sizes differ from write to write, so a torn read would show.
        session_id = "s" * (1 + i % 97)
        registry.write(Record(os.getpid(), "http://127.0.0.1:1", session_id))
    stop.touch()
    output, _ = reader.communicate(timeout=30)
    result = json.loads(output)

    assert result["reads"] > 0
    assert result["bad"] == []
    assert result["other_json"] == []
    for name in result["others"]:
        assert name.startswith(".")
        assert not name.endswith(".json")


_TORN_READER = """
import json, os, sys, time
from runregistry import Record
directory, stop = sys.argv[1], sys.argv[2]
deadline = time.monotonic() + 20
reads, bad, others, other_json = 0, [], set(), set()
print("ready", flush=True)
while not os.path.exists(stop) and time.monotonic() < deadline:
    for name in os.listdir(directory):
        if not name.endswith(".json"):
            others.add(name)
            continue
        if name != f"{os.getppid()}.json":
            other_json.add(name)
        try:
            with open(os.path.join(directory, name), "rb") as handle:
                data = handle.read()
        except FileNotFoundError:
            continue
        reads += 1
        try:
            Record.from_json(data)
        except ValueError:
            bad.append(data.decode("utf-8", "replace"))
print(json.dumps({"reads": reads, "bad": bad, "others": sorted(others),
                  "other_json": sorted(other_json)}))
"""


def test_write_replaces_record_of_same_pid(registry: Registry, registry_dir: Path) -> None:
    registry.write(Record(os.getpid(), "http://127.0.0.1:1", "old"))
    registry.write(Record(os.getpid(), "http://127.0.0.1:2", "new"))

    assert os.listdir(registry_dir) == [f"{os.getpid()}.json"]
    assert [r.session_id for r in registry.list()] == ["new"]


def test_write_stores_pid_named_file(registry: Registry, registry_dir: Path) -> None:
    record = Record(os.getpid(), "http://127.0.0.1:8765", "s", "coder")

    cleanup = registry.write(record)
    stored = Record.from_json((registry_dir / f"{os.getpid()}.json").read_bytes())

    assert stored == cleanup.record
    assert stored.host == local_hostname()
    assert stored.lock == "flock"
    assert stored.replace(host=None, lock=None) == record


def test_record_for_other_pid_has_no_lock(
    registry: Registry, registry_dir: Path, sleeper: Sleeper
) -> None:
    child = sleeper()

    cleanup = registry.write(_record_for(child.pid, "other"))
    stored = Record.from_json((registry_dir / f"{child.pid}.json").read_bytes())

    assert stored.lock is None
    assert stored.host == local_hostname()
    assert stored == cleanup.record


@pytest.mark.parametrize(
    ("addr", "session_id"),
    [
        pytest.param("127.0.0.1:8765", "s", id="no-scheme"),
        pytest.param("ftp://127.0.0.1:21", "s", id="ftp"),
        pytest.param("http://", "s", id="scheme-only"),
        pytest.param("http://127.0.0.1:1", "", id="empty-session"),
        pytest.param("http://127.0.0.1:1", "  ", id="blank-session"),
    ],
)
def test_write_rejects_unusable_record(
    registry: Registry, registry_dir: Path, addr: str, session_id: str
) -> None:
    with pytest.raises(InvalidRecordError):
        registry.write(Record(os.getpid(), addr, session_id))

    assert not registry_dir.exists() or os.listdir(registry_dir) == []


# Readers


def test_missing_directory_is_empty(registry: Registry, registry_dir: Path) -> None:
    assert registry.list() == []
    assert registry.latest() is None
    assert registry.entries() == []
    assert not registry_dir.exists()


def test_find_in_missing_directory_raises_no_run(registry: Registry, registry_dir: Path) -> None:
    with pytest.raises(NoRunError) as caught:
        registry.find()

    message = str(caught.value)
    assert str(registry_dir) in message
    assert "runregistry exec" in message
    assert "register(addr=" in message
    assert not registry_dir.exists()


def test_file_in_place_of_directory_raises(tmp_path: Path) -> None:
    path = tmp_path / "runs"
    path.write_text("not a directory")
    registry = Registry(path)

    with pytest.raises(RegistryError, match=str(path)):
        registry.list()
    with pytest.raises(RegistryError, match=str(path)):
        registry.write(Record(os.getpid(), "http://127.0.0.1:1", "s"))


def _plant_malformed(directory: Path, tmp_path: Path) -> list[str]:
    """Create one file of each malformed kind; return the names readers report as invalid."""
    (directory / "bad.json").write_bytes(b"{not json")
    (directory / "empty.json").write_bytes(b"")
    (directory / "array.json").write_bytes(b"[]")
    (directory / "huge.json").write_bytes(b" " * 200_000)
    wrong_type = {"pid": "12", "addr": "http://x", "session_id": "s", "started_at": "x"}
    (directory / "types.json").write_text(json.dumps(wrong_type))
    naive = {
        "pid": os.getpid(),
        "addr": "http://127.0.0.1:1",
        "session_id": "naive",
        "started_at": "2026-05-13T10:20:30",
    }
    (directory / "naive.json").write_text(json.dumps(naive))

    os.mkfifo(directory / "fifo.json")
    target = tmp_path / "elsewhere.json"
    target.write_bytes(Record(os.getpid(), "http://127.0.0.1:1", "linked").to_json())
    (directory / "link.json").symlink_to(target)
    foreign = directory / "foreign.json"
    foreign.write_bytes(Record(os.getpid(), "http://127.0.0.1:1", "foreign").to_json())
    os.chown(foreign, 65534, 65534)

    # Skipped without a report: not records at all.
    (directory / "folder.json").mkdir()
    (directory / "notes.txt").write_text("hello")
    return [
        "bad.json",
        "empty.json",
        "array.json",
        "huge.json",
        "types.json",
        "naive.json",
        "fifo.json",
        "link.json",
        "foreign.json",
    ]


@pytest.mark.skipif(os.geteuid() != 0, reason="planting another user's file needs root")
def test_malformed_files_are_skipped_and_kept(
    registry: Registry, registry_dir: Path, tmp_path: Path
) -> None:
    cleanup = registry.write(Record(os.getpid(), "http://127.0.0.1:1", "good"))
    invalid = _plant_malformed(registry_dir, tmp_path)
    before = sorted(os.listdir(registry_dir))

    records = registry.list()
    entries = {Path(e.path).name: e for e in registry.entries()}

    assert [r.session_id for r in records] == ["good"]
    assert sorted(os.listdir(registry_dir)) == before
    for name in invalid:
        assert entries[name].kind == "invalid", name
        assert entries[name].record is None, name
        assert entries[name].problem, name
    assert "folder.json" not in entries
    assert "notes.txt" not in entries
    cleanup()


def test_invalid_entry_says_why(registry: Registry, registry_dir: Path) -> None:
    registry_dir.mkdir(parents=True)
    (registry_dir / "types.json").write_text(
        json.dumps(
            {
                "pid": True,
                "addr": "http://x",
                "session_id": "s",
                "started_at": "2026-01-01T00:00:00Z",
            }
        )
    )

    [entry] = registry.entries()

    assert entry.kind == "invalid"
    assert entry.record is None
    assert "pid" in entry.problem


def test_stale_record_is_removed(registry: Registry, registry_dir: Path, sleeper: Sleeper) -> None:
    child = sleeper()
    registry.write(_record_for(child.pid, "short-lived"))
    path = registry_dir / f"{child.pid}.json"

    live = registry.list()
    child.kill()
    child.wait(timeout=10)
    after = registry.list()

    assert [r.pid for r in live] == [child.pid]
    assert after == []
    assert not path.exists()


def test_failed_removal_is_not_an_error(
    registry: Registry, registry_dir: Path, sleeper: Sleeper
) -> None:
    if shutil.which("chattr") is None:
        pytest.skip("chattr is needed to make the directory immutable")
    child = sleeper()
    registry.write(_record_for(child.pid, "stuck"))
    child.kill()
    child.wait(timeout=10)
    # An immutable directory makes unlink and rename fail even for root.
    if subprocess.run(["chattr", "+i", str(registry_dir)], check=False).returncode != 0:
        pytest.skip("the file system does not support the immutable attribute")
    try:
        records = registry.list()
        still_there = (registry_dir / f"{child.pid}.json").exists()
    finally:
        subprocess.run(["chattr", "-i", str(registry_dir)], check=True)

    assert records == []
    assert still_there


# Order, latest and find


def test_list_is_oldest_first_then_lower_pid(registry: Registry, sleeper: Sleeper) -> None:
    a, b, c = sleeper(), sleeper(), sleeper()
    registry.write(_record_for(a.pid, "newest", seconds=2))
    registry.write(_record_for(b.pid, "tie-b", seconds=1))
    registry.write(_record_for(c.pid, "tie-c", seconds=1))
    # Ties must share the exact instant.
    tied = registry.list()[0].started_at
    registry.write(_record_for(b.pid, "tie-b").replace(started_at=tied))
    registry.write(_record_for(c.pid, "tie-c").replace(started_at=tied))

    records = registry.list()

    low, high = sorted([b.pid, c.pid])
    assert [r.pid for r in records] == [low, high, a.pid]


def test_latest_is_newest_live(registry: Registry, sleeper: Sleeper) -> None:
    a, b = sleeper(), sleeper()
    registry.write(_record_for(a.pid, "older", seconds=0))
    registry.write(_record_for(b.pid, "newer", seconds=5))

    latest = registry.latest()

    assert latest is not None
    assert latest.session_id == "newer"
    assert registry.find().session_id == "newer"


def test_latest_skips_dead_newer_run(registry: Registry, sleeper: Sleeper) -> None:
    a, b = sleeper(), sleeper()
    registry.write(_record_for(a.pid, "older", seconds=0))
    registry.write(_record_for(b.pid, "newer", seconds=5))
    b.kill()
    b.wait(timeout=10)

    latest = registry.latest()

    assert latest is not None
    assert latest.session_id == "older"


def test_latest_tie_goes_to_higher_pid(registry: Registry, sleeper: Sleeper) -> None:
    a, b = sleeper(), sleeper()
    first = registry.write(_record_for(a.pid, "a")).record
    registry.write(_record_for(b.pid, "b").replace(started_at=first.started_at))

    latest = registry.latest()

    assert latest is not None
    assert latest.pid == max(a.pid, b.pid)


@pytest.fixture
def three_runs(registry: Registry, sleeper: Sleeper) -> list[Record]:
    runs = []
    for port, session_id in ((8001, "6f1d2c3b-one"), (8002, "6f1d9999-two"), (8003, "6f1d")):
        child = sleeper()
        runs.append(registry.write(_record_for(child.pid, session_id, port=port)).record)
    return runs


def test_find_by_pid(registry: Registry, three_runs: list[Record]) -> None:
    assert registry.find(str(three_runs[1].pid)) == three_runs[1]


def test_find_by_pid_with_whitespace(registry: Registry, three_runs: list[Record]) -> None:
    assert registry.find(f"  {three_runs[0].pid}\n") == three_runs[0]


def test_find_by_address_with_trailing_slash(registry: Registry, three_runs: list[Record]) -> None:
    assert registry.find("http://127.0.0.1:8002/") == three_runs[1]


def test_find_exact_session_over_substring(registry: Registry, three_runs: list[Record]) -> None:
    assert registry.find("6f1d") == three_runs[2]


def test_find_unique_substring(registry: Registry, three_runs: list[Record]) -> None:
    assert registry.find("9999-t") == three_runs[1]


def test_find_ambiguous_lists_every_match(registry: Registry, three_runs: list[Record]) -> None:
    with pytest.raises(AmbiguousRunError) as caught:
        registry.find("f1d")

    assert sorted(caught.value.candidates) == ["6f1d", "6f1d2c3b-one", "6f1d9999-two"]
    for session_id in ("6f1d", "6f1d2c3b-one", "6f1d9999-two"):
        assert session_id in str(caught.value)


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        pytest.param("424242", "no live run with pid 424242", id="pid"),
        pytest.param("http://127.0.0.1:9", "no live run at address http://127.0.0.1:9", id="addr"),
        pytest.param("zzz", "no live run whose session id contains 'zzz'", id="session"),
    ],
)
def test_find_miss_names_target_forms_and_directory(
    registry: Registry, registry_dir: Path, three_runs: list[Record], target: str, expected: str
) -> None:
    with pytest.raises(NoRunError) as caught:
        registry.find(target)

    message = str(caught.value)
    assert expected in message
    assert str(registry_dir) in message
    assert "a pid, HOST:PID, an http:// or https:// address" in message
    assert "start one with" in message
    assert caught.value.directory == str(registry_dir)


def test_find_dead_pid_raises_and_prunes(
    registry: Registry, registry_dir: Path, sleeper: Sleeper
) -> None:
    child = sleeper()
    registry.write(_record_for(child.pid, "gone"))
    child.kill()
    child.wait(timeout=10)

    with pytest.raises(NoRunError, match=f"pid {child.pid}"):
        registry.find(str(child.pid))

    assert not (registry_dir / f"{child.pid}.json").exists()


def test_find_host_pid_of_this_host(registry: Registry, three_runs: list[Record]) -> None:
    target = f"{local_hostname()}:{three_runs[0].pid}"

    assert registry.find(target) == three_runs[0]


# register() and cleanup


def test_register_publishes_and_removes(registry: Registry, registry_dir: Path) -> None:
    before = datetime.now(timezone.utc)

    with registry.register(addr="http://127.0.0.1:8765", agent="coder") as record:
        listed = registry.list()
        on_disk = (registry_dir / f"{os.getpid()}.json").exists()

    assert listed == [record]
    assert on_disk
    assert record.pid == os.getpid()
    assert record.agent == "coder"
    assert record.lock == "flock"
    assert before <= record.started_at <= datetime.now(timezone.utc)
    assert uuid.UUID(record.session_id).version == 4
    assert registry.list() == []
    assert not (registry_dir / f"{os.getpid()}.json").exists()


def test_register_keeps_given_session_id(registry: Registry) -> None:
    with registry.register("http://127.0.0.1:8765", "my-session") as record:
        found = registry.find("my-session")

    assert found == record


def test_register_removes_record_on_exception(registry: Registry, registry_dir: Path) -> None:
    with pytest.raises(RuntimeError), registry.register(addr="http://127.0.0.1:1"):
        raise RuntimeError("boom")

    assert not (registry_dir / f"{os.getpid()}.json").exists()


def test_register_removes_record_on_keyboard_interrupt(
    registry: Registry, registry_dir: Path
) -> None:
    with pytest.raises(KeyboardInterrupt), registry.register(addr="http://127.0.0.1:1"):
        raise KeyboardInterrupt

    assert not (registry_dir / f"{os.getpid()}.json").exists()


def test_cleanup_removes_record(registry: Registry, registry_dir: Path) -> None:
    cleanup = registry.write(Record(os.getpid(), "http://127.0.0.1:1", "s"))

    cleanup()

    assert not (registry_dir / f"{os.getpid()}.json").exists()
    assert registry.list() == []


def test_cleanup_twice_is_harmless(registry: Registry, registry_dir: Path) -> None:
    cleanup = registry.write(Record(os.getpid(), "http://127.0.0.1:1", "s"))

    cleanup()
    cleanup()

    assert not (registry_dir / f"{os.getpid()}.json").exists()


def test_cleanup_after_file_is_gone_is_harmless(registry: Registry, registry_dir: Path) -> None:
    cleanup = registry.write(Record(os.getpid(), "http://127.0.0.1:1", "s"))
    (registry_dir / f"{os.getpid()}.json").unlink()

    cleanup()

    assert registry.list() == []


def test_cleanup_after_directory_is_gone_is_harmless(
    registry: Registry, registry_dir: Path
) -> None:
    cleanup = registry.write(Record(os.getpid(), "http://127.0.0.1:1", "s"))
    shutil.rmtree(registry_dir)

    cleanup()

    assert not registry_dir.exists()


def test_two_registries_on_one_directory_agree(registry_dir: Path) -> None:
    first, second = Registry(registry_dir), Registry(registry_dir)

    cleanup = first.write(Record(os.getpid(), "http://127.0.0.1:1", "shared"))
    seen = [r.session_id for r in second.list()]
    cleanup()

    assert seen == ["shared"]
    assert second.list() == []


def test_go_fixtures_list_without_error(
    registry: Registry, registry_dir: Path, go_fixtures: Path
) -> None:
    registry_dir.mkdir(parents=True)
    for path in go_fixtures.glob("*.json"):
        if path.name != "expected.json":
            shutil.copy(path, registry_dir / path.name)
            os.chmod(registry_dir / path.name, 0o600)

    entries = registry.entries(prune=False)
    records = registry.list()

    assert len(entries) == 7
    assert all(e.kind == "record" for e in entries)
    assert all(e.liveness is not None for e in entries)
    assert {r.session_id for r in records} <= {e.record.session_id for e in entries if e.record}
