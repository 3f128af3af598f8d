"""Changes to a registry directory, for watch and wait: inotify on Linux, polling elsewhere.

inotify is reached through ctypes on the C library, which avoids a dependency
for three system calls. Notifications only name the files that changed. The
files themselves are read through the verified directory's descriptor and
judged as every reader judges them.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
import sys
from typing import TYPE_CHECKING, Final

from .._log import get_logger
from .._watching import ChangeSource, Slot
from ._directory import Directory, open_directory

if TYPE_CHECKING:
    from .._base import Entry
    from .file import Registry

log = get_logger(__name__)

# Event bits from <sys/inotify.h>; they are the same on every Linux architecture.
IN_MODIFY: Final = 0x00000002
IN_CLOSE_WRITE: Final = 0x00000008
IN_MOVED_FROM: Final = 0x00000040
IN_MOVED_TO: Final = 0x00000080
IN_CREATE: Final = 0x00000100
IN_DELETE: Final = 0x00000200
IN_DELETE_SELF: Final = 0x00000400
IN_MOVE_SELF: Final = 0x00000800
IN_Q_OVERFLOW: Final = 0x00004000
IN_IGNORED: Final = 0x00008000
IN_ONLYDIR: Final = 0x01000000

# A record appears by rename (this library, docker-agent) or by a direct write,
# which ends with close. IN_MODIFY is left out: a writer in progress is read
# again at its close.
_DIRECTORY_EVENTS: Final = (
    IN_CREATE
    | IN_CLOSE_WRITE
    | IN_MOVED_TO
    | IN_MOVED_FROM
    | IN_DELETE
    | IN_DELETE_SELF
    | IN_MOVE_SELF
    | IN_ONLYDIR
)
# Watched on the nearest existing parent while the registry directory is missing.
_PARENT_EVENTS: Final = IN_CREATE | IN_MOVED_TO | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR
# Events that end the directory watch itself, after which the directory is listed again.
_SELF_EVENTS: Final = IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED | IN_Q_OVERFLOW

_EVENT_HEADER: Final = struct.Struct("iIII")
_READ_SIZE: Final = 64 * 1024


class Inotify:
    """One non-blocking inotify instance.

    :raises OSError: inotify is missing (not Linux) or exhausted (``EMFILE``:
        the per-user instance limit, ``fs.inotify.max_user_instances``).
    """

    def __init__(self) -> None:
        self._libc = _libc()
        fd = int(self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC))
        if fd < 0:
            raise _last_error("inotify_init1")
        self._fd: int = fd

    def fileno(self) -> int:
        return self._fd

    def add_watch(self, path: str, mask: int) -> int:
        """Watch *path* for the events in *mask*; return the watch descriptor."""
        wd = self._libc.inotify_add_watch(self._fd, os.fsencode(path), mask)
        if wd < 0:
            raise _last_error(f"inotify_add_watch {path}")
        return int(wd)

    def remove_watch(self, wd: int) -> None:
        """Stop watch *wd*; one already gone (its directory was removed) is ignored."""
        self._libc.inotify_rm_watch(self._fd, wd)

    def read(self) -> list[tuple[int, int, str]]:
        """Return the queued events as (watch descriptor, mask, name), without blocking."""
        try:
            data = os.read(self._fd, _READ_SIZE)
        except BlockingIOError:
            return []
        events = []
        offset = 0
        while offset < len(data):
            wd, mask, _cookie, size = _EVENT_HEADER.unpack_from(data, offset)
            offset += _EVENT_HEADER.size
            name = data[offset : offset + size].rstrip(b"\0")
            offset += size
            events.append((wd, mask, os.fsdecode(name)))
        return events

    def close(self) -> None:
        os.close(self._fd)


def _libc() -> ctypes.CDLL:
    if sys.platform != "linux":
        raise OSError(errno.ENOSYS, "inotify exists on Linux only")
    libc = ctypes.CDLL(None, use_errno=True)
    if not hasattr(libc, "inotify_init1"):
        raise OSError(errno.ENOSYS, "the C library has no inotify_init1")
    libc.inotify_init1.argtypes = [ctypes.c_int]
    libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
    libc.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
    return libc


def _last_error(call: str) -> OSError:
    number = ctypes.get_errno()
    return OSError(number, f"{call}: {os.strerror(number)}")


class FileChangeSource(ChangeSource):
    """The change source of a file registry: which record files appeared, changed or went.

    With inotify, a watch on the verified directory reports every record file
    that changed. While the directory does not exist, a watch on its nearest
    existing parent reports when it may have appeared. Without inotify,
    :meth:`fileno` is None and the watcher reads every record again at its
    polling interval. Records are judged with the non-blocking lock probe
    that every reader uses. Stale records are left in place; the directory's
    mode is tightened to 0700, as every reader of the directory does.

    NOTE: closing a descriptor opened only for reading raises no event that
    can be told apart from a reader's, so a writer that releases its lock
    but keeps running is noticed only when its file is read again.
    """

    def __init__(self, registry: Registry) -> None:
        from .file import Registry

        # A reader of its own: its decode cache is not shared with a thread
        # that uses the caller's registry meanwhile.
        self._reader = Registry(registry.location)
        self._path = registry.location
        self._inotify: Inotify | None = None
        # The watched directory's (st_dev, st_ino), to tell it from one created
        # again at the same path.
        self._watched: tuple[int, int] | None = None
        self._directory_watch: int | None = None
        self._parent_watch: int | None = None

    def open(self) -> None:
        try:
            self._inotify = Inotify()
        except OSError as exc:
            log.debug("watching %s by polling: %s", self._path, exc)

    def fileno(self) -> int | None:
        return None if self._inotify is None else self._inotify.fileno()

    def snapshot(self) -> list[Slot]:
        directory = self._rewatch()
        if directory is None:
            return []
        with directory:
            entries, _ = self._reader._scan(directory, prune=False)
        return [_slot(entry.path, entry) for entry in entries if entry.kind == "record"]

    def changes(self) -> list[Slot] | None:
        if self._inotify is None:
            return None
        names: set[str] = set()
        for wd, mask, name in self._inotify.read():
            if wd == self._parent_watch or (wd == self._directory_watch and mask & _SELF_EVENTS):
                return None
            if wd == self._directory_watch and name.endswith(".json"):
                names.add(name)
            # Events of a watch removed at the last snapshot are left out.
        if not names:
            return []

        # The directory is opened for each batch and never held open: an open
        # descriptor would delay IN_DELETE_SELF until it is closed.
        directory = open_directory(self._path, create=False, repair=True)
        if directory is None:
            return None
        with directory:
            if _identity(directory) != self._watched:
                return None
            return [self._read(directory, name) for name in sorted(names)]

    def close(self) -> None:
        self._unwatch()
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None

    def _read(self, directory: Directory, name: str) -> Slot:
        path = directory.file_path(name)
        entry, _ = self._reader._read_entry(directory, name, prune=False)
        if entry is None:
            # Gone: its decoded copy would otherwise stay cached until the next snapshot.
            self._reader._decoded.pop(name, None)
            return Slot(path)
        return _slot(path, entry)

    def _rewatch(self) -> Directory | None:
        """Open the directory and move the watch to it, or to its parent while it is missing.

        The watch is added before the caller lists the directory, so a record
        published in between is reported by both, never by neither.
        """
        while True:
            self._unwatch()
            directory = open_directory(self._path, create=False, repair=True)
            if directory is not None:
                self._watched = _identity(directory)
            if self._inotify is None:
                return directory
            try:
                if directory is not None:
                    path, mask = _watch_path(directory), _DIRECTORY_EVENTS
                    self._directory_watch = self._inotify.add_watch(path, mask)
                    return directory
                parent = _existing_parent(self._path)
                self._parent_watch = self._inotify.add_watch(parent, _PARENT_EVENTS)
            except OSError as exc:
                # ENOSPC: the per-user watch limit (fs.inotify.max_user_watches).
                log.debug("watching %s by polling: %s", self._path, exc)
                self._inotify.close()
                self._inotify = None
                return directory
            # A folder created between the check and the watch raised no event.
            if not os.path.isdir(self._path) and _existing_parent(self._path) == parent:
                return None

    def _unwatch(self) -> None:
        if self._inotify is not None:
            for wd in (self._directory_watch, self._parent_watch):
                if wd is not None:
                    self._inotify.remove_watch(wd)
        self._directory_watch = None
        self._parent_watch = None
        self._watched = None


def _slot(path: str, entry: Entry) -> Slot:
    if entry.record is None or entry.liveness is None:
        return Slot(path)
    # The file backend judges records of other hosts as unknown, so a live one is local.
    return Slot(path, entry.record, entry.liveness, local=entry.liveness.live)


def _watch_path(directory: Directory) -> str:
    # The watch goes on the directory that passed the trust checks, through
    # its descriptor, not on whatever the path names by now.
    fd = directory.fileno()
    if fd is not None and os.path.isdir(f"/proc/self/fd/{fd}"):
        return f"/proc/self/fd/{fd}"
    return directory.path


def _identity(directory: Directory) -> tuple[int, int] | None:
    fd = directory.fileno()
    if fd is None:
        return None
    info = os.fstat(fd)
    return (info.st_dev, info.st_ino)


def _existing_parent(path: str) -> str:
    parent = os.path.dirname(path)
    while not os.path.isdir(parent) and os.path.dirname(parent) != parent:
        parent = os.path.dirname(parent)
    return parent
