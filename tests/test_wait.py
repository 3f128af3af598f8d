"""``Registry.wait`` and ``runregistry wait``, satisfied by records that real processes publish."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from cli_support import RUNREGISTRY
from conftest import Spawn, python_child
from runregistry import AmbiguousRunError, Record, Registry, RegistryError, WaitTimeoutError
from runregistry.cli import main

# A child that sleeps DELAY seconds, then publishes a record until its stdin closes.
REGISTER_LATER = """
import sys, time
from runregistry import Registry
time.sleep(float(sys.argv[2]))
with Registry(sys.argv[1]).register("http://127.0.0.1:9", session_id=sys.argv[3]):
    print("ready", flush=True)
    sys.stdin.read()
"""

# Bound on every wait in these tests; records are expected within 100 ms.
WAIT_LIMIT = 10.0


def register_later(
    spawn: Spawn, registry: Registry, delay: float, session_id: str
) -> subprocess.Popen[bytes]:
    """Start a child that publishes a record with *session_id* after *delay* seconds."""
    return spawn(
        *python_child(REGISTER_LATER),
        str(registry.directory),
        str(delay),
        session_id,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )


def wait_ready(child: subprocess.Popen[bytes]) -> None:
    assert child.stdout is not None
    assert child.stdout.readline() == b"ready\n"


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_wait_returns_run_published_by_another_process(registry: Registry, spawn: Spawn) -> None:
    child = register_later(spawn, registry, 0.3, "late-run")

    record = registry.wait(timeout=WAIT_LIMIT)

    assert record.pid == child.pid
    assert record.session_id == "late-run"


def test_wait_target_ignores_other_runs(registry: Registry, spawn: Spawn) -> None:
    other = register_later(spawn, registry, 0.0, "other-run")
    wait_ready(other)
    wanted = register_later(spawn, registry, 0.3, "wanted-run")

    record = registry.wait("wanted", timeout=WAIT_LIMIT)

    assert record.pid == wanted.pid


def test_wait_returns_live_run_at_once(registry: Registry, spawn: Spawn) -> None:
    child = register_later(spawn, registry, 0.0, "already-there")
    wait_ready(child)

    record = registry.wait(str(child.pid), timeout=0)

    assert record.session_id == "already-there"


def test_wait_new_ignores_older_live_run(registry: Registry, spawn: Spawn) -> None:
    old = register_later(spawn, registry, 0.0, "old-run")
    wait_ready(old)

    with pytest.raises(WaitTimeoutError):
        registry.wait(timeout=0.3, new=True)
    fresh = register_later(spawn, registry, 0.3, "fresh-run")
    record = registry.wait(timeout=WAIT_LIMIT, new=True)

    assert record.pid == fresh.pid


def test_wait_timeout_names_target_and_directory(registry: Registry) -> None:
    with pytest.raises(WaitTimeoutError) as caught:
        registry.wait("no-such-session", timeout=0.2)

    error = caught.value
    assert isinstance(error, TimeoutError)
    assert isinstance(error, RegistryError)
    assert error.target == "no-such-session"
    assert error.timeout == 0.2
    assert "'no-such-session'" in str(error)
    assert str(registry.directory) in str(error)


def test_wait_zero_timeout_checks_once(registry: Registry) -> None:
    with pytest.raises(WaitTimeoutError):
        registry.wait(timeout=0)


def test_wait_rejects_negative_timeout(registry: Registry) -> None:
    with pytest.raises(ValueError, match="timeout"):
        registry.wait(timeout=-1)


def test_wait_ambiguous_target_raises(registry: Registry, spawn: Spawn) -> None:
    for session in ("shared-a", "shared-b"):
        wait_ready(register_later(spawn, registry, 0.0, session))

    with pytest.raises(AmbiguousRunError) as caught:
        registry.wait("shared", timeout=WAIT_LIMIT)

    assert sorted(caught.value.candidates) == ["shared-a", "shared-b"]


def test_wait_ignores_stale_record(
    registry: Registry, sleeper: Callable[[], subprocess.Popen[bytes]]
) -> None:
    child = sleeper()
    registry.write(Record(child.pid, "http://127.0.0.1:9", "dies"))
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=10)

    with pytest.raises(WaitTimeoutError):
        registry.wait("dies", timeout=0.3)


def test_wait_in_directory_created_later(registry: Registry, spawn: Spawn) -> None:
    assert not registry.directory.exists()
    child = register_later(spawn, registry, 0.3, "creates-directory")

    record = registry.wait(timeout=WAIT_LIMIT)

    assert record.pid == child.pid


def test_wait_releases_descriptors(registry: Registry, spawn: Spawn) -> None:
    child = register_later(spawn, registry, 0.0, "counted")
    wait_ready(child)
    before = open_fds()

    registry.wait(timeout=WAIT_LIMIT)
    with pytest.raises(WaitTimeoutError):
        registry.wait("missing", timeout=0.1)

    assert open_fds() == before


def test_cli_wait_prints_record_like_find(
    registry: Registry, spawn: Spawn, capsys: pytest.CaptureFixture[str]
) -> None:
    child = register_later(spawn, registry, 0.3, "printed-run")
    directory = str(registry.directory)

    status = main(["--dir", directory, "wait", "--timeout", str(WAIT_LIMIT), "--json"])
    record = json.loads(capsys.readouterr().out)
    main(["--dir", directory, "wait", "printed", "--field", "pid"])
    pid_line = capsys.readouterr().out
    main(["--dir", directory, "wait", "printed"])
    text = capsys.readouterr().out
    main(["--dir", directory, "find", "printed"])
    found = capsys.readouterr().out

    assert status == 0
    assert record["pid"] == child.pid
    assert record["session_id"] == "printed-run"
    assert pid_line == f"{child.pid}\n"
    assert text == found


def test_cli_wait_timeout_exits_one(registry: Registry, capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["--dir", str(registry.directory), "wait", "nothing", "--timeout", "0.2"])

    captured = capsys.readouterr()
    assert status == 1
    assert captured.out == ""
    assert "'nothing'" in captured.err
    assert str(registry.directory) in captured.err
    assert "Traceback" not in captured.err


def test_cli_wait_rejects_bad_timeout(capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["wait", "--timeout", "soon"])

    assert status == 2
    assert "invalid duration 'soon'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [[str(RUNREGISTRY)], [sys.executable, "-m", "runregistry"]],
    ids=["console-script", "python-m"],
)
def test_cli_wait_satisfied_by_another_process(
    registry: Registry, spawn: Spawn, argv: list[str]
) -> None:
    waiter = spawn(
        *argv,
        "--dir",
        str(registry.directory),
        "wait",
        "--new",
        "--field",
        "session_id",
        "--timeout",
        str(WAIT_LIMIT),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    wait_until_watching(waiter.pid)
    register_later(spawn, registry, 0.0, "subprocess-run")

    out, err = waiter.communicate(timeout=WAIT_LIMIT + 5)

    assert waiter.returncode == 0, err
    assert out == b"subprocess-run\n"


def test_cli_wait_interrupted_exits_130(registry: Registry, spawn: Spawn) -> None:
    waiter = spawn(
        str(RUNREGISTRY),
        "--dir",
        str(registry.directory),
        "wait",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    wait_until_watching(waiter.pid)

    waiter.send_signal(signal.SIGINT)
    out, err = waiter.communicate(timeout=10)

    assert waiter.returncode == 130
    assert out == b""
    assert b"Traceback" not in err


def wait_until_watching(pid: int) -> None:
    """Wait until process *pid* has an inotify descriptor open, so it is inside its wait."""
    deadline = time.monotonic() + WAIT_LIMIT
    while time.monotonic() < deadline:
        try:
            links = [os.readlink(path) for path in Path(f"/proc/{pid}/fd").iterdir()]
        except (FileNotFoundError, ProcessLookupError):
            links = []
        if "anon_inode:inotify" in links:
            return
        time.sleep(0.02)
    pytest.fail(f"process {pid} opened no inotify descriptor within {WAIT_LIMIT} s")
