"""Run events shared by every backend: which runs started and stopped, and why.

A backend supplies a :class:`ChangeSource`: a snapshot of its slots (the
places that each keep one record, such as a record file or an etcd key) and
notifications of slots that changed. The :class:`Watcher` here turns them into
:class:`RunEvent` objects. It identifies a run by its pid, session id and
``started_at``, so rewriting a record is not a new start, and it reports
exactly one start and at most one stop per run. It waits for the exit of every
live local run on a pidfd (Linux 5.3 and later), so a run killed without
cleanup is reported at once, without polling its record.

Where the source gives no descriptor to wait on, or a pidfd cannot be opened,
the watcher reads every slot again each :data:`POLL_INTERVAL` seconds.
"""

from __future__ import annotations

import contextlib
import math
import os
import select
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import AsyncGenerator, Collection, Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Final, Literal, NamedTuple

from ._liveness import (
    EXITED,
    LIVE,
    REMOVED,
    Liveness,
    judge_identity,
    started_at_now,
)
from ._log import get_logger

if TYPE_CHECKING:
    import asyncio
    from types import TracebackType

    from ._base import BaseRegistry
    from ._record import Record

log = get_logger(__name__)

# Seconds between two full reads of every slot where nothing notifies of
# changes or of process exits. It stays below the 200 ms that a run must stay
# published to be reported, so no such run is missed. A growing interval would
# save little CPU and would miss short runs.
POLL_INTERVAL: Final = 0.1

# TODO: wait on kqueue (EVFILT_PROC with NOTE_EXIT) on macOS and the BSDs; until
# then a death there is seen only at the next full read, every POLL_INTERVAL.
_HAS_PIDFD: Final = hasattr(os, "pidfd_open")

EventKind = Literal["started", "stopped", "synced"]

# A run is one publication of a record: its pid, session id and started_at.
RunKey = tuple[int, str, datetime]


class RunEvent(NamedTuple):
    """A run that started or stopped, or the end of the initial listing.

    ``kind`` is ``"started"``, ``"stopped"`` or ``"synced"``. ``reason`` is None
    for a start and, for a stop, one code: ``removed``, ``exited``,
    ``pid-reused``, ``before-boot``, ``lock-released`` or ``lease-expired``.
    ``initial`` is true for the runs listed when watching began and for the
    ``synced`` event that follows them; ``record`` is None only for ``synced``.
    """

    kind: EventKind
    record: Record | None
    reason: str | None
    initial: bool


SYNCED: Final = RunEvent("synced", None, None, True)


class Slot(NamedTuple):
    """The record that a change source read in one slot (a file, or a key of a key-value store)."""

    # Unique within the source: a file's full path or a key.
    name: str
    # None when the slot is empty or contains no valid record.
    record: Record | None = None
    # The judgement on ``record``; None when ``record`` is None.
    liveness: Liveness | None = None
    # Whether ``record.pid`` is a process on this machine, whose exit the watcher can wait for.
    local: bool = False
    # When ``record`` is None: why the run that was in the slot stopped.
    vacated: str = REMOVED


class ChangeSource(ABC):
    """A backend's feed of record changes, from which :class:`Watcher` makes run events.

    The watcher calls :meth:`open` once, then :meth:`snapshot`, then
    :meth:`changes` each time :meth:`fileno` is readable, or every
    :data:`POLL_INTERVAL` seconds when :meth:`fileno` returns None, and finally
    :meth:`close`. A source must report every change made after :meth:`open`
    returned, by a later :meth:`changes` or :meth:`snapshot`. So a run
    published between the snapshot and the first notification is not missed.

    A source whose notifications arrive on a thread (an HTTP watch stream, for
    example) can return the read end of an ``os.pipe()`` from :meth:`fileno`
    and write a byte to it for each batch. No method may block waiting for a
    change, and none may hold or wait for a record's lock: judging liveness
    through a non-blocking lock probe is allowed.
    """

    def open(self) -> None:
        """Start recording changes, before the first :meth:`snapshot`."""

    @abstractmethod
    def snapshot(self) -> list[Slot]:
        """Read every slot that contains a record now; slots left out are empty."""

    @abstractmethod
    def changes(self) -> list[Slot] | None:
        """Return the slots that changed since the last call, without blocking.

        None means changes may have been lost (a queue overflowed, a
        connection dropped), so the watcher calls :meth:`snapshot` again.
        """

    def fileno(self) -> int | None:
        """Return a descriptor that is readable when :meth:`changes` has news, or None to poll."""
        return None

    def close(self) -> None:
        """Release what the source holds; it is not used again."""


