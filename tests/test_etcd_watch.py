"""Watching an etcd registry: starts, removals, lease expiry, local deaths, dropped connections."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from etcd_server import TcpProxy, start_writer
from runregistry import EtcdRegistry, Record, RunEvent
from runregistry._liveness import EXITED, LEASE_EXPIRED, REMOVED
from runregistry._watching import EventStream
from runregistry.backends.etcd._client import number

pytestmark = pytest.mark.etcd

TTL = 2.0

Spawn = Callable[..., "subprocess.Popen[bytes]"]
RegistryFactory = Callable[..., EtcdRegistry]


@pytest.fixture
def open_registry(etcd_url: str, etcd_prefix: str) -> Iterator[RegistryFactory]:
    """Build registries on the test's prefix; every one is closed afterwards."""
    made: list[EtcdRegistry] = []

    def make(url: str = etcd_url, **options: object) -> EtcdRegistry:
        options.setdefault("ttl", TTL)
        registry = EtcdRegistry(url, prefix=etcd_prefix, **options)  # type: ignore[arg-type]
        made.append(registry)
        return registry

    yield make
    for registry in made:
        registry.close()


class Collector:
    """Reads a watch stream in a thread and keeps every event it yields."""

    def __init__(self, stream: EventStream) -> None:
        self.stream = stream
        self.events: list[RunEvent] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        for event in self.stream:
            with self._lock:
                self.events.append(event)

    def snapshot(self) -> list[tuple[str, str | None, str | None]]:
        """Return (kind, session id, reason) of every event so far."""
        with self._lock:
            return [
                (event.kind, event.record.session_id if event.record else None, event.reason)
                for event in self.events
            ]

    def wait_for(self, count: int, timeout: float) -> list[tuple[str, str | None, str | None]]:
        """Wait until *count* events arrived; return them all."""
        deadline = time.monotonic() + timeout
        while len(self.snapshot()) < count:
            if time.monotonic() > deadline:
                pytest.fail(f"expected {count} events within {timeout} s, got {self.snapshot()}")
            time.sleep(0.02)
        return self.snapshot()

    def close(self) -> None:
        self.stream.close()
        self._thread.join(timeout=5)


@pytest.fixture
def collect() -> Iterator[Callable[[EtcdRegistry], Collector]]:
    """Start collecting a registry's watch events; every collector is closed afterwards."""
    collectors: list[Collector] = []

    def start(registry: EtcdRegistry) -> Collector:
        stream = registry.watch()
        assert isinstance(stream, EventStream)
        collector = Collector(stream)
        collectors.append(collector)
        return collector

    yield start
    for collector in collectors:
        collector.close()


def test_initial_lists_live_runs_then_synced(open_registry: RegistryFactory) -> None:
    registry = open_registry()
    writer = open_registry(machine_id="m-other", host_name="other")
    writer.write(Record(101, "http://127.0.0.1:8001", "first"))

    with registry.watch(initial=True) as stream:
        events = [next(stream), next(stream)]

    assert [(event.kind, event.initial) for event in events] == [
        ("started", True),
        ("synced", True),
    ]
    assert events[0].record is not None
    assert events[0].record.session_id == "first"


def test_start_and_removal_are_reported(
    open_registry: RegistryFactory, collect: Callable[[EtcdRegistry], Collector]
) -> None:
    watcher = collect(open_registry())
    writer = open_registry(machine_id="m-other", host_name="other")

    cleanup = writer.write(Record(101, "http://127.0.0.1:8001", "s1"))
    watcher.wait_for(1, timeout=5)
    cleanup()

    assert watcher.wait_for(2, timeout=5) == [("started", "s1", None), ("stopped", "s1", REMOVED)]


