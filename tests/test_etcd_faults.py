"""The etcd backend through faults: etcd restarted with and without its data, a writer cut off.

Each restart test runs its own etcd server, which it stops, restarts and
wipes; writers are real processes and a watcher follows the whole time.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from etcd_server import EtcdServer, TcpProxy, Writer, start_writer
from runregistry import EtcdRegistry, Record, RegistryError, RunEvent
from runregistry._liveness import LEASE_EXPIRED

pytestmark = pytest.mark.etcd

TTL = 2.0
WRITERS = 3
RECORDS_PER_WRITER = 5

Spawn = Callable[..., "subprocess.Popen[bytes]"]


class Collector:
    """Reads a registry's watch stream in a thread and keeps every event."""

    def __init__(self, registry: EtcdRegistry) -> None:
        self.stream = registry.watch()
        self.events: list[RunEvent] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        for event in self.stream:
            with self._lock:
                self.events.append(event)

    def by_session(self) -> dict[str, list[tuple[str, str | None]]]:
        """Return each session's (kind, reason) events in order."""
        with self._lock:
            events = list(self.events)
        sessions: dict[str, list[tuple[str, str | None]]] = {}
        for event in events:
            assert event.record is not None
            sessions.setdefault(event.record.session_id, []).append((event.kind, event.reason))
        return sessions

    def count(self) -> int:
        with self._lock:
            return len(self.events)

    def close(self) -> None:
        self.stream.close()
        self._thread.join(timeout=5)


@pytest.fixture
def observer(etcd_server: EtcdServer, etcd_prefix: str) -> Iterator[EtcdRegistry]:
    """A registry on the private server that sees every writer as a remote host."""
    registry = EtcdRegistry(
        etcd_server.url, prefix=etcd_prefix, machine_id="observer-id", host_name="observer"
    )
    yield registry
    registry.close()


@pytest.fixture
def collector(observer: EtcdRegistry) -> Iterator[Collector]:
    """A watcher of the observer's registry, running for the whole test."""
    watching = Collector(observer)
    yield watching
    watching.close()


def start_writers(spawn: Spawn, tmp_path: Path, url: str, prefix: str) -> list[Writer]:
    """Start the simulated hosts' writers and wait until each published its records."""
    writers = [
        start_writer(
            spawn,
            tmp_path,
            url,
            prefix,
            *("--host-name", f"host-{index}", "--machine-id", f"machine-{index}"),
            *("--count", str(RECORDS_PER_WRITER), "--fake-pids", "5000", "--ttl", str(TTL)),
            wait=False,
        )
        for index in range(WRITERS)
    ]
    for writer in writers:
        writer.wait_published()
    return writers


def sessions_of(writers: list[Writer]) -> set[str]:
    return {session for writer in writers for session in writer.sessions}


def listed_sessions(registry: EtcdRegistry) -> set[str]:
    try:
        return {record.session_id for record in registry.list()}
    except RegistryError:
        return set()


def wait_until(condition: Callable[[], bool], timeout: float) -> float:
    """Poll *condition* until it holds; return the seconds it took, or fail after *timeout*."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            pytest.fail(f"condition still false after {timeout} s")
        time.sleep(0.05)
    return time.monotonic() - started


def test_restart_with_data_loses_nothing(
    spawn: Spawn,
    tmp_path: Path,
    etcd_server: EtcdServer,
    etcd_prefix: str,
    observer: EtcdRegistry,
    collector: Collector,
) -> None:
    writers = start_writers(spawn, tmp_path, etcd_server.url, etcd_prefix)
    expected = sessions_of(writers)
    wait_until(lambda: collector.count() == len(expected), timeout=10)

    etcd_server.stop()
    # Down for longer than the TTL: the leases survive because etcd keeps them with its data.
    time.sleep(TTL + 1)
    etcd_server.start()

    wait_until(lambda: listed_sessions(observer) == expected, timeout=TTL + 2)
    late = EtcdRegistry(etcd_server.url, prefix=etcd_prefix, machine_id="late-id", host_name="late")
    late.write(Record(9999, "http://127.0.0.1:8999", "after-restart"))
    wait_until(lambda: "after-restart" in collector.by_session(), timeout=10)
    late.close()
    time.sleep(0.5)

    events = collector.by_session()
    assert set(events) == expected | {"after-restart"}
    assert all(kinds == [("started", None)] for kinds in events.values()), events
    assert all(writer.process.poll() is None for writer in writers)


def test_restart_without_data_writers_publish_again(
    spawn: Spawn,
    tmp_path: Path,
    etcd_server: EtcdServer,
    etcd_prefix: str,
    observer: EtcdRegistry,
    collector: Collector,
) -> None:
    writers = start_writers(spawn, tmp_path, etcd_server.url, etcd_prefix)
    expected = sessions_of(writers)
    wait_until(lambda: collector.count() == len(expected), timeout=10)

    etcd_server.stop()
    etcd_server.wipe()
    etcd_server.start()

    # Every live writer notices at its next renewal that its lease is gone.
    wait_until(lambda: listed_sessions(observer) == expected, timeout=TTL + 1)
    wait_until(lambda: collector.count() == 3 * len(expected), timeout=10)
    time.sleep(0.5)

    events = collector.by_session()
    assert set(events) == expected
    republished = [("started", None), ("stopped", LEASE_EXPIRED), ("started", None)]
    assert all(kinds == republished for kinds in events.values()), events
    for writer in writers:
        assert writer.process.poll() is None
        assert f"published {RECORDS_PER_WRITER} record(s) again" in writer.log()


def test_writer_cut_off_disappears_and_comes_back(
    spawn: Spawn,
    tmp_path: Path,
    etcd_url: str,
    etcd_prefix: str,
) -> None:
    proxy = TcpProxy(int(etcd_url.rsplit(":", 1)[1]))
    proxy.start()
    reader = EtcdRegistry(etcd_url, prefix=etcd_prefix, machine_id="reader-id", host_name="reader")
    writer = start_writer(
        spawn,
        tmp_path,
        proxy.url,
        etcd_prefix,
        *("--host-name", "cut-off", "--machine-id", "cut-off-id", "--ttl", str(TTL)),
    )
    assert listed_sessions(reader) == set(writer.sessions)

    proxy.stop()
    gone_after = wait_until(lambda: listed_sessions(reader) == set(), timeout=TTL + 2)
    proxy.start()
    wait_until(lambda: listed_sessions(reader) == set(writer.sessions), timeout=TTL + 2)

    assert gone_after >= 1.0
    assert writer.process.poll() is None
    assert "cannot renew the etcd lease" in writer.log()
    assert "published 1 record(s) again" in writer.log()
    reader.close()
    proxy.stop()


def test_write_while_etcd_is_down_raises_and_recovers(
    etcd_server: EtcdServer, etcd_prefix: str, observer: EtcdRegistry
) -> None:
    registry = EtcdRegistry(etcd_server.url, prefix=etcd_prefix, ttl=TTL, timeout=2)
    registry.write(Record(7001, "http://127.0.0.1:8001", "first"))

    etcd_server.stop()
    with pytest.raises(RegistryError, match="cannot reach etcd"):
        registry.write(Record(7002, "http://127.0.0.1:8002", "while-down"))
    etcd_server.start()
    registry.write(Record(7003, "http://127.0.0.1:8003", "after"))

    assert listed_sessions(observer) == {"first", "after"}
    assert Counter(r.pid for r in observer.list()) == Counter({7001: 1, 7003: 1})
    registry.close()
