"""The main job from end to end, through the command line only: publish, list, find, call, stop.

Real servers on 127.0.0.1: ``python -m http.server`` under ``runregistry
exec``, the two example control planes, and the ``make run`` demo in a
pseudo-terminal.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil
import pytest

REPOSITORY = Path(__file__).resolve().parents[1]
EXAMPLES = REPOSITORY / "examples"
RUNREGISTRY = [sys.executable, "-m", "runregistry"]

# Makes the pseudo-terminal on stdin the controlling terminal of a new
# session and runs the command in its foreground process group.
TERMINAL_LAUNCHER = (
    "import fcntl, os, sys, termios; "
    "fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
    "os.execvp(sys.argv[1], sys.argv[1:])"
)


@pytest.fixture
def registry_env(registry_dir: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The environment of every process in a test, with the test's registry as the default."""
    monkeypatch.setenv("RUNREGISTRY_DIR", str(registry_dir))
    return dict(os.environ)


@pytest.fixture
def processes() -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start processes; they and their descendants are killed at the end of the test."""
    started: list[subprocess.Popen[bytes]] = []

    def start(argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        kwargs.setdefault("stdout", subprocess.DEVNULL)
        kwargs.setdefault("stderr", subprocess.DEVNULL)
        process: subprocess.Popen[bytes] = subprocess.Popen(argv, **kwargs)
        started.append(process)
        return process

    yield start

    for process in started:
        with contextlib.suppress(psutil.NoSuchProcess):
            for child in psutil.Process(process.pid).children(recursive=True):
                with contextlib.suppress(psutil.NoSuchProcess):
                    child.kill()
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``runregistry ARGS`` and return its result; fail the test on a non-zero status."""
    result = subprocess.run(
        [*RUNREGISTRY, *args], capture_output=True, text=True, timeout=30, check=False
    )
    if check and result.returncode != 0:
        pytest.fail(f"runregistry {' '.join(args)} exited {result.returncode}: {result.stderr}")
    return result


def listed() -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = json.loads(cli("list", "--json").stdout)
    return runs


