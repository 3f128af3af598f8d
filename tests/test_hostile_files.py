"""Readers skip broken and hostile files in the registry directory, never crash, never delete.

Each case plants a real file (or FIFO, socket, link, device) beside one live
record of this process. ``list()`` must still return exactly that record, and
leave the planted file as it was.
"""

from __future__ import annotations

import json
import os
import pwd
import socket
import stat
import tempfile
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import Spawn
from runregistry import NoRunError, Record, Registry
from runregistry._liveness import LIVE, judge
from runregistry.backends.file import MAX_RECORD_SIZE

needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="making a file owned by another user or a device needs root"
)

HOSTILE_NAME = "123.json"


def valid_fields(**changes: object) -> dict[str, object]:
    """The JSON object of a live record of this process, with *changes* applied."""
    fields: dict[str, object] = {
        "pid": os.getpid(),
        "addr": "http://127.0.0.1:8765",
        "session_id": "hostile-neighbour",
        "started_at": datetime.now(timezone.utc).isoformat(),
    }
    fields.update(changes)
    return fields


def without(key: str) -> bytes:
    fields = valid_fields()
    del fields[key]
    return json.dumps(fields).encode()


def with_field(key: str, value: object) -> bytes:
    return json.dumps(valid_fields(**{key: value})).encode()


def with_raw(key: str, raw: str) -> bytes:
    """A record whose *key* is the *raw* JSON text, for values Python cannot produce."""
    text = json.dumps(valid_fields(**{key: "PLACEHOLDER"}))
    return text.replace('"PLACEHOLDER"', raw).encode()


BROKEN_CONTENTS = [
    pytest.param(b"", id="empty"),
    pytest.param(b"   \n", id="whitespace"),
    pytest.param(json.dumps(valid_fields()).encode()[:40], id="truncated"),
    pytest.param(b'{"pid": 123, "addr": "http://127.0.0.1:1"', id="unclosed-object"),
    pytest.param(b"[1, 2, 3]", id="array"),
    pytest.param(b'"a string"', id="string"),
    pytest.param(b"null", id="null"),
    pytest.param(b"42", id="number"),
    pytest.param(b"true", id="bool"),
    pytest.param(without("pid"), id="missing-pid"),
    pytest.param(without("addr"), id="missing-addr"),
    pytest.param(without("session_id"), id="missing-session-id"),
    pytest.param(without("started_at"), id="missing-started-at"),
    pytest.param(with_field("pid", str(os.getpid())), id="pid-string"),
    pytest.param(with_field("pid", float(os.getpid())), id="pid-float"),
    pytest.param(with_field("pid", True), id="pid-true"),
    pytest.param(with_field("pid", -os.getpid()), id="pid-negative"),
    pytest.param(with_field("pid", 0), id="pid-zero"),
    pytest.param(with_field("pid", 2**31), id="pid-beyond-pid-t"),
    pytest.param(with_field("pid", 2**63 + 1), id="pid-beyond-2-63"),
    pytest.param(with_raw("pid", "9" * 5000), id="pid-5000-digits"),
    pytest.param(with_raw("pid", "NaN"), id="pid-nan"),
    pytest.param(with_raw("pid", "1e400"), id="pid-infinite"),
    pytest.param(with_field("pid", None), id="pid-null"),
    pytest.param(with_field("started_at", "2026-05-13T10:20:30"), id="started-at-naive"),
    pytest.param(with_field("started_at", "yesterday"), id="started-at-malformed"),
    pytest.param(with_field("started_at", "2026-13-45T10:20:30Z"), id="started-at-bad-date"),
    pytest.param(with_field("started_at", "10000-01-01T00:00:00Z"), id="started-at-year-10000"),
    pytest.param(with_field("started_at", "0001-01-01T00:00:00+01:00"), id="started-at-before-1"),
    pytest.param(with_field("started_at", "9999-12-31T23:59:59-01:00"), id="started-at-past-9999"),
    pytest.param(with_field("started_at", "2026-05-13T10:20:30+24:00"), id="started-at-bad-offset"),
    pytest.param(with_field("started_at", 1778667630), id="started-at-number"),
    pytest.param(with_field("addr", 8765), id="addr-number"),
    pytest.param(with_field("addr", None), id="addr-null"),
    pytest.param(with_field("addr", ["http://127.0.0.1:1"]), id="addr-list"),
    pytest.param(with_field("session_id", {"id": "x"}), id="session-id-object"),
    pytest.param(with_field("agent", 7), id="agent-number"),
    pytest.param(with_field("host", 7), id="host-number"),
    pytest.param(b'{"pid": 123, "addr": "\xff\xfe", "session_id": "x"}', id="not-utf-8"),
    pytest.param(b"\xff\xfe\x00\x01garbage", id="binary"),
    pytest.param(b"[" * 100_000, id="deep-nesting"),
    pytest.param(b'{"pid": 1}' + b"\x00" * 10, id="trailing-nul"),
]


