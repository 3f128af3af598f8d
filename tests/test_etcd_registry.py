"""The etcd backend against a real etcd server: publishing, listing, finding, expiry.

Every test uses a key prefix of its own on one shared server. A registry built
with another ``machine_id`` and ``host_name`` sees this machine's records as a
remote host would: live exactly while their keys exist.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from etcd_server import EtcdServer, start_writer
from runregistry import (
    AmbiguousRunError,
    EtcdRegistry,
    InsecureBackendError,
    NoRunError,
    Record,
    StopRefusedError,
)
from runregistry._liveness import EXITED, LIVE, STALE
from runregistry._lookup import resolve
from runregistry.backends.etcd._client import encode, encode_bytes, number
from runregistry.cli import main

pytestmark = pytest.mark.etcd

TTL = 2.0

Spawn = Callable[..., "subprocess.Popen[bytes]"]
RegistryFactory = Callable[..., EtcdRegistry]


@pytest.fixture
def open_registry(etcd_url: str, etcd_prefix: str) -> Iterator[RegistryFactory]:
    """Build registries on the test's prefix; every one is closed afterwards."""
    made: list[EtcdRegistry] = []

    def make(**options: object) -> EtcdRegistry:
        options.setdefault("ttl", TTL)
        registry = EtcdRegistry(etcd_url, prefix=etcd_prefix, **options)  # type: ignore[arg-type]
        made.append(registry)
        return registry

    yield make
    for registry in made:
        registry.close()


@pytest.fixture
def registry(open_registry: RegistryFactory) -> EtcdRegistry:
    """A registry with this machine's identity."""
    return open_registry()


@pytest.fixture
def remote_view(open_registry: RegistryFactory) -> EtcdRegistry:
    """A registry that sees this machine's records as another host would: by their keys only."""
    return open_registry(machine_id="observer-machine", host_name="observer")


def wait_until(condition: Callable[[], bool], timeout: float, step: float = 0.05) -> float:
    """Poll *condition* until it holds; return the seconds it took, or fail after *timeout*."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            pytest.fail(f"condition still false after {timeout} s")
        time.sleep(step)
    return time.monotonic() - started


def keys_of(registry: EtcdRegistry) -> list[str]:
    """Return every record key stored under the registry's prefix, whatever its liveness."""
    return [entry.path for entry in registry.entries()]


def test_run_of_other_process_is_listed(
    spawn: Spawn, tmp_path: Path, etcd_url: str, etcd_prefix: str, registry: EtcdRegistry
) -> None:
    writer = start_writer(spawn, tmp_path, etcd_url, etcd_prefix)

    records = registry.list()

    assert [record.pid for record in records] == [writer.pid]
    assert records[0].session_id == writer.sessions[0]
    assert records[0].host == registry.host_name
    assert records[0].machine_id == registry.machine_id
    assert registry.find(str(writer.pid)).pid == writer.pid
    assert registry.find(f"{registry.host_name}:{writer.pid}").pid == writer.pid


def test_sigkill_removes_record_within_ttl(
    spawn: Spawn,
    tmp_path: Path,
    etcd_url: str,
    etcd_prefix: str,
    registry: EtcdRegistry,
    remote_view: EtcdRegistry,
) -> None:
    writer = start_writer(spawn, tmp_path, etcd_url, etcd_prefix, "--ttl", str(TTL))
    assert [record.pid for record in remote_view.list()] == [writer.pid]

    writer.process.send_signal(signal.SIGKILL)
    writer.process.wait(timeout=10)

    # This machine judges its own records by their process too, so the death shows at once.
    assert registry.list() == []
    [entry] = registry.entries()
    assert entry.liveness is not None
    assert entry.liveness.state == STALE
    assert entry.liveness.reason == EXITED
    # Another host sees the key until etcd expires the lease.
    wait_until(lambda: remote_view.list() == [], timeout=TTL + 2)


def test_clean_exit_removes_record_at_once(
    spawn: Spawn, tmp_path: Path, etcd_url: str, etcd_prefix: str, remote_view: EtcdRegistry
) -> None:
    writer = start_writer(spawn, tmp_path, etcd_url, etcd_prefix, "--ttl", "30")

    status = writer.exit()

    assert status == 0
    assert keys_of(remote_view) == []


