"""The file backend: one ``<pid>.json`` per run in a private per-user directory.

Records are published through a sibling temporary file and an atomic rename,
so a reader sees the previous record or the new one, never a torn one. A
writer of this library keeps an exclusive flock on its published record for as
long as it is published. The kernel drops the lock when the process dies,
which is how readers tell a dead writer from a pid reused by someone else.

Record files are opened relative to the verified directory's descriptor and
with ``O_NOFOLLOW``, so neither a swapped directory nor a planted symlink can
redirect a read, a write or a removal. A file is removed only after a check,
made on the file itself after an atomic rename, that it is still the very file
that was judged, so a fresh record published meanwhile under the same name
always survives.

A temporary file is named ``.<pid>.<writer pid>.<random hex>.tmp`` and its
writer holds a flock on it until the rename. One left behind by a writer that
crashed is removed by later writers and by pruning once that writer is gone.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Final, NamedTuple

from .._base import BaseRegistry, Cleanup, Entry
from .._errors import InvalidRecordError, RegistryError
from .._liveness import LIVE, STALE, judge, local_hostname, lock_is_free, pid_exists
from .._log import get_logger
from .._paths import app_runs_dir, docker_agent_runs_dir
from .._record import LOCK_FLOCK, MAX_PID, Record
from ._directory import O_NOCTTY, O_NOFOLLOW, O_NONBLOCK, Directory, open_directory

if TYPE_CHECKING:
    from pathlib import Path

    from .._watching import ChangeSource

log = get_logger(__name__)

# Records are under 1 KiB; anything much larger is not a record and is not
# read into memory.
MAX_RECORD_SIZE: Final = 64 * 1024

RECORD_SUFFIX: Final = ".json"
TEMP_SUFFIX: Final = ".tmp"

# How long a temporary file is kept while its writer pid runs but its lock is
# free. The pid may have been reused, or the platform has no flock. Until then
# its writer might still be the process with that pid.
TEMP_GRACE_SECONDS: Final = 60.0

_HAS_FLOCK: Final = sys.platform != "win32"
# O_NONBLOCK keeps opening a FIFO from waiting for a writer. O_NOCTTY keeps a
# planted terminal device from becoming the controlling terminal.
_READ_FLAGS: Final = os.O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY
_CREATE_FLAGS: Final = os.O_WRONLY | os.O_CREAT | os.O_EXCL | O_NOFOLLOW

# Test-only hook, called with the file name after a stale record was judged
# and before it is removed, so that tests can let a fresh writer win the race.
_before_prune: Callable[[str], None] | None = None


class _CachedDecode(NamedTuple):
    # Matched by content, because a freed inode number is soon reused and two
    # writes within one clock tick share an mtime. Only the bytes tell a
    # rewritten record from the old one.
    data: bytes
    record: Record | None
    problem: str


class _Publication:
    """A record this process published, and the descriptor that holds its lock."""

    def __init__(self, name: str, dev: int, ino: int, data: bytes, fd: int | None) -> None:
        self.name = name
        self.dev = dev
        self.ino = ino
        self.data = data
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


# Publications by (registry directory, file name). Module-wide rather than per
# Registry, because two Registry objects on one directory must agree on which
# descriptor holds the lock of the current record.
_published: dict[tuple[str, str], _Publication] = {}


class Registry(BaseRegistry):
    """A registry kept as one JSON file per process in *directory*.

    *origin* says how the directory was chosen (an option, a variable or a
    default), for ``runregistry doctor``. Decoded records are cached by file
    content between calls, but liveness is judged again on every call.
    """

    def __init__(self, directory: str | os.PathLike[str], *, origin: str = "argument") -> None:
        text = os.fspath(directory)
        if not text or "\0" in text:
            raise RegistryError(f"invalid registry directory {text!r}: give a directory path")
        self._path = os.path.abspath(text)
        self.origin = origin
        self._decoded: dict[str, _CachedDecode] = {}
        self._swept_temporaries = False

    @classmethod
    def for_app(cls, app: str) -> Registry:
        """Return the registry of *app*, in ``<data dir>/<app>/runs``."""
        return cls(app_runs_dir(app), origin=f"app {app!r} in the user data directory")

    @classmethod
    def for_docker_agent(cls) -> Registry:
        """Return docker-agent's own registry, so that its runs can be listed and found."""
        return _DockerAgentRegistry(docker_agent_runs_dir(), origin="docker-agent's data directory")

    @property
    def directory(self) -> Path:
        """The registry directory, such as ``~/.local/share/runregistry/runs``."""
        # pathlib is imported here, not at the top: it costs the command line's start-up.
        from pathlib import Path

        return Path(self._path)

    @property
    def location(self) -> str:
        return self._path

    def change_source(self) -> ChangeSource:
        """Return the feed of this directory's changes: inotify on Linux, else polling."""
        from ._file_changes import FileChangeSource

        return FileChangeSource(self)

    def __repr__(self) -> str:
        return f"Registry({self._path!r})"

    def write(self, record: Record) -> Cleanup:
        """Publish *record* as ``<pid>.json``, replacing any record of that pid.

        When *record* is this process's own, it is stored with ``lock:
        "flock"`` and this process holds the lock until cleanup. A record for
        another process (a child, say) is stored without a lock and judged by
        that process's start time. ``host`` is filled in when unset; the
        returned cleanup's ``record`` is the record as stored. A registry
        directory that was removed is created again.

        The file is not fsynced: a crash that loses it also ends the processes
        it describes, so a durable copy would only be a stale one.

        :raises InvalidRecordError: the address is not http(s) or the session id is empty.
        :raises UnsafeRegistryError: the directory is not safe to trust.
        :raises RegistryError: the record cannot be written. The message names
            the file and the cause. No temporary file is left behind, and the
            previous record of that pid, if any, is kept.
        """
        record = _prepared_for_write(record)
        name = f"{record.pid}{RECORD_SUFFIX}"
        directory = open_directory(self._path, create=True, repair=True)
        if directory is None:
            raise RegistryError(
                f"registry directory {self._path} disappeared while it was being created; "
                "check what else removes it"
            )
        with directory:
            if not self._swept_temporaries:
                self._swept_temporaries = True
                _sweep_leftovers(directory)
            publication = _publish(directory, name, record)

        key = (self._path, name)
        previous = _published.get(key)
        _published[key] = publication
        if previous is not None:
            # The rename replaced the previous file, so its lock proves nothing now.
            previous.release()
        log.debug("published %s for pid %d", directory.file_path(name), record.pid)
        return Cleanup(record, lambda: self._unpublish(publication))

    def entries(self, *, prune: bool = True) -> list[Entry]:
        directory = open_directory(self._path, create=False, repair=prune)
        if directory is None:
            return []
        with directory:
            seen, _ = self._scan(directory, prune=prune)
        return seen

    def prune(self, *, dry_run: bool = False) -> list[Entry]:
        """Remove stale records and leftover temporary files; return what was (or would be) removed.

        Records written on another host and invalid files are never removed.
        A stale record is removed only if the file is still the one judged.
        """
        directory = open_directory(self._path, create=False, repair=not dry_run)
        if directory is None:
            return []
        with directory:
            seen, removed = self._scan(directory, prune=not dry_run)
        if not dry_run:
            return removed
        return [
            entry
            for entry in seen
            if entry.kind == "temporary"
            or (entry.liveness is not None and entry.liveness.state == STALE)
        ]

    def _records_for_pid(self, pid: int) -> Sequence[Record]:
        # A pid's record is <pid>.json, so only that file is read.
        directory = open_directory(self._path, create=False, repair=True)
        if directory is None:
            return []
        with directory:
            entry, _ = self._read_entry(directory, f"{pid}{RECORD_SUFFIX}", prune=True)
        if entry is None or entry.record is None or entry.liveness is None:
            return []
        return [entry.record] if entry.liveness.state == LIVE else []

    def _scan(self, directory: Directory, *, prune: bool) -> tuple[list[Entry], list[Entry]]:
        """Read and judge every entry; return them all, and those that *prune* removed."""
        names = directory.names()
        seen: list[Entry] = []
        removed: list[Entry] = []
        for name in names:
            if name.endswith(RECORD_SUFFIX):
                entry, gone = self._read_entry(directory, name, prune=prune)
            elif _temporary_writer(name) is not None:
                entry, gone = _read_leftover(directory, name, prune=prune)
            else:
                continue
            if entry is not None:
                seen.append(entry)
            if entry is not None and gone:
                removed.append(entry)

        # Forget files that are gone, so the cache never outgrows the directory.
        if len(self._decoded) > len(names):
            for name in self._decoded.keys() - set(names):
                del self._decoded[name]
        return seen, removed

    def _read_entry(
        self, directory: Directory, name: str, *, prune: bool
    ) -> tuple[Entry | None, bool]:
        """Read and judge one ``*.json`` file; return its entry and whether it was removed.

        The entry is None when the file is gone or is a directory.
        """
        try:
            fd = directory.open(name, _READ_FLAGS)
        except FileNotFoundError:
            return None, False
        except OSError as exc:
            problem = _open_problem(exc)
            return Entry("invalid", directory.file_path(name), None, None, problem), False

        try:
            return self._judge_open_file(directory, name, fd, prune=prune)
        finally:
            # Closed only after any removal: while a descriptor is open, the
            # judged file's inode cannot be freed and its number reused by a
            # fresh record, which would then pass for the judged file.
            os.close(fd)

    def _judge_open_file(
        self, directory: Directory, name: str, fd: int, *, prune: bool
    ) -> tuple[Entry | None, bool]:
        path = directory.file_path(name)
        try:
            info = os.fstat(fd)
        except OSError as exc:
            return Entry("invalid", path, None, None, f"cannot be inspected: {exc.strerror}"), False
        if stat.S_ISDIR(info.st_mode):
            return None, False

        record, problem, data = self._decode(fd, name, info)
        if record is None:
            log.debug("skipped %s: %s", path, problem)
            return Entry("invalid", path, None, None, problem), False

        liveness = judge(record, fd)
        entry = Entry("record", path, record, liveness)
        if liveness.state != STALE or not prune:
            return entry, False
        if _before_prune is not None:
            _before_prune(name)
        removed = _remove_if_unchanged(directory, name, _identity(info), data)
        if removed:
            log.debug("removed stale record %s: %s", path, liveness.detail)
        return entry, removed

    def _decode(self, fd: int, name: str, info: os.stat_result) -> tuple[Record | None, str, bytes]:
        """Return the record in an open file and its bytes, or None and why it is not one."""
        problem = _unreadable_problem(info)
        if problem:
            return None, problem, b""
        try:
            data = _read_bounded(fd, info.st_size)
        except OSError as exc:
            return None, f"cannot be read: {exc.strerror}", b""

        cached = self._decoded.get(name)
        if cached is not None and cached.data == data:
            return cached.record, cached.problem, data
        record, problem = _parse_record(data)
        self._decoded[name] = _CachedDecode(data, record, problem)
        return record, problem, data

    def _unpublish(self, publication: _Publication) -> None:
        """Remove a published record if the file still holds it, then release its lock."""
        try:
            directory = open_directory(self._path, create=False, repair=True)
        except RegistryError as exc:
            log.debug("cleanup of %s skipped: %s", publication.name, exc)
            directory = None
        try:
            if directory is not None:
                with directory:
                    # Removed before the lock is released, so that no reader
                    # sees the record of a live process without its lock.
                    name = publication.name
                    identity = (publication.dev, publication.ino)
                    if _remove_if_unchanged(directory, name, identity, publication.data):
                        log.debug("removed %s", directory.file_path(name))
        finally:
            publication.release()
            key = (self._path, publication.name)
            if _published.get(key) is publication:
                del _published[key]


