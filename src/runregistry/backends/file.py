"""The file backend: one ``<pid>.json`` per run in a private per-user directory.

Records are published through a sibling temporary file and an atomic rename,
so a reader sees the previous record or the new one, never a torn one. A
writer of this library keeps an exclusive flock on its published record for as
long as it is published; the kernel drops the lock when the process dies,
which is how readers tell a dead writer from a pid reused by someone else.

Record files are opened relative to the verified directory's descriptor and
with ``O_NOFOLLOW``, so neither a swapped directory nor a planted symlink can
redirect a read, a write or a removal.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final, NamedTuple

from .._base import BaseRegistry, Cleanup, Entry
from .._errors import InvalidRecordError, RegistryError
from .._liveness import LIVE, STALE, judge, local_hostname, pid_exists
from .._paths import app_runs_dir, docker_agent_runs_dir
from .._record import LOCK_FLOCK, Record
from ._directory import O_NOFOLLOW, O_NONBLOCK, Directory, open_directory

log = logging.getLogger(__name__)

# Records are under 1 KiB; anything much larger is not a record and is not
# read into memory.
MAX_RECORD_SIZE: Final = 64 * 1024

RECORD_SUFFIX: Final = ".json"
TEMP_SUFFIX: Final = ".tmp"

# A temporary file whose writer pid runs but whose lock is free (the pid was
# reused, or the platform has no flock) is left alone for this many seconds.
TEMP_GRACE_SECONDS: Final = 60.0

_HAS_FLOCK: Final = sys.platform != "win32"
_READ_FLAGS: Final = os.O_RDONLY | O_NOFOLLOW | O_NONBLOCK
_CREATE_FLAGS: Final = os.O_WRONLY | os.O_CREAT | os.O_EXCL | O_NOFOLLOW

# Test-only hook, called with the file name after a stale record was judged
# and before it is removed, so that tests can let a fresh writer win the race.
_before_prune: Callable[[str], None] | None = None


class _CachedDecode(NamedTuple):
    dev: int
    ino: int
    size: int
    mtime_ns: int
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
    identity between calls, but liveness is judged again on every call.
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
        return Path(self._path)

    @property
    def location(self) -> str:
        return self._path

    def __repr__(self) -> str:
        return f"Registry({self._path!r})"

    def write(self, record: Record) -> Cleanup:
        """Publish *record* as ``<pid>.json``, replacing any record of that pid.

        When *record* is this process's own, it is stored with ``lock:
        "flock"`` and this process holds the lock until cleanup. A record for
        another process (a child, say) is stored without a lock and judged by
        that process's start time. ``host`` is filled in when unset; the
        returned cleanup's ``record`` is the record as stored.

        The file is not fsynced: a crash that loses it also ends the processes
        it describes, so a durable copy would only be a stale one.

        :raises InvalidRecordError: the address is not http(s) or the session id is empty.
        :raises UnsafeRegistryError: the directory is not safe to trust.
        :raises RegistryError: the record cannot be written; nothing is left behind.
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
                _remove_leftover_temporaries(directory)
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
            return self._scan(directory, prune=prune)

    def prune(self, *, dry_run: bool = False) -> list[Entry]:
        """Remove stale records and leftover temporary files; return what was (or would be) removed.

        Records written on another host and invalid files are never removed.
        A stale record is removed only if the file is still the one judged.
        """
        directory = open_directory(self._path, create=False, repair=not dry_run)
        if directory is None:
            return []
        with directory:
            removable = [
                entry
                for entry in self._scan(directory, prune=False)
                if entry.kind == "temporary"
                or (entry.liveness is not None and entry.liveness.state == STALE)
            ]
            if dry_run:
                return removable
            removed = []
            for entry in removable:
                name = os.path.basename(entry.path)
                if entry.kind == "temporary":
                    gone = directory.unlink(name)
                else:
                    gone = self._remove_if_stale(directory, name)
                if gone:
                    removed.append(entry)
            return removed

    def _records_for_pid(self, pid: int) -> Sequence[Record]:
        # A pid's record is <pid>.json, so only that file is read.
        directory = open_directory(self._path, create=False, repair=True)
        if directory is None:
            return []
        with directory:
            entry = self._read_entry(directory, f"{pid}{RECORD_SUFFIX}", prune=True)
        if entry is None or entry.record is None or entry.liveness is None:
            return []
        return [entry.record] if entry.liveness.state == LIVE else []

    def _scan(self, directory: Directory, *, prune: bool) -> list[Entry]:
        names = directory.names()
        entries = []
        for name in names:
            if name.endswith(RECORD_SUFFIX):
                entry = self._read_entry(directory, name, prune=prune)
                if entry is not None:
                    entries.append(entry)
            elif name.startswith(".") and name.endswith(TEMP_SUFFIX):
                problem = _leftover_problem(directory, name)
                if not problem or (prune and directory.unlink(name)):
                    continue
                entries.append(Entry("temporary", directory.file_path(name), None, None, problem))

        # Forget files that are gone, so the cache never outgrows the directory.
        if len(self._decoded) > len(names):
            for name in self._decoded.keys() - set(names):
                del self._decoded[name]
        return entries

    def _read_entry(self, directory: Directory, name: str, *, prune: bool) -> Entry | None:
        """Read and judge one ``*.json`` file; None when it is gone or a directory."""
        path = directory.file_path(name)
        try:
            fd = directory.open(name, _READ_FLAGS)
        except FileNotFoundError:
            return None
        except OSError as exc:
            return Entry("invalid", path, None, None, _open_problem(exc))

        try:
            info = os.fstat(fd)
            if stat.S_ISDIR(info.st_mode):
                return None
            record, problem = self._decode(fd, name, info)
            if record is None:
                log.debug("skipped %s: %s", path, problem)
                return Entry("invalid", path, None, None, problem)
            liveness = judge(record, fd)
        finally:
            os.close(fd)

        if liveness.state == STALE and prune:
            self._remove_if_stale(directory, name, judged=info)
        return Entry("record", path, record, liveness)

    def _decode(self, fd: int, name: str, info: os.stat_result) -> tuple[Record | None, str]:
        """Return the record in an open file, or None and why it is not one."""
        cached = self._decoded.get(name)
        if (
            cached is not None
            and cached.ino == info.st_ino
            and cached.dev == info.st_dev
            and cached.size == info.st_size
            and cached.mtime_ns == info.st_mtime_ns
        ):
            return cached.record, cached.problem

        record, problem = _decode_file(fd, info)
        self._decoded[name] = _CachedDecode(
            info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, record, problem
        )
        return record, problem

    def _unpublish(self, publication: _Publication) -> None:
        """Remove a published record if the file still holds it, then release its lock."""
        try:
            directory = open_directory(self._path, create=False, repair=False)
        except RegistryError as exc:
            log.debug("cleanup of %s skipped: %s", publication.name, exc)
            directory = None
        try:
            if directory is not None:
                with directory:
                    # Removed before the lock is released, so that no reader
                    # sees the record of a live process without its lock.
                    if _holds(directory, publication) and directory.unlink(publication.name):
                        log.debug("removed %s", directory.file_path(publication.name))
        finally:
            publication.release()
            key = (self._path, publication.name)
            if _published.get(key) is publication:
                del _published[key]

    def _remove_if_stale(
        self, directory: Directory, name: str, judged: os.stat_result | None = None
    ) -> bool:
        """Remove *name* only if it is still the stale file that was judged.

        A process that reused the pid may publish a fresh record under the
        same name between the judgement and the removal. So the file is first
        renamed aside, one atomic step, and checked there: if it is not the
        judged file, it is linked back under its name, which fails rather than
        overwrite an even newer record.
        """
        if judged is None:
            entry = self._read_entry(directory, name, prune=False)
            if entry is None or entry.liveness is None or entry.liveness.state != STALE:
                return False
            try:
                judged = directory.lstat(name)
            except OSError:
                return False
        if _before_prune is not None:
            _before_prune(name)

        expected = (judged.st_dev, judged.st_ino)
        aside = _temporary_name(name)
        try:
            if _identity(directory.lstat(name)) != expected:
                return False
            directory.replace(name, aside)
        except OSError:
            return False

        try:
            if _identity(directory.lstat(aside)) == expected:
                directory.unlink(aside)
                log.debug("removed stale record %s", directory.file_path(name))
                return True
            directory.link(aside, name)
        except OSError as exc:
            log.debug("left %s in place of a stale record: %s", directory.file_path(name), exc)
        directory.unlink(aside)
        return False


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
    from dataclasses import replace

    return replace(record, lock=lock, host=host)


