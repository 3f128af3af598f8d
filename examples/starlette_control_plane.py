"""An asyncio control plane on Starlette and uvicorn, published in the run registry.

Needs the ``examples`` extra (``pip install 'runregistry-discovery[examples]'``).
Run it, then find and call it from another terminal::

    python examples/starlette_control_plane.py
    runregistry ls
    runregistry call <part of its session id> /session

The socket is bound to port 0 before uvicorn starts, so the lifespan handler
can read the real port, publish the record there, and remove it on shutdown.
``GET /health`` is open to anyone. Every other request needs the bearer token
stored in the record, and gets 401 without it.
"""

from __future__ import annotations

import contextlib
import hmac
import socket
import sys
from collections.abc import AsyncIterator

import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

import runregistry

AGENT = "starlette-example"


class BearerTokenMiddleware:
    """Rejects every HTTP request but ``GET /health`` with 401 unless it carries the token."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan" or self._is_public(scope) or self._authorized(scope):
            await self.app(scope, receive, send)
        elif scope["type"] == "websocket":
            # 1008: policy violation, the WebSocket counterpart of 401.
            await send({"type": "websocket.close", "code": 1008})
        else:
            response = JSONResponse(
                {"error": "missing or wrong bearer token"},
                status_code=401,
                headers={"WWW-Authenticate": 'Bearer realm="runregistry"'},
            )
            await response(scope, receive, send)

    @staticmethod
    def _is_public(scope: Scope) -> bool:
        request: tuple[str, str, str] = (scope["type"], scope.get("method", ""), scope["path"])
        return request == ("http", "GET", "/health")

    def _authorized(self, scope: Scope) -> bool:
        values = [value for name, value in scope["headers"] if name == b"authorization"]
        if len(values) != 1:
            return False
        scheme, _, credentials = values[0].partition(b" ")
        presented = b"Bearer " + credentials.strip() if scheme.lower() == b"bearer" else b""
        # compare_digest's time does not depend on where the first difference is.
        return bool(hmac.compare_digest(presented, self.expected))


async def health(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


async def session(request: Request) -> JSONResponse:
    record: runregistry.Record = request.app.state.record
    return JSONResponse(record.to_dict())


def build_app(listener: socket.socket, token: str, registry: runregistry.BaseRegistry) -> Starlette:
    """Return the application; its lifespan publishes the run at *listener*'s address."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        addr = f"http://127.0.0.1:{listener.getsockname()[1]}"
        with registry.register(addr, agent=AGENT, token=token) as record:
            app.state.record = record
            print(f"serving session {record.session_id} at {addr}", file=sys.stderr, flush=True)
            yield
        print("stopped; the record is removed", file=sys.stderr, flush=True)

    return Starlette(
        routes=[Route("/health", health), Route("/session", session)],
        middleware=[Middleware(BearerTokenMiddleware, token=token)],
        lifespan=lifespan,
    )


def main() -> int:
    """Serve until Ctrl-C or SIGTERM, published in the default registry meanwhile."""
    token = runregistry.new_token()
    # Listening before uvicorn starts means a client that finds the record
    # early waits in the backlog instead of being refused.
    listener = socket.create_server(("127.0.0.1", 0))
    app = build_app(listener, token, runregistry.default_registry())

    # uvicorn handles SIGINT and SIGTERM: it stops accepting, runs the
    # lifespan shutdown (which removes the record), then re-raises the signal.
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    server.run(sockets=[listener])
    return 0


if __name__ == "__main__":
    sys.exit(main())
