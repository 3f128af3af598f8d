"""Real storage faults and crashed writers: errors name the file and the cause, nothing is lost.

Every fault is produced for real where the machine allows it. A child process
sets a file size limit with ``setrlimit``. A full or read-only tmpfs is mounted
for the test, which is skipped where mounting is not allowed. A regular file or
a removed directory takes the registry's place, and writers are killed with
SIGKILL in the middle of a write. Only NFS lock behaviour is simulated.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import re
import shutil
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import runregistry.backends.file as backend
from conftest import Spawn, python_child
from runregistry import Record, Registry, RegistryError, UnsafeRegistryError
from runregistry import _liveness as liveness
from runregistry.backends.file import TEMP_GRACE_SECONDS

ADDR = "http://127.0.0.1:8765"


def own_record(session_id: str = "fault-session") -> Record:
    return Record(os.getpid(), ADDR, session_id)


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file in *directory* and its bytes."""
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir())}


def temporaries(directory: Path) -> list[str]:
    return sorted(name for name in os.listdir(directory) if name.endswith(".tmp"))


def dead_pid(spawn: Spawn) -> int:
    """Return the pid of a process that has exited and been reaped."""
    child = spawn("true")
    child.wait(timeout=10)
    return child.pid


def run_python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*python_child(code), *args], capture_output=True, text=True, timeout=60, check=False
    )


# --- the filesystem refuses the write --------------------------------------------------------

FILE_SIZE_LIMITED_WRITER = """
import json, os, resource, signal, sys
from runregistry import Record, Registry, RegistryError

registry = Registry(sys.argv[1])
first = registry.write(Record(os.getpid(), "http://127.0.0.1:8765", "before-the-limit"))

# Past the limit, write() fails with EFBIG instead of the process being killed.
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (64, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

results = {"pid": os.getpid()}
for key, pid in (("own", os.getpid()), ("neighbour", int(sys.argv[2]))):
    try:
        registry.write(Record(pid, "http://127.0.0.1:8765", "beyond-the-limit"))
    except RegistryError as exc:
        results[key] = {"message": str(exc), "errno": getattr(exc.__cause__, "errno", None)}
    else:
        results[key] = None
results["listed"] = sorted(record.session_id for record in registry.list())
print(json.dumps(results))
first()
"""


