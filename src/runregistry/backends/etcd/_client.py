"""A small client for etcd's v3 JSON gateway: one-shot calls and watch streams over http.client.

The gateway maps every gRPC method to ``POST /v3/<service>/<method>`` with a
JSON body. Keys and values are base64, 64-bit integers are strings, and fields
with their default value (zero, false, empty) are left out of responses.
One-shot methods respond with a bare object, and streaming methods (lease
keep-alive, watch) with newline-separated objects wrapped in ``{"result": ...}``, or
``{"error": ...}`` when the stream fails.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import logging
import socket
import ssl
import threading
from collections.abc import Iterator, Sequence
from typing import Any, Final

from ..._errors import RegistryError
from ._fork import reset_after_fork
from ._settings import Endpoint

log = logging.getLogger(__name__)

# gRPC status codes that etcd puts in the "code" field of an error.
CODE_NOT_FOUND: Final = 5
CODE_OUT_OF_RANGE: Final = 11
CODE_UNAVAILABLE: Final = 14
CODE_UNAUTHENTICATED: Final = 16

# A response line has a few kilobytes per record, so a longer line is not from etcd.
_MAX_LINE: Final = 64 * 1024 * 1024

# A watch connection whose peer vanished without closing it (a host or network
# failure) is ended after 10 + 3 * 5 = 25 s without a reply to the kernel's probes.
_KEEPALIVE_IDLE_SECONDS: Final = 10
_KEEPALIVE_INTERVAL_SECONDS: Final = 5
_KEEPALIVE_PROBES: Final = 3

_INVALID_TOKEN_MESSAGES: Final = ("invalid auth token", "auth token is expired")

JsonObject = dict[str, Any]


class EtcdError(RegistryError):
    """etcd rejected a request; :attr:`code` is the gRPC status code, when etcd sent one."""

    def __init__(self, message: str, *, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class EtcdUnavailableError(EtcdError):
    """No endpoint responded, or a connection broke before the response was complete."""


def encode(text: str) -> str:
    """Return *text* as the base64 string the gateway expects for keys and values."""
    return base64.b64encode(text.encode()).decode("ascii")


def encode_bytes(data: bytes) -> str:
    """Return *data* as base64 text for the gateway."""
    return base64.b64encode(data).decode("ascii")


def decode(value: str | None) -> bytes:
    """Return the bytes of a base64 field; an absent field is empty."""
    return base64.b64decode(value) if value else b""


def number(obj: JsonObject, name: str) -> int:
    """Return the 64-bit integer field *name* of *obj*, sent as a string; absent means 0."""
    return int(obj.get(name) or 0)


def prefix_end(prefix: str) -> str:
    """Return the ``range_end`` (base64) that selects every key starting with *prefix*."""
    data = bytearray(prefix.encode())
    # Increment the last byte that can be incremented; etcd's range is [key, range_end).
    while data and data[-1] == 0xFF:
        data.pop()
    if not data:
        return encode_bytes(b"\0")
    data[-1] += 1
    return encode_bytes(bytes(data))


class GatewayClient:
    """Sends JSON requests to the first etcd endpoint that responds; safe to use from threads.

    Idle connections are kept for reuse. Requests go to the endpoint that
    responded last, and move on to the next one when it cannot be reached.
    With *credentials*, the client authenticates once, and again whenever etcd
    reports that the token expired.
    """

    def __init__(
        self,
        endpoints: Sequence[Endpoint],
        *,
        ssl_context: ssl.SSLContext | None,
        credentials: tuple[str, str] | None,
        timeout: float,
    ) -> None:
        self._endpoints = tuple(endpoints)
        self._ssl_context = ssl_context
        self._credentials = credentials
        self.timeout = timeout
        self._lock = threading.Lock()
        self._idle: list[tuple[int, http.client.HTTPConnection]] = []
        self._preferred = 0
        self._auth_token: str | None = None
        self._closed = False
        reset_after_fork(self)

    @property
    def urls(self) -> str:
        """The endpoints, comma-separated, for messages."""
        return ",".join(endpoint.url for endpoint in self._endpoints)

    def call(self, method: str, body: JsonObject) -> JsonObject:
        """POST *body* to ``/v3/<method>`` and return the response, unwrapped from ``result``.

        :raises EtcdUnavailableError: no endpoint responded within the timeout.
        :raises EtcdError: etcd responded with an error.
        """
        try:
            return self._call_authenticated(method, body)
        except EtcdError as exc:
            if not self._is_invalid_token(exc):
                raise
            # Simple tokens expire after minutes of disuse and are lost when
            # etcd restarts; a fresh one makes the request valid again.
            log.debug("etcd auth token at %s is no longer valid; authenticating again", self.urls)
            with self._lock:
                self._auth_token = None
            return self._call_authenticated(method, body)

    def open_stream(self, method: str, body: JsonObject) -> GatewayStream:
        """POST *body* to the streaming method ``/v3/<method>`` and return the open stream.

        Reading the stream waits for messages without a time limit, but TCP
        keep-alive probes end a connection whose peer went silent, so a dropped
        connection is reported instead of blocking forever.

        :raises EtcdUnavailableError: no endpoint responded within the timeout.
        :raises EtcdError: etcd rejected the request.
        """
        headers = self._headers()
        data = json.dumps(body).encode()
        last_error: Exception | None = None
        for index in self._endpoint_order():
            connection = self._connect(index)
            try:
                connection.request("POST", f"/v3/{method}", data, headers)
                response = connection.getresponse()
            except (OSError, http.client.HTTPException) as exc:
                connection.close()
                last_error = exc
                continue
            if response.status != 200:
                payload = response.read()
                connection.close()
                raise self._error(method, payload, response.status)
            self._preferred = index
            return GatewayStream(connection, response, self._endpoints[index].url)
        raise self._unavailable(last_error)

    def close(self) -> None:
        """Close every idle connection; a connection in use is closed when its request ends.

        The client stays usable, but keeps no connection open after a request.
        """
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for _, connection in idle:
            connection.close()

    def __del__(self) -> None:
        # A registry dropped without close() (a command-line run, say) still
        # closes its sockets rather than leave them to the garbage collector.
        with contextlib.suppress(Exception):
            self.close()

    def reset_after_fork(self) -> None:
        """Forget the parent's connections without closing them, which are still the parent's."""
        self._lock = threading.Lock()
        self._idle = []

    def _call_authenticated(self, method: str, body: JsonObject) -> JsonObject:
        headers = self._headers()
        return self._call(method, body, headers)

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        token = self._token()
        if token is not None:
            headers["Authorization"] = token
        return headers

    def _token(self) -> str | None:
        if self._credentials is None:
            return None
        with self._lock:
            if self._auth_token is not None:
                return self._auth_token
        name, password = self._credentials
        answer = self._call(
            "auth/authenticate",
            {"name": name, "password": password},
            {"Content-Type": "application/json"},
        )
        token = answer.get("token")
        if not isinstance(token, str) or not token:
            raise EtcdError(
                f"etcd at {self.urls} returned no token for user {name!r}: "
                "check that authentication is enabled there"
            )
        with self._lock:
            self._auth_token = token
        return token

    def _call(self, method: str, body: JsonObject, headers: dict[str, str]) -> JsonObject:
        data = json.dumps(body).encode()
        last_error: Exception | None = None
        for index in self._endpoint_order():
            # The server may have closed a reused connection while it was idle.
            # That failure shows nothing about the endpoint, so the request is
            # retried once on a fresh connection.
            for connection, reused in self._connections(index):
                try:
                    status, payload = _exchange(connection, f"/v3/{method}", data, headers)
                except (OSError, http.client.HTTPException) as exc:
                    connection.close()
                    last_error = exc
                    if reused:
                        continue
                    break
                self._release(index, connection)
                self._preferred = index
                if status != 200:
                    raise self._error(method, payload, status)
                return _parse_answer(method, payload)
        raise self._unavailable(last_error)

    def _connections(self, index: int) -> Iterator[tuple[http.client.HTTPConnection, bool]]:
        with self._lock:
            reusable = next((i for i, (at, _) in enumerate(self._idle) if at == index), None)
            idle = self._idle.pop(reusable)[1] if reusable is not None else None
        if idle is not None:
            yield idle, True
        yield self._connect(index), False

    def _release(self, index: int, connection: http.client.HTTPConnection) -> None:
        with self._lock:
            if not self._closed:
                self._idle.append((index, connection))
                return
        connection.close()

    def _connect(self, index: int) -> http.client.HTTPConnection:
        endpoint = self._endpoints[index]
        if endpoint.scheme == "https":
            return http.client.HTTPSConnection(
                endpoint.host, endpoint.port, timeout=self.timeout, context=self._ssl_context
            )
        return http.client.HTTPConnection(endpoint.host, endpoint.port, timeout=self.timeout)

    def _endpoint_order(self) -> list[int]:
        first = self._preferred
        count = len(self._endpoints)
        return [(first + offset) % count for offset in range(count)]

    def _unavailable(self, error: Exception | None) -> EtcdUnavailableError:
        reason = _describe(error) if error is not None else "no endpoint"
        return EtcdUnavailableError(
            f"cannot reach etcd at {self.urls}: {reason}; "
            "check that etcd runs and that the endpoints and TLS settings are right",
            code=CODE_UNAVAILABLE,
        )

    def _error(self, method: str, payload: bytes, status: int) -> EtcdError:
        try:
            obj = json.loads(payload)
        except ValueError:
            obj = None
        if isinstance(obj, dict):
            return _error_from(method, obj)
        text = payload[:200].decode("utf-8", "replace").strip()
        if "CommonName" in text:
            return EtcdError(
                f"etcd rejected {method}: {text}; with authentication enabled, etcd's JSON "
                "gateway accepts only client certificates without a common name (CN)"
            )
        return EtcdError(
            f"etcd request {method} failed with HTTP status {status}: {text}; "
            "check that the endpoint is an etcd 3.4 or later client URL"
        )

    def _is_invalid_token(self, exc: EtcdError) -> bool:
        return (
            self._credentials is not None
            and exc.code == CODE_UNAUTHENTICATED
            and any(text in str(exc) for text in _INVALID_TOKEN_MESSAGES)
        )


class GatewayStream:
    """An open streaming answer: iterate for its messages, close from any thread to stop."""

    def __init__(
        self, connection: http.client.HTTPConnection, response: http.client.HTTPResponse, url: str
    ) -> None:
        self._connection = connection
        self._response = response
        self._url = url
        self._closed = False
        sock = connection.sock
        self._socket: socket.socket | None = sock if isinstance(sock, socket.socket) else None
        if self._socket is not None:
            self._socket.settimeout(None)
            _enable_keepalive(self._socket)

    def __iter__(self) -> Iterator[JsonObject]:
        """Yield each message's ``result`` object.

        :raises EtcdUnavailableError: the connection ended, broke or stayed silent too long.
        :raises EtcdError: etcd ended the stream with an error.
        """
        while True:
            line = self._read_line()
            if not line.strip():
                continue
            yield _parse_answer("watch", line)

    def close(self) -> None:
        """End the stream; a thread blocked reading it gets :class:`EtcdUnavailableError`."""
        self._closed = True
        if self._socket is not None:
            # shutdown() wakes a reader blocked in recv(), which close() does not.
            with contextlib.suppress(OSError):
                self._socket.shutdown(socket.SHUT_RDWR)
        self._connection.close()

    def _read_line(self) -> bytes:
        try:
            line = self._response.readline(_MAX_LINE)
        except (OSError, http.client.HTTPException, ValueError) as exc:
            # ValueError: the response was closed by close() in another thread.
            raise EtcdUnavailableError(
                f"connection to etcd at {self._url} broke: {_describe(exc)}"
            ) from None
        if not line:
            state = "was closed" if self._closed else "was closed by the server"
            raise EtcdUnavailableError(f"connection to etcd at {self._url} {state}")
        return line


def _enable_keepalive(sock: socket.socket) -> None:
    """Make the kernel probe an idle connection and end it when the peer stays silent."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        # Probes start after this many idle seconds (TCP_KEEPALIVE is macOS's name).
        idle = getattr(socket, "TCP_KEEPIDLE", getattr(socket, "TCP_KEEPALIVE", None))
        if idle is not None:
            sock.setsockopt(socket.IPPROTO_TCP, idle, _KEEPALIVE_IDLE_SECONDS)
        if hasattr(socket, "TCP_KEEPINTVL") and hasattr(socket, "TCP_KEEPCNT"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, _KEEPALIVE_INTERVAL_SECONDS)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, _KEEPALIVE_PROBES)
    except OSError as exc:
        log.debug("cannot enable TCP keep-alive on the watch connection: %s", exc)


