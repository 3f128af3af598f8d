"""``runregistry exec``: readiness, the child's record, signal relaying, tokens and option checks.

Every test runs exec as a real process on real child servers bound to
127.0.0.1, with a private registry directory.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from runregistry import InsecureBackendError, Record, Registry
from runregistry import _exec as exec_module
from runregistry.cli import main

RUNREGISTRY = [sys.executable, "-m", "runregistry"]

# The command line with exec's portable relay (signal handlers and a wake-up
# pipe), which systems without sigtimedwait() use, in place of Linux's.
RUNREGISTRY_HANDLER_RELAY = [
    sys.executable,
    "-c",
    "import sys; from runregistry import _supervisor; from runregistry.cli import main; "
    "_supervisor.open_relay = _supervisor.HandlerRelay; sys.exit(main(sys.argv[1:]))",
]
RELAYS = {"sigwait": RUNREGISTRY, "handlers": RUNREGISTRY_HANDLER_RELAY}

# A server that logs every relayed signal it gets, one name per line, after
# "LISTENING". SIGINT, SIGTERM and SIGHUP make it stop: it waits half a second
# more, long enough for a duplicate to arrive and be logged, then exits 7.
SIGNAL_LOGGER = r"""
import os, signal, socket, sys, time

log_path = sys.argv[1]
stopping = False

def log(line):
    with open(log_path, "a") as log_file:
        log_file.write(line + "\n")

def on_signal(signum, frame):
    global stopping
    log(signal.Signals(signum).name)
    if signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        stopping = True

for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1):
    signal.signal(signum, on_signal)

hold = os.environ.get("HOLD_FILE")
while hold and not os.path.exists(hold):
    time.sleep(0.02)
listener = socket.create_server(("127.0.0.1", int(os.environ["PORT"])))
log("LISTENING")
while not stopping:
    time.sleep(0.02)
time.sleep(0.5)
sys.exit(7)
"""

# Makes the pseudo-terminal on stdin the controlling terminal of a new
# session, then runs the command in its foreground process group, as a shell
# in a terminal window would.
TERMINAL_LAUNCHER = (
    "import fcntl, os, sys, termios; "
    "fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
    "os.execvp(sys.argv[1], sys.argv[1:])"
)


@pytest.fixture
def exec_runs() -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start ``runregistry exec`` processes; their children and they are killed afterwards."""
    started: list[subprocess.Popen[bytes]] = []

    def start(
        registry_dir: Path, *args: str, relay: str = "sigwait", **kwargs: object
    ) -> subprocess.Popen[bytes]:
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        kwargs.setdefault("stderr", subprocess.PIPE)
        argv = [*RELAYS[relay], "--dir", str(registry_dir), "exec", *args]
        process: subprocess.Popen[bytes] = subprocess.Popen(argv, **kwargs)  # type: ignore[call-overload]
        started.append(process)
        return process

    yield start

    for process in started:
        _kill_tree(process.pid)
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


def _kill_tree(pid: int) -> None:
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return
    for child in children:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()


