"""A control plane built on the standard library alone, published in the run registry.

Run it, then find and call it from another terminal::

    python examples/stdlib_control_plane.py
    runregistry ls
    runregistry call <part of its session id> /session

It binds a free port on 127.0.0.1, publishes its record once the socket
listens, and removes the record when it stops (Ctrl-C or SIGTERM). ``GET
/health`` is open to anyone. Every other request needs the bearer token stored
in the record, so local users who merely find the port get 401.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any
from urllib.parse import urlsplit

import runregistry

AGENT = "stdlib-example"


class ControlPlane(ThreadingHTTPServer):
    """An HTTP server that serves ``GET /health`` to anyone and everything else to token holders."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], token: str) -> None:
        super().__init__(address, ControlPlaneHandler)
        self.token = token
        # The body of GET /session, filled in once the run is published.
        self.session: dict[str, Any] = {}

    @property
    def port(self) -> int:
        """The TCP port the server listens on, known once the socket is bound."""
        return int(self.server_address[1])


class ControlPlaneHandler(BaseHTTPRequestHandler):
    """Routes requests after checking the bearer token; only ``GET /health`` goes without it."""

    server: ControlPlane

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path == "/health":
            self._send_json(200, {"status": "ok"})
        elif not self._authorized():
            self._reject()
        elif path == "/session":
            self._send_json(200, self.server.session)
        else:
            self._send_json(404, {"error": f"no endpoint {path}"})

    def do_other(self) -> None:
        """Reject every method but GET: 401 without the token, else 405."""
        if not self._authorized():
            self._reject()
        else:
            self._send_json(405, {"error": f"{self.command} is not allowed here"})

    do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_other  # noqa: N815

    def _authorized(self) -> bool:
        scheme, _, credentials = self.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            return False
        # compare_digest takes as long for a wrong first byte as for a wrong
        # last one, so response times do not reveal how much of a guess matched.
        return hmac.compare_digest(credentials.strip().encode(), self.server.token.encode())

    def _reject(self) -> None:
        self._send_json(
            401,
            {"error": "missing or wrong bearer token"},
            {"WWW-Authenticate": 'Bearer realm="runregistry"'},
        )

    def _send_json(self, status: int, body: object, headers: dict[str, str] | None = None) -> None:
        # The newline keeps a shell prompt off the last line of curl's output.
        data = json.dumps(body).encode() + b"\n"
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)


def main() -> int:
    """Serve until Ctrl-C or SIGTERM, published in the default registry meanwhile."""
    signal.signal(signal.SIGTERM, _interrupt)
    token = runregistry.new_token()
    registry = runregistry.default_registry()

    with ControlPlane(("127.0.0.1", 0), token) as server:
        addr = f"http://127.0.0.1:{server.port}"
        with registry.register(addr, agent=AGENT, token=token) as record:
            server.session = record.to_dict()
            print(f"serving session {record.session_id} at {addr}", file=sys.stderr, flush=True)
            with contextlib.suppress(KeyboardInterrupt):
                server.serve_forever()
    print("stopped; the record is removed", file=sys.stderr)
    return 0


def _interrupt(signum: int, frame: FrameType | None) -> None:
    # SIGTERM takes the same way out as Ctrl-C, so the record is removed.
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