class _DockerAgentRegistry(Registry):
    """docker-agent's registry, whose "no run" messages tell how to start docker-agent."""

    @property
    def how_to_start(self) -> str:
        return "start one with: docker-agent run --listen 127.0.0.1:0"


def default_registry() -> Registry:
    """Return the registry in ``$RUNREGISTRY_DIR``, else ``Registry.for_app("runregistry")``."""
    directory = os.environ.get("RUNREGISTRY_DIR", "")
    if directory:
        return Registry(directory, origin="the RUNREGISTRY_DIR environment variable")
    registry = Registry.for_app("runregistry")
    registry.origin = "the default: app 'runregistry' in the user data directory"
    return registry


def _prepared_for_write(record: Record) -> Record:
    """Fill in ``host`` and ``lock``, and reject records no client could use."""
    if not record.addr.startswith(("http://", "https://")) or len(record.addr) <= len("https://"):
        raise InvalidRecordError(
            f"addr {record.addr!r} is not an HTTP address: give one such as http://127.0.0.1:8765"
        )
    if not record.session_id.strip():
        raise InvalidRecordError(
            "session_id is empty: give a session id, or let register() make one"
        )

    own = record.pid == os.getpid() and _HAS_FLOCK
    lock = LOCK_FLOCK if own else None
    host = record.host if record.host is not None else local_hostname()
    if record.lock == lock and record.host == host:
        return record
    return record.replace(lock=lock, host=host)