class PollingSource(ChangeSource):
    """A change source for backends without notifications: every call reads every record."""

    def __init__(self, registry: BaseRegistry) -> None:
        self._registry = registry

    def snapshot(self) -> list[Slot]:
        return [
            Slot(
                entry.path,
                entry.record,
                entry.liveness,
                local=self._registry.is_local(entry.record),
            )
            for entry in self._registry.entries(prune=False)
            if entry.record is not None
        ]

    def changes(self) -> list[Slot] | None:
        return None


def run_key(record: Record) -> RunKey:
    """Return what identifies one publication of a record: pid, session id and start time."""
    return (record.pid, record.session_id, record.started_at)


class _Run:
    """A run that the watcher tracks, and the slots that contain its record."""

    def __init__(self, record: Record, local: bool) -> None:
        self.key = run_key(record)
        self.record = record
        self.local = local
        self.slots: set[str] = set()
        self.pidfd: int | None = None
        self.stopped = False


class Watcher:
    """Turns a :class:`ChangeSource` into run events, one step at a time.

    :meth:`start` opens the source and reads the snapshot; then, each time one
    of :meth:`descriptors` is readable or :meth:`timeout` seconds have passed,
    :meth:`process` returns the new events. :meth:`wait` does both steps for
    callers that may block. The other steps read the backend but never wait
    for a change, so an asyncio loop can run them in a worker thread.
    :meth:`close` may be called from any thread, also while another thread
    blocks in :meth:`wait`.
    """

    def __init__(self, source: ChangeSource, *, initial: bool = False) -> None:
        self._source = source
        self._initial = initial
        self._slots: dict[str, _Run] = {}
        self._runs: dict[RunKey, _Run] = {}
        self._by_pidfd: dict[int, _Run] = {}
        self._events: list[RunEvent] = []
        self._began = started_at_now()
        self._started = False
        self._lock = threading.Lock()
        # close() writes one byte here to wake a thread blocked in wait().
        self._wake_read, self._wake_write = os.pipe()
        self._waiting = 0
        self.closed = False

    def start(self) -> list[RunEvent]:
        """Open the source and read the snapshot; return the initial events, if requested."""
        with self._lock:
            self._source.open()
            self._started = True
            self._apply_snapshot(self._source.snapshot(), initial=True)
            events = self._take_events()
        if not self._initial:
            # Runs that were live when watching began are tracked, so their
            # stops are reported, but their starts are not news.
            return [event for event in events if event.kind != "started"]
        starts = [event for event in events if event.kind == "started"]
        starts.sort(key=lambda event: _start_order(event.record))
        stops = [event for event in events if event.kind != "started"]
        return [*starts, *stops, SYNCED]

    def descriptors(self) -> list[int]:
        """Return the descriptors to wait on: the source's, then one pidfd per live local run."""
        source_fd = self._source.fileno()
        fds = [] if source_fd is None else [source_fd]
        fds.extend(self._by_pidfd)
        return fds

    def timeout(self) -> float | None:
        """Return how long to wait before :meth:`process` must run anyway, or None for no limit."""
        if self._source.fileno() is None or any(self._unwatched_runs()):
            return POLL_INTERVAL
        return None

    def process(self, ready: Collection[int]) -> list[RunEvent]:
        """Read what changed, given the descriptors found readable (none: the timeout passed)."""
        with self._lock:
            if self.closed:
                return []
            return self._process(ready)

    def wait(self, timeout: float | None = None) -> list[RunEvent]:
        """Block until something changes or *timeout* seconds pass; return the new events.

        Returns an empty list at once when the watcher is closed, also when
        another thread closes it during the wait.
        """
        with self._lock:
            if self.closed:
                return []
            fds = [*self.descriptors(), self._wake_read]
            limit = self.timeout()
            self._waiting += 1
        if timeout is not None:
            limit = timeout if limit is None else min(limit, timeout)

        try:
            ready = _poll(fds, limit)
        except BaseException:
            # For example KeyboardInterrupt: nothing is read, but a close()
            # that came meanwhile still releases the descriptors.
            with self._lock:
                self._stop_waiting()
            raise
        with self._lock:
            if self._stop_waiting():
                return []
            return self._process(ready - {self._wake_read})

    def live_records(self) -> list[Record]:
        """Return the records of the runs that the watcher last saw live."""
        with self._lock:
            return [run.record for run in self._runs.values() if not run.stopped]

    def close(self) -> None:
        """Close the source and every pidfd; calling it again does nothing."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
            if self._waiting:
                # The waiting thread still polls these descriptors; it
                # releases them when it wakes, so no number is reused under it.
                os.write(self._wake_write, b"\0")
            else:
                self._release()

    def _stop_waiting(self) -> bool:
        """Count one waiting thread less; return whether the watcher was closed meanwhile."""
        self._waiting -= 1
        if self.closed and not self._waiting:
            self._release()
        return self.closed

    def _process(self, ready: Collection[int]) -> list[RunEvent]:
        exited = [self._by_pidfd[fd] for fd in ready if fd in self._by_pidfd]
        if ready:
            # Read the source even when only a pidfd is readable: a writer
            # removes its record before it exits, and that removal must win.
            self._apply_changes()
        elif self.timeout() is not None:
            self._apply_snapshot(self._source.snapshot(), initial=False)

        for run in exited:
            self._stop(run, EXITED)
        return self._take_events()

    def _release(self) -> None:
        for fd in self._by_pidfd:
            os.close(fd)
        self._by_pidfd.clear()
        os.close(self._wake_read)
        os.close(self._wake_write)
        if self._started:
            self._source.close()

    def _apply_changes(self) -> None:
        changed = self._source.changes()
        if changed is None:
            self._apply_snapshot(self._source.snapshot(), initial=False)
            return
        for slot in changed:
            self._apply(slot, initial=False)

    def _apply_snapshot(self, slots: list[Slot], *, initial: bool) -> None:
        seen = {slot.name for slot in slots}
        for name in [name for name in self._slots if name not in seen]:
            self._apply(Slot(name), initial=initial)
        for slot in slots:
            self._apply(slot, initial=initial)

    def _apply(self, slot: Slot, *, initial: bool) -> None:
        """Update the run in *slot*'s place from what the source read there."""
        previous = self._slots.get(slot.name)
        if slot.record is None or slot.liveness is None:
            if previous is not None:
                self._leave(previous, slot.name, slot.vacated)
            return

        key = run_key(slot.record)
        if previous is not None and previous.key == key:
            if previous.stopped:
                return
            if slot.liveness.live:
                # The same run rewrote its record (a new token, say): no event.
                previous.record = slot.record
            else:
                self._stop(previous, self._stop_reason(previous, slot.liveness))
            return

        if previous is not None:
            self._leave(previous, slot.name, REMOVED)
        self._enter(slot, key, initial=initial)

    def _enter(self, slot: Slot, key: RunKey, *, initial: bool) -> None:
        """Track a run newly seen in *slot*, reporting its start unless it is known."""
        assert slot.record is not None and slot.liveness is not None
        run = self._runs.get(key)
        if run is not None:
            # The same run in a second slot (a copied record file) is not a new start.
            run.slots.add(slot.name)
            self._slots[slot.name] = run
            return

        live = slot.liveness.state == LIVE
        if not live and (initial or slot.record.started_at < self._began):
            # An old stale record: it never ran while we watched.
            return
        run = _Run(slot.record, slot.local)
        run.slots.add(slot.name)
        self._slots[slot.name] = run
        self._runs[key] = run
        self._events.append(RunEvent("started", slot.record, None, initial))
        if not live:
            # Published after watching began but over by the time it was read,
            # because the consumer was slow. It still ran, so both events are reported.
            self._stop(run, slot.liveness.reason)
        elif slot.local:
            self._watch_exit(run)

    def _leave(self, run: _Run, name: str, reason: str) -> None:
        """Forget that slot *name* contains *run*; the run stops when no slot contains it."""
        del self._slots[name]
        run.slots.discard(name)
        if run.slots:
            return
        if not run.stopped:
            self._stop(run, reason)
        del self._runs[run.key]

    def _stop(self, run: _Run, reason: str) -> None:
        if run.stopped:
            return
        run.stopped = True
        self._close_pidfd(run)
        self._events.append(RunEvent("stopped", run.record, reason, False))

    def _stop_reason(self, run: _Run, liveness: Liveness) -> str:
        """Return why *run* stopped, given the judgement on its record."""
        # A dying writer's lock is released before its pidfd is read, so the
        # judge reports the released lock, while the readable pidfd shows that
        # the process itself exited.
        if run.pidfd is not None and _readable(run.pidfd):
            return EXITED
        return liveness.reason

    def _watch_exit(self, run: _Run) -> None:
        """Open a pidfd for *run*'s process, or leave the run to polling where that fails."""
        if not _HAS_PIDFD:
            return
        try:
            pidfd = os.pidfd_open(run.record.pid)
        except ProcessLookupError:
            self._stop(run, EXITED)
            return
        except OSError as exc:
            # ENOSYS before Linux 5.3, EPERM under some seccomp filters, EMFILE.
            log.debug("cannot open a pidfd for pid %d, polling instead: %s", run.record.pid, exc)
            return

        # The pidfd names one process from now on. Checking the start time
        # after opening it proves that this process is the record's writer,
        # not a later one that reused the pid.
        identity = judge_identity(run.record)
        if not identity.live:
            os.close(pidfd)
            self._stop(run, identity.reason)
            return
        run.pidfd = pidfd
        self._by_pidfd[pidfd] = run

    def _close_pidfd(self, run: _Run) -> None:
        if run.pidfd is not None:
            del self._by_pidfd[run.pidfd]
            os.close(run.pidfd)
            run.pidfd = None

    def _unwatched_runs(self) -> Iterator[_Run]:
        """Yield the live local runs whose exit no pidfd reports."""
        for run in self._runs.values():
            if run.local and not run.stopped and run.pidfd is None:
                yield run

    def _take_events(self) -> list[RunEvent]:
        events, self._events = self._events, []
        return events


