"""A real etcd server for tests and benchmarks, and a TCP proxy to cut a client off from it.

The server listens on free 127.0.0.1 ports with a temporary data directory and
short raft timings, so that it starts in well under a second and its minimum
lease TTL is one second. Without an etcd binary the fixtures skip, except under
``CI=true``, where a missing etcd fails the run.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

WRITER_SCRIPT = Path(__file__).with_name("etcd_writer.py")

# How long a started etcd may take to report itself healthy.
HEALTH_TIMEOUT = 10.0

# Raft timings in milliseconds: a single member elects itself within about
# 100 ms, and etcd's minimum lease TTL (1.5 election timeouts) rounds up to 1 s.
HEARTBEAT_INTERVAL_MS = 10
ELECTION_TIMEOUT_MS = 100


def etcd_binary() -> str | None:
    """Return the path of the etcd server binary, or None when it is not installed."""
    return shutil.which("etcd")


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class EtcdServer:
    """One etcd member on 127.0.0.1 that a test can stop, restart and wipe."""

    def __init__(
        self,
        binary: str,
        data_dir: Path,
        *,
        extra_args: tuple[str, ...] = (),
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.binary = binary
        self.data_dir = data_dir
        self.client_port = free_port()
        self.peer_port = free_port()
        self.extra_args = extra_args
        # With TLS, the client context that the health probe uses.
        self.tls = tls
        self.scheme = "https" if tls is not None else "http"
        self.process: subprocess.Popen[bytes] | None = None
        self._log_path = data_dir.parent / f"{data_dir.name}.log"

    @property
    def url(self) -> str:
        """The client URL, such as ``http://127.0.0.1:41234``."""
        return f"{self.scheme}://127.0.0.1:{self.client_port}"

    def start(self) -> None:
        """Start etcd with its data directory as it is, and wait until it is healthy."""
        peer = f"http://127.0.0.1:{self.peer_port}"
        argv = [
            self.binary,
            "--name",
            "runregistry-test",
            "--data-dir",
            str(self.data_dir),
            "--listen-client-urls",
            self.url,
            "--advertise-client-urls",
            self.url,
            "--listen-peer-urls",
            peer,
            "--initial-advertise-peer-urls",
            peer,
            "--initial-cluster",
            f"runregistry-test={peer}",
            "--heartbeat-interval",
            str(HEARTBEAT_INTERVAL_MS),
            "--election-timeout",
            str(ELECTION_TIMEOUT_MS),
            "--log-level",
            "warn",
            *self.extra_args,
        ]
        with open(self._log_path, "ab") as log:
            self.process = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self._wait_healthy()

    def stop(self) -> None:
        """Stop etcd with SIGTERM (SIGKILL after 10 s) and reap it; its data stays."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)

    def wipe(self) -> None:
        """Delete the data directory; the next start begins with an empty store."""
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def log_tail(self) -> str:
        """Return the end of etcd's log, for failure messages."""
        try:
            return self._log_path.read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + HEALTH_TIMEOUT
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                status = self.process.returncode
                raise RuntimeError(f"etcd exited with status {status}:\n{self.log_tail()}")
            if self._healthy():
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"etcd was not healthy within {HEALTH_TIMEOUT} s:\n{self.log_tail()}")

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(
                f"{self.url}/health", timeout=1, context=self.tls
            ) as answer:
                return bool(json.load(answer).get("health") == "true")
        except (OSError, ValueError):
            return False


class TcpProxy:
    """Forwards connections from a 127.0.0.1 port to a target port; stop() cuts every one."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        """The proxy's URL, for clients that should reach etcd through it."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Listen on :attr:`port` (the same port after a stop) and forward what arrives."""
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def stop(self) -> None:
        """Close the listener and every forwarded connection, as a network failure would."""
        with self._lock:
            listener, self._listener = self._listener, None
            sockets, self._sockets = self._sockets, set()
        for sock in [*sockets, *([listener] if listener else [])]:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._listener is not listener:
                    client.close()
                    upstream.close()
                    return
                self._sockets.update((client, upstream))
            for source, target in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pump, args=(source, target), daemon=True).start()


def _pump(source: socket.socket, target: socket.socket) -> None:
    source.settimeout(None)
    while True:
        try:
            data = source.recv(65536)
            if not data:
                break
            target.sendall(data)
        except OSError:
            break
    with contextlib.suppress(OSError):
        target.shutdown(socket.SHUT_WR)


class Writer:
    """A running ``etcd_writer.py`` process and the session ids it published."""

    def __init__(self, process: subprocess.Popen[bytes], output: Path, log_path: Path) -> None:
        self.process = process
        self.output = output
        self.log_path = log_path
        self.pid = process.pid
        self.sessions: list[str] = []

    def wait_published(self, timeout: float = 30.0) -> None:
        """Wait for the writer's report that its records are published."""
        deadline = time.monotonic() + timeout
        while not self.output.read_text().endswith("\n"):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.process.kill()
                raise RuntimeError(f"writer {self.pid} did not publish:\n{self.log()}")
            time.sleep(0.02)
        self.sessions = json.loads(self.output.read_text())["sessions"]

    def exit(self, timeout: float = 30.0) -> int:
        """Ask the writer (SIGTERM) to remove its records and exit; return its exit status."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def log(self) -> str:
        """Return what the writer logged on stderr."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def start_writer(
    spawn: Callable[..., subprocess.Popen[bytes]],
    log_dir: Path,
    url: str,
    prefix: str,
    *options: str,
    wait: bool = True,
) -> Writer:
    """Start ``etcd_writer.py`` with *options*; unless *wait* is false, wait until it published."""
    name = f"writer-{uuid.uuid4().hex[:8]}"
    output, log_path = log_dir / f"{name}.out", log_dir / f"{name}.log"
    with open(output, "wb") as out, open(log_path, "wb") as log:
        process = spawn(
            sys.executable,
            str(WRITER_SCRIPT),
            *("--url", url, "--prefix", prefix),
            *options,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=log,
        )
    writer = Writer(process, output, log_path)
    if wait:
        writer.wait_published()
    return writer


def require_etcd() -> str:
    """Return the etcd binary; skip the test without one, or fail it under ``CI=true``."""
    binary = etcd_binary()
    if binary is not None:
        return binary
    reason = (
        "etcd is not installed: install Debian's etcd-server package "
        "(apt-get install etcd-server) to run the etcd backend tests"
    )
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def etcd_session_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    """One etcd server shared by the tests that neither stop nor wipe it."""
    server = EtcdServer(require_etcd(), tmp_path_factory.mktemp("etcd") / "data")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def etcd_server(tmp_path: Path) -> Iterator[EtcdServer]:
    """A private etcd server that the test may stop, restart and wipe."""
    server = EtcdServer(require_etcd(), tmp_path / "etcd-data")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def etcd_url(etcd_session_server: EtcdServer) -> str:
    """The shared server's URL; ``etcd_prefix`` keeps each test's keys apart."""
    return etcd_session_server.url


@pytest.fixture
def etcd_prefix() -> str:
    """A key prefix of this test's own, so that tests on the shared server never meet."""
    return f"/test-{uuid.uuid4().hex[:12]}"
