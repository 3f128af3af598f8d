"""``runregistry stop``: stop a live run by signalling its verified process."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from .wait_command import seconds

if TYPE_CHECKING:
    from .. import SubParsers

_DESCRIPTION = """\
Stop the live run that TARGET names: verify that its process is still the one
that published the record (by the same rules as list), send SIGTERM, and wait
for it to exit. On Linux the process is pinned with a pidfd before the check,
so a pid reused meanwhile is never signalled.

exit status: 0 the run is gone; 1 nothing matches TARGET (0 with --missing-ok);
3 TARGET is ambiguous; 5 still running after the timeout; 6 refused (TARGET
matches only a stale or unknown record, or names pid 1, this process, another
user's process or a run on another host).
"""


def add_parser(subparsers: SubParsers) -> None:
    parser = subparsers.add_parser(
        "stop",
        help="stop a live run: SIGTERM, then SIGKILL with --force",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "target",
        metavar="TARGET",
        help="a pid, HOST:PID, an http(s):// address, or part of a session id",
    )
    parser.add_argument(
        "--timeout",
        type=seconds,
        default=10.0,
        metavar="SECONDS",
        help="how long to wait for the exit after SIGTERM (default: 10)",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="send SIGKILL when the process still runs after the timeout",
    )
    parser.add_argument(
        "--missing-ok",
        action="store_true",
        help="exit 0 when nothing matches TARGET",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import sys

    from ..._errors import NoRunError
    from .._app import open_registry
    from .._output import printable

    try:
        record = open_registry(args).stop(args.target, timeout=args.timeout, force=args.force)
    except NoRunError as exc:
        if not args.missing_ok:
            raise
        print(f"runregistry: nothing to stop: {exc}", file=sys.stderr)
        return 0
    print(f"stopped {printable(str(record))}")
    return 0