@pytest.fixture
def directory(registry_dir: Path) -> Path:
    registry_dir.mkdir(parents=True, mode=0o700)
    return registry_dir


@pytest.fixture
def live(registry: Registry, directory: Path) -> Iterator[Record]:
    """A live record of this process, published in the registry."""
    cleanup = registry.write(Record(os.getpid(), "http://127.0.0.1:8765", "the-live-one"))
    yield cleanup.record
    cleanup()


def entry_for(registry: Registry, path: Path) -> object:
    matches = [entry for entry in registry.entries() if entry.path == str(path)]
    assert len(matches) <= 1
    return matches[0] if matches else None


@pytest.mark.parametrize("content", BROKEN_CONTENTS)
def test_broken_record_skipped_and_kept(
    registry: Registry, directory: Path, live: Record, content: bytes
) -> None:
    planted = directory / HOSTILE_NAME
    planted.write_bytes(content)

    records = registry.list()
    entries = [entry for entry in registry.entries() if entry.path == str(planted)]

    assert records == [live]
    assert [entry.kind for entry in entries] == ["invalid"]
    assert entries[0].problem
    assert planted.read_bytes() == content


@pytest.mark.parametrize("content", BROKEN_CONTENTS[:12])
def test_broken_record_never_breaks_find(
    registry: Registry, directory: Path, live: Record, content: bytes
) -> None:
    (directory / HOSTILE_NAME).write_bytes(content)

    assert registry.find("") == live
    assert registry.latest() == live
    assert registry.find("the-live") == live
    with pytest.raises(NoRunError):
        registry.find("123")
    assert registry.prune() == []
    assert (directory / HOSTILE_NAME).read_bytes() == content


@pytest.mark.timeout(10)
def test_fifo_skipped_without_blocking(registry: Registry, directory: Path, live: Record) -> None:
    fifo = directory / HOSTILE_NAME
    os.mkfifo(fifo, 0o600)

    assert registry.list() == [live]
    with pytest.raises(NoRunError):
        registry.find("123")

    assert stat.S_ISFIFO(fifo.lstat().st_mode)
    assert registry.prune() == []
    assert stat.S_ISFIFO(fifo.lstat().st_mode)


@pytest.mark.timeout(10)
def test_unix_socket_skipped_without_blocking(
    registry: Registry, directory: Path, live: Record
) -> None:
    path = directory / HOSTILE_NAME
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(path))
        server.listen(1)

        assert registry.list() == [live]
        with pytest.raises(NoRunError):
            registry.find("123")
        assert registry.prune() == []

    assert stat.S_ISSOCK(path.lstat().st_mode)


def test_directory_named_like_record_skipped(
    registry: Registry, directory: Path, live: Record
) -> None:
    folder = directory / HOSTILE_NAME
    folder.mkdir()
    (folder / "inside.json").write_bytes(json.dumps(valid_fields()).encode())

    assert registry.list() == [live]
    with pytest.raises(NoRunError):
        registry.find("123")
    assert registry.prune() == []

    assert folder.is_dir()
    assert (folder / "inside.json").exists()


