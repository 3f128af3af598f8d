"""Helpers for the command-line tests: records of live processes, and the installed entry points."""

from __future__ import annotations

import sys
from datetime import datetime, timezone
from pathlib import Path

from runregistry import Record, Registry

# The console script that pip installed beside this interpreter.
RUNREGISTRY = Path(sys.executable).with_name("runregistry")

# Both ways of starting the command line, which must behave alike.
ENTRY_POINTS = ([str(RUNREGISTRY)], [sys.executable, "-m", "runregistry"])
ENTRY_POINT_IDS = ("console-script", "python-m")

# A token that tests look for in output where it must not appear.
TOKEN = "tok-Secret-0123456789abcdefghijklmnopqrstuvwxyzABCDEF"


def publish(
    registry: Registry,
    pid: int,
    session_id: str,
    *,
    agent: str = "test-agent",
    addr: str | None = None,
    token: str | None = None,
    host: str | None = None,
    started_at: datetime | None = None,
) -> Record:
    """Write a record for process *pid*, started now unless *started_at* gives another time."""
    record = Record(
        pid,
        addr or f"http://127.0.0.1:{20000 + pid % 40000}",
        session_id,
        agent,
        started_at or datetime.now(timezone.utc),
        host=host,
        token=token,
    )
    return registry.write(record).record
