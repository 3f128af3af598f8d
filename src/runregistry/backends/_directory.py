"""The registry directory as a trust boundary: created private, checked, used by descriptor.

Whoever can write to the registry directory can point clients at a server of
their own, so it must be a directory of the current user that nobody else can
write. After the check, every operation goes through the directory's
descriptor, so swapping the path for a link afterwards redirects nothing.
"""

from __future__ import annotations

import logging
import os
import stat
from types import TracebackType
from typing import Final

from .._errors import RegistryError, UnsafeRegistryError

log = logging.getLogger("runregistry.backends.file")

_HAS_DIR_FD: Final = os.open in os.supports_dir_fd and os.scandir in os.supports_fd
O_NOFOLLOW: Final = getattr(os, "O_NOFOLLOW", 0)
O_NONBLOCK: Final = getattr(os, "O_NONBLOCK", 0)
_O_CLOEXEC: Final = getattr(os, "O_CLOEXEC", 0)
_O_DIRECTORY: Final = getattr(os, "O_DIRECTORY", 0)
_O_BINARY: Final = getattr(os, "O_BINARY", 0)


class Directory:
    """An open, verified registry directory; file names are resolved relative to it."""

    def __init__(self, path: str, fd: int | None) -> None:
        self.path = path
        # None where the platform has no directory descriptors (Windows).
        self._fd = fd

    def __enter__(self) -> Directory:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def file_path(self, name: str) -> str:
        """Return the full path of *name*, for messages."""
        return os.path.join(self.path, name)

    def names(self) -> list[str]:
        """Return the names of the entries in the directory."""
        try:
            with os.scandir(self._fd if self._fd is not None else self.path) as listing:
                return [item.name for item in listing]
        except OSError as exc:
            raise RegistryError(
                f"cannot list registry directory {self.path}: {exc.strerror}; "
                "check that it exists and is readable"
            ) from None

    def open(self, name: str, flags: int, mode: int = 0o600) -> int:
        """Open *name* with *flags*; the descriptor is never inherited by child processes."""
        if self._fd is not None:
            return os.open(name, flags | _O_CLOEXEC, mode, dir_fd=self._fd)
        return os.open(self.file_path(name), flags | _O_BINARY, mode)

    def lstat(self, name: str) -> os.stat_result:
        """Return the status of *name* itself, not of what a link points to."""
        if self._fd is not None:
            return os.stat(name, dir_fd=self._fd, follow_symlinks=False)
        return os.lstat(self.file_path(name))

    def replace(self, source: str, target: str) -> None:
        """Rename *source* over *target* in one atomic step."""
        if self._fd is not None:
            os.replace(source, target, src_dir_fd=self._fd, dst_dir_fd=self._fd)
        else:
            os.replace(self.file_path(source), self.file_path(target))

    def link(self, source: str, target: str) -> None:
        """Give *source*'s file the name *target*; fails if *target* exists."""
        if self._fd is not None:
            os.link(source, target, src_dir_fd=self._fd, dst_dir_fd=self._fd, follow_symlinks=False)
        else:
            os.link(self.file_path(source), self.file_path(target))

    def unlink(self, name: str) -> bool:
        """Remove *name*; return whether it was removed, never raising."""
        try:
            if self._fd is not None:
                os.unlink(name, dir_fd=self._fd)
            else:
                os.unlink(self.file_path(name))
        except OSError:
            return False
        return True


def open_directory(path: str, *, create: bool, repair: bool) -> Directory | None:
    """Open the registry directory at *path* after checking that it is safe to trust.

    Returns None when the directory does not exist and *create* is false. With
    *create*, it and any missing parents are created 0700. With *repair*, a
    directory of ours with looser modes is tightened to 0700; without it (as
    ``doctor`` needs) a directory writable by others raises.

    :raises UnsafeRegistryError: the directory, or a link to it, belongs to
        another user, or is writable by others and *repair* is false.
    :raises RegistryError: the path is not a directory or cannot be opened.
    """
    if create:
        _make_private_dirs(path)
    try:
        link_info = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise RegistryError(f"cannot inspect registry directory {path}: {exc.strerror}") from None

    # A link is followed only when it is ours and leads to a directory of ours,
    # which the checks on the opened descriptor below establish.
    if stat.S_ISLNK(link_info.st_mode):
        _check_owner(path, link_info, "symbolic link")
    elif not stat.S_ISDIR(link_info.st_mode):
        raise _not_a_directory(path)

    if not _HAS_DIR_FD:
        info = os.stat(path)
        _check_owner(path, info, "directory")
        return Directory(path, None)

    try:
        fd = os.open(path, os.O_RDONLY | _O_DIRECTORY | _O_CLOEXEC)
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        raise _not_a_directory(path) from None
    except OSError as exc:
        raise RegistryError(
            f"cannot open registry directory {path}: {exc.strerror}; check its permissions"
        ) from None

    try:
        info = os.fstat(fd)
        _check_owner(path, info, "directory")
        if stat.S_IMODE(info.st_mode) & 0o077:
            _tighten(fd, path, info, repair=repair)
    except BaseException:
        os.close(fd)
        raise
    return Directory(path, fd)


def _not_a_directory(path: str) -> RegistryError:
    return RegistryError(
        f"registry path {path} exists but is not a directory: "
        "remove or rename it, or choose another directory"
    )


def _make_private_dirs(path: str) -> None:
    """Create *path* and any missing parents, each 0700 whatever the umask."""
    missing = []
    current = path
    while not os.path.lexists(current):
        missing.append(current)
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent

    for folder in reversed(missing):
        try:
            os.mkdir(folder, 0o700)
        except FileExistsError:
            continue
        except OSError as exc:
            raise RegistryError(
                f"cannot create registry directory {folder}: {exc.strerror}; "
                "create it yourself or choose another directory"
            ) from None
        # mkdir's mode is reduced by the umask; 0700 is meant exactly.
        os.chmod(folder, 0o700)
        log.debug("created %s with mode 0700", folder)


def _check_owner(path: str, info: os.stat_result, what: str) -> None:
    if not hasattr(os, "geteuid"):
        return
    uid = os.geteuid()
    if info.st_uid != uid:
        raise UnsafeRegistryError(
            f"registry {what} {path} is owned by uid {info.st_uid} with mode "
            f"{stat.filemode(info.st_mode)}, not by the current user (uid {uid}), so another "
            "user could plant records there; use a directory of your own, for example with "
            "--dir or RUNREGISTRY_DIR",
            path,
        )


def _tighten(fd: int, path: str, info: os.stat_result, *, repair: bool) -> None:
    mode = stat.S_IMODE(info.st_mode)
    if repair:
        os.fchmod(fd, 0o700)
        log.debug("tightened registry directory %s from mode %o to 700", path, mode)
        return
    if mode & 0o022:
        raise UnsafeRegistryError(
            f"registry directory {path} is writable by group or others (mode "
            f"{stat.filemode(info.st_mode)}), so another user could plant records; "
            f"fix it with: chmod 700 {path}",
            path,
        )
