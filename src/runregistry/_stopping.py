"""Stopping a run without ever signalling a process that is not the run's.

On Linux the process is pinned with a pidfd before its identity is checked,
and the signals go through that pidfd: if the pid is reused after the check,
the signal fails instead of reaching the newcomer. Elsewhere the identity is
checked right before ``kill()``, which leaves a window of a few microseconds.
"""

from __future__ import annotations

import math
import os
import select
import signal
import sys
import time
from types import TracebackType
from typing import TYPE_CHECKING, Final

from ._errors import AmbiguousRunError, NoRunError, StillRunningError, StopRefusedError
from ._liveness import judge_identity, process_info
from ._log import get_logger
from ._lookup import resolve
from ._users import describe_user
from ._watching import run_key

if TYPE_CHECKING:
    from ._base import BaseRegistry, Entry
    from ._record import Record

log = get_logger(__name__)

# Seconds to wait for the exit after SIGKILL, which only a process stuck in
# the kernel (state D) survives for long.
KILL_WAIT: Final = 5.0

# Seconds between checks where no pidfd reports the exit.
_EXIT_POLL_INTERVAL: Final = 0.05


def stop(
    registry: BaseRegistry, target: str, *, timeout: float = 10.0, force: bool = False
) -> Record:
    """Stop the live run that *target* names; see :meth:`BaseRegistry.stop`.

    Sends SIGTERM, waits up to *timeout* seconds for the process to exit (a
    zombie has exited), then, with *force*, sends SIGKILL. Returns the run's
    record once its process is gone, after removing the record if it is stale.

    :raises NoRunError: no live run and no other record matches *target*.
    :raises AmbiguousRunError: several live runs match.
    :raises StopRefusedError: the target is empty, matches only a record that
        is not live, or names pid 1, this process, a process of another user,
        or a run on another host.
    :raises StillRunningError: the process still runs after the wait.
    :raises ValueError: *timeout* is negative or not a number.
    """
    if not timeout >= 0:
        raise ValueError(f"timeout must be a number of seconds, 0 or more, got {timeout!r}")
    record = _resolve_live(registry, target)
    _check_allowed(registry, record, target)

    with _Process.open(record) as process:
        if not process.exited() and _still_the_run(registry, record, process, target):
            _terminate(process, record, target, timeout=timeout, force=force)

    # Only for its side effect: a file registry removes the record once it is stale.
    registry._records_for_pid(record.pid)
    return record


def _resolve_live(registry: BaseRegistry, target: str) -> Record:
    """Resolve *target* among live runs, refusing one that matches only a record that is not."""
    if not target.strip():
        raise StopRefusedError(
            "refusing to stop an empty target, which would mean the latest run: "
            "name the run by pid, address or session id",
            target,
        )
    entries = [entry for entry in registry.entries(prune=False) if entry.record is not None]
    live = [
        entry.record
        for entry in entries
        if entry.record is not None and entry.liveness is not None and entry.liveness.live
    ]
    try:
        return resolve(target, live, where=registry.location, how_to_start=registry.how_to_start)
    except NoRunError:
        other = _matching_entry(target, [entry for entry in entries if entry.record not in live])
        if other is None:
            raise
        raise _not_live_refusal(target, other) from None


def _matching_entry(target: str, entries: list[Entry]) -> Entry | None:
    records = [entry.record for entry in entries if entry.record is not None]
    try:
        found = resolve(target, records, where="", how_to_start="")
    except NoRunError:
        return None
    except AmbiguousRunError:
        # Several records that are not live: any one of them explains the refusal.
        found = next(record for record in records if record is not None)
    return next(entry for entry in entries if entry.record is found)


def _not_live_refusal(target: str, entry: Entry) -> StopRefusedError:
    assert entry.liveness is not None
    liveness = entry.liveness
    if liveness.state == "unknown":
        advice = "stop it on the host that wrote it"
    else:
        advice = (
            "its pid may belong to another process now; "
            "remove stale records with: runregistry prune"
        )
    return StopRefusedError(
        f"refusing to stop {target!r}: it matches no live run, only the record {entry.path}, "
        f"which is {liveness.state} ({liveness.reason}: {liveness.detail}); "
        f"nothing was signalled; {advice}",
        target,
    )


def _check_allowed(registry: BaseRegistry, record: Record, target: str) -> None:
    reason = ""
    if not registry.is_local(record):
        machine = f" (machine id {record.machine_id})" if record.machine_id else ""
        reason = f"it runs on host {record.host}{machine}, not on this machine; stop it there"
    elif record.pid == 1:
        reason = "it names pid 1, the init process"
    elif record.pid == os.getpid():
        reason = f"it names this process (pid {record.pid})"
    if reason:
        raise StopRefusedError(f"refusing to stop {target!r}: {reason}", target)


