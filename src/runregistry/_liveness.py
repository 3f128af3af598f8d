"""Whether a record's process is still the one that wrote it: the one liveness judge.

Every reader, in both backends and in every command, calls :func:`judge`. It
returns a :class:`Liveness` whose ``reason`` is one short code; the same codes
name why ``watch`` reports a stop.

A pid alone does not identify a process: after a crash the pid is reused, and
after a reboot pids are counted again. So a record is live only when

* its writer still holds the flock on the record file (records with
  ``lock: "flock"``, written by this library) and its pid exists, or
* for records without a lock (docker-agent's, or ``runregistry exec``'s), its
  pid exists, is not a zombie, and started no later than the record's
  ``started_at`` (plus :data:`START_TIME_TOLERANCE`), and ``started_at`` is not
  before the last boot. Go's zero time skips both time checks.

``EPERM`` from a probe means the process exists: it belongs to another user.
A record written on another host (its ``host`` field differs from ours) is
neither live nor stale but ``unknown``: a home directory shared over NFS shows
records whose pids mean nothing here, and they must never be deleted.

On Windows, ``os.kill(pid, 0)`` would send CTRL_C_EVENT to the target, so
processes are only inspected through psutil, and records are judged by
identity because Windows has no flock.
"""

from __future__ import annotations

import errno
import os
import sys
import time
from datetime import datetime, timezone
from typing import Final, Literal, NamedTuple

from ._record import LOCK_FLOCK, ZERO_TIME, Record

State = Literal["live", "stale", "unknown"]

LIVE: Final = "live"
STALE: Final = "stale"
UNKNOWN: Final = "unknown"

# Reason codes, shared with watch events.
RUNNING: Final = "running"
EXITED: Final = "exited"
PID_REUSED: Final = "pid-reused"
BEFORE_BOOT: Final = "before-boot"
LOCK_RELEASED: Final = "lock-released"
OTHER_HOST: Final = "other-host"
REMOVED: Final = "removed"
LEASE_EXPIRED: Final = "lease-expired"

# How much later than a record's started_at its process may appear to have
# started, in seconds. Writers set started_at after their process started, so
# only measurement error needs room. Linux start times have clock-tick (10 ms)
# resolution and are converted to wall-clock time through the boot time, which
# shifts when NTP slews the clock. macOS and Windows report similar precision.
# NOTE: a wall clock stepped forward by more than this after a record without a
# lock was written (a machine without a battery-backed clock syncing late)
# makes its live process look like a reused pid.
START_TIME_TOLERANCE: Final = 1.0


class Liveness(NamedTuple):
    """The judgement on one record: its state, a reason code and a sentence for people."""

    state: State
    reason: str
    detail: str

    @property
    def live(self) -> bool:
        """Whether the record's process is running."""
        return self.state == LIVE


class ProcessInfo(NamedTuple):
    """The operating system's report on one pid: existence, zombie state and start time."""

    exists: bool
    zombie: bool
    # Seconds since the epoch, or None when the platform does not report it.
    start_time: float | None


def judge(record: Record, fd: int | None = None) -> Liveness:
    """Judge whether *record*'s process is running and is the one that wrote it.

    *fd* is an open descriptor of the record file, read-only is enough, and
    is needed to probe the writer's lock. Without it, or where the file system
    cannot report the lock, a locked record is judged by its pid and start
    time like any other.
    """
    if record.host is not None and record.host != local_hostname():
        return Liveness(UNKNOWN, OTHER_HOST, f"written on host {record.host!r}, not on this host")

    if fd is not None and record.lock == LOCK_FLOCK:
        free = lock_is_free(fd)
        if free:
            return Liveness(STALE, LOCK_RELEASED, "the writer's lock on the record was released")
        # A held lock proves that the writer, or a fork of it, is alive, and a
        # process that reused the pid can never hold it. The pid check covers
        # a fork that outlived the writer.
        if free is not None:
            if pid_exists(record.pid):
                return Liveness(LIVE, RUNNING, f"process {record.pid} holds the record's lock")
            return Liveness(STALE, EXITED, f"no process {record.pid}")

    return judge_identity(record)


def judge_identity(record: Record) -> Liveness:
    """Judge *record* by its pid, the process start time and the boot time alone."""
    checks_time = record.started_at != ZERO_TIME
    started = record.started_at.timestamp() if checks_time else 0.0
    if checks_time and started < boot_time() - START_TIME_TOLERANCE:
        return Liveness(STALE, BEFORE_BOOT, "the record was written before the last boot")

    info = process_info(record.pid)
    if not info.exists:
        return Liveness(STALE, EXITED, f"no process {record.pid}")
    if info.zombie:
        return Liveness(STALE, EXITED, f"process {record.pid} is a zombie: it exited")
    if checks_time and info.start_time is not None:
        late = info.start_time - started
        if late > START_TIME_TOLERANCE:
            return Liveness(
                STALE,
                PID_REUSED,
                f"process {record.pid} started {late:.0f} s after the record was written, "
                "so it reused the pid",
            )
    return Liveness(LIVE, RUNNING, f"process {record.pid} is running")