def test_rewrite_is_not_new_start(
    open_registry: RegistryFactory, collect: Callable[[EtcdRegistry], Collector]
) -> None:
    watcher = collect(open_registry())
    writer = open_registry(machine_id="m-other", host_name="other")
    record = Record(101, "http://127.0.0.1:8001", "s1")

    writer.write(record)
    writer.write(record.replace(agent="renamed"))
    cleanup = writer.write(record.replace(agent="renamed again"))
    cleanup()

    assert watcher.wait_for(2, timeout=5) == [("started", "s1", None), ("stopped", "s1", REMOVED)]
    time.sleep(0.3)
    assert len(watcher.snapshot()) == 2


def test_killed_remote_writer_stops_with_lease_expired(
    spawn: Spawn,
    tmp_path: Path,
    etcd_url: str,
    etcd_prefix: str,
    open_registry: RegistryFactory,
    collect: Callable[[EtcdRegistry], Collector],
) -> None:
    watcher = collect(open_registry())
    writer = start_writer(
        spawn, tmp_path, etcd_url, etcd_prefix, "--host-name", "far", "--machine-id", "far-id"
    )
    watcher.wait_for(1, timeout=5)

    writer.process.send_signal(signal.SIGKILL)
    writer.process.wait(timeout=10)
    killed = time.monotonic()
    events = watcher.wait_for(2, timeout=TTL + 2)

    assert events[1] == ("stopped", writer.sessions[0], LEASE_EXPIRED)
    assert time.monotonic() - killed <= TTL + 2


def test_killed_local_writer_stops_at_once(
    spawn: Spawn,
    tmp_path: Path,
    etcd_url: str,
    etcd_prefix: str,
    open_registry: RegistryFactory,
    collect: Callable[[EtcdRegistry], Collector],
) -> None:
    watcher = collect(open_registry())
    writer = start_writer(spawn, tmp_path, etcd_url, etcd_prefix, "--ttl", "30")
    watcher.wait_for(1, timeout=5)

    writer.process.send_signal(signal.SIGKILL)
    writer.process.wait(timeout=10)

    # The lease lives 30 s, so only the process's exit can explain an event within 1 s.
    events = watcher.wait_for(2, timeout=1)
    session = writer.sessions[0]
    assert events == [("started", session, None), ("stopped", session, EXITED)]
    time.sleep(0.3)
    assert len(watcher.snapshot()) == 2


def test_clean_exit_of_writer_is_removed(
    spawn: Spawn,
    tmp_path: Path,
    etcd_url: str,
    etcd_prefix: str,
    open_registry: RegistryFactory,
    collect: Callable[[EtcdRegistry], Collector],
) -> None:
    watcher = collect(open_registry(machine_id="watcher-id", host_name="watcher"))
    writer = start_writer(spawn, tmp_path, etcd_url, etcd_prefix, "--ttl", "30")
    watcher.wait_for(1, timeout=5)

    assert writer.exit() == 0

    assert watcher.wait_for(2, timeout=2)[1] == ("stopped", writer.sessions[0], REMOVED)


def test_republished_record_is_stop_then_start(
    open_registry: RegistryFactory, collect: Callable[[EtcdRegistry], Collector]
) -> None:
    watcher = collect(open_registry())
    writer = open_registry(machine_id="m-other", host_name="other")
    writer.write(Record(101, "http://127.0.0.1:8001", "s1"))
    watcher.wait_for(1, timeout=5)

    # Revoking the writer's lease from outside is what an expiry does; the
    # writer then publishes the same record again under a new lease.
    writer.client.call("lease/revoke", {"ID": str(writer.lease)})

    assert watcher.wait_for(3, timeout=TTL + 2) == [
        ("started", "s1", None),
        ("stopped", "s1", LEASE_EXPIRED),
        ("started", "s1", None),
    ]


