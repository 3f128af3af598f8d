"""The example control planes, each run as a real process that publishes itself.

Both must publish a record with a token once they listen, serve ``GET
/health`` to anyone, reject every other request without the token (401), and
remove their record when they stop.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlsplit

import pytest

from runregistry import Record, Registry

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
RUNREGISTRY = [sys.executable, "-m", "runregistry"]

AGENTS = {
    "stdlib_control_plane.py": "stdlib-example",
    "starlette_control_plane.py": "starlette-example",
}


class Response(NamedTuple):
    status: int
    headers: http.client.HTTPMessage
    body: bytes


class Example(NamedTuple):
    name: str
    process: subprocess.Popen[bytes]
    record: Record
    log: Path


def request(addr: str, method: str, path: str, headers: dict[str, str] | None = None) -> Response:
    """Send one request straight to *addr*, with no proxy in between."""
    parts = urlsplit(addr)
    assert parts.hostname == "127.0.0.1"
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        connection.request(method, path, headers=headers or {})
        response = connection.getresponse()
        return Response(response.status, response.headers, response.read())
    finally:
        connection.close()


def bearer(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def wait_for_record(registry: Registry, pid: int, log: Path, timeout: float = 30.0) -> Record:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for record in registry.list():
            if record.pid == pid:
                return record
        time.sleep(0.05)
    pytest.fail(f"no record for pid {pid} after {timeout} s; its output:\n{log.read_text()}")


@pytest.fixture
def start_example(
    registry: Registry, registry_dir: Path, tmp_path: Path
) -> Iterator[Callable[[str], Example]]:
    """Start an example by file name, publishing in the test's registry; stop it afterwards."""
    started: list[subprocess.Popen[bytes]] = []

    def start(name: str) -> Example:
        log = tmp_path / f"{name}.log"
        with log.open("wb") as output:
            process = subprocess.Popen(
                [sys.executable, str(EXAMPLES / name)],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=output,
                env={**os.environ, "RUNREGISTRY_DIR": str(registry_dir)},
            )
        started.append(process)
        return Example(name, process, wait_for_record(registry, process.pid, log), log)

    yield start

    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)


@pytest.fixture(params=sorted(AGENTS))
def example(request: pytest.FixtureRequest, start_example: Callable[[str], Example]) -> Example:
    """Each example server, running and published."""
    return start_example(request.param)


def test_example_publishes_itself_with_token(example: Example) -> None:
    record = example.record

    assert record.agent == AGENTS[example.name]
    assert record.pid == example.process.pid
    assert record.lock == "flock"
    assert record.addr.startswith("http://127.0.0.1:")
    assert record.token is not None
    assert len(record.token) >= 43


def test_example_health_needs_no_token(example: Example) -> None:
    response = request(example.record.addr, "GET", "/health")

    assert response.status == 200
    assert json.loads(response.body) == {"status": "ok"}


@pytest.mark.parametrize(
    ("method", "path", "authorization"),
    [
        ("GET", "/session", None),
        ("GET", "/session", "Bearer wrong"),
        ("GET", "/session", "Bearer "),
        ("GET", "/session", "Basic {token}"),
        ("GET", "/session", "Bearer {token}x"),
        ("GET", "/session", "Bearer {short}"),
        ("GET", "/session", "{token}"),
        ("GET", "/session?token={token}", None),
        ("GET", "/no-such-endpoint", None),
        ("POST", "/health", None),
        ("DELETE", "/session", None),
    ],
    ids=[
        "no-header",
        "wrong-token",
        "empty-token",
        "basic-scheme",
        "longer-token",
        "truncated-token",
        "no-scheme",
        "token-in-query",
        "unknown-path",
        "post-health",
        "delete-session",
    ],
)
def test_example_rejects_request_without_token(
    example: Example, method: str, path: str, authorization: str | None
) -> None:
    token = example.record.token
    assert token is not None
    headers = {}
    if authorization is not None:
        headers["Authorization"] = authorization.format(token=token, short=token[:-1])

    response = request(example.record.addr, method, path.format(token=token), headers)

    assert response.status == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert token.encode() not in response.body


def test_example_session_answers_token_holder(example: Example) -> None:
    record = example.record

    response = request(record.addr, "GET", "/session", bearer(record.token))

    assert response.status == 200
    session = json.loads(response.body)
    assert session["session_id"] == record.session_id
    assert session["pid"] == record.pid
    assert "token" not in session


def test_example_accepts_lowercase_bearer_scheme(example: Example) -> None:
    record = example.record

    response = request(record.addr, "GET", "/session", {"Authorization": f"bearer {record.token}"})

    assert response.status == 200


def test_example_unknown_path_with_token_is_404(example: Example) -> None:
    response = request(
        example.record.addr, "GET", "/no-such-endpoint", bearer(example.record.token)
    )

    assert response.status == 404


def test_example_answers_runregistry_call(example: Example, registry_dir: Path) -> None:
    record = example.record
    result = subprocess.run(
        [*RUNREGISTRY, "--dir", str(registry_dir), "call", record.session_id[:13], "/session"],
        capture_output=True,
        timeout=30,
        check=False,
    )

    assert result.returncode == 0, result.stderr.decode()
    assert json.loads(result.stdout)["session_id"] == record.session_id


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_example_stop_signal_removes_record(
    example: Example, registry: Registry, registry_dir: Path, signum: int
) -> None:
    example.process.send_signal(signum)
    example.process.wait(timeout=30)

    assert list(registry_dir.iterdir()) == []
    assert registry.list() == []
    assert "stopped; the record is removed" in example.log.read_text()


def test_example_killed_leaves_record_that_readers_prune(
    example: Example, registry: Registry, registry_dir: Path
) -> None:
    example.process.kill()
    example.process.wait(timeout=30)
    assert (registry_dir / f"{example.record.pid}.json").exists()

    assert registry.list() == []
    assert list(registry_dir.iterdir()) == []


def test_example_record_file_is_private(example: Example, registry_dir: Path) -> None:
    path = registry_dir / f"{example.record.pid}.json"

    assert path.stat().st_mode & 0o777 == 0o600
    assert json.loads(path.read_text())["token"] == example.record.token