def test_dangling_symlink_skipped_and_kept(
    registry: Registry, directory: Path, live: Record, tmp_path: Path
) -> None:
    link = directory / HOSTILE_NAME
    link.symlink_to(tmp_path / "nowhere.json")

    assert registry.list() == [live]
    assert registry.prune() == []

    assert link.is_symlink()
    assert "symbolic link" in str(getattr(entry_for(registry, link), "problem", ""))


def test_symlink_to_valid_record_not_followed(
    registry: Registry, directory: Path, live: Record, tmp_path: Path
) -> None:
    target = tmp_path / "elsewhere.json"
    content = json.dumps(valid_fields(session_id="through-a-link")).encode()
    target.write_bytes(content)
    link = directory / HOSTILE_NAME
    link.symlink_to(target)

    assert registry.list() == [live]
    with pytest.raises(NoRunError):
        registry.find("through-a-link")
    assert registry.prune() == []

    assert link.is_symlink()
    assert target.read_bytes() == content


def test_symlink_to_record_in_registry_listed_once(
    registry: Registry, directory: Path, live: Record
) -> None:
    link = directory / HOSTILE_NAME
    link.symlink_to(directory / f"{os.getpid()}.json")

    assert registry.list() == [live]
    assert link.is_symlink()


def test_huge_sparse_file_skipped_and_kept(
    registry: Registry, directory: Path, live: Record
) -> None:
    huge = directory / HOSTILE_NAME
    with huge.open("wb") as handle:
        handle.write(json.dumps(valid_fields(session_id="huge")).encode())
        handle.truncate(100 * 1024 * 1024)

    assert registry.list() == [live]
    with pytest.raises(NoRunError):
        registry.find("huge")
    assert registry.prune() == []

    assert huge.stat().st_size == 100 * 1024 * 1024
    assert "byte limit" in str(getattr(entry_for(registry, huge), "problem", ""))


def test_record_at_size_limit_accepted(registry: Registry, directory: Path, live: Record) -> None:
    body = json.dumps(valid_fields(session_id="padded")).encode()
    padded = directory / HOSTILE_NAME
    padded.write_bytes(body + b" " * (MAX_RECORD_SIZE - len(body)))

    sessions = sorted(record.session_id for record in registry.list())

    assert sessions == ["padded", "the-live-one"]


def test_record_over_size_limit_skipped(registry: Registry, directory: Path, live: Record) -> None:
    body = json.dumps(valid_fields(session_id="padded")).encode()
    padded = directory / HOSTILE_NAME
    padded.write_bytes(body + b" " * (MAX_RECORD_SIZE + 1 - len(body)))

    assert registry.list() == [live]
    assert padded.stat().st_size == MAX_RECORD_SIZE + 1


@needs_root
def test_record_of_other_user_skipped_and_kept(
    registry: Registry, directory: Path, live: Record
) -> None:
    planted = directory / HOSTILE_NAME
    content = json.dumps(valid_fields(session_id="planted")).encode()
    planted.write_bytes(content)
    nobody = pwd.getpwnam("nobody").pw_uid
    os.chown(planted, nobody, nobody)

    assert registry.list() == [live]
    with pytest.raises(NoRunError):
        registry.find("planted")
    assert registry.prune() == []

    assert planted.read_bytes() == content
    assert planted.stat().st_uid == nobody
    assert f"owned by uid {nobody}" in str(getattr(entry_for(registry, planted), "problem", ""))


@needs_root
def test_device_named_like_record_skipped(
    registry: Registry, directory: Path, live: Record
) -> None:
    device = directory / HOSTILE_NAME
    null = os.stat("/dev/null")
    os.mknod(device, stat.S_IFCHR | 0o600, null.st_rdev)

    assert registry.list() == [live]
    assert registry.prune() == []

    assert stat.S_ISCHR(device.lstat().st_mode)


def test_odd_file_names_never_break_list(registry: Registry, directory: Path, live: Record) -> None:
    names = ["\udcff.json", "a\nb.json", "-rf.json", ".json", " .json", "x" * 250 + ".json"]
    for name in names:
        (directory / name).write_bytes(b"{}")

    assert registry.list() == [live]
    assert registry.prune() == []

    assert sorted(os.listdir(directory)) == sorted([*names, f"{os.getpid()}.json"])