def local_hostname() -> str:
    """Return this machine's host name, as ``socket.gethostname()`` would."""
    global _hostname  # noqa: PLW0603 - computed once, then read on every judgement
    if _hostname is None:
        if hasattr(os, "uname"):
            # The same kernel value as socket.gethostname(), without importing socket.
            _hostname = os.uname().nodename
        else:
            import socket

            _hostname = socket.gethostname()
    return _hostname


_hostname: str | None = None


def pid_exists(pid: int) -> bool:
    """Whether a process with *pid* exists, zombies included; never sends a signal."""
    if sys.platform == "win32":
        return _process_info_psutil(pid).exists
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        # EPERM: the process exists but belongs to another user.
        return True
    except OverflowError:
        return False
    return True


def process_info(pid: int) -> ProcessInfo:
    """Return whether *pid* exists, whether it is a zombie, and when it started."""
    if sys.platform == "linux":
        return _process_info_linux(pid)
    return _process_info_psutil(pid)


def process_start_time(pid: int) -> float | None:
    """Return when process *pid* started, in seconds since the epoch, or None if unknown."""
    return process_info(pid).start_time


def boot_time() -> float:
    """Return when this machine booted, in seconds since the epoch."""
    if sys.platform == "linux":
        return time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)
    return _boot_time_psutil()


def started_at_now() -> datetime:
    """Return the current time in UTC, the ``started_at`` of a record written now."""
    return datetime.now(timezone.utc)


def _process_info_psutil(pid: int) -> ProcessInfo:
    """Inspect *pid* through psutil: the probe for Windows, macOS and the BSDs."""
    import psutil

    try:
        process = psutil.Process(pid)
        zombie = process.status() == psutil.STATUS_ZOMBIE
        start_time: float | None = process.create_time()
    except psutil.ZombieProcess:
        # A subclass of NoSuchProcess, but the process does exist.
        return ProcessInfo(exists=True, zombie=True, start_time=None)
    except psutil.NoSuchProcess:
        return ProcessInfo(exists=False, zombie=False, start_time=None)
    except psutil.AccessDenied:
        # Like EPERM from kill(): the process exists and belongs to another user.
        return ProcessInfo(exists=True, zombie=False, start_time=None)
    return ProcessInfo(exists=True, zombie=zombie, start_time=start_time)


def _boot_time_psutil() -> float:
    import psutil

    return float(psutil.boot_time())


if sys.platform == "win32":

    def lock_is_free(fd: int) -> bool | None:
        """Whether the writer's lock on *fd*'s file is released, or None when unknown.

        Windows has no flock, and writers there publish records without a lock.
        """
        return None

else:
    import fcntl

    def lock_is_free(fd: int) -> bool | None:
        """Whether the writer's lock on *fd*'s file is released, or None when unknown.

        The probe takes the lock without blocking and releases it at once.
        """
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return False
            # ENOLCK, or EBADF from NFS, which emulates flock with POSIX locks
            # that need a writable descriptor: the lock proves nothing here.
            return None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return True


if sys.platform == "linux":
    _CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK")

    def _process_info_linux(pid: int) -> ProcessInfo:
        """Read *pid*'s state and start time from ``/proc/<pid>/stat``."""
        try:
            fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            # No such process, or one that /proc hides (mounted with hidepid)
            # or cannot show. kill(pid, 0) distinguishes them.
            return ProcessInfo(exists=pid_exists(pid), zombie=False, start_time=None)
        try:
            stat = os.read(fd, 4096)
        except OSError:
            # ESRCH: the process was reaped between open() and read().
            return ProcessInfo(exists=pid_exists(pid), zombie=False, start_time=None)
        finally:
            os.close(fd)

        # The command name in parentheses may itself contain spaces and ")".
        # Only the fields up to the start time are needed, so the other 30 or
        # so are left unsplit.
        fields = stat[stat.rfind(b")") + 2 :].split(maxsplit=20)
        state = fields[0]
        # Clock ticks after boot, counting time spent suspended (Linux 5.5 and later).
        start_time = boot_time() + int(fields[19]) / _CLOCK_TICKS
        return ProcessInfo(exists=True, zombie=state in (b"Z", b"X"), start_time=start_time)