def _publish(directory: Directory, name: str, record: Record) -> _Publication:
    """Write *record* to a temporary file and rename it to *name*, or leave nothing behind."""
    data = record.to_json()
    temporary = _temporary_name(name)
    try:
        fd = directory.open(temporary, _CREATE_FLAGS, 0o600)
    except OSError as exc:
        raise _write_error(directory.file_path(name), exc) from exc

    holder = None
    try:
        holder = _lock_holder(directory, temporary, fd)
        if hasattr(os, "fchmod"):
            # open() reduces the mode by the umask, and 0600 is meant exactly.
            os.fchmod(fd, 0o600)
        _write_all(fd, data)
        info = os.fstat(fd)
        directory.replace(temporary, name)
    except BaseException as exc:
        if holder is not None:
            os.close(holder)
        directory.unlink(temporary)
        if isinstance(exc, OSError):
            raise _write_error(directory.file_path(name), exc) from exc
        raise
    finally:
        os.close(fd)

    if record.lock != LOCK_FLOCK and holder is not None:
        os.close(holder)
        holder = None
    return _Publication(name, info.st_dev, info.st_ino, data, holder)


def _lock_holder(directory: Directory, temporary: str, fd: int) -> int | None:
    """Lock the fresh *temporary* file, open as *fd*, and return the descriptor holding the lock.

    The lock is taken before the first byte is written. A held lock shows
    sweepers that the writer still needs the file, and for a record of this
    process it makes the published file locked from its first moment.

    The lock is held through a read-only descriptor where the filesystem
    allows it, so that a process that keeps its record for hours keeps no file
    open for writing, which would stop a remount read-only.
    """
    if not _HAS_FLOCK:
        return None

    # Opened by name in the private directory, O_EXCL-created a moment ago
    # under a random name, so it is the file just created.
    holder = directory.open(temporary, _READ_FLAGS)
    if _lock_or_close(holder):
        return holder

    # NFS emulates flock with POSIX locks, which need a descriptor open for
    # writing. There the lock is held through a duplicate of the written one.
    holder = os.dup(fd)
    if _lock_or_close(holder):
        return holder
    raise OSError(errno.EBADF, "the filesystem rejects an exclusive lock on the file")


