"""``runregistry exec``: start a server, publish its record once it listens, remove it at exit.

The record is the child's: its pid, no writer's lock, and a ``started_at``
taken just after the child started, so readers judge it by the child's pid and
start time. It therefore stays live while the server runs even if exec itself
is killed with SIGKILL, and turns stale once the server is gone.
"""

from __future__ import annotations

import math
import os
import re
import signal
import socket
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, NamedTuple
from urllib.parse import urlsplit

from . import _supervisor
from ._base import BaseRegistry, Cleanup
from ._errors import RegistryError
from ._liveness import local_hostname, started_at_now
from ._log import get_logger
from ._record import Record

log = get_logger(__name__)

# Placeholders replaced in COMMAND's arguments, and the variable that carries
# the token. They are names, not secrets.
PORT_PLACEHOLDER: Final = "{port}"
TOKEN_FILE_PLACEHOLDER: Final = "{token_file}"  # noqa: S105
DEFAULT_TOKEN_ENV: Final = "RUNREGISTRY_TOKEN"  # noqa: S105
DEFAULT_READY_TIMEOUT: Final = 30.0

# Seconds a child gets to exit after SIGTERM before it is killed with SIGKILL,
# when it never started listening. Servers that drain connections on SIGTERM
# have none to drain yet, so a few seconds are plenty.
STOP_GRACE_SECONDS: Final = 5.0

# Shell conventions for a command that cannot be started.
EXIT_NOT_FOUND: Final = 127
EXIT_NOT_EXECUTABLE: Final = 126
EXIT_NOT_READY: Final = 1

# Hosts that bind every interface. They are compared against, never bound here.
_WILDCARD_HOSTS: Final = frozenset({"0.0.0.0", "::", ""})  # noqa: S104
_ENV_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")

# Readiness probes start fast, because most servers bind within milliseconds,
# and back off so that a slow starter is not flooded with connections.
_PROBE_FIRST_INTERVAL: Final = 0.02
_PROBE_MAX_INTERVAL: Final = 0.25
_PROBE_CONNECT_TIMEOUT: Final = 1.0


class ExecUsageError(ValueError):
    """The options given to exec do not describe a run it can start."""


@dataclass(frozen=True)
class ExecSpec:
    """The command that exec starts and the run it publishes, with every default resolved."""

    command: tuple[str, ...]
    # The published address, such as http://127.0.0.1:8765.
    addr: str
    # The host and port that readiness probes connect to.
    probe_host: str
    probe_port: int
    # Replaces {port} in the command and is set as PORT.
    port: int
    session_id: str
    agent: str
    ready_timeout: float
    # Whether a fresh token is generated for the child and published.
    generate_token: bool
    # The environment variable that carries the token to the child.
    token_env: str


def build_spec(
    command: Sequence[str],
    *,
    port: str | None = None,
    host: str | None = None,
    addr: str | None = None,
    advertise_host: str | None = None,
    session_id: str | None = None,
    agent: str | None = None,
    ready_timeout: float = DEFAULT_READY_TIMEOUT,
    token: str | None = None,
    token_env: str | None = None,
) -> ExecSpec:
    """Check exec's options and resolve their defaults; ``port="auto"`` reserves a free port now.

    :raises ExecUsageError: the options are missing, invalid or contradict each other.
    """
    _check_command(command, token)
    _check_token_options(token, token_env)
    if not math.isfinite(ready_timeout) or ready_timeout <= 0:
        raise ExecUsageError(
            f"--ready-timeout {ready_timeout:g} is invalid: give a positive number of seconds"
        )
    if session_id is not None and not session_id.strip():
        raise ExecUsageError("--session-id is empty: give an id, or leave it out for a UUID")

    if port is not None:
        listen = _listen_on_port(port, "127.0.0.1" if host is None else host, addr, advertise_host)
    elif host is not None or advertise_host is not None:
        raise ExecUsageError(
            "--host and --advertise-host need --port: with --addr alone the address is "
            "published as given"
        )
    elif addr is not None:
        listen = _listen_at_addr(addr)
    else:
        raise ExecUsageError(
            "give --port auto, --port N or --addr URL, so that exec knows where COMMAND listens"
        )

    return ExecSpec(
        command=tuple(command),
        addr=listen.addr,
        probe_host=listen.probe_host,
        probe_port=listen.probe_port,
        port=listen.port,
        session_id=session_id if session_id is not None else str(uuid.uuid4()),
        agent=agent if agent is not None else os.path.basename(command[0]),
        ready_timeout=ready_timeout,
        generate_token=token is not None,
        token_env=token_env or DEFAULT_TOKEN_ENV,
    )


