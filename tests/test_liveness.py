"""Liveness on real processes: locks, start times, zombies, other users and hosts, cleanup races."""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest

from conftest import python_child
from runregistry import NoRunError, Record, Registry
from runregistry._liveness import (
    BEFORE_BOOT,
    EXITED,
    LIVE,
    LOCK_RELEASED,
    OTHER_HOST,
    PID_REUSED,
    RUNNING,
    STALE,
    START_TIME_TOLERANCE,
    UNKNOWN,
    Liveness,
    _boot_time_psutil,
    _process_info_psutil,
    boot_time,
    judge,
    judge_identity,
    local_hostname,
    lock_is_free,
    pid_exists,
    process_info,
)
from runregistry.backends import file

Spawn = Callable[..., "subprocess.Popen[bytes]"]
Sleeper = Callable[[], "subprocess.Popen[bytes]"]

_ADDR = "http://127.0.0.1:8765"
_WAIT = 10.0


def _at(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=timezone.utc)


def _start_time(pid: int) -> float:
    start = process_info(pid).start_time
    assert start is not None
    return start


def _read_line(child: subprocess.Popen[bytes], timeout: float = _WAIT) -> str:
    """Read one line from *child*'s stdout, failing after *timeout* seconds."""
    assert child.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(child.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            pytest.fail(f"child {child.pid} wrote no line within {timeout} s")
    return child.stdout.readline().decode().strip()


def _wait_for_zombie(pid: int) -> None:
    """Wait until *pid* has exited but is not reaped yet."""
    deadline = time.monotonic() + _WAIT
    while not process_info(pid).zombie:
        if time.monotonic() > deadline:
            pytest.fail(f"process {pid} did not become a zombie within {_WAIT} s")
        time.sleep(0.01)


def _dead_pid(spawn: Spawn) -> int:
    child = spawn("true")
    child.wait(timeout=_WAIT)
    return child.pid


def _entry_liveness(registry: Registry, name: str) -> Liveness:
    [entry] = [e for e in registry.entries(prune=False) if Path(e.path).name == name]
    assert entry.liveness is not None
    return entry.liveness


def _write_raw(directory: Path, record: Record) -> Path:
    """Store *record* as a Go writer would: exactly its bytes, no lock, no host."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = directory / f"{record.pid}.json"
    path.write_bytes(record.to_json())
    path.chmod(0o600)
    return path


# A Python child that registers in the directory argv[1], prints its pid (and
# a grandchild's in the *-sleep modes), and acts out argv[2] once its stdin is
# closed. Killed instead, it acts out nothing.
_REGISTERING_CHILD = """
import os, signal, subprocess, sys, time
from runregistry import Registry

mode = sys.argv[2]
with Registry(sys.argv[1]).register(addr="http://127.0.0.1:8765", session_id="child-" + mode):
    if mode == "exec-sleep":
        grandchild = subprocess.Popen(["sleep", "600"], close_fds=False)
        print(os.getpid(), grandchild.pid, flush=True)
    elif mode == "fork-sleep":
        grandchild = os.fork()
        if grandchild == 0:
            time.sleep(600)
            os._exit(0)
        print(os.getpid(), grandchild, flush=True)
    else:
        print(os.getpid(), flush=True)
    sys.stdin.read()
    if mode == "raise":
        raise RuntimeError("boom")
    if mode == "exit":
        os._exit(0)
    if mode == "interrupt":
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(10)
"""


@pytest.fixture
def start_registering_child(
    spawn: Spawn, registry_dir: Path
) -> Iterator[Callable[[str], tuple[subprocess.Popen[bytes], list[int]]]]:
    """Start the registering child in *mode*; return it and the pids it printed."""
    children: list[subprocess.Popen[bytes]] = []

    def start(mode: str) -> tuple[subprocess.Popen[bytes], list[int]]:
        child = spawn(
            *python_child(_REGISTERING_CHILD),
            str(registry_dir),
            mode,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        children.append(child)
        pids = [int(word) for word in _read_line(child).split()]
        assert pids[0] == child.pid
        return child, pids

    yield start

    for child in children:
        for pipe in (child.stdin, child.stdout):
            if pipe is not None:
                pipe.close()


@pytest.fixture
def kill_later() -> Iterator[list[int]]:
    """Pids of grandchildren this test started indirectly; killed at the end."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


# Process identity: started_at against the process start time


def test_started_at_hour_before_start_is_stale(
    registry: Registry, registry_dir: Path, sleeper: Sleeper
) -> None:
    child = sleeper()
    written = _start_time(child.pid) - 3600
    registry.write(Record(child.pid, _ADDR, "hour-early", "", _at(written)))
    # On a machine up for less than an hour, that instant is also before boot.
    booted_after = written < boot_time() - START_TIME_TOLERANCE

    liveness = _entry_liveness(registry, f"{child.pid}.json")
    listed = registry.list()

    assert liveness.state == STALE
    assert liveness.reason == (BEFORE_BOOT if booted_after else PID_REUSED)
    assert listed == []
    assert not (registry_dir / f"{child.pid}.json").exists()


def test_pid_reuse_after_boot_is_stale(
    registry: Registry, registry_dir: Path, sleeper: Sleeper
) -> None:
    child = sleeper()
    start, booted = _start_time(child.pid), boot_time()
    if start - booted < 10:
        pytest.skip("the machine booted less than 10 s before the child started")
    written = max(start - 3600, booted + (start - booted) / 2)
    registry.write(Record(child.pid, _ADDR, "reused", "", _at(written)))

    liveness = _entry_liveness(registry, f"{child.pid}.json")
    listed = registry.list()

    assert liveness.state == STALE
    assert liveness.reason == PID_REUSED
    assert "reused the pid" in liveness.detail
    assert listed == []
    assert not (registry_dir / f"{child.pid}.json").exists()


def test_started_at_just_after_start_is_live(registry: Registry, sleeper: Sleeper) -> None:
    child = sleeper()
    written = _start_time(child.pid) + 0.05
    cleanup = registry.write(Record(child.pid, _ADDR, "fresh", "", _at(written)))

    liveness = _entry_liveness(registry, f"{child.pid}.json")

    assert liveness == Liveness(LIVE, RUNNING, f"process {child.pid} is running")
    assert registry.list() == [cleanup.record]


def test_started_at_within_tolerance_is_live(sleeper: Sleeper) -> None:
    child = sleeper()
    written = _start_time(child.pid) - START_TIME_TOLERANCE / 2

    assert judge_identity(Record(child.pid, _ADDR, "s", "", _at(written))).live


def test_started_at_beyond_tolerance_is_stale(sleeper: Sleeper) -> None:
    child = sleeper()
    written = _start_time(child.pid) - START_TIME_TOLERANCE - 0.5

    liveness = judge_identity(Record(child.pid, _ADDR, "s", "", _at(written)))

    assert liveness.state == STALE
    assert liveness.reason == PID_REUSED


def test_tolerance_is_at_most_one_second() -> None:
    assert 0 < START_TIME_TOLERANCE <= 1.0


def test_zero_time_is_judged_by_pid_alone(sleeper: Sleeper, spawn: Spawn) -> None:
    child = sleeper()
    zero = datetime(1, 1, 1, tzinfo=timezone.utc)

    live = judge(Record(child.pid, _ADDR, "zero", "", zero))
    dead = judge(Record(_dead_pid(spawn), _ADDR, "zero", "", zero))

    assert live.state == LIVE
    assert dead.state == STALE
    assert dead.reason == EXITED


def test_before_boot_is_stale(registry: Registry, registry_dir: Path) -> None:
    # This process is alive, so only the boot time can make the record stale.
    record = Record(os.getpid(), _ADDR, "old", "", _at(boot_time() - 60))
    path = _write_raw(registry_dir, record)

    liveness = _entry_liveness(registry, path.name)
    listed = registry.list()

    assert liveness.state == STALE
    assert liveness.reason == BEFORE_BOOT
    assert listed == []
    assert not path.exists()


def test_own_go_style_record_is_live(registry: Registry, registry_dir: Path) -> None:
    record = Record(os.getpid(), _ADDR, "go-style")
    _write_raw(registry_dir, record)

    assert registry.list() == [record]


# The writer's lock


def test_sigkilled_writer_is_stale_even_with_live_pid(
    registry: Registry,
    registry_dir: Path,
    start_registering_child: Callable[[str], tuple[subprocess.Popen[bytes], list[int]]],
) -> None:
    child, _ = start_registering_child("wait")
    path = registry_dir / f"{child.pid}.json"
    inode = path.stat().st_ino
    # Rewrite the record in place to name this live process: the inode, and
    # with it the child's lock, stays the same.
    data = json.loads(path.read_bytes())
    data["pid"] = os.getpid()
    with path.open("r+b") as handle:
        handle.truncate(0)
        handle.write(json.dumps(data, indent=2).encode())
    rewritten_inode = path.stat().st_ino

    before = _entry_liveness(registry, path.name)
    child.kill()
    child.wait(timeout=_WAIT)
    after = _entry_liveness(registry, path.name)
    [entry] = registry.entries(prune=False)
    listed = registry.list()

    assert rewritten_inode == inode
    assert before.state == LIVE
    assert before.detail == f"process {os.getpid()} holds the record's lock"
    assert after.state == STALE
    assert after.reason == LOCK_RELEASED
    assert entry.record is not None
    assert entry.record.pid == os.getpid()
    # The pid and start time alone would call this record live.
    assert judge_identity(entry.record).live
    assert listed == []
    assert not path.exists()


def test_lock_is_taken_before_publication(registry: Registry, registry_dir: Path) -> None:
    cleanup = registry.write(Record(os.getpid(), _ADDR, "locked"))
    fd = os.open(registry_dir / f"{os.getpid()}.json", os.O_RDONLY)
    try:
        free = lock_is_free(fd)
    finally:
        os.close(fd)
    cleanup()

    assert free is False


def _descriptors_on(path: Path) -> int:
    """Count this process's open descriptors on the file *path* names now."""
    inode = path.stat().st_ino
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if os.stat(f"/proc/self/fd/{fd}").st_ino == inode:
                count += 1
    return count


def test_writer_holds_one_descriptor_per_record(registry: Registry, registry_dir: Path) -> None:
    path = registry_dir / f"{os.getpid()}.json"
    cleanups = [registry.write(Record(os.getpid(), _ADDR, f"write-{i}")) for i in range(3)]

    held = _descriptors_on(path)
    for cleanup in cleanups:
        cleanup()
    links = [_link(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")]
    leftover = [link for link in links if link.startswith(str(registry_dir))]

    assert held == 1
    assert leftover == []


def _link(path: str) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return ""


def test_lock_is_free_on_unlocked_file(tmp_path: Path) -> None:
    path = tmp_path / "plain.json"
    path.write_text("{}")
    fd = os.open(path, os.O_RDONLY)
    try:
        free = lock_is_free(fd)
    finally:
        os.close(fd)

    assert free is True


def test_lock_does_not_survive_exec(
    registry: Registry,
    registry_dir: Path,
    start_registering_child: Callable[[str], tuple[subprocess.Popen[bytes], list[int]]],
    kill_later: list[int],
) -> None:
    # The writer starts `sleep` without closing inherited descriptors, so
    # only close-on-exec keeps the lock from outliving the writer.
    child, (_, grandchild) = start_registering_child("exec-sleep")
    kill_later.append(grandchild)

    child.kill()
    child.wait(timeout=_WAIT)
    liveness = _entry_liveness(registry, f"{child.pid}.json")

    assert pid_exists(grandchild)
    assert liveness.state == STALE
    assert liveness.reason == LOCK_RELEASED


def test_lock_held_by_fork_is_stale(
    registry: Registry,
    registry_dir: Path,
    start_registering_child: Callable[[str], tuple[subprocess.Popen[bytes], list[int]]],
    kill_later: list[int],
) -> None:
    # A fork shares the writer's lock, so the lock stays held after the writer
    # dies; the pid check catches it.
    child, (_, grandchild) = start_registering_child("fork-sleep")
    kill_later.append(grandchild)

    child.kill()
    child.wait(timeout=_WAIT)
    liveness = _entry_liveness(registry, f"{child.pid}.json")
    listed = registry.list()

    assert liveness.state == STALE
    assert liveness.reason == EXITED
    assert listed == []
    assert not (registry_dir / f"{child.pid}.json").exists()


def test_locked_record_without_descriptor_uses_identity() -> None:
    record = Record(os.getpid(), _ADDR, "s", lock="flock")

    assert judge(record).live


# Zombies


def test_unreaped_child_is_stale(registry: Registry, registry_dir: Path, spawn: Spawn) -> None:
    child = spawn("sleep", "0.01")
    cleanup = registry.write(Record(child.pid, _ADDR, "zombie"))
    _wait_for_zombie(child.pid)

    liveness = _entry_liveness(registry, f"{child.pid}.json")
    listed = registry.list()

    assert pid_exists(child.pid)
    assert liveness.state == STALE
    assert liveness.reason == EXITED
    assert "zombie" in liveness.detail
    assert listed == []
    assert not (registry_dir / f"{child.pid}.json").exists()
    cleanup()


def test_unreaped_registered_child_is_stale(
    registry: Registry,
    start_registering_child: Callable[[str], tuple[subprocess.Popen[bytes], list[int]]],
) -> None:
    child, _ = start_registering_child("exit")
    assert child.stdin is not None
    child.stdin.close()
    _wait_for_zombie(child.pid)

    liveness = _entry_liveness(registry, f"{child.pid}.json")

    assert liveness.state == STALE
    assert liveness.reason == LOCK_RELEASED


# Other users' processes


_PROBE = """
import json, os, sys
from runregistry import Record
from runregistry._liveness import _process_info_psutil, judge, pid_exists

record = Record.from_json(sys.argv[1].encode())
try:
    os.kill(record.pid, 0)
    eperm = False
except PermissionError:
    eperm = True
verdict = judge(record)
print(json.dumps({
    "uid": os.geteuid(),
    "eperm": eperm,
    "visible": os.path.exists(f"/proc/{record.pid}"),
    "exists": pid_exists(record.pid),
    "psutil_exists": _process_info_psutil(record.pid).exists,
    "state": verdict.state,
    "reason": verdict.reason,
}))
"""


def _probe_as_nobody(record: Record, *, hide_processes: bool) -> dict[str, object]:
    """Judge *record* in a process of user nobody; skip when the machine does not allow it."""
    if os.geteuid() != 0:
        pytest.skip("running a probe as another user needs root")
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv is not installed")
    argv = [
        setpriv,
        "--reuid=nobody",
        "--regid=nogroup",
        "--clear-groups",
        *python_child(_PROBE),
        record.to_json().decode(),
    ]
    if hide_processes:
        unshare = shutil.which("unshare")
        if unshare is None:
            pytest.skip("unshare is not installed")
        # A private mount namespace, so the hidden /proc never shows outside it.
        mount = 'mount -t proc -o hidepid=invisible proc /proc && exec "$@"'
        argv = [unshare, "--mount", "--propagation", "private", "sh", "-c", mount, "sh", *argv]
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    result = subprocess.run(argv, capture_output=True, timeout=30, env=env, check=False)
    if result.returncode != 0:
        pytest.skip(f"cannot run a probe as nobody here: {result.stderr.decode().strip()}")
    data: dict[str, object] = json.loads(result.stdout)
    return data


def test_other_users_process_is_live(sleeper: Sleeper) -> None:
    child = sleeper()

    seen = _probe_as_nobody(Record(child.pid, _ADDR, "root-owned"), hide_processes=False)

    assert seen["uid"] != 0
    assert seen["eperm"] is True
    assert seen["exists"] is True
    assert seen["psutil_exists"] is True
    assert seen["state"] == LIVE


def test_process_hidden_by_proc_is_live(sleeper: Sleeper) -> None:
    # With /proc mounted hidepid=invisible, another user's process has no
    # /proc entry at all; only EPERM from kill(pid, 0) shows it exists.
    child = sleeper()

    seen = _probe_as_nobody(Record(child.pid, _ADDR, "hidden"), hide_processes=True)

    assert seen["visible"] is False
    assert seen["eperm"] is True
    assert seen["exists"] is True
    assert seen["state"] == LIVE


# Other hosts


def test_other_host_is_unknown_and_kept(
    registry: Registry, registry_dir: Path, spawn: Spawn
) -> None:
    # The pid is dead here, which would make a local record stale.
    pid = _dead_pid(spawn)
    record = registry.write(Record(pid, _ADDR, "remote-run", host="far-away.example")).record
    path = registry_dir / f"{pid}.json"

    liveness = _entry_liveness(registry, path.name)
    listed = registry.list()
    everything = registry.list(include_unknown=True)
    pruned = registry.prune()

    assert liveness.state == UNKNOWN
    assert liveness.reason == OTHER_HOST
    assert "far-away.example" in liveness.detail
    assert listed == []
    assert everything == [record]
    assert pruned == []
    assert path.exists()
    with pytest.raises(NoRunError):
        registry.find("remote-run")
    with pytest.raises(NoRunError):
        registry.find(str(pid))
    with pytest.raises(NoRunError):
        registry.find()
    assert path.exists()


def test_record_without_host_is_local(spawn: Spawn) -> None:
    liveness = judge(Record(_dead_pid(spawn), _ADDR, "go"))

    assert liveness.state == STALE


def test_record_with_own_host_is_judged() -> None:
    assert judge(Record(os.getpid(), _ADDR, "mine", host=local_hostname())).live


# A registered Python child that dies or exits


@pytest.mark.parametrize(
    "ending",
    [
        pytest.param(signal.SIGKILL, id="sigkill"),
        pytest.param(signal.SIGTERM, id="sigterm"),
        pytest.param("exit", id="os-exit"),
    ],
)
def test_killed_child_disappears(
    registry: Registry,
    registry_dir: Path,
    start_registering_child: Callable[[str], tuple[subprocess.Popen[bytes], list[int]]],
    ending: signal.Signals | str,
) -> None:
    mode = "exit" if ending == "exit" else "wait"
    child, _ = start_registering_child(mode)
    path = registry_dir / f"{child.pid}.json"
    before = [r.session_id for r in registry.list()]

    if isinstance(ending, signal.Signals):
        child.send_signal(ending)
    else:
        assert child.stdin is not None
        child.stdin.close()
    child.wait(timeout=_WAIT)
    # Nothing ran the cleanup: the file stays until a reader prunes it.
    left_behind = path.exists()
    after = registry.list()

    assert before == [f"child-{mode}"]
    assert left_behind
    assert after == []
    assert not path.exists()


@pytest.mark.parametrize("mode", ["raise", "return", "interrupt"])
def test_exiting_child_removes_own_record(
    registry: Registry,
    registry_dir: Path,
    start_registering_child: Callable[[str], tuple[subprocess.Popen[bytes], list[int]]],
    mode: str,
) -> None:
    child, _ = start_registering_child(mode)
    path = registry_dir / f"{child.pid}.json"
    published = path.exists()
    assert child.stdin is not None

    child.stdin.close()
    status = child.wait(timeout=_WAIT)

    assert published
    assert (status == 0) == (mode == "return")
    assert not path.exists()


def test_register_leaves_signal_handlers_alone(registry: Registry) -> None:
    def handler(signum: int, frame: object) -> None:
        """Never called: installed only to be compared."""

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
        with registry.register(addr=_ADDR):
            inside = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
        after = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    finally:
        signal.signal(signal.SIGTERM, previous)

    assert inside == before
    assert after == before


# Cleanup removes only its own record


def test_cleanup_in_forked_child_keeps_record(registry: Registry, registry_dir: Path) -> None:
    cleanup = registry.write(Record(os.getpid(), _ADDR, "parent"))
    path = registry_dir / f"{os.getpid()}.json"

    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            cleanup()
            cleanup()
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)

    assert os.waitstatus_to_exitcode(status) == 0
    assert path.exists()
    assert [r.session_id for r in registry.list()] == ["parent"]
    cleanup()
    assert not path.exists()


def test_register_exit_in_forked_child_keeps_record(registry: Registry, registry_dir: Path) -> None:
    path = registry_dir / f"{os.getpid()}.json"
    with registry.register(addr=_ADDR, session_id="parent"):
        pid = os.fork()
        if pid == 0:
            # The child leaves the with block, as a worker that returns would.
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        still_there = path.exists()
        listed = [r.session_id for r in registry.list()]

    assert os.waitstatus_to_exitcode(status) == 0
    assert still_there
    assert listed == ["parent"]


def test_second_cleanup_is_harmless(registry: Registry, registry_dir: Path) -> None:
    cleanup = registry.write(Record(os.getpid(), _ADDR, "once"))

    cleanup()
    cleanup()

    assert not (registry_dir / f"{os.getpid()}.json").exists()


_FOREIGN_WRITER = """
import os, sys
from runregistry import Record, Registry

Registry(sys.argv[1]).write(Record(os.getppid(), "http://127.0.0.1:9999", "theirs"))
"""


def test_cleanup_after_other_writer_keeps_file(
    registry: Registry, registry_dir: Path, spawn: Spawn
) -> None:
    cleanup = registry.write(Record(os.getpid(), _ADDR, "mine"))
    path = registry_dir / f"{os.getpid()}.json"
    writer = spawn(*python_child(_FOREIGN_WRITER), str(registry_dir))
    assert writer.wait(timeout=_WAIT) == 0

    cleanup()

    assert path.exists()
    assert Record.from_json(path.read_bytes()).session_id == "theirs"
    assert [r.session_id for r in registry.list()] == ["theirs"]


def test_older_cleanup_keeps_newer_record(registry: Registry, registry_dir: Path) -> None:
    older = registry.write(Record(os.getpid(), _ADDR, "older"))
    newer = registry.write(Record(os.getpid(), _ADDR, "newer"))
    path = registry_dir / f"{os.getpid()}.json"

    older()
    liveness = _entry_liveness(registry, path.name)
    listed = [r.session_id for r in registry.list()]
    newer()

    assert liveness.state == LIVE
    assert liveness.detail == f"process {os.getpid()} holds the record's lock"
    assert listed == ["newer"]
    assert not path.exists()


# Pruning never removes a record it did not judge


def test_pruning_reader_keeps_fresh_record(
    registry: Registry, registry_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A stale record under this process's name, as a crashed earlier process
    # with the same pid would leave it; the hook publishes a fresh one between
    # the reader's judgement and its removal.
    stale = _write_raw(registry_dir, Record(os.getpid(), _ADDR, "stale", "", _at(0)))
    published: list[Record] = []

    def fresh_writer(name: str) -> None:
        monkeypatch.setattr(file, "_before_prune", None)
        published.append(registry.write(Record(os.getpid(), _ADDR, "fresh")).record)

    monkeypatch.setattr(file, "_before_prune", fresh_writer)
    first = registry.list()
    second = registry.list()

    assert len(published) == 1
    assert first == []
    assert stale.exists()
    assert Record.from_json(stale.read_bytes()).session_id == "fresh"
    assert second == published


def test_pruning_reader_keeps_changed_file_with_same_inode(
    registry: Registry, registry_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # File systems such as ext4 give a new file the number of an inode just
    # freed, so the same inode number alone does not prove the same file.
    # Rewriting in place gives the name that same inode with fresh content.
    stale = _write_raw(registry_dir, Record(os.getpid(), _ADDR, "stale", "", _at(0)))
    judged_inode = stale.stat().st_ino
    fresh = Record(os.getpid(), _ADDR, "fresh")

    def rewrite_in_place(name: str) -> None:
        monkeypatch.setattr(file, "_before_prune", None)
        with stale.open("r+b") as handle:
            handle.truncate(0)
            handle.write(fresh.to_json())

    monkeypatch.setattr(file, "_before_prune", rewrite_in_place)
    first = registry.list()
    second = registry.list()

    assert first == []
    assert stale.exists()
    assert stale.stat().st_ino == judged_inode
    assert second == [fresh]


# Go's records


def test_every_go_fixture_is_judged(go_fixtures: Path, tmp_path: Path, spawn: Spawn) -> None:
    dead = _dead_pid(spawn)
    for path in sorted(go_fixtures.glob("*.json")):
        if path.name == "expected.json":
            continue
        record = Record.from_json(path.read_bytes())
        for pid in (record.pid, os.getpid(), 1, dead):
            candidate = record.replace(pid=pid)
            copy = tmp_path / f"{path.stem}-{pid}.json"
            copy.write_bytes(candidate.to_json())
            fd = os.open(copy, os.O_RDONLY)
            try:
                verdicts = [judge(candidate), judge(candidate, fd), judge_identity(candidate)]
            finally:
                os.close(fd)
            for verdict in verdicts:
                assert verdict.state in (LIVE, STALE), (path.name, pid, verdict)


def test_go_fixture_for_dead_pid_is_stale(go_fixtures: Path, spawn: Spawn) -> None:
    record = Record.from_json((go_fixtures / "basic.json").read_bytes())

    liveness = judge(record.replace(pid=_dead_pid(spawn)))

    assert liveness.state == STALE


# Probes


def test_pid_exists_for_live_and_dead(spawn: Spawn) -> None:
    assert pid_exists(os.getpid())
    assert not pid_exists(_dead_pid(spawn))


def test_process_info_of_dead_pid(spawn: Spawn) -> None:
    info = process_info(_dead_pid(spawn))

    assert not info.exists
    assert info.start_time is None


def test_process_info_of_odd_command_name(tmp_path: Path, spawn: Spawn) -> None:
    # The command name in /proc/<pid>/stat may hold spaces and parentheses.
    program = tmp_path / "odd ) name ("
    shutil.copy(shutil.which("sleep") or "/bin/sleep", program)
    child = spawn(str(program), "600")
    deadline = time.monotonic() + _WAIT
    while b")" not in Path(f"/proc/{child.pid}/comm").read_bytes():
        assert time.monotonic() < deadline, "the child never ran its program"
        time.sleep(0.01)

    info = process_info(child.pid)

    assert info.exists
    assert not info.zombie
    assert info.start_time is not None
    assert abs(info.start_time - time.time()) < 60


def test_psutil_probe_matches_proc(sleeper: Sleeper) -> None:
    child = sleeper()

    from_psutil = _process_info_psutil(child.pid)
    from_proc = process_info(child.pid)

    assert from_psutil.exists
    assert not from_psutil.zombie
    assert from_psutil.start_time is not None
    assert from_proc.start_time is not None
    # psutil counts from the boot time in whole seconds, so it may be up to 1 s early.
    assert abs(from_psutil.start_time - from_proc.start_time) < 1.1


def test_psutil_probe_sees_zombie(spawn: Spawn) -> None:
    child = spawn("true")
    _wait_for_zombie(child.pid)

    info = _process_info_psutil(child.pid)

    assert info.exists
    assert info.zombie


def test_psutil_probe_of_dead_pid(spawn: Spawn) -> None:
    info = _process_info_psutil(_dead_pid(spawn))

    assert not info.exists
    assert info.start_time is None


def test_psutil_boot_time_matches(spawn: Spawn) -> None:
    assert abs(_boot_time_psutil() - boot_time()) < 1.1


@pytest.mark.parametrize("platform", ["win32", "darwin"])
def test_liveness_type_checks_on_other_platforms(platform: str, tmp_path: Path) -> None:
    pytest.importorskip("mypy")
    module = Path(__file__).resolve().parents[1] / "src" / "runregistry" / "_liveness.py"

    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--platform",
            platform,
            "--cache-dir",
            str(tmp_path / "mypy-cache"),
            str(module),
        ],
        capture_output=True,
        timeout=120,
        check=False,
        cwd=module.parents[2],
    )

    assert result.returncode == 0, result.stdout.decode()
