"""Output shared by the commands: records as JSON objects, table rows and ages."""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .._liveness import Liveness
    from .._record import Record


def record_json(
    record: Record, liveness: Liveness | None = None, *, show_token: bool = False
) -> dict[str, Any]:
    """Return *record* as ``list --json`` prints it: the stored fields plus its liveness.

    The ``token`` key is left out unless *show_token* is true.
    """
    data = record.to_dict(include_token=show_token)
    if liveness is not None:
        data["state"] = liveness.state
        data["reason"] = liveness.reason
    return data


def print_json(value: object) -> None:
    """Print *value* as indented JSON on stdout."""
    sys.stdout.write(json.dumps(value, indent=2, ensure_ascii=False) + "\n")


def age(started_at: datetime, now: datetime | None = None) -> str:
    """Return how long ago *started_at* was, such as ``12s ago`` or ``3h ago``."""
    if now is None:
        now = datetime.now(timezone.utc)
    seconds = int((now - started_at).total_seconds())
    if seconds < 0:
        return "in the future"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"
