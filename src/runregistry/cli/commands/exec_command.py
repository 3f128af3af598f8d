"""``runregistry exec``: run a server and publish its record while it listens."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .. import SubParsers

_EPILOG = """\
COMMAND's arguments may contain {port}, replaced by the port (also set as
$PORT), and with --token auto, {token_file}, replaced by the path of a 0600
file holding the token; exec removes that file when COMMAND exits. The token
itself is passed only in the environment, never in arguments.

SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 sent to exec are passed
to COMMAND; the terminal's Ctrl-C reaches COMMAND once, directly.

exit status: COMMAND's own (128 + N if signal N ended it); 1 if it did not
listen within --ready-timeout, or another process already listens on its
port; 2 on usage errors; 4 if the registry cannot be written or rejects
tokens; 126 or 127 if COMMAND cannot be started.

example:
  runregistry exec --port auto -- python -m http.server --bind 127.0.0.1 {port}
"""


def add_parser(subparsers: SubParsers) -> None:
    parser = subparsers.add_parser(
        "exec",
        help="run COMMAND and publish it as a run while it listens",
        description="Run COMMAND, publish its record once it accepts connections, "
        "and remove the record when it exits.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_address_options(parser.add_argument_group("where COMMAND listens"))
    _add_record_options(parser.add_argument_group("the published record"))
    parser.add_argument(
        "command",
        nargs=argparse.REMAINDER,
        metavar="-- COMMAND [ARG...]",
        help="the server to run",
    )
    parser.set_defaults(run=run)


def _add_address_options(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--port",
        metavar="auto|N",
        help="the TCP port COMMAND listens on; auto picks a free one (replaces {port}, sets PORT)",
    )
    group.add_argument(
        "--host",
        help="the address COMMAND binds, used to pick and probe the port (default: 127.0.0.1)",
    )
    group.add_argument(
        "--advertise-host",
        metavar="HOST",
        help="the host name to publish in the address "
        "(default: --host, or this machine's fully qualified name when --host is 0.0.0.0 or ::)",
    )
    group.add_argument(
        "--addr",
        metavar="URL",
        help="publish this address instead of http://HOST:PORT ({port} is replaced)",
    )
    group.add_argument(
        "--ready-timeout",
        metavar="SECONDS",
        type=float,
        default=30.0,
        help="how long to wait for COMMAND to accept connections (default: 30)",
    )


def _add_record_options(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--session-id", metavar="ID", help="the session id to publish (default: a new UUID4)"
    )
    group.add_argument(
        "--agent", metavar="NAME", help="the agent name to publish (default: COMMAND's base name)"
    )
    group.add_argument(
        "--token",
        choices=["auto"],
        help="generate a control-plane token, pass it to COMMAND and publish it in the record",
    )
    group.add_argument(
        "--token-env",
        metavar="NAME",
        help="the environment variable that carries the token (default: RUNREGISTRY_TOKEN)",
    )


def run(args: argparse.Namespace) -> int:
    from ... import _exec
    from .._app import UsageError, open_registry

    command = list(args.command)
    if command[:1] == ["--"]:
        del command[0]
    try:
        spec = _exec.build_spec(
            command,
            port=args.port,
            host=args.host,
            addr=args.addr,
            advertise_host=args.advertise_host,
            session_id=args.session_id,
            agent=args.agent,
            ready_timeout=args.ready_timeout,
            token=args.token,
            token_env=args.token_env,
        )
    except _exec.ExecUsageError as exc:
        raise UsageError(str(exc)) from None

    registry = open_registry(args)
    return _exec.run(registry, spec, find_command=_find_command(args))


def _find_command(args: argparse.Namespace) -> str:
    """Return the ``runregistry find`` command line that selects the same registry."""
    import shlex

    words = ["runregistry"]
    for flag, value in (("--dir", args.dir), ("--app", args.app), ("--etcd", args.etcd)):
        if value:
            words += [flag, value]
    if args.docker_agent:
        words.append("--docker-agent")
    words.append("find")
    return shlex.join(words)