def _publish(directory: Directory, name: str, record: Record) -> _Publication:
    data = record.to_json()
    locked = record.lock == LOCK_FLOCK
    temporary = _temporary_name(name)
    try:
        fd = directory.open(temporary, _CREATE_FLAGS, 0o600)
    except OSError as exc:
        raise _write_error(directory.file_path(name), exc) from None

    try:
        if hasattr(os, "fchmod"):
            # open() reduces the mode by the umask, and 0600 is meant exactly.
            os.fchmod(fd, 0o600)
        if locked:
            # Locked before the rename, so the published file is locked from its first moment.
            _lock(fd)
        _write_all(fd, data)
        info = os.fstat(fd)
        directory.replace(temporary, name)
    except BaseException as exc:
        os.close(fd)
        directory.unlink(temporary)
        if isinstance(exc, OSError):
            raise _write_error(directory.file_path(name), exc) from None
        raise

    if not locked:
        os.close(fd)
    return _Publication(name, info.st_dev, info.st_ino, data, fd if locked else None)


def _write_error(path: str, exc: OSError) -> RegistryError:
    return RegistryError(
        f"cannot write record {path}: {exc.strerror or exc}; "
        "check free space, quotas and permissions of the registry directory"
    )


def _decode_file(fd: int, info: os.stat_result) -> tuple[Record | None, str]:
    if not stat.S_ISREG(info.st_mode):
        return None, "not a regular file"
    if hasattr(os, "geteuid") and info.st_uid != os.geteuid():
        return None, f"owned by uid {info.st_uid}, not by the current user (uid {os.geteuid()})"
    if info.st_size > MAX_RECORD_SIZE:
        return None, f"{info.st_size} bytes, more than the {MAX_RECORD_SIZE}-byte limit"
    try:
        data = os.read(fd, MAX_RECORD_SIZE + 1)
    except OSError as exc:
        return None, f"cannot be read: {exc.strerror}"
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