class _Listen(NamedTuple):
    addr: str
    probe_host: str
    probe_port: int
    port: int


def _check_command(command: Sequence[str], token: str | None) -> None:
    if not command or not command[0]:
        raise ExecUsageError(
            "COMMAND is missing: give it after --, such as "
            "runregistry exec --port auto -- python -m http.server --bind 127.0.0.1 {port}"
        )
    if token is None and _uses_token_file(command):
        raise ExecUsageError(f"{TOKEN_FILE_PLACEHOLDER} in COMMAND needs --token auto")


def _check_token_options(token: str | None, token_env: str | None) -> None:
    if token not in (None, "auto"):
        # A literal token would sit in exec's own arguments, readable by every local user.
        raise ExecUsageError(f"--token {token!r} is invalid: the only value is auto")
    if token_env is not None and token is None:
        raise ExecUsageError("--token-env needs --token auto")
    if token_env is not None and not _ENV_NAME.match(token_env):
        raise ExecUsageError(
            f"--token-env {token_env!r} is not an environment variable name: "
            "use letters, digits and underscores, not starting with a digit"
        )


def _listen_on_port(
    port_text: str, host: str, addr: str | None, advertise_host: str | None
) -> _Listen:
    """Resolve ``--port`` with ``--host``, ``--advertise-host`` and an optional ``--addr``."""
    if not host:
        raise ExecUsageError("--host is empty: give an address to bind, such as 127.0.0.1")
    port = _free_port(host) if port_text == "auto" else _parse_port(port_text)
    probe_host = _loopback_for(host) if host in _WILDCARD_HOSTS else host

    if addr is not None:
        if advertise_host is not None:
            raise ExecUsageError("--advertise-host cannot be combined with --addr: choose one")
        published = _check_addr(addr.replace(PORT_PLACEHOLDER, str(port)))
        return _Listen(published, probe_host, port, port)

    if advertise_host is None:
        # A server bound to every interface is meant to be reached from other
        # hosts, and a loopback address would be useless to them.
        advertise_host = socket.getfqdn() if host in _WILDCARD_HOSTS else host
    return _Listen(f"http://{_url_host(advertise_host)}:{port}", probe_host, port, port)


def _listen_at_addr(addr: str) -> _Listen:
    published = _check_addr(addr)
    parts = urlsplit(published)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    host = parts.hostname or ""
    probe_host = _loopback_for(host) if host in _WILDCARD_HOSTS else host
    return _Listen(published, probe_host, port, port)


def _check_addr(addr: str) -> str:
    try:
        # Raises on an unclosed "[", and from Python 3.11.4 on a bracketed host
        # that is not an IPv6 address.
        parts = urlsplit(addr)
    except ValueError as exc:
        raise ExecUsageError(
            f"--addr {addr!r} is not a valid URL ({exc}): give one such as http://127.0.0.1:8765"
        ) from None
    try:
        invalid_port = parts.port == 0
    except ValueError:
        invalid_port = True
    if invalid_port:
        raise ExecUsageError(f"--addr {addr!r} has an invalid port")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ExecUsageError(
            f"--addr {addr!r} is not an HTTP address: give one such as http://127.0.0.1:8765"
        )
    return addr


def _parse_port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ExecUsageError(f"--port {text!r} is invalid: give auto or a number from 1 to 65535")
    return int(text)