def test_many_hosts_are_listed_and_found(
    spawn: Spawn, tmp_path: Path, etcd_url: str, etcd_prefix: str, registry: EtcdRegistry
) -> None:
    hosts, per_host, first_pid = 20, 50, 40000
    writers = [
        start_writer(
            spawn,
            tmp_path,
            etcd_url,
            etcd_prefix,
            *("--host-name", f"sim-{index}", "--machine-id", f"sim-machine-{index}"),
            *("--count", str(per_host), "--fake-pids", str(first_pid)),
            wait=False,
        )
        for index in range(hosts)
    ]
    for writer in writers:
        writer.wait_published(timeout=60)

    records = registry.list()

    assert len(records) == hosts * per_host
    assert {record.host for record in records} == {f"sim-{index}" for index in range(hosts)}
    for index, writer in enumerate(writers):
        # Every record by the lookup rules on one listing; one per host through find().
        for offset, session in enumerate(writer.sessions):
            target = f"sim-{index}:{first_pid + offset}"
            assert resolve(target, records, where="", how_to_start="").session_id == session
        assert registry.find(f"sim-{index}:{first_pid + 49}").session_id == writer.sessions[49]
    assert registry.find(writers[7].sessions[3]).host == "sim-7"
    with pytest.raises(AmbiguousRunError) as ambiguous:
        registry.find(str(first_pid))
    assert len(ambiguous.value.candidates) == hosts
    assert f"sim-0:{first_pid} " in str(ambiguous.value)


def test_host_pid_of_unknown_host_is_not_found(registry: EtcdRegistry) -> None:
    with registry.register("http://127.0.0.1:8000"), pytest.raises(NoRunError):
        registry.find(f"no-such-host:{os.getpid()}")


def test_write_fills_host_and_machine_and_clears_lock(
    registry: EtcdRegistry, remote_view: EtcdRegistry
) -> None:
    record = Record(os.getpid(), "http://127.0.0.1:8000", "s1", "agent", host="x", lock="flock")

    cleanup = registry.write(record)

    [stored] = remote_view.list()
    assert stored == cleanup.record
    assert stored.host == registry.host_name
    assert stored.machine_id == registry.machine_id
    assert stored.lock is None
    assert stored.agent == "agent"
    cleanup()


def test_write_replaces_record_of_same_pid(
    registry: EtcdRegistry, remote_view: EtcdRegistry
) -> None:
    earlier = datetime.now(timezone.utc) - timedelta(seconds=5)
    first = Record(os.getpid(), "http://127.0.0.1:8000", "first", started_at=earlier)
    second = Record(os.getpid(), "http://127.0.0.1:8001", "second")

    registry.write(first)
    cleanup = registry.write(second)

    assert [record.session_id for record in remote_view.list()] == ["second"]
    cleanup()
    assert keys_of(remote_view) == []


def test_cleanup_removes_key_and_revokes_lease(
    registry: EtcdRegistry, remote_view: EtcdRegistry
) -> None:
    cleanup = registry.write(Record(os.getpid(), "http://127.0.0.1:8000", "s"))
    lease = registry.lease
    assert lease is not None

    cleanup()

    assert keys_of(remote_view) == []
    assert registry.lease is None
    answer = registry.client.call("lease/timetolive", {"ID": str(lease)})
    assert number(answer, "TTL") == -1


def test_cleanup_leaves_other_records_of_the_lease(
    registry: EtcdRegistry,
    remote_view: EtcdRegistry,
    sleeper: Callable[[], subprocess.Popen[bytes]],
) -> None:
    child = sleeper()
    own = registry.write(Record(os.getpid(), "http://127.0.0.1:8000", "own"))
    registry.write(Record(child.pid, "http://127.0.0.1:8001", "child"))

    own()

    assert [record.session_id for record in remote_view.list()] == ["child"]
    assert registry.lease is not None


def test_stale_cleanup_after_rewrite_does_nothing(
    registry: EtcdRegistry, remote_view: EtcdRegistry
) -> None:
    record = Record(os.getpid(), "http://127.0.0.1:8000", "s")
    first = registry.write(record)
    second = registry.write(record)

    first()

    assert len(remote_view.list()) == 1
    second()
    assert remote_view.list() == []