def _poll(fds: list[int], timeout: float | None) -> set[int]:
    """Wait until some of *fds* are readable or *timeout* seconds pass; return the readable ones."""
    if not hasattr(select, "poll"):
        # Windows: no descriptor here is pollable, and every source polls.
        time.sleep(POLL_INTERVAL if timeout is None else timeout)
        return set()
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    milliseconds = None if timeout is None else math.ceil(timeout * 1000)
    return {fd for fd, _ in poller.poll(milliseconds)}


def _readable(fd: int) -> bool:
    """Whether *fd* is readable now; for a pidfd, whether its process exited."""
    if not hasattr(select, "poll"):
        return False
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


def _start_order(record: Record | None) -> tuple[float, int]:
    assert record is not None
    return (record.started_at.timestamp(), record.pid)


class EventStream(Iterator[RunEvent]):
    """The events of :meth:`BaseRegistry.watch`, until :meth:`close`.

    Watching begins when the stream is created, so nothing that happens after
    ``watch()`` returns is missed. Events are read from the backend as the
    stream is iterated. :meth:`close`, leaving a ``with`` block, or garbage
    collection releases its descriptors, and iteration then stops.
    """

    def __init__(self, watcher: Watcher) -> None:
        self._watcher = watcher
        self._pending: deque[RunEvent] = deque()
        try:
            self._pending.extend(watcher.start())
        except BaseException:
            watcher.close()
            raise

    def __next__(self) -> RunEvent:
        while not self._pending:
            if self._watcher.closed:
                raise StopIteration
            self._pending.extend(self._watcher.wait())
        return self._pending.popleft()

    def close(self) -> None:
        """Stop watching and release the descriptors; iteration then ends."""
        self._pending.clear()
        self._watcher.close()

    def __enter__(self) -> EventStream:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        self._watcher.close()


