"""The key layout: ``<prefix>/<user>/<app>/runs/<machine id>/<pid>-<started_at>``.

The user component lets an etcd administrator give each user a role that
reaches only their own prefix. The machine id keeps apart hosts that share a
host name (clones, containers). Beside ``runs/``, each writer keeps one key
under ``removals/`` that names the records it removed itself, so that a
watcher can tell a removal from a lease that expired.
"""

from __future__ import annotations

import re
from typing import Final, NamedTuple

from ..._record import Record, format_timestamp

_RUN_NAME: Final = re.compile(r"([0-9]+)-(.+)\Z")


class RunKey(NamedTuple):
    """The parts of a record's key."""

    machine_id: str
    pid: int
    started_at: str


class KeyLayout:
    """Builds and parses the keys of one user's app under a prefix."""

    def __init__(self, prefix: str, user: str, app: str) -> None:
        self.app_prefix = f"{prefix}/{user}/{app}/"
        self.runs = f"{self.app_prefix}runs/"
        self.removals = f"{self.app_prefix}removals/"

    def run_key(self, record: Record, machine_id: str) -> str:
        """Return the key of *record*, published from machine *machine_id*."""
        return f"{self.runs}{machine_id}/{record.pid}-{format_timestamp(record.started_at)}"

    def pid_prefix(self, machine_id: str, pid: int) -> str:
        """Return the prefix of every key of *pid* on machine *machine_id*."""
        return f"{self.runs}{machine_id}/{pid}-"

    def removal_key(self, machine_id: str, lease: int) -> str:
        """Return the key where the writer holding *lease* names the records it removed."""
        return f"{self.removals}{machine_id}/{lease:x}"

    def parse_run_key(self, key: str) -> RunKey | None:
        """Return the parts of a key under ``runs/``, or None when it is not a record's key."""
        if not key.startswith(self.runs):
            return None
        machine_id, _, name = key[len(self.runs) :].partition("/")
        match = _RUN_NAME.match(name)
        if not machine_id or match is None:
            return None
        return RunKey(machine_id, int(match.group(1)), match.group(2))