def test_cleanup_in_forked_child_keeps_record(
    registry: EtcdRegistry, remote_view: EtcdRegistry
) -> None:
    cleanup = registry.write(Record(os.getpid(), "http://127.0.0.1:8000", "s"))

    child = os.fork()
    if child == 0:
        cleanup()
        os._exit(0)
    _, status = os.waitpid(child, 0)

    assert os.waitstatus_to_exitcode(status) == 0
    assert len(remote_view.list()) == 1
    cleanup()


def test_dead_local_record_stays_stale(registry: EtcdRegistry, remote_view: EtcdRegistry) -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(timeout=30)
    registry.write(Record(child.pid, "http://127.0.0.1:8000", "dead"))

    entries = registry.entries(prune=True)

    assert registry.list() == []
    assert [entry.liveness.state for entry in entries if entry.liveness] == [STALE]
    # Readers never delete keys, even stale ones: the writer's lease decides.
    assert len(keys_of(remote_view)) == 1


def test_remote_records_are_live_while_key_exists(
    registry: EtcdRegistry, remote_view: EtcdRegistry
) -> None:
    # A pid that cannot exist here: liveness on another host comes from the lease alone.
    remote_view.write(Record(2**31 - 1, "http://127.0.0.1:8000", "far"))

    [entry] = registry.entries()

    assert entry.liveness is not None
    assert entry.liveness.state == LIVE
    assert [record.session_id for record in registry.list()] == ["far"]


def test_invalid_values_are_reported_not_listed(
    registry: EtcdRegistry, remote_view: EtcdRegistry
) -> None:
    runs = registry.keys.runs
    good = remote_view.write(Record(12345, "http://127.0.0.1:8000", "good"))
    planted = {
        f"{runs}m1/12-2026-01-01T00:00:00Z": b"not json",
        f"{runs}m1/13-2026-01-01T00:00:00Z": good.record.to_json(),
        f"{runs}no-pid-here": b"{}",
    }
    for key, value in planted.items():
        registry.client.call("kv/put", {"key": encode(key), "value": encode_bytes(value)})

    entries = registry.entries()

    invalid = {entry.path: entry.problem for entry in entries if entry.kind == "invalid"}
    assert set(invalid) == set(planted)
    assert "not valid JSON" in invalid[f"{runs}m1/12-2026-01-01T00:00:00Z"]
    assert "the key names pid 13" in invalid[f"{runs}m1/13-2026-01-01T00:00:00Z"]
    assert [record.session_id for record in registry.list()] == ["good"]


def test_token_over_plain_http_is_refused(
    registry: EtcdRegistry, remote_view: EtcdRegistry
) -> None:
    record = Record(os.getpid(), "http://127.0.0.1:8000", "s", token="a-secret-token")

    with pytest.raises(InsecureBackendError):
        registry.write(record)

    assert keys_of(remote_view) == []