def test_file_size_limit_raises_and_keeps_records(
    registry: Registry, registry_dir: Path, sleeper: Spawn
) -> None:
    neighbour = sleeper()
    kept = registry.write(Record(neighbour.pid, ADDR, "neighbour"))
    before = snapshot(registry_dir)

    child = run_python(FILE_SIZE_LIMITED_WRITER, str(registry_dir), str(neighbour.pid))

    assert child.returncode == 0, child.stderr
    results = json.loads(child.stdout)
    for key, pid in (("own", results["pid"]), ("neighbour", neighbour.pid)):
        failure = results[key]
        assert failure is not None, f"write for pid {pid} did not fail"
        assert failure["errno"] == errno.EFBIG
        assert str(registry_dir / f"{pid}.json") in failure["message"]
        assert "File too large" in failure["message"]
    assert results["listed"] == ["before-the-limit", "neighbour"]
    assert snapshot(registry_dir) == before
    kept()


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs mounted for this test alone, always unmounted afterwards."""
    mount_point = tmp_path / "mnt"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip() or mounted.returncode}")
    try:
        yield mount_point
    finally:
        unmounted = subprocess.run(["umount", str(mount_point)], capture_output=True, check=False)
        if unmounted.returncode != 0:
            # Still busy, say a descriptor a failed test left open: detach it anyway.
            subprocess.run(["umount", "-l", str(mount_point)], check=False)


def remount(mount_point: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(mount_point)], check=True)


def fill(mount_point: Path) -> None:
    """Fill the filesystem at *mount_point* until a write fails with ENOSPC."""
    with (mount_point / "filler").open("wb", buffering=0) as handle:
        block = b"\0" * 4096
        try:
            while True:
                handle.write(block)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC


def test_full_filesystem_raises_and_keeps_records(tmpfs: Path, sleeper: Spawn) -> None:
    registry = Registry(tmpfs / "runs")
    neighbour = sleeper()
    own = registry.write(own_record("before-the-disk-filled"))
    kept = registry.write(Record(neighbour.pid, ADDR, "neighbour"))
    before = snapshot(tmpfs / "runs")
    fill(tmpfs)

    for record in (own_record("after"), Record(sleeper().pid, ADDR, "after")):
        with pytest.raises(RegistryError) as caught:
            registry.write(record)

        assert str(tmpfs / "runs" / f"{record.pid}.json") in str(caught.value)
        assert "No space left on device" in str(caught.value)
        assert isinstance(caught.value.__cause__, OSError)
        assert caught.value.__cause__.errno == errno.ENOSPC

    assert snapshot(tmpfs / "runs") == before
    listed = sorted(record.session_id for record in registry.list())
    assert listed == ["before-the-disk-filled", "neighbour"]
    own()
    kept()


def test_read_only_filesystem_raises_and_keeps_records(tmpfs: Path, sleeper: Spawn) -> None:
    registry = Registry(tmpfs / "runs")
    neighbour = sleeper()
    own = registry.write(own_record("before-read-only"))
    kept = registry.write(Record(neighbour.pid, ADDR, "neighbour"))
    before = snapshot(tmpfs / "runs")
    remount(tmpfs, "ro")

    for record in (own_record("after"), Record(sleeper().pid, ADDR, "after")):
        with pytest.raises(RegistryError) as caught:
            registry.write(record)

        assert str(tmpfs / "runs" / f"{record.pid}.json") in str(caught.value)
        assert "Read-only file system" in str(caught.value)
        assert isinstance(caught.value.__cause__, OSError)
        assert caught.value.__cause__.errno == errno.EROFS

    listed = sorted(record.session_id for record in registry.list())
    assert listed == ["before-read-only", "neighbour"]
    assert registry.prune() == []
    own()
    kept()
    assert snapshot(tmpfs / "runs") == before


def test_read_only_filesystem_readable_directory_listed(
    tmpfs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmpfs / "runs"
    registry = Registry(directory)
    own = registry.write(own_record())
    directory.chmod(0o755)
    remount(tmpfs, "ro")
    caplog.set_level(logging.DEBUG, logger="runregistry.backends.file")

    assert [record.pid for record in registry.list()] == [os.getpid()]

    assert stat.S_IMODE(directory.stat().st_mode) == 0o755
    assert any("Read-only file system" in r.getMessage() for r in caplog.records)
    own()


def test_read_only_filesystem_writable_directory_rejected(tmpfs: Path) -> None:
    directory = tmpfs / "runs"
    registry = Registry(directory)
    own = registry.write(own_record())
    directory.chmod(0o777)
    remount(tmpfs, "ro")

    with pytest.raises(UnsafeRegistryError) as caught:
        registry.list()

    assert "cannot be tightened (Read-only file system)" in str(caught.value)
    assert f"chmod 700 {directory}" in str(caught.value)
    own()


def test_missing_directory_on_read_only_filesystem_raises(tmpfs: Path) -> None:
    remount(tmpfs, "ro")
    registry = Registry(tmpfs / "runs")

    with pytest.raises(RegistryError) as caught:
        registry.write(own_record())

    assert str(tmpfs / "runs") in str(caught.value)
    assert "Read-only file system" in str(caught.value)
    assert registry.list() == []


def flock_like_nfs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make exclusive flocks through read-only descriptors fail with EBADF, as NFS does.

    NFS emulates flock with POSIX locks, which need a descriptor open for
    writing. No NFS mount is available to the tests, so flock is wrapped.
    """
    real_flock = fcntl.flock

    def flock(fd: int, operation: int) -> None:
        read_only = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY
        if operation & fcntl.LOCK_EX and read_only:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))
        real_flock(fd, operation)

    monkeypatch.setattr(fcntl, "flock", flock)


