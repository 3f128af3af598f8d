"""One HTTP request to a run's control plane, with the guards that keep its token safe.

The guards, checked before any connection is opened:

* the path starts with exactly one ``/``, so it can never name another host
  (``//evil.example/x`` is a network-path reference);
* the address is ``http`` or ``https`` with a host and no user information;
* a credential (the record's token, or an ``Authorization`` header given by the
  caller) goes over plain ``http`` only to a loopback address: ``localhost``,
  127.0.0.0/8 or ``::1``. ``localhost`` is never looked up: it is always
  loopback, so a resolver or hosts file cannot send the token elsewhere.

The request goes straight to the address: proxy variables are ignored, because
a proxy would see the token. A redirect is returned to the caller, never followed,
because the next hop could be another host.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import math
import re
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final
from urllib.parse import urlsplit

from ._errors import CallRefusedError, RegistryError
from ._log import get_logger
from ._tokens import is_bearer_token

if TYPE_CHECKING:
    from ._base import BaseRegistry
    from ._record import Record

log = get_logger(__name__)

DEFAULT_TIMEOUT: Final = 10.0

# RFC 9110 "token": the characters allowed in a method and a header name.
_TOKEN: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")

# A header value may hold visible ASCII, spaces, tabs and obsolete 8-bit text
# (RFC 9110 field-value); CR, LF and NUL would end or corrupt the header line.
_FIELD_VALUE: Final = re.compile(r"[\t\x20-\x7e\x80-\xff]*\Z")

# A path is sent as the request target verbatim, so it must already be
# percent-encoded: visible ASCII only.
_PATH: Final = re.compile(r"/(?!/)[\x21-\x7e]*\Z")

# The client frames the body itself; a caller's value would desynchronize it.
_FRAMING_HEADERS: Final = frozenset({"content-length", "transfer-encoding"})

# ``localhost`` connects to these, in this order, without a name lookup.
_LOCALHOST_ADDRESSES: Final = ("127.0.0.1", "::1")

_READ_SIZE: Final = 64 * 1024


@dataclass(frozen=True)
class CallResult:
    """The response to :meth:`BaseRegistry.call`: status code, headers and the whole body.

    A redirect (3xx) is returned as it is, with its ``Location`` header.
    """

    status: int
    headers: http.client.HTTPMessage
    body: bytes
    reason: str = field(default="", kw_only=True)
    version: str = field(default="HTTP/1.1", kw_only=True)

    @property
    def ok(self) -> bool:
        """Whether the status is 2xx."""
        return 200 <= self.status < 300

    @property
    def status_line(self) -> str:
        """The response's status line, such as ``HTTP/1.1 404 Not Found``."""
        return f"{self.version} {self.status} {self.reason}".rstrip()

    def __repr__(self) -> str:
        return f"<CallResult {self.status_line}, {len(self.body)} bytes>"


@dataclass(frozen=True)
class _Request:
    """A request that passed every guard, ready to send."""

    url: str
    scheme: str
    host: str
    port: int
    # Addresses to connect to, in order: the host itself, or 127.0.0.1 and ::1 for localhost.
    addresses: tuple[str, ...]
    target: str
    method: str
    headers: dict[str, str] = field(repr=False)
    # Source of the Authorization header for the debug log, or None when there is none.
    credential: str | None