def _exchange(
    connection: http.client.HTTPConnection, path: str, data: bytes, headers: dict[str, str]
) -> tuple[int, bytes]:
    connection.request("POST", path, data, headers)
    response = connection.getresponse()
    payload = response.read()
    if response.will_close:
        connection.close()
    return response.status, payload


def _parse_answer(method: str, payload: bytes) -> JsonObject:
    """Decode one answer; stream messages are unwrapped from ``result``; errors raise."""
    # The gateway writes compact JSON, one object per line; a stream that
    # responds to one request has one line.
    line = payload.strip().split(b"\n", 1)[0]
    try:
        obj = json.loads(line)
    except ValueError as exc:
        raise EtcdError(f"etcd sent a response to {method} that is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise EtcdError(f"etcd sent a response to {method} that is not a JSON object")
    if "error" in obj:
        raise _error_from(method, obj)
    result = obj.get("result", obj) if len(obj) == 1 else obj
    if not isinstance(result, dict):
        raise EtcdError(f"etcd sent a result for {method} that is not a JSON object")
    return result


def _error_from(method: str, obj: JsonObject) -> EtcdError:
    # One-shot errors are {"error", "message", "code"}; stream errors nest
    # {"grpc_code", "http_code", "message"} under "error".
    detail = obj.get("error")
    if isinstance(detail, dict):
        message = str(detail.get("message") or detail)
        code = detail.get("grpc_code")
    else:
        message = str(obj.get("message") or detail or obj)
        code = obj.get("code")
    return EtcdError(
        f"etcd rejected {method}: {message}",
        code=code if isinstance(code, int) else None,
    )


def _describe(error: BaseException) -> str:
    if isinstance(error, ssl.SSLCertVerificationError):
        return f"TLS certificate verification failed ({error.verify_message})"
    if isinstance(error, TimeoutError):
        return "timed out"
    return str(error) or type(error).__name__
