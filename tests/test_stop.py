"""``Registry.stop`` and ``runregistry stop`` against real processes, servers included."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from datetime import datetime, timezone

import pytest

from conftest import Spawn, python_child
from runregistry import (
    AmbiguousRunError,
    NoRunError,
    Record,
    Registry,
    RegistryError,
    StillRunningError,
    StopRefusedError,
)
from runregistry._liveness import boot_time, process_info
from runregistry.cli import main

# A real HTTP server on 127.0.0.1 that publishes its address while it serves.
# With "handle" it turns SIGTERM into a normal exit, so its own cleanup runs.
SERVER = """
import http.server, signal, sys
from runregistry import Registry
if sys.argv[2] == "handle":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
server = http.server.HTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
addr = f"http://127.0.0.1:{server.server_address[1]}"
with Registry(sys.argv[1]).register(addr, session_id="server-run"):
    print(addr, flush=True)
    server.serve_forever()
"""

# A run that ignores SIGTERM, so only SIGKILL ends it.
STUBBORN = """
import signal, sys, time
from runregistry import Registry
signal.signal(signal.SIGTERM, signal.SIG_IGN)
with Registry(sys.argv[1]).register("http://127.0.0.1:9", session_id="stubborn-run"):
    print("ready", flush=True)
    while True:
        time.sleep(60)