def _free_port(host: str) -> int:
    """Return a TCP port that is free on *host* now.

    Another process may take it before the child binds it; the child then
    fails to start and exec reports its exit status.
    """
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        with socket.socket(family, kind, proto) as probe:
            probe.bind(address)
            return int(probe.getsockname()[1])
    except OSError as exc:
        raise ExecUsageError(
            f"--host {host!r} cannot be bound on this machine ({exc}): give a local address"
        ) from None


def _loopback_for(host: str) -> str:
    return "::1" if ":" in host else "127.0.0.1"


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def run(registry: BaseRegistry, spec: ExecSpec, *, find_command: str = "runregistry find") -> int:
    """Run *spec*'s command until it exits, publishing its record while it listens.

    Returns exec's exit status: the child's (128 + N when signal N ended it),
    1 when it did not listen within the ready timeout, 127 or 126 when it
    could not be started. *find_command* starts the hint printed on publishing.

    :raises InsecureBackendError: the registry rejects tokens; raised before
        anything starts.
    :raises RegistryError: the record could not be written; the child has
        been stopped.
    """
    if not hasattr(os, "posix_spawnp"):
        # TODO: start commands on Windows, which has no posix_spawn and sends
        # Ctrl-C to every process attached to the console.
        raise RegistryError("runregistry exec needs a POSIX system such as Linux or macOS")
    token = None
    if spec.generate_token:
        registry.accepts_tokens()
        from ._tokens import new_token

        token = new_token()

    token_file = _TokenFile(token) if token and _uses_token_file(spec.command) else None
    try:
        return _supervise(registry, spec, token, token_file, find_command)
    finally:
        if token_file is not None:
            token_file.remove()


def _supervise(
    registry: BaseRegistry,
    spec: ExecSpec,
    token: str | None,
    token_file: _TokenFile | None,
    find_command: str,
) -> int:
    argv = _substitute(spec.command, spec.port, token_file.path if token_file else None)
    env = _child_environment(os.environ, spec, token)

    # A port that already accepts connections would pass the readiness probe
    # at once, and the record would send clients, and their token, to that
    # other process. NOTE: a process that binds the port after this check and
    # before the child still passes the probe.
    if _accepts_connections(spec.probe_host, spec.probe_port):
        _print(
            f"another process already accepts connections on {spec.probe_host}:"
            f"{spec.probe_port}, so nothing was started or published; stop that process, "
            "or choose another port, such as --port auto"
        )
        return EXIT_NOT_READY

    # Signals are taken over before the child exists, so that none arriving
    # during the start can end exec without relaying or cleanup.
    relay = _supervisor.open_relay(_supervisor.relayable_signals())
    try:
        try:
            child = _supervisor.Child(_supervisor.spawn(argv, env, relay.original_mask), relay)
        except OSError as exc:
            return _report_spawn_failure(argv[0], exc)
        record = Record(
            child.pid,
            spec.addr,
            spec.session_id,
            spec.agent,
            started_at_now(),
            host=local_hostname(),
            token=token,
        )
        log.debug("started pid %d for session %s", child.pid, spec.session_id)

        status = _await_listening(child, spec)
        if status is not None:
            return status
        return _serve_published(registry, record, child, find_command)
    finally:
        relay.close()


def _serve_published(
    registry: BaseRegistry, record: Record, child: _supervisor.Child, find_command: str
) -> int:
    """Publish *record*, relay signals until the child exits, then remove the record."""
    cleanup = _publish(registry, record, child)
    try:
        _print(
            f"published session {record.session_id} at {record.addr} (pid {child.pid}); "
            f"find it with: {find_command} {record.session_id}"
        )
        status = child.wait_for_exit()
    finally:
        cleanup()
    log.debug("pid %d exited with status %d; record removed", child.pid, status)
    return status


