"""``runregistry call`` and ``Registry.call`` against real HTTP servers on 127.0.0.1."""

from __future__ import annotations

import contextlib
import email.message
import http.client
import http.server
import io
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from runregistry import (
    BaseRegistry,
    CallRefusedError,
    Cleanup,
    Entry,
    Liveness,
    NoRunError,
    Record,
    Registry,
    RegistryError,
    new_token,
)
from runregistry._calling import is_loopback
from runregistry.cli import main

SESSION = "call-test-session"
# TEST-NET-1 (RFC 5737): reserved for documentation, routed nowhere. No test
# connects to it: the guard below stops any connection that is not loopback.
NON_LOOPBACK = "192.0.2.1"


@dataclass
class Seen:
    """One request as the test server received it."""

    method: str
    path: str
    headers: email.message.Message
    body: bytes


@dataclass
class ControlPlane:
    """A threaded HTTP server on 127.0.0.1 that requires a bearer token, as control planes do."""

    token: str | None
    server: http.server.ThreadingHTTPServer
    requests: list[Seen] = field(default_factory=list)
    redirect_to: str = "/elsewhere"

    @property
    def addr(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"


def _handler_for(plane_ref: list[ControlPlane]) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _handle(self) -> None:
            plane = plane_ref[0]
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            plane.requests.append(Seen(self.command, self.path, self.headers, body))

            expected = f"Bearer {plane.token}" if plane.token is not None else None
            if expected is not None and self.headers.get("Authorization") != expected:
                self._answer(401, b"missing or wrong bearer token\n")
            elif self.path.endswith("/redirect"):
                self.send_response(302)
                self.send_header("Location", plane.redirect_to)
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif self.path.endswith("/fail"):
                self._answer(500, b"broken\n")
            elif self.path.endswith("/echo"):
                self._answer(200, body)
            else:
                self._answer(200, f"{self.command} {self.path}\n".encode())

        def _answer(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            self._handle()

        def do_POST(self) -> None:
            self._handle()

        def do_PUT(self) -> None:
            self._handle()

        def do_DELETE(self) -> None:
            self._handle()

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


@pytest.fixture
def start_plane() -> Iterator[Callable[..., ControlPlane]]:
    """Start control planes on 127.0.0.1; each is shut down after the test."""
    servers: list[http.server.ThreadingHTTPServer] = []

    def start(token: str | None = None) -> ControlPlane:
        plane_ref: list[ControlPlane] = []
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(plane_ref))
        server.daemon_threads = True
        plane = ControlPlane(token, server)
        plane_ref.append(plane)
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(server)
        return plane

    yield start

    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def publish(registry: Registry) -> Iterator[Callable[..., Record]]:
    """Publish one live record of this process with the given address and token."""
    cleanups: list[Cleanup] = []

    def write(addr: str, token: str | None = None) -> Record:
        cleanup = registry.write(Record(os.getpid(), addr, SESSION, "test", token=token))
        cleanups.append(cleanup)
        return cleanup.record

    yield write

    for cleanup in cleanups:
        cleanup()


@pytest.fixture(autouse=True)
def connections(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Record every connection attempt, and refuse any that is not to loopback.

    The guard replaces ``socket.create_connection``, which ``call`` uses, so
    that a broken guard in the product can never send a packet to another
    host: a non-loopback attempt is recorded and fails as a refused connection.
    """
    attempts: list[tuple[str, int]] = []
    real = socket.create_connection

    def guarded(address: tuple[str, int], *args: object, **kwargs: object) -> socket.socket:
        attempts.append(address)
        if not is_loopback(address[0]):
            raise ConnectionRefusedError(111, "blocked by the test: not a loopback address")
        return real(address, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(socket, "create_connection", guarded)
    return attempts


def run_cli(registry_dir: Path, *argv: str) -> int:
    return main(["--dir", str(registry_dir), "call", *argv])


class MemoryRegistry(BaseRegistry):
    """A registry holding fixed records, for addresses the file backend refuses to write."""

    def __init__(self, *records: Record) -> None:
        self._records = records

    @property
    def location(self) -> str:
        return "memory"

    def write(self, record: Record) -> Cleanup:
        raise NotImplementedError

    def entries(self, *, prune: bool = True) -> list[Entry]:
        live = Liveness("live", "running", "test record")
        return [Entry("record", "memory", record, live) for record in self._records]


# Library


def test_call_sends_bearer_token(
    start_plane: Callable[..., ControlPlane], publish: Callable[..., Record], registry: Registry
) -> None:
    token = new_token()
    plane = start_plane(token)
    publish(plane.addr, token)

    result = registry.call("call-test", "/status")

    assert result.status == 200
    assert result.ok
    assert result.body == b"GET /status\n"
    assert result.headers["Content-Type"] == "text/plain"
    assert result.status_line == "HTTP/1.1 200 OK"
    assert plane.requests[0].headers["Authorization"] == f"Bearer {token}"


def test_call_without_token_gets_401(
    start_plane: Callable[..., ControlPlane], publish: Callable[..., Record], registry: Registry
) -> None:
    plane = start_plane(new_token())
    publish(plane.addr, None)

    result = registry.call("call-test", "/status")

    assert result.status == 401
    assert not result.ok
    assert "Authorization" not in plane.requests[0].headers


def test_call_result_repr_omits_body(
    start_plane: Callable[..., ControlPlane], publish: Callable[..., Record], registry: Registry
) -> None:
    plane = start_plane()
    publish(plane.addr)

    result = registry.call("call-test", "/status")

    assert repr(result) == "<CallResult HTTP/1.1 200 OK, 12 bytes>"


def test_call_keeps_address_path_prefix(
    start_plane: Callable[..., ControlPlane], publish: Callable[..., Record], registry: Registry
) -> None:
    plane = start_plane()
    publish(plane.addr + "/api//")

    registry.call("call-test", "/x?y=1")

    assert plane.requests[0].path == "/api/x?y=1"


def test_call_returns_redirect_unfollowed(
    start_plane: Callable[..., ControlPlane], publish: Callable[..., Record], registry: Registry
) -> None:
    token = new_token()
    plane = start_plane(token)
    elsewhere = start_plane()
    plane.redirect_to = elsewhere.addr + "/stolen"
    publish(plane.addr, token)

    result = registry.call("call-test", "/redirect")

    assert result.status == 302
    assert result.headers["Location"] == elsewhere.addr + "/stolen"
    assert len(plane.requests) == 1
    assert elsewhere.requests == []


def test_call_unknown_target_raises_no_run(registry: Registry) -> None:
    with pytest.raises(NoRunError):
        registry.call("no-such-session", "/health")


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("", id="empty"),
        pytest.param("health", id="relative"),
        pytest.param("//other-host/x", id="network-path"),
        pytest.param("///x", id="triple-slash"),
        pytest.param("/a b", id="space"),
        pytest.param("/a\r\nX-Injected: 1", id="crlf"),
        pytest.param("/caf\u00e9", id="non-ascii"),
    ],
)
def test_call_invalid_path_raises_before_lookup(path: str, connections: list[object]) -> None:
    registry = MemoryRegistry(Record(os.getpid(), "http://127.0.0.1:9", SESSION))

    with pytest.raises(ValueError, match="invalid path"):
        registry.call(SESSION, path)

    assert connections == []


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        pytest.param({"Bad Name": "x"}, "invalid header name", id="space-in-name"),
        pytest.param({"": "x"}, "invalid header name", id="empty-name"),
        pytest.param({"X-A": "a\r\nX-B: b"}, "control character", id="crlf-in-value"),
        pytest.param({"X-A": "a\x00"}, "control character", id="nul-in-value"),
        pytest.param({"Content-Length": "5"}, "cannot be set", id="content-length"),
        pytest.param({"transfer-encoding": "chunked"}, "cannot be set", id="transfer-encoding"),
        pytest.param({"X-A": "1", "x-a": "2"}, "more than once", id="repeated"),
    ],
)
def test_call_invalid_headers_raise(headers: dict[str, str], message: str) -> None:
    registry = MemoryRegistry(Record(os.getpid(), "http://127.0.0.1:9", SESSION))

    with pytest.raises(ValueError, match=message):
        registry.call(SESSION, "/x", headers=headers)


@pytest.mark.parametrize("method", ["", "GET /x", "GET\r\n", "G(T"])
def test_call_invalid_method_raises(method: str) -> None:
    registry = MemoryRegistry(Record(os.getpid(), "http://127.0.0.1:9", SESSION))

    with pytest.raises(ValueError, match="invalid HTTP method"):
        registry.call(SESSION, "/x", method=method)


@pytest.mark.parametrize("timeout", [0.0, -1.0, float("nan"), float("inf")])
def test_call_invalid_timeout_raises(timeout: float) -> None:
    registry = MemoryRegistry(Record(os.getpid(), "http://127.0.0.1:9", SESSION))

    with pytest.raises(ValueError, match="invalid timeout"):
        registry.call(SESSION, "/x", timeout=timeout)


@pytest.mark.parametrize(
    ("addr", "message"),
    [
        pytest.param("ftp://127.0.0.1:21", "not an http:// or https://", id="ftp"),
        pytest.param("unix:///run/x.sock", "not an http:// or https://", id="unix"),
        pytest.param("127.0.0.1:8080", "not an http:// or https://", id="no-scheme"),
        pytest.param("http://", "has no host", id="no-host"),
        pytest.param("http://127.0.0.1:99999", "not a valid URL", id="port-out-of-range"),
        pytest.param("http://127.0.0.1:0", "port 0", id="port-zero"),
        pytest.param("http://127.0.0.1:8/?a=1", "query or fragment", id="query"),
        pytest.param("http://127.0.0.1:8\n/x", "control characters", id="newline"),
        pytest.param("http://[::1", "not a valid URL", id="bad-ipv6"),
    ],
)
def test_call_refuses_invalid_address(addr: str, message: str, connections: list[object]) -> None:
    registry = MemoryRegistry(Record(os.getpid(), addr, SESSION, token=new_token()))

    with pytest.raises(CallRefusedError, match=message) as caught:
        registry.call(SESSION, "/x")

    assert caught.value.target == SESSION
    assert connections == []


def test_call_refusal_hides_address_password(connections: list[object]) -> None:
    registry = MemoryRegistry(Record(os.getpid(), "http://user:hunter2@127.0.0.1:8", SESSION))

    with pytest.raises(CallRefusedError, match="user information") as caught:
        registry.call(SESSION, "/x")

    assert "hunter2" not in str(caught.value)
    assert connections == []


@pytest.mark.parametrize("token", ["", "has space", "line\nbreak", "caf\u00e9", "a=b"])
def test_call_refuses_invalid_record_token(token: str, connections: list[object]) -> None:
    registry = MemoryRegistry(Record(os.getpid(), "http://127.0.0.1:9", SESSION, token=token))

    with pytest.raises(CallRefusedError, match="not a valid bearer token") as caught:
        registry.call(SESSION, "/x")

    if token:
        assert token not in str(caught.value)
    assert connections == []


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.255.255.254", True),
        ("::1", True),
        ("localhost", True),
        ("LOCALHOST", True),
        ("localhost.", True),
        ("0.0.0.0", False),
        ("::", False),
        ("::ffff:127.0.0.1", False),
        ("128.0.0.1", False),
        ("192.0.2.1", False),
        ("localhost.example", False),
        ("127.0.0.1.nip.io", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_call_localhost_connects_without_lookup(
    start_plane: Callable[..., ControlPlane],
    publish: Callable[..., Record],
    registry: Registry,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    token = new_token()
    plane = start_plane(token)
    publish(plane.addr.replace("127.0.0.1", "localhost"), token)
    real_getaddrinfo = socket.getaddrinfo

    def no_localhost_lookup(host: object, *args: object, **kwargs: object) -> object:
        assert host != "localhost", "localhost was looked up"
        return real_getaddrinfo(host, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(socket, "getaddrinfo", no_localhost_lookup)

    result = registry.call("call-test", "/status")

    assert result.status == 200
    assert plane.requests[0].headers["Host"] == f"localhost:{plane.server.server_address[1]}"


def test_call_over_ipv6_loopback(publish: Callable[..., Record], registry: Registry) -> None:
    if not socket.has_ipv6:
        pytest.skip("this Python has no IPv6 support")
    token = new_token()
    received: list[str | None] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            received.append(self.headers.get("Authorization"))
            self.send_response(204)
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    class Server6(http.server.HTTPServer):
        address_family = socket.AF_INET6

    try:
        server = Server6(("::1", 0), Handler)
    except OSError as exc:
        pytest.skip(f"cannot listen on ::1: {exc}")
    thread = threading.Thread(target=server.handle_request, daemon=True)
    thread.start()
    try:
        publish(f"http://[::1]:{server.server_address[1]}", token)
        result = registry.call("call-test", "/x")
    finally:
        thread.join(timeout=10)
        server.server_close()

    assert result.status == 204
    assert received == [f"Bearer {token}"]


def test_call_user_authorization_replaces_token(
    start_plane: Callable[..., ControlPlane], publish: Callable[..., Record], registry: Registry
) -> None:
    token = new_token()
    plane = start_plane(token)
    publish(plane.addr, token)

    result = registry.call("call-test", "/x", headers={"authorization": "Bearer wrong"})

    assert result.status == 401
    assert plane.requests[0].headers.get_all("Authorization") == ["Bearer wrong"]


def test_call_refuses_token_over_plain_http_to_other_host(
    publish: Callable[..., Record], registry: Registry, connections: list[object]
) -> None:
    publish(f"http://{NON_LOOPBACK}:9", new_token())

    with pytest.raises(CallRefusedError, match="not a loopback address"):
        registry.call("call-test", "/x")

    assert connections == []


def test_call_refuses_user_authorization_over_plain_http_to_other_host(
    publish: Callable[..., Record], registry: Registry, connections: list[object]
) -> None:
    publish(f"http://{NON_LOOPBACK}:9", None)

    with pytest.raises(CallRefusedError, match="not a loopback address"):
        registry.call("call-test", "/x", headers={"Authorization": "Basic dTpw"})

    assert connections == []


@pytest.mark.parametrize(
    ("addr", "token"),
    [
        pytest.param(f"http://{NON_LOOPBACK}:9", None, id="plain-http-without-token"),
        pytest.param(f"https://{NON_LOOPBACK}:9", "t0ken", id="https-with-token"),
    ],
)
def test_call_to_other_host_allowed_without_plain_http_token(
    addr: str,
    token: str | None,
    publish: Callable[..., Record],
    registry: Registry,
    connections: list[tuple[str, int]],
) -> None:
    publish(addr, token)

    # The connections guard blocks the attempt, so this fails as a refused connection.
    with pytest.raises(RegistryError, match="cannot connect") as caught:
        registry.call("call-test", "/x")

    assert not isinstance(caught.value, CallRefusedError)
    assert connections == [(NON_LOOPBACK, 9)]


def test_call_ignores_proxy_variables(
    start_plane: Callable[..., ControlPlane],
    publish: Callable[..., Record],
    registry: Registry,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    token = new_token()
    plane = start_plane(token)
    proxy = start_plane()
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy"):
        monkeypatch.setenv(name, proxy.addr)
    monkeypatch.setenv("no_proxy", "")
    publish(plane.addr, token)

    result = registry.call("call-test", "/x")

    assert result.status == 200
    assert len(plane.requests) == 1
    assert proxy.requests == []


def test_call_truncated_response_raises(publish: Callable[..., Record], registry: Registry) -> None:
    listener = socket.create_server(("127.0.0.1", 0))

    def answer_half() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly five")

    thread = threading.Thread(target=answer_half, daemon=True)
    thread.start()
    publish(f"http://127.0.0.1:{listener.getsockname()[1]}")
    try:
        with pytest.raises(RegistryError, match="cannot read the response") as caught:
            registry.call("call-test", "/x")
    finally:
        thread.join(timeout=10)
        listener.close()

    assert isinstance(caught.value.__cause__, http.client.IncompleteRead)


# Command line


def test_cli_prints_body_and_exits_0(
    start_plane: Callable[..., ControlPlane],
    publish: Callable[..., Record],
    registry_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    token = new_token()
    plane = start_plane(token)
    publish(plane.addr + "/", token)

    status = run_cli(registry_dir, "call-test", "/health")

    out, err = capsys.readouterr()
    assert status == 0
    assert out == "GET /health\n"
    assert err == ""
    assert plane.requests[0].path == "/health"
    assert plane.requests[0].headers["Authorization"] == f"Bearer {token}"


def test_cli_without_token_exits_1_with_status_line(
    start_plane: Callable[..., ControlPlane],
    publish: Callable[..., Record],
    registry_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    plane = start_plane(new_token())
    publish(plane.addr)

    status = run_cli(registry_dir, "call-test", "/health")

    out, err = capsys.readouterr()
    assert status == 1
    assert out == ""
    assert err.splitlines()[0] == "HTTP/1.1 401 Unauthorized"
    assert "missing or wrong bearer token" in err


def test_cli_server_error_exits_1(
    start_plane: Callable[..., ControlPlane],
    publish: Callable[..., Record],
    registry_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    plane = start_plane()
    publish(plane.addr)

    status = run_cli(registry_dir, "call-test", "/fail")

    out, err = capsys.readouterr()
    assert status == 1
    assert out == ""
    assert err.splitlines() == ["HTTP/1.1 500 Internal Server Error", "broken"]


def test_cli_redirect_not_followed(
    start_plane: Callable[..., ControlPlane],
    publish: Callable[..., Record],
    registry_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    token = new_token()
    plane = start_plane(token)
    elsewhere = start_plane()
    plane.redirect_to = elsewhere.addr + "/stolen"
    publish(plane.addr, token)

    status = run_cli(registry_dir, "call-test", "/redirect")

    out, err = capsys.readouterr()
    assert status == 1
    assert out == ""
    assert err.splitlines()[:2] == [
        "HTTP/1.1 302 Found",
        f"Location: {elsewhere.addr}/stolen",
    ]
    assert len(plane.requests) == 1
    assert elsewhere.requests == []


def test_cli_escapes_control_characters_from_server(
    publish: Callable[..., Record], registry_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    listener = socket.create_server(("127.0.0.1", 0))

    def answer() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(
                b"HTTP/1.1 302 Found\x1b[2J\r\nLocation: /x\x1b]0;owned\x07\r\n"
                b"Content-Length: 0\r\n\r\n"
            )

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    publish(f"http://127.0.0.1:{listener.getsockname()[1]}")
    try:
        status = run_cli(registry_dir, "call-test", "/x")
    finally:
        thread.join(timeout=10)
        listener.close()

    err = capsys.readouterr().err
    assert status == 1
    assert "\x1b" not in err
    assert "\x07" not in err
    assert "Location: /x\\x1b]0;owned\\x07" in err


def test_cli_double_slash_path_is_usage_error_before_connecting(
    start_plane: Callable[..., ControlPlane],
    publish: Callable[..., Record],
    registry_dir: Path,
    connections: list[object],
    capsys: pytest.CaptureFixture[str],
) -> None:
    token = new_token()
    plane = start_plane(token)
    publish(plane.addr, token)

    status = run_cli(registry_dir, "call-test", "//other-host/x")

    err = capsys.readouterr().err
    assert status == 2
    assert "invalid path '//other-host/x'" in err
    assert plane.requests == []
    assert connections == []


def test_cli_token_over_plain_http_to_other_host_exits_6(
    publish: Callable[..., Record],
    registry_dir: Path,
    connections: list[object],
    capsys: pytest.CaptureFixture[str],
) -> None:
    token = new_token()
    publish(f"http://{NON_LOOPBACK}:9", token)

    status = run_cli(registry_dir, "call-test", "/x")

    err = capsys.readouterr().err
    assert status == 6
    assert "not a loopback address" in err
    assert token not in err
    assert connections == []


@pytest.mark.parametrize(
    ("argv", "method", "body"),
    [
        pytest.param([], "GET", b"", id="default-get"),
        pytest.param(["-d", "a=1"], "POST", b"a=1", id="data-means-post"),
        pytest.param(["-X", "PUT", "-d", "x"], "PUT", b"x", id="explicit-method"),
        pytest.param(["--request", "DELETE"], "DELETE", b"", id="long-option"),
        pytest.param(["-d", "caf\u00e9"], "POST", "caf\u00e9".encode(), id="utf8"),
    ],
)
def test_cli_method_and_body(
    argv: list[str],
    method: str,
    body: bytes,
    start_plane: Callable[..., ControlPlane],
    publish: Callable[..., Record],
    registry_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    plane = start_plane()
    publish(plane.addr)

    status = run_cli(registry_dir, "call-test", "/echo", *argv)

    assert status == 0
    assert plane.requests[0].method == method
    assert plane.requests[0].body == body
    assert capsys.readouterr().out.encode() == body


def test_cli_data_from_file_is_sent_byte_for_byte(
    start_plane: Callable[..., ControlPlane],
    publish: Callable[..., Record],
    registry_dir: Path,
    tmp_path: Path,
) -> None:
    plane = start_plane()
    publish(plane.addr)
    payload = b'{"prompt": "line one\nline two"}\r\n\x00\xff'
    source = tmp_path / "body.bin"
    source.write_bytes(payload)

    status = run_cli(registry_dir, "call-test", "/echo", "-d", f"@{source}")

    assert status == 0
    assert plane.requests[0].method == "POST"
    assert plane.requests[0].body == payload
    assert plane.requests[0].headers["Content-Length"] == str(len(payload))


def test_cli_data_from_stdin(
    start_plane: Callable[..., ControlPlane],
    publish: Callable[..., Record],
    registry_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    plane = start_plane()
    publish(plane.addr)
    payload = b"from standard input\n\x01"
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(payload)))

    status = run_cli(registry_dir, "call-test", "/echo", "-d", "@-")

    assert status == 0
    assert plane.requests[0].body == payload


def test_cli_data_from_stdin_in_subprocess(
    start_plane: Callable[..., ControlPlane], publish: Callable[..., Record], registry_dir: Path
) -> None:
    token = new_token()
    plane = start_plane(token)
    publish(plane.addr, token)
    argv = [sys.executable, "-m", "runregistry", "--dir", str(registry_dir), "call"]

    done = subprocess.run(
        [*argv, "call-test", "/echo", "-d", "@-"],
        input=b'{"a": 1}',
        capture_output=True,
        timeout=30,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    assert done.stdout == b'{"a": 1}'
    assert plane.requests[0].body == b'{"a": 1}'


def test_cli_missing_data_file_is_usage_error(
    start_plane: Callable[..., ControlPlane],
    publish: Callable[..., Record],
    registry_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    plane = start_plane()
    publish(plane.addr)

    status = run_cli(registry_dir, "call-test", "/echo", "-d", f"@{tmp_path / 'missing'}")

    assert status == 2
    assert "cannot read the request body" in capsys.readouterr().err
    assert plane.requests == []


def test_cli_headers_are_sent(
    start_plane: Callable[..., ControlPlane], publish: Callable[..., Record], registry_dir: Path
) -> None:
    plane = start_plane()
    publish(plane.addr)

    status = run_cli(
        registry_dir,
        "call-test",
        "/x",
        "-H",
        "Accept: application/json",
        "--header",
        "X-Trace-Id:  abc 123  ",
        "-H",
        "X-Empty:",
    )

    assert status == 0
    headers = plane.requests[0].headers
    assert headers["Accept"] == "application/json"
    assert headers["X-Trace-Id"] == "abc 123"
    assert headers["X-Empty"] == ""


@pytest.mark.parametrize(
    ("header", "message"),
    [
        pytest.param("NoColon", "Name: value", id="no-colon"),
        pytest.param(": value", "invalid header name", id="empty-name"),
        pytest.param("Bad Name: x", "invalid header name", id="space-in-name"),
        pytest.param("X-A: a\r\nX-B: b", "control character", id="crlf-in-value"),
        pytest.param("Content-Length: 3", "cannot be set", id="content-length"),
    ],
)
def test_cli_invalid_header_is_usage_error(
    header: str,
    message: str,
    start_plane: Callable[..., ControlPlane],
    publish: Callable[..., Record],
    registry_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    plane = start_plane()
    publish(plane.addr)

    status = run_cli(registry_dir, "call-test", "/x", "-H", header)

    assert status == 2
    assert message in capsys.readouterr().err
    assert plane.requests == []


def test_cli_repeated_header_is_usage_error(
    start_plane: Callable[..., ControlPlane],
    publish: Callable[..., Record],
    registry_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    plane = start_plane()
    publish(plane.addr)

    status = run_cli(registry_dir, "call-test", "/x", "-H", "X-A: 1", "-H", "x-a: 2")

    assert status == 2
    assert "more than once" in capsys.readouterr().err
    assert plane.requests == []


def test_cli_header_value_not_in_error(
    registry_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = run_cli(registry_dir, "call-test", "/x", "-H", "Authorization: Bearer s3cret\r\n")

    err = capsys.readouterr().err
    assert status == 2
    assert "s3cret" not in err


@pytest.mark.parametrize("method", ["GET /x", "G\tT"])
def test_cli_invalid_method_is_usage_error(
    method: str, registry_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = run_cli(registry_dir, "call-test", "/x", "-X", method)

    assert status == 2
    assert "invalid HTTP method" in capsys.readouterr().err


@pytest.mark.parametrize("timeout", ["0", "-1", "nan", "inf", "soon"])
def test_cli_invalid_timeout_is_usage_error(
    timeout: str, registry_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = run_cli(registry_dir, "call-test", "/x", "--timeout", timeout)

    assert status == 2
    assert "invalid timeout" in capsys.readouterr().err


def test_cli_timeout_against_silent_server_exits_4(
    publish: Callable[..., Record], registry_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The kernel completes the handshake for a listening socket, but nothing
    # ever reads the request or sends a response.
    with socket.create_server(("127.0.0.1", 0)) as silent:
        publish(f"http://127.0.0.1:{silent.getsockname()[1]}", new_token())

        status = run_cli(registry_dir, "call-test", "/x", "--timeout", "0.5")

    err = capsys.readouterr().err
    assert status == 4
    assert "timed out after 0.5 s" in err


@contextlib.contextmanager
def slow_server(head: bytes, *, drip_head: bool = False) -> Iterator[str]:
    """Serve one request on 127.0.0.1 that never completes, one byte every 0.1 s; yield its address.

    With *drip_head* the bytes of *head* are dripped; otherwise *head* is sent
    at once and the body is dripped without end.
    """
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def drip() -> None:
        conn, _ = listener.accept()
        with conn, contextlib.suppress(OSError):
            conn.recv(65536)
            if drip_head:
                for byte in head:
                    if stop.wait(0.1):
                        return
                    conn.sendall(bytes([byte]))
                return
            conn.sendall(head)
            while not stop.wait(0.1):
                conn.sendall(b"x")

    thread = threading.Thread(target=drip, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(timeout=10)
        listener.close()


def test_cli_timeout_bounds_slow_body(
    publish: Callable[..., Record], registry_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Each read succeeds, but the whole body would take 100 s.
    with slow_server(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n") as addr:
        publish(addr)
        status = run_cli(registry_dir, "call-test", "/x", "--timeout", "0.5")

    assert status == 4
    assert "timed out" in capsys.readouterr().err


def test_cli_connection_refused_exits_4(
    publish: Callable[..., Record], registry_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A bound socket that does not listen keeps the port taken and refuses connections.
    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))
        publish(f"http://127.0.0.1:{bound.getsockname()[1]}", new_token())

        status = run_cli(registry_dir, "call-test", "/x")

    err = capsys.readouterr().err
    assert status == 4
    assert "cannot connect to" in err
    assert "refused" in err.lower()


def test_cli_no_run_exits_1(registry_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = run_cli(registry_dir, "nothing-here", "/x")

    assert status == 1
    assert "no live run" in capsys.readouterr().err


# HTTPS on loopback, with a certificate made for the test.


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed, so no test certificate can be made")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


def test_cli_https_verifies_certificate(
    tls_files: tuple[Path, Path],
    start_plane: Callable[..., ControlPlane],
    publish: Callable[..., Record],
    registry_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cert, key = tls_files
    token = new_token()
    plane = start_plane(token)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    plane.server.socket = context.wrap_socket(plane.server.socket, server_side=True)
    publish(plane.addr.replace("http://", "https://"), token)

    untrusted = run_cli(registry_dir, "call-test", "/x")
    untrusted_err = capsys.readouterr().err
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    trusted = run_cli(registry_dir, "call-test", "/x")

    assert untrusted == 4
    assert "certificate" in untrusted_err.lower()
    assert trusted == 0
    assert capsys.readouterr().out == "GET /x\n"
    assert [seen.headers["Authorization"] for seen in plane.requests] == [f"Bearer {token}"]


def test_cli_timeout_bounds_slow_headers(
    publish: Callable[..., Record], registry_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    head = b"HTTP/1.1 200 OK\r\nX-Slow: " + b"x" * 1000
    with slow_server(head, drip_head=True) as addr:
        publish(addr)
        status = run_cli(registry_dir, "call-test", "/x", "--timeout", "0.5")

    assert status == 4
    assert "timed out" in capsys.readouterr().err


def test_call_close_delimited_body_cut_by_timeout_raises(
    publish: Callable[..., Record], registry: Registry
) -> None:
    # No Content-Length: the body ends only when the server closes.
    with slow_server(b"HTTP/1.0 200 OK\r\n\r\n") as addr:
        publish(addr)
        with pytest.raises(RegistryError, match="timed out"):
            registry.call("call-test", "/x", timeout=0.5)


# The example control planes, each started on its own as a real process.

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.parametrize(
    ("script", "needs"),
    [
        pytest.param("stdlib_control_plane.py", None, id="stdlib"),
        pytest.param("starlette_control_plane.py", "starlette", id="starlette"),
    ],
)
def test_example_control_plane_requires_token(
    script: str,
    needs: str | None,
    registry: Registry,
    registry_dir: Path,
    spawn: Callable[..., subprocess.Popen[bytes]],
) -> None:
    if not (EXAMPLES / script).is_file():
        pytest.skip(f"examples/{script} does not exist yet")
    if needs is not None:
        pytest.importorskip(needs)
    env = dict(os.environ, RUNREGISTRY_DIR=str(registry_dir))
    spawn(sys.executable, str(EXAMPLES / script), env=env, stderr=subprocess.DEVNULL)
    record = registry.wait(timeout=30)
    port = int(record.addr.rsplit(":", 1)[1])

    anonymous = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        anonymous.request("GET", "/session")
        anonymous_status = anonymous.getresponse().status
    finally:
        anonymous.close()
    argv = [sys.executable, "-m", "runregistry", "--dir", str(registry_dir), "call"]
    done = subprocess.run(
        [*argv, record.session_id, "/session"],
        capture_output=True,
        timeout=30,
        check=False,
    )

    assert record.token is not None
    assert anonymous_status == 401
    assert done.returncode == 0, done.stderr
    assert record.session_id.encode() in done.stdout
    assert record.token.encode() not in done.stdout + done.stderr