def _lock_or_close(fd: int) -> bool:
    """Take the exclusive flock on *fd*; close it and return False if the descriptor cannot."""
    import fcntl

    try:
        # Blocking: the only other holder of a fresh temporary file's lock is
        # a sweeper's probe, which releases it at once.
        fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError as exc:
        os.close(fd)
        if exc.errno == errno.EBADF:
            return False
        raise
    except BaseException:
        os.close(fd)
        raise
    return True


def _write_error(path: str, exc: OSError) -> RegistryError:
    return RegistryError(f"cannot write record {path}: {exc.strerror or exc}; {_write_hint(exc)}")


def _write_hint(exc: OSError) -> str:
    if exc.errno == errno.EROFS:
        return "the filesystem is read-only: choose another directory with --dir or RUNREGISTRY_DIR"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "free some space on that filesystem, or raise your quota"
    if exc.errno == errno.EFBIG:
        return "raise the file size limit (ulimit -f) of this process"
    if exc.errno == errno.EISDIR:
        return "a directory has the record's name: remove or rename it"
    return "check the permissions and free space of the registry directory"


def _unreadable_problem(info: os.stat_result) -> str:
    """Why a record file must not be read, or "" when it may be."""
    if not stat.S_ISREG(info.st_mode):
        return "not a regular file"
    if hasattr(os, "geteuid") and info.st_uid != os.geteuid():
        return f"owned by uid {info.st_uid}, not by the current user (uid {os.geteuid()})"
    if info.st_size > MAX_RECORD_SIZE:
        return f"{info.st_size} bytes, more than the {MAX_RECORD_SIZE}-byte limit"
    return ""


def _read_bounded(fd: int, size: int) -> bytes:
    """Read a file of *size* bytes, looping over short reads, never past the size limit."""
    data = os.read(fd, MAX_RECORD_SIZE + 1)
    # Network filesystems may return fewer bytes than asked for.
    while 0 < len(data) < size:
        more = os.read(fd, MAX_RECORD_SIZE + 1 - len(data))
        if not more:
            break
        data += more
    return data


def _parse_record(data: bytes) -> tuple[Record | None, str]:
    if len(data) > MAX_RECORD_SIZE:
        return None, f"more than the {MAX_RECORD_SIZE}-byte limit"
    if not data:
        return None, "empty file"
    try:
        return Record.from_json(data), ""
    except InvalidRecordError as exc:
        return None, str(exc)


