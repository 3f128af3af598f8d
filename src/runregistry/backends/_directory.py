"""The registry directory as a trust boundary: created private, checked, used by descriptor.

Whoever can write to the registry directory can point clients at a server of
their own, so it must be a directory of the current user that nobody else can
write. After the check, every operation goes through the directory's
descriptor, so swapping the path for a link afterwards redirects nothing.
"""

from __future__ import annotations

import os
import stat
from types import TracebackType
from typing import Final

from .._errors import RegistryError, UnsafeRegistryError
from .._log import get_logger
from .._users import describe_user, user_name

log = get_logger("runregistry.backends.file")

_HAS_DIR_FD: Final = os.open in os.supports_dir_fd and os.scandir in os.supports_fd
O_NOFOLLOW: Final = getattr(os, "O_NOFOLLOW", 0)
O_NONBLOCK: Final = getattr(os, "O_NONBLOCK", 0)
O_NOCTTY: Final = getattr(os, "O_NOCTTY", 0)
_O_CLOEXEC: Final = getattr(os, "O_CLOEXEC", 0)
_O_DIRECTORY: Final = getattr(os, "O_DIRECTORY", 0)
_O_BINARY: Final = getattr(os, "O_BINARY", 0)

# Mode bits that let group or others create, rename or remove entries.
_WRITABLE_BY_OTHERS: Final = stat.S_IWGRP | stat.S_IWOTH


