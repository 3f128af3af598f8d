"""The plain-Python reference: the floor for listing live records in Python.

It does what any short script would: list the directory, read each
``*.json`` file, decode it and probe its pid with signal 0. It checks no
process identity (a reused pid counts as live), no lock, no owner, no size
limit and no field types, so it is the cost of the work every reader must do.
"""

from __future__ import annotations

import json
import os
from typing import Any


def list_live(directory: str) -> list[dict[str, Any]]:
    """Return the decoded records in *directory* whose pid exists."""
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