def _publish(registry: BaseRegistry, record: Record, child: _supervisor.Child) -> Cleanup:
    try:
        return registry.write(record)
    except BaseException:
        # Without a record the server is unreachable by name, so it is not left running.
        child.stop(STOP_GRACE_SECONDS)
        raise


def _await_listening(child: _supervisor.Child, spec: ExecSpec) -> int | None:
    """Return None once the server accepts connections, or exec's exit status if it never will."""
    deadline = time.monotonic() + spec.ready_timeout
    interval = _PROBE_FIRST_INTERVAL
    name = os.path.basename(spec.command[0])
    while True:
        if _accepts_connections(spec.probe_host, spec.probe_port):
            # Another process on the port could accept the probe for a child that already died.
            status = child.poll()
            if status is None:
                return None
            _print(
                f"{name} {_describe(status)}, yet another process accepts connections on "
                f"{spec.probe_host}:{spec.probe_port}; nothing was published"
            )
            return status

        remaining = deadline - time.monotonic()
        if remaining <= 0:
            child.stop(STOP_GRACE_SECONDS)
            _print(
                f"{name} did not accept connections on {spec.probe_host}:{spec.probe_port} "
                f"within {spec.ready_timeout:g} s, so it was stopped and nothing was published; "
                "check that it listens there, or raise --ready-timeout"
            )
            return EXIT_NOT_READY

        status = child.wait(min(interval, remaining))
        if status is not None:
            _print(f"{name} {_describe(status)} before listening on {spec.addr}")
            return status
        interval = min(interval * 1.5, _PROBE_MAX_INTERVAL)


def _accepts_connections(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=_PROBE_CONNECT_TIMEOUT):
            return True
    except OSError:
        return False


def _describe(status: int) -> str:
    if status > 128 and status - 128 < signal.NSIG:
        number = status - 128
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = f"signal {number}"
        return f"was ended by {name} (status {status})"
    return f"exited with status {status}"


def _print(message: str) -> None:
    print(f"runregistry: {message}", file=sys.stderr, flush=True)


def _uses_token_file(command: Iterable[str]) -> bool:
    return any(TOKEN_FILE_PLACEHOLDER in argument for argument in command)


def _substitute(command: Sequence[str], port: int, token_file: str | None) -> list[str]:
    argv = [argument.replace(PORT_PLACEHOLDER, str(port)) for argument in command]
    if token_file is not None:
        argv = [argument.replace(TOKEN_FILE_PLACEHOLDER, token_file) for argument in argv]
    return argv


def _child_environment(
    base: Mapping[str, str], spec: ExecSpec, token: str | None
) -> dict[str, str]:
    env = dict(base)
    env["PORT"] = str(spec.port)
    if token is not None:
        env[spec.token_env] = token
    return env


def _report_spawn_failure(program: str, exc: OSError) -> int:
    status = EXIT_NOT_FOUND if isinstance(exc, FileNotFoundError) else EXIT_NOT_EXECUTABLE
    _print(f"cannot start {program}: {exc.strerror or exc}; check the command and PATH")
    return status


class _TokenFile:
    """A 0600 file holding the token, in a fresh 0700 directory that :meth:`remove` deletes."""

    def __init__(self, token: str) -> None:
        import tempfile

        # NOTE: if exec is killed with SIGKILL, the file stays until the
        # temporary directory is cleaned. Its 0700 directory keeps it private.
        runtime = os.environ.get("XDG_RUNTIME_DIR")
        parent = runtime if runtime and os.path.isdir(runtime) else None
        self.directory = tempfile.mkdtemp(prefix="runregistry-token-", dir=parent)
        self.path = os.path.join(self.directory, "token")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        fd = os.open(self.path, flags, 0o600)
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, token.encode())
        finally:
            os.close(fd)

    def remove(self) -> None:
        _remove_quietly(os.unlink, self.path)
        _remove_quietly(os.rmdir, self.directory)


def _remove_quietly(remove: Callable[[str], None], path: str) -> None:
    try:
        remove(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("cannot remove the token file %s: %s", path, exc)