def wait_for_listed(count: int, timeout: float = 30.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while len(runs := listed()) != count:
        if time.monotonic() > deadline:
            pytest.fail(f"expected {count} runs in `runregistry list`, got {runs}")
        time.sleep(0.1)
    return runs


def http_get(addr: str, path: str) -> int:
    """Return the status of ``GET path`` sent straight to *addr* on loopback."""
    parts = urlsplit(addr)
    assert parts.hostname == "127.0.0.1"
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def session_part(session_id: str) -> str:
    # The middle groups of a UUID4: a substring, not a prefix, of the session id.
    return session_id[9:23]


def test_three_servers_listed_found_called_and_stopped(
    registry_env: dict[str, str],
    registry_dir: Path,
    processes: Callable[..., subprocess.Popen[bytes]],
) -> None:
    http_server = [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "{port}"]
    exec_process = processes([*RUNREGISTRY, "exec", "--port", "auto", "--", *http_server])
    stdlib = processes([sys.executable, str(EXAMPLES / "stdlib_control_plane.py")])
    starlette = processes([sys.executable, str(EXAMPLES / "starlette_control_plane.py")])

    runs = wait_for_listed(3)
    by_agent = {run["agent"]: run for run in runs}
    assert set(by_agent) == {
        os.path.basename(sys.executable),
        "stdlib-example",
        "starlette-example",
    }
    assert by_agent["stdlib-example"]["pid"] == stdlib.pid
    assert by_agent["starlette-example"]["pid"] == starlette.pid
    assert all("token" not in run for run in runs)

    health_paths = {"stdlib-example": "/health", "starlette-example": "/health"}
    for agent, run in by_agent.items():
        found = json.loads(cli("find", session_part(run["session_id"]), "--json").stdout)
        assert found["session_id"] == run["session_id"]
        assert http_get(found["addr"], health_paths.get(agent, "/")) == 200

    stdlib.kill()
    stdlib.wait(timeout=10)
    assert {run["pid"] for run in listed()} == {by_agent[a]["pid"] for a in by_agent} - {stdlib.pid}
    assert not (registry_dir / f"{stdlib.pid}.json").exists()

    exec_child = by_agent[os.path.basename(sys.executable)]["pid"]
    exec_process.send_signal(signal.SIGTERM)
    assert exec_process.wait(timeout=30) == 143
    assert not psutil.pid_exists(exec_child)
    assert not (registry_dir / f"{exec_child}.json").exists()
    assert [run["pid"] for run in listed()] == [starlette.pid]

    starlette.terminate()
    starlette.wait(timeout=30)
    assert listed() == []
    assert list(registry_dir.iterdir()) == []


def test_never_listening_child_times_out_cleanly(
    registry_env: dict[str, str], registry_dir: Path
) -> None:
    result = cli(
        "exec", "--port", "auto", "--ready-timeout", "1", "--", "sleep", "600", check=False
    )

    assert result.returncode == 1
    assert "did not accept connections" in result.stderr
    assert listed() == []
    assert not registry_dir.exists() or list(registry_dir.iterdir()) == []


def test_child_exiting_at_once_gives_its_status(
    registry_env: dict[str, str], registry_dir: Path
) -> None:
    result = cli("exec", "--port", "auto", "--", "sh", "-c", "exit 42", check=False)

    assert result.returncode == 42
    assert "exited with status 42 before listening" in result.stderr
    assert not registry_dir.exists() or list(registry_dir.iterdir()) == []


def test_exec_token_hidden_unless_asked(
    registry_env: dict[str, str], processes: Callable[..., subprocess.Popen[bytes]]
) -> None:
    server = [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "{port}"]
    processes([*RUNREGISTRY, "exec", "--port", "auto", "--token", "auto", "--", *server])
    (run,) = wait_for_listed(1)
    part = session_part(run["session_id"])

    token = cli("find", part, "--field", "token").stdout.strip()
    assert len(token) >= 43
    for args in (("list",), ("list", "--json"), ("find", part), ("find", part, "--json")):
        assert token not in cli(*args).stdout
    assert json.loads(cli("find", part, "--json", "--show-token").stdout)["token"] == token


class Terminal:
    """A command running as the foreground job of a pseudo-terminal, with its output collected."""

    def __init__(self, argv: list[str], cwd: Path) -> None:
        self.master, slave = os.openpty()
        self.process = subprocess.Popen(
            [sys.executable, "-c", TERMINAL_LAUNCHER, *argv],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            cwd=cwd,
            start_new_session=True,
        )
        os.close(slave)
        self._output = bytearray()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    @property
    def output(self) -> str:
        return self._output.decode(errors="replace").replace("\r\n", "\n")

    def wait_for_output(self, text: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output:
            if time.monotonic() > deadline or self.process.poll() is not None:
                pytest.fail(f"{text!r} did not appear; the terminal shows:\n{self.output}")
            time.sleep(0.05)

    def close(self) -> None:
        with contextlib.suppress(psutil.NoSuchProcess):
            for child in psutil.Process(self.process.pid).children(recursive=True):
                with contextlib.suppress(psutil.NoSuchProcess):
                    child.kill()
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)
        self._reader.join(timeout=10)
        os.close(self.master)

    def _read(self) -> None:
        # A terminal's buffer is small, so unread output would block the writers.
        while True:
            ready, _, _ = select.select([self.master], [], [], 0.1)
            if ready:
                try:
                    data = os.read(self.master, 4096)
                except OSError:
                    return
                if not data:
                    return
                self._output.extend(data)
            elif self.process.poll() is not None:
                return


def second_terminal_commands(output: str) -> list[str]:
    """Return the indented commands in the demo's instructions, continuation lines joined."""
    commands: list[str] = []
    continued = False
    for line in output.splitlines():
        text = line.strip()
        if continued:
            commands[-1] = commands[-1].rstrip("\\ ") + " " + text
        elif line.startswith("  ") and (text.startswith((".venv/", "curl "))):
            commands.append(text.split("  #")[0])
        continued = text.endswith("\\")
    return commands


def test_demo_ctrl_c_leaves_no_record(registry_env: dict[str, str], registry_dir: Path) -> None:
    runregistry_script = Path(sys.executable).parent / "runregistry"
    if (
        Path(sys.executable).parent != REPOSITORY / ".venv" / "bin"
        or not runregistry_script.exists()
    ):
        pytest.skip("the demo's printed commands need the repository's .venv")
    terminal = Terminal([sys.executable, str(EXAMPLES / "demo.py")], cwd=REPOSITORY)
    try:
        terminal.wait_for_output("Press Ctrl-C here")
        (run,) = listed()
        assert run["agent"] == "demo"

        commands = second_terminal_commands(terminal.output)
        assert len(commands) == 6
        for command in commands:
            if command.startswith("curl") and shutil.which("curl") is None:
                continue
            result = subprocess.run(
                ["sh", "-c", command],
                cwd=REPOSITORY,
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            assert result.returncode == 0, f"{command}: {result.stderr}"
            if "/session" in command and "curl -i" in command:
                assert " 401 " in result.stdout
            elif "/session" in command:
                assert json.loads(result.stdout)["session_id"] == run["session_id"]

        os.write(terminal.master, b"\x03")
        status = terminal.process.wait(timeout=30)
    finally:
        terminal.close()

    assert status == 0, terminal.output
    assert "stopped: exec exited with status 0" in terminal.output
    assert listed() == []
    assert list(registry_dir.iterdir()) == []
