"""``Registry.watch``, ``awatch`` and ``runregistry watch`` against runs of real processes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest

from cli_support import RUNREGISTRY
from conftest import Spawn, python_child
from runregistry import BaseRegistry, Cleanup, Entry, Record, Registry, RunEvent
from runregistry._liveness import LEASE_EXPIRED, LIVE, RUNNING, Liveness, local_hostname
from runregistry._watching import ChangeSource, EventStream, Slot
from runregistry.backends import _file_changes

# A child that publishes a record until its stdin closes, then removes it and exits.
REGISTER = """
import sys
from runregistry import Registry
with Registry(sys.argv[1]).register("http://127.0.0.1:9", agent="watch-test"):
    print("ready", flush=True)
    sys.stdin.read()
"""

# Seconds a test waits for one event; deaths are expected well within 1 s.
EVENT_TIMEOUT = 5.0


class Collector:
    """Iterates a watch stream on a thread, so that every read in a test is bounded."""

    def __init__(self, stream: EventStream) -> None:
        self.stream = stream
        self._events: queue.Queue[RunEvent] = queue.Queue()
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        for event in self.stream:
            self._events.put(event)

    def next(self, timeout: float = EVENT_TIMEOUT) -> RunEvent:
        try:
            return self._events.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"no watch event within {timeout} s")

    def quiet(self, seconds: float) -> list[RunEvent]:
        """Return whatever events arrive within *seconds*; a test expects none."""
        time.sleep(seconds)
        events = []
        while not self._events.empty():
            events.append(self._events.get())
        return events

    def close(self) -> None:
        self.stream.close()
        self._thread.join(timeout=EVENT_TIMEOUT)
        assert not self._thread.is_alive()


@pytest.fixture
def watching(registry: Registry) -> Iterator[Callable[..., Collector]]:
    """Start watching the test registry; every watcher is closed afterwards."""
    collectors: list[Collector] = []

    def start(*, initial: bool = False, target: BaseRegistry | None = None) -> Collector:
        collector = Collector((target or registry).watch(initial=initial))
        collectors.append(collector)
        return collector

    yield start
    for collector in collectors:
        collector.close()


def start_run(spawn: Spawn, registry: Registry) -> subprocess.Popen[bytes]:
    """Start a child that registers in *registry*, and wait until its record is published."""
    child = spawn(
        *python_child(REGISTER),
        str(registry.directory),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert child.stdout is not None
    assert child.stdout.readline() == b"ready\n"
    return child


def end_run(child: subprocess.Popen[bytes]) -> None:
    """Let a child from :func:`start_run` remove its record and exit."""
    assert child.stdin is not None
    child.stdin.close()
    child.wait(timeout=10)


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_watch_reports_start_of_another_process(
    registry: Registry, spawn: Spawn, watching: Callable[..., Collector]
) -> None:
    events = watching()
    child = start_run(spawn, registry)

    event = events.next()
    assert event.kind == "started"
    assert event.record is not None
    assert event.record.pid == child.pid
    assert event.record.agent == "watch-test"
    assert event.reason is None
    assert event.initial is False


def test_watch_clean_exit_reports_removed(
    registry: Registry, spawn: Spawn, watching: Callable[..., Collector]
) -> None:
    events = watching()
    child = start_run(spawn, registry)
    assert events.next().kind == "started"

    end_run(child)

    event = events.next()
    assert event.kind == "stopped"
    assert event.reason == "removed"
    assert event.record is not None
    assert event.record.pid == child.pid


def test_watch_sigkill_reports_exited(
    registry: Registry, spawn: Spawn, watching: Callable[..., Collector]
) -> None:
    events = watching()
    child = start_run(spawn, registry)
    assert events.next().kind == "started"

    child.send_signal(signal.SIGKILL)

    # Reported while the child is still an unreaped zombie, within 1 s.
    event = events.next(timeout=1.0)
    assert event.kind == "stopped"
    assert event.reason == "exited"
    assert event.record is not None
    assert event.record.pid == child.pid
    child.wait(timeout=10)


def test_watch_unlocked_record_death_reports_exited(
    registry: Registry,
    sleeper: Callable[[], subprocess.Popen[bytes]],
    watching: Callable[..., Collector],
) -> None:
    # A record without a lock, as runregistry exec writes for its child.
    events = watching()
    child = sleeper()
    registry.write(Record(child.pid, "http://127.0.0.1:9", "unlocked-run"))
    assert events.next().kind == "started"

    child.send_signal(signal.SIGKILL)

    event = events.next(timeout=1.0)
    assert event.kind == "stopped"
    assert event.reason == "exited"


def test_watch_prune_after_death_adds_no_event(
    registry: Registry, spawn: Spawn, watching: Callable[..., Collector]
) -> None:
    events = watching()
    killed = start_run(spawn, registry)
    assert events.next().kind == "started"
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=10)
    assert events.next().reason == "exited"

    removed = registry.prune()
    later = start_run(spawn, registry)

    assert [Path(entry.path).name for entry in removed] == [f"{killed.pid}.json"]
    event = events.next()
    assert event.kind == "started"
    assert event.record is not None
    assert event.record.pid == later.pid


def test_watch_prune_of_old_stale_record_is_silent(
    registry: Registry, spawn: Spawn, watching: Callable[..., Collector]
) -> None:
    dead = start_run(spawn, registry)
    dead.send_signal(signal.SIGKILL)
    dead.wait(timeout=10)
    events = watching(initial=True)
    assert events.next() == RunEvent("synced", None, None, True)

    assert len(registry.prune()) == 1

    assert events.quiet(0.5) == []


def test_watch_initial_lists_live_runs_then_synced(
    registry: Registry, spawn: Spawn, watching: Callable[..., Collector]
) -> None:
    first = start_run(spawn, registry)
    second = start_run(spawn, registry)

    events = watching(initial=True)

    listed = [events.next(), events.next()]
    assert [event.kind for event in listed] == ["started", "started"]
    assert [event.initial for event in listed] == [True, True]
    assert {event.record.pid for event in listed if event.record} == {first.pid, second.pid}
    assert events.next() == RunEvent("synced", None, None, True)


def test_watch_reports_stop_of_earlier_run(
    registry: Registry, spawn: Spawn, watching: Callable[..., Collector]
) -> None:
    child = start_run(spawn, registry)
    events = watching()

    end_run(child)

    event = events.next()
    assert event.kind == "stopped"
    assert event.initial is False


def test_watch_rewrite_is_not_new_start(
    registry: Registry,
    sleeper: Callable[[], subprocess.Popen[bytes]],
    watching: Callable[..., Collector],
) -> None:
    child = sleeper()
    record = Record(child.pid, "http://127.0.0.1:9", "same-run")
    registry.write(record)
    events = watching()

    registry.write(
        Record(child.pid, "http://127.0.0.1:10", "same-run", started_at=record.started_at)
    )
    rewrite_events = events.quiet(0.3)
    registry.write(Record(child.pid, "http://127.0.0.1:10", "next-run"))

    stopped, started = events.next(), events.next()
    assert rewrite_events == []
    assert (stopped.kind, stopped.reason) == ("stopped", "removed")
    assert stopped.record is not None
    assert stopped.record.addr == "http://127.0.0.1:10"
    assert started.kind == "started"
    assert started.record is not None
    assert started.record.session_id == "next-run"
    assert events.quiet(0.3) == []


def test_watch_reports_run_published_right_after_snapshot(
    registry: Registry, spawn: Spawn, sleeper: Callable[[], subprocess.Popen[bytes]]
) -> None:
    child = sleeper()

    class PublishAfterSnapshot(ChangeSource):
        """The file source, with a record published between its snapshot and its first read."""

        def __init__(self) -> None:
            self.inner = _file_changes.FileChangeSource(registry)

        def open(self) -> None:
            self.inner.open()

        def snapshot(self) -> list[Slot]:
            slots = self.inner.snapshot()
            registry.write(Record(child.pid, "http://127.0.0.1:9", "between"))
            return slots

        def changes(self) -> list[Slot] | None:
            return self.inner.changes()

        def fileno(self) -> int | None:
            return self.inner.fileno()

        def close(self) -> None:
            self.inner.close()

    class Patched(Registry):
        def change_source(self) -> ChangeSource:
            return PublishAfterSnapshot()

    with Patched(registry.directory).watch() as stream:
        event = next(stream)

    assert event.kind == "started"
    assert event.record is not None
    assert event.record.session_id == "between"


def test_watch_burst_of_fifty_runs(
    registry: Registry, spawn: Spawn, watching: Callable[..., Collector]
) -> None:
    # One parent forks 50 writers at once; each stays published 250 to 500 ms,
    # then half remove their record and exit, half die by SIGKILL.
    code = """
