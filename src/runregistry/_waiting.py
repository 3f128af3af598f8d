"""Waiting until a target names a live run, on the same change notifications as watch."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from ._errors import NoRunError, WaitTimeoutError
from ._liveness import started_at_now
from ._lookup import resolve
from ._watching import Watcher

if TYPE_CHECKING:
    from datetime import datetime

    from ._base import BaseRegistry
    from ._record import Record


def wait(registry: BaseRegistry, target: str, *, timeout: float | None, new: bool) -> Record:
    """Block until *target* resolves to a live run of *registry*; see :meth:`BaseRegistry.wait`.

    The wait sleeps on the registry's change source (inotify for a file
    registry on Linux), so it uses no CPU until something changes.

    :raises WaitTimeoutError: *timeout* seconds passed first.
    :raises AmbiguousRunError: the target matches several live runs.
    :raises ValueError: *timeout* is negative or not a number.
    """
    if timeout is not None and not timeout >= 0:
        raise ValueError(f"timeout must be a number of seconds, 0 or more, got {timeout!r}")
    began = started_at_now()
    deadline = None if timeout is None else time.monotonic() + timeout

    watcher = Watcher(registry.change_source())
    try:
        watcher.start()
        while True:
            found = _match(registry, target, watcher.live_records(), began if new else None)
            if found is not None:
                return found
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise _timed_out(registry, target, timeout or 0.0, new=new)
            watcher.wait(remaining)
    finally:
        watcher.close()


def _match(
    registry: BaseRegistry, target: str, records: list[Record], since: datetime | None
) -> Record | None:
    """Return the run *target* names among *records* started at or after *since*, or None."""
    if since is not None:
        records = [record for record in records if record.started_at >= since]
    try:
        return resolve(target, records, where=registry.location, how_to_start=registry.how_to_start)
    except NoRunError:
        return None


def _timed_out(
    registry: BaseRegistry, target: str, timeout: float, *, new: bool
) -> WaitTimeoutError:
    what = f"a live run matching {target!r}" if target.strip() else "a live run"
    if new:
        what += " started after the wait began"
    return WaitTimeoutError(
        f"timed out after {timeout:g} s waiting for {what} in {registry.location}; "
        "check that the run started and registers in this registry (runregistry dir "
        "prints it), or wait longer with --timeout",
        target,
        timeout,
    )