def _still_the_run(registry: BaseRegistry, record: Record, process: _Process, target: str) -> bool:
    """Whether *process* is still *record*'s run, by the rules that ``list`` applies.

    Returns False when the run ended since it was resolved. The checks run
    after the pidfd was opened, and the process is seen alive after them, so
    what they read is about the process the pidfd names.
    """
    current = registry._records_for_pid(record.pid)
    if not any(run_key(other) == run_key(record) for other in current):
        return False
    if not judge_identity(record).live:
        return False
    owner = _real_uid(record.pid)
    if process.exited():
        return False
    if owner is not None and hasattr(os, "getuid") and owner != os.getuid():
        raise StopRefusedError(
            f"refusing to stop {target!r}: process {record.pid} belongs to {describe_user(owner)}, "
            f"not to the current user {describe_user(os.getuid())}; stop it as that user",
            target,
        )
    return True


def _terminate(
    process: _Process, record: Record, target: str, *, timeout: float, force: bool
) -> None:
    process.send(signal.SIGTERM, target)
    if process.wait(timeout):
        return
    if not force:
        raise StillRunningError(
            f"process {record.pid} ({record}) still runs {timeout:g} s after SIGTERM; "
            "wait longer with --timeout, or add --force to send SIGKILL",
            record.pid,
        )

    # Windows has no SIGKILL; os.kill() with SIGTERM there ends the process at once.
    process.send(getattr(signal, "SIGKILL", signal.SIGTERM), target)
    if not process.wait(KILL_WAIT):
        raise StillRunningError(
            f"process {record.pid} ({record}) still runs {KILL_WAIT:g} s after SIGKILL, "
            "so it is probably stuck in the kernel; "
            f"check its state with: ps -o stat= -p {record.pid}",
            record.pid,
        )


class _Process:
    """A process to signal: pinned by a pidfd where the platform has them, else by its pid."""

    def __init__(self, record: Record, pidfd: int | None, exited: bool) -> None:
        self._record = record
        self._pidfd = pidfd
        self._known_exited = exited

    @classmethod
    def open(cls, record: Record) -> _Process:
        """Pin *record*'s process with a pidfd where the platform has them."""
        if not hasattr(os, "pidfd_open"):
            return cls(record, None, exited=False)
        try:
            return cls(record, os.pidfd_open(record.pid), exited=False)
        except ProcessLookupError:
            return cls(record, None, exited=True)
        except OSError as exc:
            # ENOSYS before Linux 5.3, EPERM under some seccomp filters.
            log.debug("no pidfd for pid %d, signalling by pid: %s", record.pid, exc)
            return cls(record, None, exited=False)

    def exited(self) -> bool:
        """Whether the process has exited; a zombie has."""
        if self._known_exited:
            return True
        if self._pidfd is not None:
            return _readable(self._pidfd, 0.0)
        info = process_info(self._record.pid)
        return not info.exists or info.zombie or not judge_identity(self._record).live

    def send(self, signum: int, target: str) -> None:
        """Send *signum*; a process that exited meanwhile is left alone."""
        try:
            if self._pidfd is not None:
                signal.pidfd_send_signal(self._pidfd, signum)
            else:
                os.kill(self._record.pid, signum)
        except ProcessLookupError:
            self._known_exited = True
        except PermissionError:
            raise StopRefusedError(
                f"refusing to stop {target!r}: no permission to signal process {self._record.pid}; "
                "stop it as the user it runs as",
                target,
            ) from None

    def wait(self, timeout: float) -> bool:
        """Wait up to *timeout* seconds for the exit; return whether it happened."""
        if self._pidfd is not None and not self._known_exited:
            return _readable(self._pidfd, timeout)
        deadline = time.monotonic() + timeout
        while not self.exited():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            time.sleep(min(_EXIT_POLL_INTERVAL, remaining))
        return True

    def __enter__(self) -> _Process:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None


def _readable(fd: int, timeout: float) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(max(0, math.ceil(timeout * 1000))))


def _real_uid(pid: int) -> int | None:
    """Return the real user id of process *pid*, or None when the platform does not tell."""
    if sys.platform == "linux":
        try:
            with open(f"/proc/{pid}/status", "rb") as status:
                for line in status:
                    if line.startswith(b"Uid:"):
                        return int(line.split()[1])
        except OSError:
            return None
        return None
    if sys.platform == "win32":
        # TODO: compare the owner's SID on Windows; until then another user's process is
        # refused only when signalling it fails.
        return None
    import psutil

    try:
        return int(psutil.Process(pid).uids().real)
    except psutil.Error:
        return None