def test_lost_lease_is_granted_again_and_records_republished(
    registry: EtcdRegistry, remote_view: EtcdRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    registry.write(Record(os.getpid(), "http://127.0.0.1:8000", "s"))
    lost = registry.lease
    assert lost is not None

    # Revoking the lease from outside deletes its keys, as an expiry would.
    registry.client.call("lease/revoke", {"ID": str(lost)})
    assert keys_of(remote_view) == []

    wait_until(lambda: len(remote_view.list()) == 1, timeout=TTL + 2)
    assert registry.lease not in (None, lost)
    assert "is gone" in caplog.text
    assert "published 1 record(s) again" in caplog.text


def test_write_after_close_is_refused(registry: EtcdRegistry) -> None:
    registry.close()

    with pytest.raises(Exception, match="closed"):
        registry.write(Record(os.getpid(), "http://127.0.0.1:8000", "s"))


def test_context_manager_closes(etcd_url: str, etcd_prefix: str) -> None:
    with EtcdRegistry(etcd_url, prefix=etcd_prefix, ttl=TTL) as registry:
        assert registry.list() == []

    with pytest.raises(Exception, match="closed"):
        registry.write(Record(os.getpid(), "http://127.0.0.1:8000", "s"))


def test_writer_without_cleanup_exits_promptly(
    etcd_url: str, etcd_prefix: str, remote_view: EtcdRegistry
) -> None:
    code = (
        "from runregistry import EtcdRegistry\n"
        f"r = EtcdRegistry({etcd_url!r}, prefix={etcd_prefix!r}, ttl=2)\n"
        "r.register('http://127.0.0.1:8000').__enter__()\n"
    )

    # The keep-alive thread is a daemon: the interpreter ends with the script.
    subprocess.run([sys.executable, "-c", code], check=True, timeout=20, capture_output=True)

    wait_until(lambda: remote_view.list() == [], timeout=TTL + 2)


def test_unreachable_etcd_raises_registry_error(etcd_prefix: str) -> None:
    registry = EtcdRegistry("http://127.0.0.1:9", prefix=etcd_prefix, timeout=2)

    with pytest.raises(Exception, match=r"cannot reach etcd at http://127\.0\.0\.1:9"):
        registry.list()


def test_cli_lists_runs_with_etcd_option(
    registry: EtcdRegistry,
    etcd_url: str,
    etcd_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("RUNREGISTRY_ETCD_PREFIX", etcd_prefix)
    with registry.register("http://127.0.0.1:8000", "cli-session"):
        status = main(["--etcd", etcd_url, "list", "--json"])

    listed = json.loads(capsys.readouterr().out)
    assert status == 0
    assert [item["session_id"] for item in listed] == ["cli-session"]


def test_cli_takes_etcd_from_environment_over_dir(
    registry: EtcdRegistry,
    etcd_url: str,
    etcd_prefix: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("RUNREGISTRY_ETCD_PREFIX", etcd_prefix)
    monkeypatch.setenv("RUNREGISTRY_ETCD", etcd_url)
    monkeypatch.setenv("RUNREGISTRY_DIR", str(tmp_path / "runs"))
    with registry.register("http://127.0.0.1:8000", "env-session"):
        status = main(["find", "env-session", "--json"])
        found = json.loads(capsys.readouterr().out)

        explicit_dir = main(["--dir", str(tmp_path / "runs"), "list", "--json"])
        listed_in_dir = json.loads(capsys.readouterr().out)

    assert status == 0
    assert found["session_id"] == "env-session"
    assert explicit_dir == 0
    assert listed_in_dir == []


def test_cli_rejects_etcd_with_dir(capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["--etcd", "http://127.0.0.1:9", "--dir", "/tmp/x", "list"])

    assert status == 2
    assert "--etcd cannot be combined with --dir" in capsys.readouterr().err


def test_cli_app_selects_etcd_app(
    open_registry: RegistryFactory,
    etcd_url: str,
    etcd_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("RUNREGISTRY_ETCD_PREFIX", etcd_prefix)
    other_app = open_registry(app="other-app")
    with other_app.register("http://127.0.0.1:8000", "other-app-session"):
        in_app = main(["--etcd", etcd_url, "--app", "other-app", "list", "--json"])
        app_runs = json.loads(capsys.readouterr().out)
        default = main(["--etcd", etcd_url, "list", "--json"])
        default_runs = json.loads(capsys.readouterr().out)

    assert in_app == 0
    assert [item["session_id"] for item in app_runs] == ["other-app-session"]
    assert default == 0
    assert default_runs == []


def test_session_server_is_healthy(etcd_session_server: EtcdServer) -> None:
    assert etcd_session_server.process is not None
    assert etcd_session_server.process.poll() is None


def test_stop_ends_local_run_and_removes_record(
    spawn: Spawn,
    tmp_path: Path,
    etcd_url: str,
    etcd_prefix: str,
    registry: EtcdRegistry,
    remote_view: EtcdRegistry,
) -> None:
    writer = start_writer(spawn, tmp_path, etcd_url, etcd_prefix, "--ttl", "30")

    stopped = registry.stop(str(writer.pid), timeout=10)

    assert stopped.pid == writer.pid
    assert writer.process.wait(timeout=10) == 0
    assert keys_of(remote_view) == []


def test_stop_rejects_clone_with_same_host(
    open_registry: RegistryFactory,
    registry: EtcdRegistry,
    sleeper: Callable[[], subprocess.Popen[bytes]],
) -> None:
    # A cloned machine with this host name but its own machine id: its pid
    # means nothing here, even though a process with that pid runs here.
    clone = open_registry(machine_id="cloned-machine-id")
    child = sleeper()
    clone.write(Record(child.pid, "http://127.0.0.1:8000", "on-the-clone"))

    with pytest.raises(StopRefusedError, match="not on this"):
        registry.stop(str(child.pid), timeout=1)

    assert child.poll() is None