def test_dropped_connection_resumes_without_loss_or_duplicates(
    etcd_session_server: object,
    etcd_url: str,
    open_registry: RegistryFactory,
    collect: Callable[[EtcdRegistry], Collector],
) -> None:
    proxy = TcpProxy(int(etcd_url.rsplit(":", 1)[1]))
    proxy.start()
    watcher = collect(open_registry(proxy.url))
    writer = open_registry(machine_id="m-other", host_name="other")
    before = writer.write(Record(101, "http://127.0.0.1:8001", "before"))
    watcher.wait_for(1, timeout=5)

    proxy.stop()
    before()
    short = writer.write(Record(102, "http://127.0.0.1:8002", "short-lived"))
    short()
    writer.write(Record(103, "http://127.0.0.1:8003", "during"))
    time.sleep(0.5)
    proxy.start()

    events = watcher.wait_for(5, timeout=10)
    assert events == [
        ("started", "before", None),
        ("stopped", "before", REMOVED),
        ("started", "short-lived", None),
        ("stopped", "short-lived", REMOVED),
        ("started", "during", None),
    ]
    time.sleep(0.5)
    assert len(watcher.snapshot()) == 5
    proxy.stop()


def test_compacted_revision_relists_and_reports_difference(
    etcd_url: str,
    open_registry: RegistryFactory,
    collect: Callable[[EtcdRegistry], Collector],
) -> None:
    proxy = TcpProxy(int(etcd_url.rsplit(":", 1)[1]))
    proxy.start()
    watcher = collect(open_registry(proxy.url))
    writer = open_registry(machine_id="m-other", host_name="other")
    writer.write(Record(100, "http://127.0.0.1:8000", "keeper"))
    before = writer.write(Record(101, "http://127.0.0.1:8001", "before"))
    watcher.wait_for(2, timeout=5)

    proxy.stop()
    before()
    writer.write(Record(103, "http://127.0.0.1:8003", "during"))
    header = writer.client.call("kv/range", {"key": "AA==", "count_only": True})["header"]
    writer.client.call("kv/compaction", {"revision": str(number(header, "revision"))})
    proxy.start()

    events = watcher.wait_for(4, timeout=10)
    assert sorted(events[2:]) == [("started", "during", None), ("stopped", "before", REMOVED)]
    time.sleep(0.5)
    assert len(watcher.snapshot()) == 4
    proxy.stop()


def test_watch_of_unreachable_etcd_raises(etcd_prefix: str) -> None:
    registry = EtcdRegistry("http://127.0.0.1:9", prefix=etcd_prefix, timeout=2)

    with pytest.raises(Exception, match="cannot reach etcd"):
        registry.watch()


def test_wait_returns_run_published_later(open_registry: RegistryFactory) -> None:
    registry = open_registry()
    writer = open_registry(machine_id="m-other", host_name="other")
    timer = threading.Timer(0.3, writer.write, [Record(4242, "http://127.0.0.1:8001", "late")])
    timer.start()

    found = registry.wait("late", timeout=10)

    timer.join()
    assert found.pid == 4242


def test_wait_times_out(open_registry: RegistryFactory) -> None:
    registry = open_registry()

    with pytest.raises(TimeoutError):
        registry.wait("never", timeout=0.3)


def test_local_run_of_this_process_is_live(open_registry: RegistryFactory) -> None:
    registry = open_registry()

    with registry.register("http://127.0.0.1:8000", "mine"), registry.watch(initial=True) as stream:
        first = next(stream)

    assert first.kind == "started"
    assert first.record is not None
    assert first.record.pid == os.getpid()


def test_awatch_reports_start(open_registry: RegistryFactory) -> None:
    registry = open_registry()
    writer = open_registry(machine_id="m-other", host_name="other")

    async def first_start() -> RunEvent:
        events = registry.awatch()
        try:
            pending = asyncio.ensure_future(anext(events))
            await asyncio.sleep(0.3)
            writer.write(Record(555, "http://127.0.0.1:8005", "async-run"))
            return await asyncio.wait_for(pending, timeout=10)
        finally:
            await events.aclose()

    event = asyncio.run(first_start())

    assert event.kind == "started"
    assert event.record is not None
    assert event.record.session_id == "async-run"