def call(
    registry: BaseRegistry,
    target: str,
    path: str,
    *,
    method: str = "GET",
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> CallResult:
    """Send one request to the control plane of the run that *target* names.

    The request goes to the run's address, trailing slashes removed, with
    *path* appended, and carries ``Authorization: Bearer <token>`` when the
    record has a token. An ``Authorization`` header in *headers* replaces the
    record's token. *timeout* bounds the whole exchange, from connecting to
    the last byte of the body, in seconds.

    :raises ValueError: *path*, *method*, *headers* or *timeout* is invalid.
    :raises NoRunError: no live run matches *target*.
    :raises AmbiguousRunError: several live runs match *target*.
    :raises CallRefusedError: a guard rejected the request; nothing was sent.
    :raises RegistryError: the connection failed or timed out, or the
        response was not valid HTTP.
    """
    check_path(path)
    check_method(method)
    extra_headers = check_headers(headers or {})
    check_timeout(timeout)

    record = registry.find(target)
    request = _prepare(record, target, path, method, extra_headers)
    log.debug(
        "calling %s %s of run pid %d, authorization: %s",
        request.method,
        request.url,
        record.pid,
        request.credential or "none",
    )
    result = _send(request, body, timeout)
    log.debug("%s %s returned %s, %d bytes", method, request.url, result.status, len(result.body))
    return result


def check_path(path: str) -> None:
    """Check that *path* is a percent-encoded absolute path: one leading ``/``, visible ASCII.

    :raises ValueError: the path would be invalid, or could name another host.
    """
    if _PATH.match(path) is None:
        raise ValueError(
            f"invalid path {path!r}: it must start with a single '/' (such as /health) "
            "and contain only visible ASCII characters; percent-encode anything else"
        )


def check_method(method: str) -> None:
    """Check that *method* is an HTTP method token such as ``GET``.

    :raises ValueError: the method contains characters a method cannot have.
    """
    if _TOKEN.match(method) is None:
        raise ValueError(f"invalid HTTP method {method!r}: give a method such as GET or POST")


def check_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Return *headers* as a dict after checking each name and value.

    Error messages name the header but never show its value, which may be a
    credential.

    :raises ValueError: a name is not a token, a value contains a control
        character, a name repeats (ignoring case), or the header is
        ``Content-Length`` or ``Transfer-Encoding``, which the body sets.
    """
    checked: dict[str, str] = {}
    seen: set[str] = set()
    for name, value in headers.items():
        if _TOKEN.match(name) is None:
            raise ValueError(
                f"invalid header name {name!r}: use letters, digits and -, such as X-Request-Id"
            )
        if _FIELD_VALUE.match(value) is None:
            raise ValueError(f"invalid value for header {name}: it contains a control character")
        if name.lower() in _FRAMING_HEADERS:
            raise ValueError(f"header {name} cannot be set: it is computed from the request body")
        if name.lower() in seen:
            raise ValueError(f"header {name} is given more than once: give it once")
        seen.add(name.lower())
        checked[name] = value.strip(" \t")
    return checked


def parse_header(text: str) -> tuple[str, str]:
    """Split a ``Name: value`` header as given on the command line.

    :raises ValueError: *text* has no colon, or the name or value is invalid.
    """
    name, colon, value = text.partition(":")
    if not colon:
        raise ValueError("invalid header: give it as 'Name: value', such as 'Accept: text/plain'")
    check_headers({name: value})
    return name, value.strip(" \t")


def check_timeout(timeout: float) -> None:
    """Check that *timeout* is a positive, finite number of seconds.

    :raises ValueError: it is zero, negative, infinite or not a number.
    """
    if not (timeout > 0 and math.isfinite(timeout)):
        raise ValueError(f"invalid timeout {timeout!r}: give a positive number of seconds")


def is_loopback(host: str) -> bool:
    """Whether *host* (as in a URL, without brackets) is ``localhost``, 127.0.0.0/8 or ``::1``."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    # Only ::1 for IPv6: Python 3.13 also counts an IPv4-mapped ::ffff:127.0.0.1
    # as loopback, and this check must not depend on the Python version.
    if address.version == 6:
        return address == ipaddress.IPv6Address("::1")
    return address.is_loopback


def _prepare(
    record: Record, target: str, path: str, method: str, extra_headers: dict[str, str]
) -> _Request:
    """Check the record's address and credential against the guards and build the request."""
    scheme, host, port, base_path = _split_address(record, target)
    headers = dict(extra_headers)
    credential = _add_credential(record, target, headers)

    loopback = is_loopback(host)
    if scheme == "http" and credential is not None and not loopback:
        raise CallRefusedError(
            f"refused to send {credential} over plain http to {host}, which is not a loopback "
            f"address (run pid {record.pid}, address {record.addr}): the run must publish an "
            "https:// address, or a loopback address such as http://127.0.0.1:PORT",
            target,
        )

    is_localhost = loopback and host.lower().rstrip(".") == "localhost"
    return _Request(
        url=f"{scheme}://{_url_host(host)}:{port}{base_path}{path}",
        scheme=scheme,
        host=host,
        port=port,
        addresses=_LOCALHOST_ADDRESSES if is_localhost else (host,),
        target=base_path + path,
        method=method,
        headers=headers,
        credential=credential,
    )


def _split_address(record: Record, target: str) -> tuple[str, str, int, str]:
    """Return the scheme, host, port and path prefix of the record's address."""
    addr = record.addr.rstrip("/")
    # An address with user information may hold a password, so messages leave it out.
    displayed_addr = repr(record.addr) if "@" not in record.addr else "(not shown: it has '@')"

    def rejection(problem: str) -> CallRefusedError:
        return CallRefusedError(
            f"refused to call run pid {record.pid}: its address {displayed_addr} {problem}", target
        )

    # urlsplit silently drops tabs and newlines, so such an address is checked first.
    if re.fullmatch(r"[\x21-\x7e]+", addr) is None:
        raise rejection("contains spaces, control characters or non-ASCII characters")
    try:
        parts = urlsplit(addr)
        port = parts.port
    except ValueError as exc:
        raise rejection(f"is not a valid URL ({exc})") from None

    if "@" in parts.netloc:
        raise rejection("contains user information (user:password@), which call never sends")
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise rejection("is not an http:// or https:// address")
    if not parts.hostname:
        raise rejection("has no host")
    if parts.query or parts.fragment:
        raise rejection("has a query or fragment")
    if port == 0:
        raise rejection("has port 0, where nothing can listen")
    default_port = 443 if scheme == "https" else 80
    return scheme, parts.hostname, port or default_port, parts.path


def _add_credential(record: Record, target: str, headers: dict[str, str]) -> str | None:
    """Add the record's token to *headers* unless the caller gave an Authorization header.

    Returns where the Authorization header came from, or None when there is none.
    """
    if any(name.lower() == "authorization" for name in headers):
        return "the Authorization header given by the caller"
    if record.token is None:
        return None
    if not is_bearer_token(record.token):
        raise CallRefusedError(
            f"refused to call run pid {record.pid}: the token in its record is not a valid "
            "bearer token (it must be URL-safe base64, such as runregistry.new_token() "
            "returns); restart the run with a new token",
            target,
        )
    headers["Authorization"] = f"Bearer {record.token}"
    return "the run's token"


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _send(request: _Request, body: bytes | None, timeout: float) -> CallResult:
    """Send *request* over a direct connection and read the whole response."""
    deadline = _Deadline(timeout)
    progress = ["connect to"]
    try:
        with deadline:
            sock = _connect(request, deadline)
            try:
                response, data = _exchange(request, sock, body, progress)
            finally:
                deadline.cancel()
                sock.close()
        # A body that ends when the connection closes looks complete after a shutdown.
        deadline.check()
    except (OSError, http.client.HTTPException) as exc:
        # The deadline shuts the socket down, which surfaces as a reset or a short read.
        if deadline.expired or isinstance(exc, TimeoutError):
            raise RegistryError(
                f"call to {request.url} timed out after {timeout:g} s; "
                "check that the run still answers, or retry with a longer timeout"
            ) from exc
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else repr(exc)
        raise RegistryError(
            f"cannot {progress[-1]} {request.url}: {reason}; check that the run still serves "
            "there (runregistry list)"
        ) from exc

    return CallResult(
        response.status,
        response.headers,
        data,
        reason=response.reason,
        version="HTTP/1.0" if response.version == 10 else "HTTP/1.1",
    )


def _exchange(
    request: _Request, sock: socket.socket, body: bytes | None, progress: list[str]
) -> tuple[http.client.HTTPResponse, bytes]:
    """Send the request on the open *sock* and read the response; *progress* names the step."""
    # A connection whose socket is set never opens another, so no proxy
    # variable and no resolver can redirect it.
    connection = http.client.HTTPConnection(request.host, request.port)
    connection.sock = sock
    progress.append("send the request to")
    connection.request(request.method, request.target, body=body, headers=request.headers)

    progress.append("read the response from")
    response = connection.getresponse()
    chunks: list[bytes] = []
    # read1 returns what one receive brings, where read(n) would wait for n bytes.
    while chunk := response.read1(_READ_SIZE):
        chunks.append(chunk)
    # With a Content-Length, http.client ends a short body quietly instead of raising.
    if response.length:
        raise http.client.IncompleteRead(b"".join(chunks), response.length)
    return response, b"".join(chunks)


def _connect(request: _Request, deadline: _Deadline) -> socket.socket:
    """Open a TCP connection to the first address that accepts it, with TLS for https."""
    sock = None
    errors: list[OSError] = []
    for address in request.addresses:
        try:
            sock = socket.create_connection((address, request.port), deadline.remaining())
            break
        except OSError as exc:
            errors.append(exc)
    if sock is None:
        # The first address is the usual one (127.0.0.1 for localhost), so its
        # error is the one worth showing.
        raise errors[0]
    deadline.watch(sock)
    if request.scheme != "https":
        return sock

    import ssl

    context = ssl.create_default_context()
    try:
        tls = context.wrap_socket(sock, server_hostname=request.host, do_handshake_on_connect=False)
    except BaseException:
        sock.close()
        raise
    try:
        # The handshake runs after the deadline watches the TLS socket, so a
        # server that stalls the handshake is cut off too.
        deadline.watch(tls)
        tls.do_handshake()
    except BaseException:
        tls.close()
        raise
    return tls


class _Deadline:
    """A limit on a whole call: when it passes, the watched socket is shut down.

    A socket timeout only bounds each receive, so a server that sends one byte
    at a time could keep a call going for ever. Shutting the socket down ends
    whatever receive or send is blocked.
    """

    def __init__(self, seconds: float) -> None:
        self._end = time.monotonic() + seconds
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self.expired = False
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> _Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.cancel()

    def remaining(self) -> float:
        """Return the seconds left; raise TimeoutError when none are."""
        left = self._end - time.monotonic()
        if left <= 0:
            raise TimeoutError("the call's deadline passed")
        return left

    def check(self) -> None:
        """Raise TimeoutError if the deadline shut the connection down."""
        if self.expired:
            raise TimeoutError("the call's deadline passed")

    def watch(self, sock: socket.socket) -> None:
        """Shut *sock* down at the deadline, or at once if it has passed."""
        with self._lock:
            self._sock = sock
            sock.settimeout(self.remaining() if not self.expired else 0.001)
            if self.expired:
                _shutdown(sock)

    def cancel(self) -> None:
        """Stop the timer and wait for it, so that it never touches a closed socket."""
        self._timer.cancel()
        if self._timer.is_alive():
            self._timer.join()

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            if self._sock is not None:
                _shutdown(self._sock)


def _shutdown(sock: socket.socket) -> None:
    # socket.socket.shutdown, not SSLSocket.shutdown: the TLS variant drops
    # its TLS state, which a receive blocked in another thread still uses.
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
