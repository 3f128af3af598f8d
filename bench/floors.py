"""Parts of ``list()`` timed alone, to show where its time goes.

These are not peers: each makes only some of the work of a listing. The
system-call loops make, per record, exactly the calls that runregistry's
``list()`` makes (as of this harness), with no Python logic around them;
what ``list()`` costs above them is the library's own bookkeeping and decoding.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
from collections.abc import Callable

from runregistry import Record

# The flags runregistry opens record files with.
_RECORD_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_READ_SIZE = 64 * 1024 + 1


def locked_record_calls(directory: str) -> int:
    """Open, fstat, read, probe the flock, probe the pid and close each record; return the count.

    The pid is taken from the file name, which is how runregistry names records.
    """
    count = 0
    directory_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for name in os.listdir(directory_fd):
            fd = os.open(name, _RECORD_FLAGS, dir_fd=directory_fd)
            try:
                os.fstat(fd)
                os.read(fd, _READ_SIZE)
                _probe_lock(fd)
                os.kill(int(name[: -len(".json")]), 0)
            finally:
                os.close(fd)
            count += 1
    finally:
        os.close(directory_fd)
    return count


def identity_record_calls(directory: str) -> int:
    """Open, fstat, read and close each record, then read its pid's ``/proc/<pid>/stat``."""
    count = 0
    directory_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for name in os.listdir(directory_fd):
            fd = os.open(name, _RECORD_FLAGS, dir_fd=directory_fd)
            try:
                os.fstat(fd)
                os.read(fd, _READ_SIZE)
            finally:
                os.close(fd)
            stat_fd = os.open(f"/proc/{name[: -len('.json')]}/stat", os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.read(stat_fd, 4096)
            finally:
                os.close(stat_fd)
            count += 1
    finally:
        os.close(directory_fd)
    return count


def _probe_lock(fd: int) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise
        return
    fcntl.flock(fd, fcntl.LOCK_UN)


def record_contents(directory: str) -> list[bytes]:
    """Return the bytes of every record file in *directory*."""
    contents = []
    for name in os.listdir(directory):
        with open(os.path.join(directory, name), "rb") as file:
            contents.append(file.read())
    return contents


def json_loads_all(contents: list[bytes]) -> Callable[[], int]:
    """Return a call that decodes every record's JSON and returns the count."""
    return lambda: len([json.loads(data) for data in contents])


def record_from_json_all(contents: list[bytes]) -> Callable[[], int]:
    """Return a call that decodes and validates every record as runregistry does."""
    return lambda: len([Record.from_json(data) for data in contents])
