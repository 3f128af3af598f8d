"""The plain-Python reference: the floor for listing live records in Python.

It does what the shortest fast script would: list the directory, read each
``*.json`` file with ``os.open`` and ``os.read``, decode it and probe its pid
with signal 0. It checks no process identity (a reused pid counts as live), no
lock, no owner, no size limit and no field types, so it is the cost of the
work that every reader must do.

:func:`list_live_buffered` is the same loop with the built-in ``open()``, as
most scripts would write it. Its buffered file object costs more system calls
and allocations per file, so it is shown for context and never used as the
floor.
"""

from __future__ import annotations

import json
import os
from typing import Any

# Larger than any record; one read returns a whole record file.
_READ_SIZE = 65536


def list_live(directory: str) -> list[dict[str, Any]]:
    """Return the decoded records in *directory* whose pid exists."""
    live = []
    with os.scandir(directory) as listing:
        for entry in listing:
            if not entry.name.endswith(".json"):
                continue
            try:
                fd = os.open(entry.path, os.O_RDONLY)
                try:
                    data = os.read(fd, _READ_SIZE)
                finally:
                    os.close(fd)
                record = json.loads(data)
            except (OSError, ValueError):
                continue
            if _pid_exists(record.get("pid")):
                live.append(record)
    return live


def list_live_buffered(directory: str) -> list[dict[str, Any]]:
    """Return the same as :func:`list_live`, reading each file with the built-in ``open()``."""
    live = []
    with os.scandir(directory) as listing:
        for entry in listing:
            if not entry.name.endswith(".json"):
                continue
            try:
                with open(entry.path, "rb") as file:
                    record = json.loads(file.read())
            except (OSError, ValueError):
                continue
            if _pid_exists(record.get("pid")):
                live.append(record)
    return live


def _pid_exists(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