def test_stale_record_removed_broken_kept(
    registry: Registry, directory: Path, live: Record, spawn: Spawn
) -> None:
    # The contrast to every case above: a well-formed record of a process that
    # is gone is pruned, while a broken file beside it stays.
    child = spawn("true")
    child.wait(timeout=10)
    stale = directory / f"{child.pid}.json"
    stale.write_bytes(json.dumps(valid_fields(pid=child.pid)).encode())
    broken = directory / HOSTILE_NAME
    broken.write_bytes(b"{")

    assert registry.list() == [live]

    assert not stale.exists()
    assert broken.read_bytes() == b"{"


# Hypothesis: arbitrary bytes and arbitrary JSON values as record files.

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)

# Timestamps around now, so that a record of a live pid may well be live.
TIMESTAMPS = st.datetimes(
    min_value=datetime(2000, 1, 1),
    max_value=datetime(2100, 1, 1),
    timezones=st.sampled_from([timezone.utc, timezone(timedelta(hours=5, minutes=30))]),
).map(lambda value: value.isoformat())

# Record-like objects: every required key, each holding a plausible or an
# arbitrary value. Only pids that stay alive through the test (this process,
# init) or that are never valid are used, so the expected result cannot change
# while the test runs.
RECORD_LIKE = st.fixed_dictionaries(
    {
        "pid": st.sampled_from([os.getpid(), 1, 0, -1, 2**31, 2**63 + 1]) | JSON_VALUES,
        "addr": st.sampled_from(["http://127.0.0.1:8765", "https://[::1]:1/"]) | JSON_VALUES,
        "session_id": st.text(max_size=20) | JSON_VALUES,
        "started_at": TIMESTAMPS | st.text(max_size=30) | JSON_VALUES,
    },
    optional={
        "agent": st.text(max_size=10) | JSON_VALUES,
        "host": st.just(os.uname().nodename) | JSON_VALUES,
        "lock": st.just("flock") | JSON_VALUES,
        "token": st.text(max_size=10) | JSON_VALUES,
    },
)

FILE_CONTENTS = st.lists(
    st.binary(max_size=300)
    | JSON_VALUES.map(lambda value: json.dumps(value).encode())
    | RECORD_LIKE.map(lambda value: json.dumps(value).encode()),
    max_size=6,
)


def expected_state(path: Path) -> tuple[bool, Record | None]:
    """Whether *path* contains a valid record, and that record if it is live right now."""
    try:
        record = Record.from_json(path.read_bytes())
    except ValueError:
        return False, None
    fd = os.open(path, os.O_RDONLY)
    try:
        return True, record if judge(record, fd).state == LIVE else None
    finally:
        os.close(fd)


def check_list_returns_exactly_valid(contents: list[bytes]) -> None:
    with tempfile.TemporaryDirectory() as parent:
        directory = Path(parent) / "runs"
        directory.mkdir(mode=0o700)
        registry = Registry(directory)
        planted = {}
        for index, content in enumerate(contents):
            path = directory / f"{index}.json"
            path.write_bytes(content)
            planted[path] = content
        expected = {path: expected_state(path) for path in planted}

        records = registry.list()

        wanted = sorted((r for _, r in expected.values() if r is not None), key=repr)
        assert sorted(records, key=repr) == wanted
        for path, (valid, _) in expected.items():
            if not valid:
                assert path.read_bytes() == planted[path], f"{path.name} was changed or removed"


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(contents=st.lists(st.binary(max_size=2000), max_size=6))
def test_arbitrary_bytes_list_exactly_valid_records(contents: list[bytes]) -> None:
    check_list_returns_exactly_valid(contents)


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(contents=FILE_CONTENTS)
def test_arbitrary_json_list_exactly_valid_records(contents: list[bytes]) -> None:
    check_list_returns_exactly_valid(contents)