def watch(registry: BaseRegistry, *, initial: bool = False) -> EventStream:
    """Start watching *registry*; see :meth:`BaseRegistry.watch`."""
    return EventStream(Watcher(registry.change_source(), initial=initial))


async def awatch(
    registry: BaseRegistry, *, initial: bool = False
) -> AsyncGenerator[RunEvent, None]:
    """Yield *registry*'s run events in asyncio, without blocking the event loop.

    Watching begins at the first iteration. The loop waits on the watcher's
    descriptors (``loop.add_reader``), and reading the backend, which may touch
    files or the network, runs in the default executor. ``aclose()`` or
    cancelling the consuming task releases the descriptors.
    """
    import asyncio

    loop = asyncio.get_running_loop()
    watcher = Watcher(registry.change_source(), initial=initial)
    step: asyncio.Future[list[RunEvent]] | None = None
    try:
        # Shielded, so that cancelling the consumer leaves the step running
        # to its end instead of abandoning a thread that uses the watcher.
        step = loop.run_in_executor(None, watcher.start)
        events = await asyncio.shield(step)
        while True:
            for event in events:
                yield event
            ready = await _wait_readable(loop, watcher.descriptors(), watcher.timeout())
            step = loop.run_in_executor(None, watcher.process, ready)
            events = await asyncio.shield(step)
    finally:
        if step is not None and not step.done():
            # A worker thread still reads through the descriptors; close them
            # when it is done rather than under it.
            step.add_done_callback(lambda _: watcher.close())
        else:
            watcher.close()


async def _wait_readable(
    loop: asyncio.AbstractEventLoop, fds: list[int], timeout: float | None
) -> set[int]:
    """Wait until some of *fds* are readable or *timeout* seconds pass; return the readable ones."""
    import asyncio

    ready: set[int] = set()
    woken = asyncio.Event()

    def on_readable(fd: int) -> None:
        ready.add(fd)
        woken.set()

    registered = []
    try:
        for fd in fds:
            loop.add_reader(fd, on_readable, fd)
            registered.append(fd)
        if not registered and timeout is None:
            timeout = POLL_INTERVAL
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(woken.wait(), timeout)
    finally:
        # Removed before the worker thread reads, and before it may close a
        # pidfd whose number the loop would otherwise still watch.
        for fd in registered:
            loop.remove_reader(fd)
    return ready