def wait_for(predicate: Callable[[], object], timeout: float = 15.0, description: str = "") -> None:
    """Poll *predicate* until it is true; fail the test after *timeout* seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {description or predicate}")
        time.sleep(0.02)


def published(registry: Registry, timeout: float = 15.0) -> Record:
    """Return the only live record once there is one."""
    records: list[Record] = []

    def found() -> bool:
        records[:] = registry.list()
        return len(records) == 1

    wait_for(found, timeout, "one published record")
    return records[0]


def accepts_connections(addr: str) -> bool:
    host, port = addr.removeprefix("http://").rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=1):
            return True
    except OSError:
        return False


def logged_lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def signal_logger(tmp_path: Path) -> tuple[list[str], Path]:
    script = tmp_path / "signal_logger.py"
    script.write_text(SIGNAL_LOGGER)
    log_path = tmp_path / "signals.log"
    return [sys.executable, str(script), str(log_path)], log_path


def test_exec_publishes_child_record_once_listening(
    exec_runs: Callable[..., subprocess.Popen[bytes]], registry: Registry, registry_dir: Path
) -> None:
    process = exec_runs(
        registry_dir,
        "--port",
        "auto",
        "--",
        sys.executable,
        "-m",
        "http.server",
        "--bind",
        "127.0.0.1",
        "{port}",
        stdout=subprocess.DEVNULL,
    )
    record = published(registry)
    child = psutil.Process(process.pid).children()[0]

    assert record.pid == child.pid
    assert record.pid != process.pid
    assert record.addr.startswith("http://127.0.0.1:")
    assert record.agent == os.path.basename(sys.executable)
    assert record.lock is None
    assert record.token is None
    assert record.started_at.timestamp() >= child.create_time() - 0.1
    assert accepts_connections(record.addr)

    process.terminate()
    _, stderr = process.communicate(timeout=15)
    line = stderr.decode().splitlines()[0]
    assert record.session_id in line
    assert record.addr in line
    assert f"runregistry --dir {registry_dir} find {record.session_id}" in line


def test_exec_publishes_nothing_before_child_listens(
    exec_runs: Callable[..., subprocess.Popen[bytes]],
    registry: Registry,
    registry_dir: Path,
    tmp_path: Path,
) -> None:
    command, log_path = signal_logger(tmp_path)
    hold = tmp_path / "hold"
    exec_runs(
        registry_dir,
        "--port",
        "auto",
        "--",
        *command,
        env={**os.environ, "HOLD_FILE": str(hold)},
    )

    # The child runs but does not listen while the hold file is missing.
    time.sleep(1.0)
    assert registry.list() == []
    assert logged_lines(log_path) == []

    hold.touch()
    record = published(registry)
    assert logged_lines(log_path) == ["LISTENING"]
    assert accepts_connections(record.addr)


def test_exec_replaces_port_placeholder_and_sets_port(
    exec_runs: Callable[..., subprocess.Popen[bytes]],
    registry: Registry,
    registry_dir: Path,
    tmp_path: Path,
) -> None:
    seen = tmp_path / "seen"
    code = (
        "import os, socket, sys, time; "
        "open(sys.argv[2], 'w').write(sys.argv[1] + ' ' + os.environ['PORT']); "
        "s = socket.create_server(('127.0.0.1', int(sys.argv[1]))); time.sleep(600)"
    )
    exec_runs(registry_dir, "--port", "auto", "--", sys.executable, "-c", code, "{port}", str(seen))

    record = published(registry)
    port = record.addr.rsplit(":", 1)[1]
    assert seen.read_text() == f"{port} {port}"


def test_exec_with_addr_publishes_it_as_given(
    exec_runs: Callable[..., subprocess.Popen[bytes]],
    registry: Registry,
    registry_dir: Path,
    tmp_path: Path,
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    command, _ = signal_logger(tmp_path)
    exec_runs(registry_dir, "--addr", f"http://127.0.0.1:{port}/", "--", *command)

    record = published(registry)
    assert record.addr == f"http://127.0.0.1:{port}/"


def test_exec_options_set_session_and_agent(
    exec_runs: Callable[..., subprocess.Popen[bytes]],
    registry: Registry,
    registry_dir: Path,
    tmp_path: Path,
) -> None:
    command, _ = signal_logger(tmp_path)
    exec_runs(
        registry_dir, "--port", "auto", "--session-id", "s-42", "--agent", "tester", "--", *command
    )

    record = published(registry)
    assert record.session_id == "s-42"
    assert record.agent == "tester"


def test_exec_default_session_id_is_uuid4(
    exec_runs: Callable[..., subprocess.Popen[bytes]],
    registry: Registry,
    registry_dir: Path,
    tmp_path: Path,
) -> None:
    import uuid

    command, _ = signal_logger(tmp_path)
    exec_runs(registry_dir, "--port", "auto", "--", *command)

    record = published(registry)
    assert uuid.UUID(record.session_id).version == 4


@pytest.mark.parametrize("relay", sorted(RELAYS))
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_signal_to_exec_reaches_child_once(
    exec_runs: Callable[..., subprocess.Popen[bytes]],
    registry: Registry,
    registry_dir: Path,
    tmp_path: Path,
    signum: signal.Signals,
    relay: str,
) -> None:
    command, log_path = signal_logger(tmp_path)
    process = exec_runs(registry_dir, "--port", "auto", "--", *command, relay=relay)
    published(registry)

    process.send_signal(signum)
    status = process.wait(timeout=15)

    assert logged_lines(log_path) == ["LISTENING", signum.name]
    assert status == 7
    assert registry.list() == []
    assert list(registry_dir.iterdir()) == []


def test_exec_relays_sigusr1_without_stopping(
    exec_runs: Callable[..., subprocess.Popen[bytes]],
    registry: Registry,
    registry_dir: Path,
    tmp_path: Path,
) -> None:
    command, log_path = signal_logger(tmp_path)
    process = exec_runs(registry_dir, "--port", "auto", "--", *command)
    published(registry)

    process.send_signal(signal.SIGUSR1)
    wait_for(lambda: "SIGUSR1" in logged_lines(log_path), description="SIGUSR1 in the child's log")
    assert process.poll() is None
    assert len(registry.list()) == 1


def test_sigterm_to_exec_exits_143(
    exec_runs: Callable[..., subprocess.Popen[bytes]], registry: Registry, registry_dir: Path
) -> None:
    process = exec_runs(
        registry_dir,
        "--port",
        "auto",
        "--",
        sys.executable,
        "-m",
        "http.server",
        "--bind",
        "127.0.0.1",
        "{port}",
        stdout=subprocess.DEVNULL,
    )
    record = published(registry)

    process.send_signal(signal.SIGTERM)

    assert process.wait(timeout=15) == 143
    assert not psutil.pid_exists(record.pid)
    assert list(registry_dir.iterdir()) == []


def _run_in_terminal(
    argv: list[str],
) -> tuple[subprocess.Popen[bytes], int, Callable[[], bytes]]:
    """Start *argv* as the foreground job of a new terminal; return it, the master, its output."""
    master, slave = os.openpty()
    process = subprocess.Popen(
        [sys.executable, "-c", TERMINAL_LAUNCHER, *argv],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        start_new_session=True,
    )
    os.close(slave)
    output = bytearray()

    def drain() -> None:
        # The terminal's buffer is small; unread output would block the writers.
        while True:
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    data = os.read(master, 4096)
                except OSError:
                    return
                if not data:
                    return
                output.extend(data)
            elif process.poll() is not None:
                return

    threading.Thread(target=drain, daemon=True).start()
    return process, master, lambda: bytes(output)


@pytest.mark.parametrize("relay", sorted(RELAYS))
@pytest.mark.parametrize(
    ("keys", "name"), [(b"\x03", "SIGINT"), (b"\x1c", "SIGQUIT")], ids=["ctrl-c", "ctrl-backslash"]
)
def test_terminal_key_reaches_child_once(
    registry: Registry, registry_dir: Path, tmp_path: Path, keys: bytes, name: str, relay: str
) -> None:
    command, log_path = signal_logger(tmp_path)
    argv = [*RELAYS[relay], "--dir", str(registry_dir), "exec", "--port", "auto", "--", *command]
    process, master, output = _run_in_terminal(argv)
    try:
        published(registry)
        os.write(master, keys)
        wait_for(lambda: name in logged_lines(log_path), description=f"{name} in the child's log")
        if name == "SIGQUIT":
            # SIGQUIT does not stop the logger; SIGTERM from kill() does.
            time.sleep(0.5)
            process.send_signal(signal.SIGTERM)
        status = process.wait(timeout=15)
    finally:
        _kill_tree(process.pid)
        process.kill()
        process.wait(timeout=10)
        os.close(master)

    lines = logged_lines(log_path)
    assert lines.count(name) == 1, output().decode(errors="replace")
    assert status == 7
    assert registry.list() == []


def test_kill_sigint_in_terminal_reaches_child_once(
    registry: Registry, registry_dir: Path, tmp_path: Path
) -> None:
    command, log_path = signal_logger(tmp_path)
    argv = [*RUNREGISTRY, "--dir", str(registry_dir), "exec", "--port", "auto", "--", *command]
    process, master, _ = _run_in_terminal(argv)
    try:
        published(registry)
        # Sent by kill() to exec alone, so exec must relay it even in the foreground.
        process.send_signal(signal.SIGINT)
        status = process.wait(timeout=15)
    finally:
        _kill_tree(process.pid)
        process.kill()
        process.wait(timeout=10)
        os.close(master)

    assert logged_lines(log_path) == ["LISTENING", "SIGINT"]
    assert status == 7


@pytest.mark.parametrize("relay", sorted(RELAYS))
def test_child_exiting_first_returns_its_status(
    exec_runs: Callable[..., subprocess.Popen[bytes]], registry_dir: Path, relay: str
) -> None:
    process = exec_runs(registry_dir, "--port", "auto", "--", "sh", "-c", "exit 3", relay=relay)
    _, stderr = process.communicate(timeout=15)

    assert process.returncode == 3
    assert "sh exited with status 3 before listening on http://127.0.0.1:" in stderr.decode()
    assert not registry_dir.exists() or list(registry_dir.iterdir()) == []


def test_child_killed_by_signal_gives_128_plus_signal(
    exec_runs: Callable[..., subprocess.Popen[bytes]], registry_dir: Path
) -> None:
    process = exec_runs(registry_dir, "--port", "auto", "--", "sh", "-c", "kill -KILL $$")
    _, stderr = process.communicate(timeout=15)

    assert process.returncode == 137
    assert "was ended by SIGKILL (status 137)" in stderr.decode()


@pytest.mark.parametrize("relay", sorted(RELAYS))
def test_child_killed_while_published_removes_record(
    exec_runs: Callable[..., subprocess.Popen[bytes]],
    registry: Registry,
    registry_dir: Path,
    tmp_path: Path,
    relay: str,
) -> None:
    command, _ = signal_logger(tmp_path)
    process = exec_runs(registry_dir, "--port", "auto", "--", *command, relay=relay)
    record = published(registry)

    os.kill(record.pid, signal.SIGKILL)

    assert process.wait(timeout=15) == 137
    assert list(registry_dir.iterdir()) == []


def test_never_listening_child_is_stopped_after_timeout(
    exec_runs: Callable[..., subprocess.Popen[bytes]], registry_dir: Path, tmp_path: Path
) -> None:
    pid_file = tmp_path / "pid"
    code = "import os, sys, time; open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(600)"
    process = exec_runs(
        registry_dir, "--port", "auto", "--ready-timeout", "1", "--", sys.executable, "-c", code,
        str(pid_file),
    )  # fmt: skip
    _, stderr = process.communicate(timeout=30)

    assert process.returncode == 1
    assert "did not accept connections on 127.0.0.1:" in stderr.decode()
    assert "within 1 s" in stderr.decode()
    assert not psutil.pid_exists(int(pid_file.read_text()))
    assert not registry_dir.exists() or list(registry_dir.iterdir()) == []


def test_child_ignoring_sigterm_is_killed_after_grace(
    exec_runs: Callable[..., subprocess.Popen[bytes]], registry_dir: Path, tmp_path: Path
) -> None:
    pid_file = tmp_path / "pid"
    code = (
        "import os, signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(600)"
    )
    process = exec_runs(
        registry_dir, "--port", "auto", "--ready-timeout", "0.5", "--", sys.executable, "-c",
        code, str(pid_file),
    )  # fmt: skip
    process.communicate(timeout=exec_module.STOP_GRACE_SECONDS + 30)

    assert process.returncode == 1
    assert not psutil.pid_exists(int(pid_file.read_text()))


def test_missing_command_exits_127(
    exec_runs: Callable[..., subprocess.Popen[bytes]], registry_dir: Path
) -> None:
    process = exec_runs(registry_dir, "--port", "auto", "--", "runregistry-no-such-command")
    _, stderr = process.communicate(timeout=15)

    assert process.returncode == 127
    assert "cannot start runregistry-no-such-command" in stderr.decode()


def test_exec_sigkilled_leaves_record_live_until_server_exits(
    exec_runs: Callable[..., subprocess.Popen[bytes]],
    registry: Registry,
    registry_dir: Path,
    tmp_path: Path,
) -> None:
    command, _ = signal_logger(tmp_path)
    process = exec_runs(registry_dir, "--port", "auto", "--", *command)
    record = published(registry)

    process.kill()
    process.wait(timeout=15)
    assert registry.list() == [record]
    assert registry.find(record.session_id) == record

    os.kill(record.pid, signal.SIGKILL)
    wait_for(lambda: not psutil.pid_exists(record.pid) or _is_zombie(record.pid))
    assert registry.list() == []
    assert list(registry_dir.iterdir()) == []


def _is_zombie(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_stdio_passes_through(
    exec_runs: Callable[..., subprocess.Popen[bytes]], registry_dir: Path
) -> None:
    script = 'read line; echo "out:$line"; echo "err:$line" >&2; exit 0'
    process = exec_runs(
        registry_dir,
        "--port",
        "auto",
        "--",
        "sh",
        "-c",
        script,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    stdout, stderr = process.communicate(b"hello\n", timeout=15)

    assert stdout == b"out:hello\n"
    assert stderr.decode().startswith("err:hello\n")
    assert process.returncode == 0


def test_child_gets_original_signal_mask_and_dispositions(
    exec_runs: Callable[..., subprocess.Popen[bytes]], registry_dir: Path
) -> None:
    direct = subprocess.run(["cat", "/proc/self/status"], capture_output=True, check=True)
    process = exec_runs(
        registry_dir, "--port", "auto", "--", "cat", "/proc/self/status", stdout=subprocess.PIPE
    )
    stdout, _ = process.communicate(timeout=15)

    def masks(text: bytes) -> tuple[int, int]:
        fields = dict(line.split(":\t", 1) for line in text.decode().splitlines() if ":\t" in line)
        # glibc's posix_spawn leaves its two internal signals (32 and 33, below
        # SIGRTMIN) ignored. That is harmless, because glibc and musl install
        # their own handlers when they use them, and their APIs reject both.
        internal = sum(1 << (signum - 1) for signum in range(32, signal.SIGRTMIN))
        return int(fields["SigBlk"], 16), int(fields["SigIgn"], 16) & ~internal

    assert masks(stdout) == masks(direct.stdout)


def test_signal_ignored_by_exec_stays_ignored_in_child(
    exec_runs: Callable[..., subprocess.Popen[bytes]], registry_dir: Path
) -> None:
    launcher = (
        "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); "
        "os.execvp(sys.argv[1], sys.argv[1:])"
    )
    argv = [sys.executable, "-c", launcher, *RUNREGISTRY, "--dir", str(registry_dir), "exec"]
    result = subprocess.run(
        [*argv, "--port", "auto", "--", "cat", "/proc/self/status"],
        capture_output=True,
        timeout=15,
        check=False,
    )

    ignored = next(
        line for line in result.stdout.decode().splitlines() if line.startswith("SigIgn")
    )
    assert int(ignored.split()[1], 16) & (1 << (signal.SIGINT - 1))


def test_exec_started_with_sigchld_ignored_still_gets_status(registry_dir: Path) -> None:
    # With SIGCHLD ignored, the kernel would reap the child itself and its status would be lost.
    launcher = (
        "import os, signal, sys; signal.signal(signal.SIGCHLD, signal.SIG_IGN); "
        "os.execvp(sys.argv[1], sys.argv[1:])"
    )
    argv = [sys.executable, "-c", launcher, *RUNREGISTRY, "--dir", str(registry_dir), "exec"]
    result = subprocess.run(
        [*argv, "--port", "auto", "--", "sh", "-c", "sleep 0.2; exit 3"],
        capture_output=True,
        timeout=15,
        check=False,
    )

    assert result.returncode == 3, result.stderr.decode()


def test_token_reaches_child_environment_and_record(
    exec_runs: Callable[..., subprocess.Popen[bytes]],
    registry: Registry,
    registry_dir: Path,
    tmp_path: Path,
) -> None:
    seen = tmp_path / "seen"
    code = (
        "import os, socket, sys, time; "
        "open(sys.argv[1], 'w').write(os.environ['RUNREGISTRY_TOKEN']); "
        "s = socket.create_server(('127.0.0.1', int(os.environ['PORT']))); time.sleep(600)"
    )
    process = exec_runs(
        registry_dir, "--port", "auto", "--token", "auto", "--", sys.executable, "-c", code,
        str(seen),
    )  # fmt: skip
    record = published(registry)

    assert record.token is not None
    assert len(record.token) >= 43
    assert seen.read_text() == record.token
    assert stat.S_IMODE(os.stat(registry_dir / f"{record.pid}.json").st_mode) == 0o600

    arguments = [psutil.Process(process.pid).cmdline(), psutil.Process(record.pid).cmdline()]
    for argv in arguments:
        assert not any(record.token in argument for argument in argv)
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, check=True, timeout=15)
    assert record.token.encode() not in ps.stdout

    process.terminate()
    _, stderr = process.communicate(timeout=15)
    assert record.token not in stderr.decode()


def test_token_env_names_the_variable(
    exec_runs: Callable[..., subprocess.Popen[bytes]],
    registry: Registry,
    registry_dir: Path,
    tmp_path: Path,
) -> None:
    seen = tmp_path / "seen"
    code = (
        "import os, socket, sys, time; "
        "open(sys.argv[1], 'w').write(repr((os.environ.get('MY_TOKEN'), "
        "os.environ.get('RUNREGISTRY_TOKEN')))); "
        "s = socket.create_server(('127.0.0.1', int(os.environ['PORT']))); time.sleep(600)"
    )
    env = {key: value for key, value in os.environ.items() if key != "RUNREGISTRY_TOKEN"}
    exec_runs(
        registry_dir, "--port", "auto", "--token", "auto", "--token-env", "MY_TOKEN", "--",
        sys.executable, "-c", code, str(seen), env=env,
    )  # fmt: skip
    record = published(registry)

    assert seen.read_text() == repr((record.token, None))


def test_token_file_is_private_and_removed_on_exit(
    exec_runs: Callable[..., subprocess.Popen[bytes]],
    registry: Registry,
    registry_dir: Path,
    tmp_path: Path,
) -> None:
    seen = tmp_path / "seen"
    code = (
        "import os, socket, sys, time; "
        "open(sys.argv[2], 'w').write(sys.argv[1]); "
        "s = socket.create_server(('127.0.0.1', int(os.environ['PORT']))); time.sleep(600)"
    )
    process = exec_runs(
        registry_dir, "--port", "auto", "--token", "auto", "--", sys.executable, "-c", code,
        "{token_file}", str(seen),
    )  # fmt: skip
    record = published(registry)
    token_file = Path(seen.read_text())

    assert token_file.read_text() == record.token
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(token_file.parent.stat().st_mode) == 0o700
    assert token_file.stat().st_uid == os.geteuid()

    process.terminate()
    process.wait(timeout=15)
    assert not token_file.exists()
    assert not token_file.parent.exists()


class _TokenRejectingRegistry(Registry):
    """A file registry that rejects tokens, as etcd over plain HTTP does."""

    def accepts_tokens(self) -> None:
        raise InsecureBackendError("tokens need TLS and authentication here")


def test_registry_rejecting_tokens_stops_before_start(registry_dir: Path, tmp_path: Path) -> None:
    marker = tmp_path / "started"
    spec = exec_module.build_spec(["touch", str(marker)], port="auto", token="auto")

    with pytest.raises(InsecureBackendError, match="TLS"):
        exec_module.run(_TokenRejectingRegistry(registry_dir), spec)
    assert not marker.exists()


def test_plain_http_etcd_makes_exec_token_exit_4(tmp_path: Path) -> None:
    pytest.importorskip("runregistry.backends.etcd")
    marker = tmp_path / "started"
    # Nothing listens on port 9; the check must fail before any connection.
    result = subprocess.run(
        [*RUNREGISTRY, "--etcd", "http://127.0.0.1:9", "exec", "--port", "auto", "--token",
         "auto", "--", "touch", str(marker)],
        capture_output=True,
        timeout=30,
        check=False,
    )  # fmt: skip

    assert result.returncode == 4, result.stderr.decode()
    assert not marker.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--", "true"], "give --port auto, --port N or --addr URL"),
        (["--port", "auto"], "COMMAND is missing"),
        (["--port", "0", "--", "true"], "--port '0' is invalid"),
        (["--port", "http", "--", "true"], "--port 'http' is invalid"),
        (["--port", "65536", "--", "true"], "--port '65536' is invalid"),
        (["--port", "auto", "--ready-timeout", "0", "--", "true"], "--ready-timeout 0"),
        (["--port", "auto", "--ready-timeout", "nan", "--", "true"], "--ready-timeout nan"),
        (["--port", "auto", "--token-env", "X", "--", "true"], "--token-env needs --token"),
        (
            ["--port", "auto", "--token", "auto", "--token-env", "1X", "--", "true"],
            "is not an environment variable name",
        ),
        (["--port", "auto", "--", "cat", "{token_file}"], "{token_file} in COMMAND needs --token"),
        (["--port", "auto", "--session-id", " ", "--", "true"], "--session-id is empty"),
        (["--addr", "ftp://127.0.0.1:1", "--", "true"], "is not an HTTP address"),
        (["--addr", "http://127.0.0.1:x", "--", "true"], "has an invalid port"),
        (["--addr", "http://127.0.0.1:0", "--", "true"], "has an invalid port"),
        (["--addr", "http://[::1", "--", "true"], "is not a valid URL"),
        (["--addr", "http://127.0.0.1:1", "--host", "::1", "--", "true"], "need --port"),
        (
            ["--port", "1", "--addr", "http://a:1", "--advertise-host", "b", "--", "true"],
            "cannot be combined with --addr",
        ),
        (["--port", "auto", "--host", "", "--", "true"], "--host is empty"),
    ],
)
def test_exec_usage_errors(
    args: list[str], message: str, registry_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(["--dir", str(registry_dir), "exec", *args])

    assert status == 2
    assert message in capsys.readouterr().err
    assert not registry_dir.exists()


def test_token_option_accepts_only_auto(capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["exec", "--port", "auto", "--token", "s3cret", "--", "true"])

    assert status == 2
    assert "invalid choice: 's3cret'" in capsys.readouterr().err


def test_spec_advertises_fqdn_when_binding_every_interface() -> None:
    spec = exec_module.build_spec(["server"], port="8123", host="0.0.0.0")

    assert spec.addr == f"http://{socket.getfqdn()}:8123"
    assert (spec.probe_host, spec.probe_port) == ("127.0.0.1", 8123)


def test_spec_advertise_host_names_published_host() -> None:
    spec = exec_module.build_spec(["server"], port="8123", advertise_host="dev-box.example")

    assert spec.addr == "http://dev-box.example:8123"
    assert (spec.probe_host, spec.probe_port) == ("127.0.0.1", 8123)


def test_spec_brackets_ipv6_hosts() -> None:
    spec = exec_module.build_spec(["server"], port="8123", host="::1")

    assert spec.addr == "http://[::1]:8123"
    assert spec.probe_host == "::1"


def test_spec_takes_port_from_addr() -> None:
    spec = exec_module.build_spec(["server"], addr="https://127.0.0.1")

    assert spec.port == 443
    assert (spec.probe_host, spec.probe_port) == ("127.0.0.1", 443)


def test_spec_agent_defaults_to_command_base_name() -> None:
    spec = exec_module.build_spec(["/usr/local/bin/my-server", "--flag"], port="8123")

    assert spec.agent == "my-server"


def test_exec_refuses_port_another_process_serves(
    exec_runs: Callable[..., subprocess.Popen[bytes]], registry_dir: Path, tmp_path: Path
) -> None:
    pid_file = tmp_path / "pid"
    code = "import os, sys, time; open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(600)"
    with socket.create_server(("127.0.0.1", 0)) as squatter:
        port = str(squatter.getsockname()[1])
        process = exec_runs(
            registry_dir, "--port", port, "--token", "auto", "--", sys.executable, "-c", code,
            str(pid_file),
        )  # fmt: skip
        _, stderr = process.communicate(timeout=30)

    assert process.returncode == 1
    assert f"already accepts connections on 127.0.0.1:{port}" in stderr.decode()
    assert not pid_file.exists()
    assert not registry_dir.exists() or list(registry_dir.iterdir()) == []