"""


@pytest.fixture
def no_signals() -> Iterator[None]:
    """Fail the test instead of sending any signal; for targets that must never be signalled.

    Signalling pid 1 or a stranger's process for real is what these tests
    guard against, so the send functions are replaced rather than trusted.
    They are restored before the children of the test are killed.
    """
    real_kill = os.kill
    real_pidfd_send_signal = signal.pidfd_send_signal

    def refuse(*args: object) -> None:
        pytest.fail(f"a signal was sent: {args}")

    def probe_only(pid: int, signum: int) -> None:
        # Signal 0 only checks that the process exists; the liveness judge uses it.
        if signum != 0:
            refuse(pid, signum)
        real_kill(pid, 0)

    signal.pidfd_send_signal = refuse
    os.kill = probe_only
    try:
        yield
    finally:
        signal.pidfd_send_signal = real_pidfd_send_signal
        os.kill = real_kill


def start_server(
    spawn: Spawn, registry: Registry, sigterm: str
) -> tuple[subprocess.Popen[bytes], str]:
    child = spawn(*python_child(SERVER), str(registry.directory), sigterm, stdout=subprocess.PIPE)
    assert child.stdout is not None
    addr = child.stdout.readline().decode().strip()
    assert addr.startswith("http://127.0.0.1:")
    return child, addr


def state_of(pid: int) -> str:
    """Return the state letter of process *pid* from /proc, such as ``S`` or ``Z``."""
    with open(f"/proc/{pid}/stat", "rb") as stat:
        data = stat.read()
    return data[data.rfind(b")") + 2 :].split()[0].decode()


@pytest.mark.parametrize("sigterm", ["handle", "default"])
def test_stop_ends_server_and_its_record(registry: Registry, spawn: Spawn, sigterm: str) -> None:
    child, addr = start_server(spawn, registry, sigterm)
    with urllib.request.urlopen(addr, timeout=5) as answer:
        assert answer.status == 200

    record = registry.stop(addr)

    assert record.pid == child.pid
    assert record.session_id == "server-run"
    # Not reaped yet: a zombie counts as exited.
    assert state_of(child.pid) == "Z"
    assert child.wait(timeout=10) in (0, -signal.SIGTERM)
    assert registry.list() == []
    assert not (registry.directory / f"{child.pid}.json").exists()


def test_stop_refuses_stale_record_of_other_live_process(
    registry: Registry, sleeper: Callable[[], subprocess.Popen[bytes]], no_signals: None
) -> None:
    bystander = sleeper()
    started = process_info(bystander.pid).start_time
    assert started is not None
    if started - boot_time() < 4:
        pytest.skip("the machine booted too recently to date a record between boot and now")
    # Written before the bystander started: its pid was reused since.
    earlier = datetime.fromtimestamp((boot_time() + started) / 2, timezone.utc)
    registry.write(Record(bystander.pid, "http://127.0.0.1:9", "old-run", started_at=earlier))

    with pytest.raises(StopRefusedError) as caught:
        registry.stop(str(bystander.pid))

    message = str(caught.value)
    assert "stale" in message
    assert "pid-reused" in message
    assert f"{bystander.pid}.json" in message
    assert bystander.poll() is None


def test_stop_refuses_live_run_of_another_user(
    registry: Registry, spawn: Spawn, no_signals: None
) -> None:
    if os.geteuid() != 0:
        pytest.skip("starting a process as another user needs root")
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv (util-linux) is not installed")
    stranger = spawn(setpriv, "--reuid=nobody", "--regid=nogroup", "--clear-groups", "sleep", "600")
    deadline = time.monotonic() + 10
    while _real_uid(stranger.pid) == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    registry.write(Record(stranger.pid, "http://127.0.0.1:9", "strangers-run"))

    with pytest.raises(StopRefusedError) as caught:
        registry.stop("strangers-run")

    assert "belongs to nobody" in str(caught.value)
    assert stranger.poll() is None


def _real_uid(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("Uid:"):
                return int(line.split()[1])
    raise AssertionError(f"no Uid line for pid {pid}")


def test_stop_without_force_leaves_stubborn_process_running(
    registry: Registry, spawn: Spawn
) -> None:
    child = spawn(*python_child(STUBBORN), str(registry.directory), stdout=subprocess.PIPE)
    assert child.stdout is not None
    assert child.stdout.readline() == b"ready\n"

    with pytest.raises(StillRunningError) as caught:
        registry.stop("stubborn", timeout=0.5)

    assert caught.value.pid == child.pid
    assert "--force" in str(caught.value)
    assert child.poll() is None


def test_stop_force_kills_process_ignoring_sigterm(registry: Registry, spawn: Spawn) -> None:
    child = spawn(*python_child(STUBBORN), str(registry.directory), stdout=subprocess.PIPE)
    assert child.stdout is not None
    assert child.stdout.readline() == b"ready\n"

    record = registry.stop("stubborn", timeout=0.5, force=True)

    assert record.pid == child.pid
    assert child.wait(timeout=10) == -signal.SIGKILL
    assert registry.list() == []


def test_stop_refuses_this_process(registry: Registry, no_signals: None) -> None:
    with (
        registry.register("http://127.0.0.1:9", session_id="myself"),
        pytest.raises(StopRefusedError, match="this process"),
    ):
        registry.stop("myself")


def test_stop_refuses_pid_one(registry: Registry, no_signals: None) -> None:
    registry.write(Record(1, "http://127.0.0.1:9", "init-run"))

    with pytest.raises(StopRefusedError, match="pid 1"):
        registry.stop("1")


def test_stop_refuses_record_of_other_host(registry: Registry, no_signals: None) -> None:
    registry.write(Record(os.getppid(), "http://10.0.0.7:9", "far-run", host="elsewhere"))

    with pytest.raises(StopRefusedError) as caught:
        registry.stop("far-run")

    assert "unknown" in str(caught.value)
    assert "other-host" in str(caught.value)


def test_stop_refuses_empty_target(registry: Registry, no_signals: None) -> None:
    with pytest.raises(StopRefusedError, match="empty target"):
        registry.stop("  ")


def test_stop_unknown_target_raises_no_run(registry: Registry) -> None:
    with pytest.raises(NoRunError):
        registry.stop("nobody-home")


def test_stop_ambiguous_target_raises(
    registry: Registry, sleeper: Callable[[], subprocess.Popen[bytes]], no_signals: None
) -> None:
    for session in ("twin-a", "twin-b"):
        registry.write(Record(sleeper().pid, "http://127.0.0.1:9", session))

    with pytest.raises(AmbiguousRunError):
        registry.stop("twin")


def test_stop_rejects_negative_timeout(registry: Registry) -> None:
    with pytest.raises(ValueError, match="timeout"):
        registry.stop("anything", timeout=-1)


def test_stop_errors_are_registry_errors() -> None:
    assert issubclass(StillRunningError, RegistryError)
    assert issubclass(StopRefusedError, RegistryError)


def test_cli_stop_exit_statuses(
    registry: Registry,
    spawn: Spawn,
    sleeper: Callable[[], subprocess.Popen[bytes]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    directory = str(registry.directory)
    for session in ("twin-a", "twin-b"):
        registry.write(Record(sleeper().pid, "http://127.0.0.1:9", session))
    stubborn = spawn(*python_child(STUBBORN), directory, stdout=subprocess.PIPE)
    assert stubborn.stdout is not None
    assert stubborn.stdout.readline() == b"ready\n"
    registry.write(Record(1, "http://127.0.0.1:9", "init-run"))

    missing = main(["--dir", directory, "stop", "nobody-home"])
    missing_ok = main(["--dir", directory, "stop", "nobody-home", "--missing-ok"])
    ambiguous = main(["--dir", directory, "stop", "twin"])
    refused = main(["--dir", directory, "stop", "init-run"])
    still_running = main(["--dir", directory, "stop", "stubborn", "--timeout", "0.3"])
    capsys.readouterr()
    forced = main(["--dir", directory, "stop", "stubborn", "--timeout", "0.3", "--force"])
    output = capsys.readouterr()

    assert missing == 1
    assert missing_ok == 0
    assert ambiguous == 3
    assert refused == 6
    assert still_running == 5
    assert forced == 0
    assert (
        output.out
        == f"stopped run pid={stubborn.pid} session=stubborn-run addr=http://127.0.0.1:9\n"
    )
    assert stubborn.wait(timeout=10) == -signal.SIGKILL


def test_cli_stop_refusal_message(
    registry: Registry, capsys: pytest.CaptureFixture[str], no_signals: None
) -> None:
    registry.write(Record(1, "http://127.0.0.1:9", "init-run"))

    status = main(["--dir", str(registry.directory), "stop", "init-run"])

    error = capsys.readouterr().err
    assert status == 6
    assert error.startswith("runregistry: refusing to stop 'init-run'")
    assert "Traceback" not in error