def _open_problem(exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "a symbolic link; records are never read through links"
    if exc.errno == errno.ENXIO:
        return "a socket or device, not a regular file"
    return f"cannot be opened: {exc.strerror}"


def _remove_if_unchanged(
    directory: Directory, name: str, identity: tuple[int, int], data: bytes
) -> bool:
    """Remove *name* only if it is still the file *identity* with content *data*.

    Another process may publish a fresh file under the same name at any
    moment, and no system call removes a name only if it still refers to a
    given inode. So the file is first renamed aside, one atomic step, and
    checked there: if it is not the expected file, it is linked back under its
    name, which fails rather than overwrite an even newer one.
    """
    aside = _temporary_name(name)
    try:
        if _identity(directory.lstat(name)) != identity:
            return False
        directory.replace(name, aside)
    except OSError:
        return False

    if _file_matches(directory, aside, identity, data):
        directory.unlink(aside)
        return True
    try:
        directory.link(aside, name)
    except OSError as exc:
        log.debug("discarded a version of %s that a newer one replaced: %s", name, exc)
    directory.unlink(aside)
    return False


def _file_matches(directory: Directory, name: str, identity: tuple[int, int], data: bytes) -> bool:
    """Whether *name* is the file *identity* and contains exactly *data*."""
    try:
        fd = directory.open(name, _READ_FLAGS)
    except OSError:
        return False
    try:
        info = os.fstat(fd)
        return _identity(info) == identity and _read_bounded(fd, info.st_size) == data
    except OSError:
        return False
    finally:
        os.close(fd)


def _temporary_name(name: str) -> str:
    # Never ends in .json, so that readers never take it for a record, and
    # carries the writer's pid, so that a leftover can be traced to a dead writer.
    stem = name[: -len(RECORD_SUFFIX)] if name.endswith(RECORD_SUFFIX) else name
    return f".{stem}.{os.getpid()}.{os.urandom(4).hex()}{TEMP_SUFFIX}"


def _temporary_writer(name: str) -> int | None:
    """Return the writer pid in a temporary file's name, or None if *name* is not one."""
    if not name.startswith(".") or not name.endswith(TEMP_SUFFIX):
        return None
    # rsplit, because the stem of a file renamed aside may itself contain dots.
    parts = name[1 : -len(TEMP_SUFFIX)].rsplit(".", 2)
    # isdigit() alone also accepts digits of other scripts, which int() rejects.
    if len(parts) != 3 or not (parts[1].isascii() and parts[1].isdigit()):
        return None
    writer = int(parts[1])
    # A pid out of range is in no name this library writes.
    return writer if 0 < writer <= MAX_PID else None


def _read_leftover(directory: Directory, name: str, *, prune: bool) -> tuple[Entry | None, bool]:
    """Return an entry for a removable leftover temporary file, removing it when pruning."""
    problem = _leftover_problem(directory, name)
    if not problem:
        return None, False
    entry = Entry("temporary", directory.file_path(name), None, None, problem)
    removed = prune and directory.unlink(name)
    if removed:
        log.debug("removed %s: %s", entry.path, problem)
    return entry, removed


def _leftover_problem(directory: Directory, name: str) -> str:
    """Why a temporary file is a removable leftover, or "" while a writer may still need it.

    Only regular files of the current user are ever removed, and never one
    whose writer still holds its lock.
    """
    writer = _temporary_writer(name)
    if writer is None or writer == os.getpid():
        return ""
    try:
        info = directory.lstat(name)
    except OSError:
        return ""
    if not stat.S_ISREG(info.st_mode):
        return ""
    if hasattr(os, "geteuid") and info.st_uid != os.geteuid():
        return ""

    if not pid_exists(writer):
        problem = f"temporary file of writer pid {writer}, which no longer runs"
    elif time.time() - info.st_mtime > TEMP_GRACE_SECONDS:
        problem = (
            f"temporary file older than {TEMP_GRACE_SECONDS:.0f} s whose writer pid {writer} "
            "now belongs to another process"
        )
    else:
        return ""
    # A writer on another host sharing this directory has a pid that means
    # nothing here, but it holds the lock until its rename.
    # TODO: tell such a writer that has created its temporary file but not yet
    # locked it from a dead one; until then the file may go and that write fails.
    return "" if _is_locked(directory, name) else problem


def _sweep_leftovers(directory: Directory) -> None:
    try:
        names = directory.names()
    except RegistryError:
        return
    for name in names:
        if _temporary_writer(name) is not None:
            _read_leftover(directory, name, prune=True)


def _is_locked(directory: Directory, name: str) -> bool:
    """Whether a process holds the flock on *name*; True also when it cannot be opened."""
    try:
        fd = directory.open(name, _READ_FLAGS)
    except OSError:
        return True
    try:
        # None, where the filesystem cannot tell, leaves the pid rules to decide.
        return lock_is_free(fd) is False
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _identity(info: os.stat_result) -> tuple[int, int]:
    return (info.st_dev, info.st_ino)