def _temporary_name(name: str) -> str:
    # Never ends in .json, so that readers never take it for a record, and
    # carries the writer's pid, so that a leftover can be traced to a dead writer.
    stem = name[: -len(RECORD_SUFFIX)] if name.endswith(RECORD_SUFFIX) else name
    return f".{stem}.{os.getpid()}.{os.urandom(4).hex()}{TEMP_SUFFIX}"


def _temporary_writer(name: str) -> int | None:
    # ".<stem>.<writer pid>.<random>.tmp"; the stem is a pid, so it has no dots.
    parts = name.split(".")
    if len(parts) != 5 or not parts[2].isdigit():
        return None
    return int(parts[2])


def _leftover_problem(directory: Directory, name: str) -> str:
    """Why a temporary file is a removable leftover, or "" while a writer may still need it."""
    writer = _temporary_writer(name)
    if writer is None or writer == os.getpid():
        return ""
    if not pid_exists(writer):
        return f"temporary file of writer pid {writer}, which no longer runs"
    try:
        info = directory.lstat(name)
    except OSError:
        return ""
    if time.time() - info.st_mtime > TEMP_GRACE_SECONDS and stat.S_ISREG(info.st_mode):
        return (
            f"temporary file older than {TEMP_GRACE_SECONDS:.0f} s whose writer pid {writer} "
            "now belongs to another process"
        )
    return ""


def _remove_leftover_temporaries(directory: Directory) -> None:
    try:
        names = directory.names()
    except RegistryError:
        return
    for name in names:
        if (
            name.startswith(".")
            and name.endswith(TEMP_SUFFIX)
            and _leftover_problem(directory, name)
        ):
            directory.unlink(name)


def _lock(fd: int) -> None:
    import fcntl

    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _holds(directory: Directory, publication: _Publication) -> bool:
    """Whether the published file is still the one *publication* wrote, byte for byte."""
    try:
        fd = directory.open(publication.name, _READ_FLAGS)
    except OSError:
        return False
    try:
        info = os.fstat(fd)
        if (info.st_dev, info.st_ino) != (publication.dev, publication.ino):
            return False
        return os.read(fd, len(publication.data) + 1) == publication.data
    finally:
        os.close(fd)


def _identity(info: os.stat_result) -> tuple[int, int]:
    return (info.st_dev, info.st_ino)