def test_nfs_style_lock_held_through_write_descriptor(
    registry: Registry, registry_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flock_like_nfs(monkeypatch)

    cleanup = registry.write(own_record())

    holder = backend._published[(str(registry_dir), f"{os.getpid()}.json")].fd
    assert holder is not None
    assert fcntl.fcntl(holder, fcntl.F_GETFL) & os.O_ACCMODE == os.O_WRONLY
    monkeypatch.undo()
    probe = os.open(registry_dir / f"{os.getpid()}.json", os.O_RDONLY)
    try:
        assert liveness.lock_is_free(probe) is False
    finally:
        os.close(probe)
    cleanup()
    assert os.listdir(registry_dir) == []


def test_unknown_lock_state_leaves_pid_rules(
    registry: Registry, registry_dir: Path, spawn: Spawn, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Where the filesystem cannot report a lock, a leftover of a writer that
    # no longer runs is still removed.
    path = plant_temporary(registry_dir, dead_pid(spawn))
    flock_like_nfs(monkeypatch)

    removed = registry.prune()

    assert [entry.path for entry in removed] == [str(path)]
    assert not path.exists()


# --- the registry path is not a usable directory ---------------------------------------------


def test_registry_path_is_regular_file(registry: Registry, registry_dir: Path) -> None:
    registry_dir.parent.mkdir(parents=True)
    registry_dir.write_bytes(b"not a directory")

    with pytest.raises(RegistryError) as written:
        registry.write(own_record())
    with pytest.raises(RegistryError) as listed:
        registry.list()
    with pytest.raises(RegistryError):
        registry.find("")

    for caught in (written, listed):
        assert f"registry path {registry_dir} exists but is not a directory" in str(caught.value)
    assert registry_dir.read_bytes() == b"not a directory"
    assert sorted(os.listdir(registry_dir.parent)) == ["runs"]


def test_directory_removed_between_calls_is_recreated(
    registry: Registry, registry_dir: Path
) -> None:
    first = registry.write(own_record("first"))
    shutil.rmtree(registry_dir.parent)

    assert registry.list() == []
    second = registry.write(own_record("second"))

    assert stat.S_IMODE(registry_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(registry_dir.parent.stat().st_mode) == 0o700
    assert [record.session_id for record in registry.list()] == ["second"]
    first()
    assert [record.session_id for record in registry.list()] == ["second"]
    second()
    assert os.listdir(registry_dir) == []


def test_cleanup_after_directory_removed_is_harmless(
    registry: Registry, registry_dir: Path
) -> None:
    cleanup = registry.write(own_record())
    shutil.rmtree(registry_dir)

    cleanup()

    assert not registry_dir.exists()


# --- temporary files of crashed writers ------------------------------------------------------

# Kills its own process with SIGKILL halfway through writing the record: the
# library's write helper is replaced so the crash lands at that exact point.
CRASHING_WRITER = """
import os, signal, sys
import runregistry.backends.file as backend
from runregistry import Record, Registry

def write_half_then_die(fd, data):
    os.write(fd, data[: len(data) // 2])
    os.kill(os.getpid(), signal.SIGKILL)

backend._write_all = write_half_then_die
Registry(sys.argv[1]).write(Record(os.getpid(), "http://127.0.0.1:8765", "crashed"))
"""


@pytest.fixture
def crashed_temporary(registry_dir: Path, spawn: Spawn) -> tuple[Path, int]:
    """The temporary file a writer left when it was killed mid-write, and that writer's pid."""
    registry_dir.mkdir(parents=True, mode=0o700)
    child = spawn(*python_child(CRASHING_WRITER), str(registry_dir))
    assert child.wait(timeout=30) == -9
    names = temporaries(registry_dir)
    assert len(names) == 1
    return registry_dir / names[0], child.pid


def test_crashed_writer_leaves_named_partial_temporary(
    crashed_temporary: tuple[Path, int],
) -> None:
    path, writer = crashed_temporary

    assert re.fullmatch(rf"\.{writer}\.{writer}\.[0-9a-f]{{8}}\.tmp", path.name)
    content = path.read_bytes()
    assert content
    assert not content.rstrip().endswith(b"}")


def test_crashed_writer_temporary_never_read_as_record(
    registry: Registry, crashed_temporary: tuple[Path, int]
) -> None:
    path, writer = crashed_temporary

    entries = registry.entries(prune=False)

    assert [(entry.kind, entry.path) for entry in entries] == [("temporary", str(path))]
    assert f"writer pid {writer}, which no longer runs" in entries[0].problem
    assert path.exists()
    assert registry.list() == []


def test_crashed_writer_temporary_removed_by_later_writer(
    registry: Registry, registry_dir: Path, crashed_temporary: tuple[Path, int]
) -> None:
    path, _ = crashed_temporary

    cleanup = registry.write(own_record())

    assert not path.exists()
    assert os.listdir(registry_dir) == [f"{os.getpid()}.json"]
    cleanup()


def test_crashed_writer_temporary_removed_by_prune(
    registry: Registry, crashed_temporary: tuple[Path, int]
) -> None:
    path, _ = crashed_temporary

    planned = registry.prune(dry_run=True)
    assert [entry.path for entry in planned] == [str(path)]
    assert path.exists()

    removed = registry.prune()

    assert [(entry.kind, entry.path) for entry in removed] == [("temporary", str(path))]
    assert not path.exists()


def plant_temporary(directory: Path, writer: int, content: bytes = b'{"pid": ') -> Path:
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = directory / f".{writer}.{writer}.0123abcd.tmp"
    path.write_bytes(content)
    return path


def test_temporary_of_running_writer_kept(
    registry: Registry, registry_dir: Path, sleeper: Spawn
) -> None:
    path = plant_temporary(registry_dir, sleeper().pid)

    assert registry.prune() == []
    cleanup = registry.write(own_record())

    assert path.exists()
    cleanup()


def test_temporary_of_this_process_kept(registry: Registry, registry_dir: Path) -> None:
    path = plant_temporary(registry_dir, os.getpid())

    assert registry.prune() == []

    assert path.exists()


def test_old_temporary_of_reused_pid_removed(
    registry: Registry, registry_dir: Path, sleeper: Spawn
) -> None:
    # The pid in the name runs, but the file is older than any write takes:
    # the pid now belongs to another process.
    path = plant_temporary(registry_dir, sleeper().pid)
    old = time.time() - TEMP_GRACE_SECONDS - 10
    os.utime(path, (old, old))

    removed = registry.prune()

    assert [entry.path for entry in removed] == [str(path)]
    assert "now belongs to another process" in removed[0].problem
    assert not path.exists()


HOLDING_WRITER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(600)
"""


def test_locked_temporary_kept_whatever_its_pid(
    registry: Registry, registry_dir: Path, spawn: Spawn
) -> None:
    # A writer on another host sharing the directory has a pid that means
    # nothing here; its lock on the temporary file is what protects it.
    path = plant_temporary(registry_dir, dead_pid(spawn))
    holder = spawn(*python_child(HOLDING_WRITER), str(path), stdout=subprocess.PIPE)
    assert holder.stdout is not None
    assert holder.stdout.readline() == b"locked\n"

    assert registry.prune() == []
    assert registry.list() == []
    assert path.exists()

    holder.kill()
    holder.wait(timeout=10)
    holder.stdout.close()
    assert [entry.path for entry in registry.prune()] == [str(path)]


def test_temporary_directory_kept(registry: Registry, registry_dir: Path, spawn: Spawn) -> None:
    registry_dir.mkdir(parents=True, mode=0o700)
    folder = registry_dir / f".1.{dead_pid(spawn)}.0123abcd.tmp"
    folder.mkdir()

    assert registry.prune() == []

    assert folder.is_dir()


@pytest.mark.skipif(os.geteuid() != 0, reason="making a file owned by another user needs root")
def test_temporary_of_other_user_kept(registry: Registry, registry_dir: Path, spawn: Spawn) -> None:
    path = plant_temporary(registry_dir, dead_pid(spawn))
    os.chown(path, 65534, 65534)

    assert registry.prune() == []

    assert path.exists()


def test_unrelated_dot_files_ignored(registry: Registry, registry_dir: Path, spawn: Spawn) -> None:
    registry_dir.mkdir(parents=True, mode=0o700)
    names = [
        ".hidden",
        f".{dead_pid(spawn)}.tmp",
        ".a.\u00b2\u00b3.b.tmp",
        ".x.99999999999999999999.y.tmp",
    ]
    for name in names:
        (registry_dir / name).write_bytes(b"")

    assert registry.prune() == []
    assert registry.list() == []

    assert sorted(os.listdir(registry_dir)) == sorted(names)


def test_failed_write_leaves_no_temporary(registry: Registry, registry_dir: Path) -> None:
    # A directory with the record's name makes the final rename fail.
    (registry_dir / f"{os.getpid()}.json").mkdir(parents=True)

    with pytest.raises(RegistryError) as caught:
        registry.write(own_record())

    assert str(registry_dir / f"{os.getpid()}.json") in str(caught.value)
    assert "Is a directory" in str(caught.value)
    assert temporaries(registry_dir) == []
    assert (registry_dir / f"{os.getpid()}.json").is_dir()


def test_interrupted_write_leaves_no_temporary(
    registry: Registry, registry_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import runregistry.backends.file as backend

    def interrupt(fd: int, data: bytes) -> None:
        os.write(fd, data[:10])
        raise KeyboardInterrupt

    monkeypatch.setattr(backend, "_write_all", interrupt)

    with pytest.raises(KeyboardInterrupt):
        registry.write(own_record())

    assert os.listdir(registry_dir) == []