import os, random, signal, sys, time
from runregistry import Registry
registry = Registry(sys.argv[1])
children = []
for index in range(50):
    pid = os.fork()
    if pid == 0:
        with registry.register("http://127.0.0.1:9", session_id=f"burst-{index}"):
            time.sleep(0.25 + random.random() * 0.25)
            if index % 2:
                os.kill(os.getpid(), signal.SIGKILL)
        os._exit(0)
    children.append(pid)
for pid in children:
    os.waitpid(pid, 0)
print(" ".join(map(str, children)), flush=True)
"""
    events = watching()
    parent = spawn(*python_child(code), str(registry.directory), stdout=subprocess.PIPE)
    output, _ = parent.communicate(timeout=60)
    pids = {int(pid) for pid in output.split()}

    started: list[int] = []
    stopped: list[tuple[int, str | None]] = []
    while len(stopped) < 50:
        event = events.next()
        assert event.record is not None
        if event.kind == "started":
            started.append(event.record.pid)
        else:
            assert event.record.pid in started
            stopped.append((event.record.pid, event.reason))

    assert len(pids) == 50
    assert sorted(started) == sorted(pids)
    assert sorted(pid for pid, _ in stopped) == sorted(pids)
    assert {reason for _, reason in stopped} <= {"removed", "exited"}
    assert events.quiet(0.3) == []


def test_watch_directory_created_later(
    registry: Registry, spawn: Spawn, watching: Callable[..., Collector]
) -> None:
    assert not registry.directory.exists()
    events = watching()

    child = start_run(spawn, registry)

    event = events.next()
    assert event.kind == "started"
    assert event.record is not None
    assert event.record.pid == child.pid


def test_watch_directory_removed_and_created_again(
    registry: Registry,
    spawn: Spawn,
    sleeper: Callable[[], subprocess.Popen[bytes]],
    watching: Callable[..., Collector],
) -> None:
    child = sleeper()
    registry.write(Record(child.pid, "http://127.0.0.1:9", "before-removal"))
    events = watching()

    (registry.directory / f"{child.pid}.json").unlink()
    registry.directory.rmdir()
    stopped = events.next()
    later = start_run(spawn, registry)
    started = events.next()

    assert (stopped.kind, stopped.reason) == ("stopped", "removed")
    assert started.kind == "started"
    assert started.record is not None
    assert started.record.pid == later.pid


def test_watch_polls_without_inotify_and_pidfd(
    registry: Registry,
    spawn: Spawn,
    watching: Callable[..., Collector],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Kernels before 5.3 and other platforms lack these; making them fail here
    # is the only way to run the polling path on this machine.
    def no_inotify() -> None:
        raise OSError(38, "inotify disabled by the test")

    monkeypatch.setattr(_file_changes, "Inotify", no_inotify)
    monkeypatch.setattr("runregistry._watching._HAS_PIDFD", False)
    events = watching()

    child = start_run(spawn, registry)
    started = events.next()
    child.send_signal(signal.SIGKILL)
    stopped = events.next()

    assert started.kind == "started"
    assert stopped.kind == "stopped"
    assert stopped.reason in ("exited", "lock-released")


def test_watch_close_releases_descriptors_and_ends_iteration(
    registry: Registry, spawn: Spawn
) -> None:
    start_run(spawn, registry)
    before = open_fds()

    stream = registry.watch(initial=True)
    during = open_fds()
    stream.close()

    assert len(during) > len(before)
    assert open_fds() == before
    assert list(stream) == []


def test_watch_close_from_another_thread_wakes_iteration(registry: Registry) -> None:
    before = open_fds()
    stream = registry.watch()
    finished = threading.Event()

    def iterate() -> None:
        for _ in stream:
            pass
        finished.set()

    thread = threading.Thread(target=iterate, daemon=True)
    thread.start()
    time.sleep(0.2)
    stream.close()

    assert finished.wait(EVENT_TIMEOUT)
    thread.join(EVENT_TIMEOUT)
    assert open_fds() == before


class LeaseBackend(BaseRegistry):
    """A key-value backend kept in memory, whose records vanish when a lease expires."""

    def __init__(self) -> None:
        self.records: dict[str, Record] = {}
        self.pending: list[Slot] = []
        self.read, self.write_end = os.pipe()

    @property
    def location(self) -> str:
        return "memory://test"

    def write(self, record: Record) -> Cleanup:
        raise NotImplementedError

    def entries(self, *, prune: bool = True) -> list[Entry]:
        return [
            Entry("record", key, record, Liveness(LIVE, RUNNING, "lease alive"))
            for key, record in self.records.items()
        ]

    def publish(self, key: str, record: Record) -> None:
        self.records[key] = record
        self._notify(Slot(key, record, Liveness(LIVE, RUNNING, "lease alive"), local=False))

    def expire(self, key: str) -> None:
        del self.records[key]
        self._notify(Slot(key, vacated=LEASE_EXPIRED))

    def _notify(self, slot: Slot) -> None:
        self.pending.append(slot)
        os.write(self.write_end, b"\0")

    def change_source(self) -> ChangeSource:
        backend = self

        class Source(ChangeSource):
            def snapshot(self) -> list[Slot]:
                return [
                    Slot(entry.path, entry.record, entry.liveness) for entry in backend.entries()
                ]

            def changes(self) -> list[Slot] | None:
                os.read(backend.read, 4096)
                slots, backend.pending = backend.pending, []
                return slots

            def fileno(self) -> int | None:
                return backend.read

        return Source()


def test_watch_lease_expiry_then_republication(
    watching: Callable[..., Collector],
) -> None:
    backend = LeaseBackend()
    # A record of another host: the watcher must not wait on its pid here.
    record = Record(424242, "http://10.0.0.5:9", "leased", host="elsewhere")
    events = watching(target=backend)

    backend.publish("runs/a", record)
    backend.expire("runs/a")
    backend.publish("runs/a", record)

    kinds = [(event.kind, event.reason) for event in (events.next(), events.next(), events.next())]
    assert kinds == [("started", None), ("stopped", "lease-expired"), ("started", None)]


def test_awatch_reports_start_and_stop_without_blocking_loop(
    registry: Registry, spawn: Spawn
) -> None:
    async def scenario() -> tuple[list[RunEvent], int, bool]:
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        ticker = asyncio.create_task(tick())
        stream = registry.awatch(initial=True)
        seen = [await asyncio.wait_for(stream.__anext__(), EVENT_TIMEOUT)]
        child = start_run(spawn, registry)
        seen.append(await asyncio.wait_for(stream.__anext__(), EVENT_TIMEOUT))

        # While the next event is awaited, other tasks keep running.
        pending = asyncio.ensure_future(stream.__anext__())
        before = ticks
        await asyncio.sleep(0.3)
        ticks_while_waiting = ticks - before
        waited = not pending.done()
        child.send_signal(signal.SIGKILL)
        seen.append(await asyncio.wait_for(pending, EVENT_TIMEOUT))

        await stream.aclose()
        ticker.cancel()
        return seen, ticks_while_waiting, waited

    seen, ticks_while_waiting, waited = asyncio.run(scenario())

    assert [(event.kind, event.reason) for event in seen] == [
        ("synced", None),
        ("started", None),
        ("stopped", "exited"),
    ]
    assert waited
    assert ticks_while_waiting > 0


def test_awatch_cancel_releases_descriptors(registry: Registry) -> None:
    before = open_fds()

    async def scenario() -> None:
        stream = registry.awatch()
        task = asyncio.ensure_future(stream.__anext__())
        await asyncio.sleep(0.2)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await stream.aclose()

    asyncio.run(scenario())

    assert open_fds() == before


def test_cli_watch_json_lines(
    registry: Registry,
    sleeper: Callable[[], subprocess.Popen[bytes]],
    spawn: Spawn,
) -> None:
    child = sleeper()
    registry.write(Record(child.pid, "http://127.0.0.1:9", "cli-run", token="secret-token"))
    watcher = spawn(
        sys.executable,
        "-m",
        "runregistry",
        "--dir",
        str(registry.directory),
        "watch",
        "--json",
        "--initial",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert watcher.stdout is not None

    lines = [json.loads(watcher.stdout.readline()) for _ in range(2)]
    child.send_signal(signal.SIGKILL)
    lines.append(json.loads(watcher.stdout.readline()))
    watcher.send_signal(signal.SIGINT)
    _, stderr = watcher.communicate(timeout=10)

    assert lines[0]["event"] == "started"
    assert lines[0]["initial"] is True
    assert lines[0]["reason"] is None
    assert lines[0]["record"]["pid"] == child.pid
    assert lines[0]["record"]["state"] == "live"
    assert "token" not in lines[0]["record"]
    assert lines[1] == {"event": "synced"}
    assert lines[2]["event"] == "stopped"
    assert lines[2]["reason"] == "exited"
    assert lines[2]["initial"] is False
    assert watcher.returncode == 130
    assert b"Traceback" not in stderr


def test_cli_watch_text_lines(
    registry: Registry, sleeper: Callable[[], subprocess.Popen[bytes]], spawn: Spawn
) -> None:
    child = sleeper()
    registry.write(Record(child.pid, "http://127.0.0.1:9", "text-run", "agent-x"))
    watcher = spawn(
        str(RUNREGISTRY),
        "--dir",
        str(registry.directory),
        "watch",
        "--initial",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert watcher.stdout is not None

    lines = [watcher.stdout.readline().decode().rstrip("\n") for _ in range(2)]
    child.send_signal(signal.SIGKILL)
    lines.append(watcher.stdout.readline().decode().rstrip("\n"))
    watcher.send_signal(signal.SIGINT)
    watcher.communicate(timeout=10)

    assert lines[0].startswith("started")
    assert f"pid={child.pid}" in lines[0]
    assert "agent=agent-x" in lines[0]
    assert "session=text-run" in lines[0]
    assert lines[0].endswith("(initial)")
    assert lines[1] == "synced"
    assert lines[2].startswith("stopped")
    assert lines[2].endswith("reason=exited")
    assert watcher.returncode == 130


def test_watch_stop_event_record_keeps_started_at(registry: Registry) -> None:
    # The stop event carries the run's own record, with its original start.
    started = datetime(2020, 1, 1, tzinfo=timezone.utc)
    record = Record(os.getpid(), "http://127.0.0.1:9", "own", started_at=started)
    cleanup = registry.write(record)
    stream = registry.watch()
    cleanup()
    event = next(stream)
    stream.close()

    assert event.kind == "stopped"
    assert event.record is not None
    assert event.record.started_at == started
    assert event.record.host == local_hostname()