class Directory:
    """An open, verified registry directory; file names are resolved relative to it."""

    def __init__(self, path: str, fd: int | None) -> None:
        self.path = path
        # None where the platform has no directory descriptors (Windows).
        self._fd = fd
        # The path with a trailing separator: file_path() runs for every
        # record of a listing, and concatenation costs a tenth of os.path.join.
        self._prefix = os.path.join(path, "")

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

    def fileno(self) -> int | None:
        """Return the directory's descriptor, or None where the platform has none."""
        return self._fd

    def file_path(self, name: str) -> str:
        """Return the full path of *name*, for messages."""
        return self._prefix + name

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

    A symbolic link is followed only when the link is ours and leads to a
    directory of ours. The checks are made on the opened descriptor, so the
    path cannot be swapped for another directory between check and use.

    :raises UnsafeRegistryError: the directory, or a link to it, belongs to
        another user, or is writable by others and cannot or must not be
        tightened (*repair* is false, the filesystem is read-only, or it is a
        shared directory such as ``/tmp``).
    :raises RegistryError: the path is not a directory or cannot be opened.
    """
    if create:
        _make_private_dirs(path)
    try:
        link_info = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise RegistryError(
            f"cannot inspect registry directory {path}: {exc.strerror}; "
            "check the permissions of its parent directories"
        ) from None

    is_link = stat.S_ISLNK(link_info.st_mode)
    if is_link:
        _check_owner(path, path, link_info)
    elif not stat.S_ISDIR(link_info.st_mode):
        raise _not_a_directory(path)

    if not _HAS_DIR_FD:
        _check_owner(path, path, os.stat(path))
        return Directory(path, None)

    fd = _open_directory_fd(path, follow_link=is_link)
    if fd is None:
        return None
    try:
        # Messages name the directory itself, which is what a fix must change.
        target = os.path.realpath(path) if is_link else path
        _check_directory(fd, path, target, repair=repair)
    except BaseException:
        os.close(fd)
        raise
    return Directory(path, fd)


def _open_directory_fd(path: str, *, follow_link: bool) -> int | None:
    """Open *path* as a directory; None when it vanished since it was inspected."""
    # A path that was no link when inspected is opened with O_NOFOLLOW, so a
    # link swapped in since then is not followed unchecked.
    flags = os.O_RDONLY | _O_DIRECTORY | _O_CLOEXEC | (0 if follow_link else O_NOFOLLOW)
    try:
        return os.open(path, flags)
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        raise _not_a_directory(path) from None
    except OSError as exc:
        raise RegistryError(
            f"cannot open registry directory {path}: {exc.strerror}; "
            "check its permissions, and what else replaces it"
        ) from None


def _check_directory(fd: int, path: str, target: str, *, repair: bool) -> None:
    info = os.fstat(fd)
    _check_owner(path, target, info)
    if stat.S_IMODE(info.st_mode) & 0o077:
        _tighten(fd, path, target, info, repair=repair)


def _not_a_directory(path: str) -> RegistryError:
    return RegistryError(
        f"registry path {path} exists but is not a directory: "
        "remove or rename it, or choose another directory with --dir or RUNREGISTRY_DIR"
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
            # Created by someone else meanwhile: the checks after opening it
            # decide whether to trust it.
            continue
        except OSError as exc:
            raise RegistryError(
                f"cannot create registry directory {folder}: {exc.strerror}; "
                "create it yourself or choose another directory"
            ) from None
        _set_private_mode(folder)
        log.debug("created %s with mode 0700", folder)


def _set_private_mode(folder: str) -> None:
    # mkdir's mode is reduced by the umask, and 0700 is meant exactly. The
    # change goes through a descriptor opened without following links, so a
    # link swapped in after mkdir never passes the mode on to its target.
    if not hasattr(os, "fchmod"):
        return
    try:
        fd = os.open(folder, os.O_RDONLY | _O_DIRECTORY | _O_CLOEXEC | O_NOFOLLOW)
    except OSError as exc:
        log.debug("left the mode of %s as created: %s", folder, exc)
        return
    try:
        os.fchmod(fd, 0o700)
    finally:
        os.close(fd)


def _check_owner(path: str, target: str, info: os.stat_result) -> None:
    """Raise unless *info*, of the link *path* or of the directory *target*, is ours."""
    if not hasattr(os, "geteuid"):
        return
    uid = os.geteuid()
    if info.st_uid == uid:
        return
    if stat.S_ISLNK(info.st_mode):
        subject = f"symbolic link {path} to the registry directory"
        fix = "remove the link, or replace it with a link or a directory of your own"
    else:
        subject = _subject(path, target)
        fix = f"if it should be yours, fix it with: sudo chown {user_name(uid)} {_quoted(target)}"
    raise UnsafeRegistryError(
        f"{subject} is owned by {describe_user(info.st_uid)}, not by the current user "
        f"{describe_user(uid)}, and has mode {stat.filemode(info.st_mode)}, so that user "
        f"could plant records; {fix}, or choose a directory of your own with --dir or "
        "RUNREGISTRY_DIR",
        path,
    )


def _tighten(fd: int, path: str, target: str, info: os.stat_result, *, repair: bool) -> None:
    """Set a directory of ours to 0700, or raise when it stays writable by others."""
    subject = _subject(path, target)
    mode = stat.S_IMODE(info.st_mode)
    writable = bool(mode & _WRITABLE_BY_OTHERS)
    if writable and mode & stat.S_ISVTX:
        # A sticky, group- or world-writable directory is shared on purpose,
        # like /tmp. Taking it private would break everyone else who uses it.
        raise UnsafeRegistryError(
            f"{subject} is a shared directory (mode {stat.filemode(info.st_mode)}) where "
            "other users can create files, so they could plant records; choose a private "
            "directory, for example a folder of your own inside it, with --dir or RUNREGISTRY_DIR",
            path,
        )
    if not repair:
        if writable:
            raise _writable_error(path, target, info, "")
        return

    foreign = _foreign_entry(fd)
    if foreign is not None:
        # A mistaken --dir (a home or a system folder) must never lose its
        # mode, so only a folder that contains nothing but records is changed.
        if writable:
            why = f" and holds {foreign!r}, which is not a record, so its mode was left alone"
            raise _writable_error(path, target, info, why)
        log.debug(
            "left directory %s at mode %o: it contains %r, which is not a record",
            path,
            mode,
            foreign,
        )
        return

    try:
        os.fchmod(fd, 0o700)
    except OSError as exc:
        # For example on a read-only filesystem. A directory that others could write
        # once it is remounted is not trusted, but one they can only read is.
        if writable:
            why = f" and cannot be tightened ({exc.strerror})"
            raise _writable_error(path, target, info, why) from exc
        log.debug("left registry directory %s at mode %o: %s", path, mode, exc.strerror)
        return
    log.debug("tightened registry directory %s from mode %o to 700", path, mode)


def _foreign_entry(fd: int) -> str | None:
    """Return the name of an entry that is neither a record nor a temporary file, or None."""
    try:
        names = os.listdir(fd)
    except (OSError, TypeError):
        # TypeError: the platform cannot list a directory by descriptor.
        return None
    for name in names:
        if not name.endswith((".json", ".tmp")):
            return name
    return None


def _writable_error(path: str, target: str, info: os.stat_result, why: str) -> UnsafeRegistryError:
    mode = stat.filemode(info.st_mode)
    return UnsafeRegistryError(
        f"{_subject(path, target)} is writable by group or others (mode {mode}){why}, "
        f"so another user could plant records; fix it with: chmod 700 {_quoted(target)}",
        path,
    )


def _subject(path: str, target: str) -> str:
    if target == path:
        return f"registry directory {path}"
    return f"registry directory {target}, the target of link {path},"


def _quoted(path: str) -> str:
    import shlex

    return shlex.quote(path)
