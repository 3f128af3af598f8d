"""``runregistry list``: the live runs, oldest first, as a table, as JSON or as pids."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..._base import BaseRegistry
    from ..._liveness import Liveness
    from ..._record import Record
    from .. import SubParsers
    from .._output import Column

_DESCRIPTION = """\
List the live runs of the registry, oldest first: a table with PID, AGENT,
SESSION, ADDRESS and STARTED columns. On a terminal the table fits its width,
the session id and the address cut in the middle; piped, every value is whole.
An empty registry prints nothing (with --json: []). Set NO_COLOR to turn off
the bold header on a terminal.
"""


def add_parser(subparsers: SubParsers) -> None:
    parser = subparsers.add_parser(
        "list",
        aliases=["ls"],
        help="list the live runs, oldest first",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    form = parser.add_mutually_exclusive_group()
    form.add_argument(
        "--json",
        action="store_true",
        help="print a JSON array of the records as stored, each with its state and reason",
    )
    form.add_argument("-q", "--quiet", action="store_true", help="print pids only, one per line")
    parser.add_argument(
        "--all",
        action="store_true",
        help="also list runs whose state is unknown here (written on another host), "
        "with STATE and REASON columns",
    )
    parser.add_argument(
        "--show-token",
        action="store_true",
        help="include control-plane tokens: a TOKEN column, or a token key in JSON",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from .._app import EXIT_OK, open_registry

    runs = listed_runs(open_registry(args), include_unknown=args.all)
    if args.json:
        from .._output import print_json, record_json

        print_json([record_json(r, liveness, show_token=args.show_token) for r, liveness in runs])
    elif args.quiet:
        for record, _ in runs:
            print(record.pid)
    elif runs:
        _print_table(runs, all_states=args.all, show_token=args.show_token)
    return EXIT_OK


def listed_runs(
    registry: BaseRegistry, *, include_unknown: bool = False
) -> list[tuple[Record, Liveness]]:
    """Return the live records of *registry* with their liveness, oldest first.

    With *include_unknown*, records whose state cannot be judged here are included.
    Invalid files are skipped; ``-v`` logs each one.
    """
    from ..._liveness import LIVE, UNKNOWN
    from ..._lookup import sort_key

    states = (LIVE, UNKNOWN) if include_unknown else (LIVE,)
    runs = [
        (entry.record, entry.liveness)
        for entry in registry.entries()
        if entry.record is not None
        and entry.liveness is not None
        and entry.liveness.state in states
    ]
    runs.sort(key=lambda run: sort_key(run[0]))
    return runs


def _print_table(
    runs: list[tuple[Record, Liveness]], *, all_states: bool, show_token: bool
) -> None:
    import sys

    from .._output import ellipsis_for, render_table, table_width, use_colour

    lines = render_table(
        _columns(runs, all_states=all_states, show_token=show_token),
        width=table_width(sys.stdout),
        colour=use_colour(sys.stdout),
        ellipsis=ellipsis_for(sys.stdout),
    )
    sys.stdout.write("\n".join(lines) + "\n")


def _columns(
    runs: list[tuple[Record, Liveness]], *, all_states: bool, show_token: bool
) -> list[Column]:
    from datetime import datetime, timezone

    from .._output import Column, printable, record_age

    now = datetime.now(timezone.utc)
    records = [record for record, _ in runs]
    columns = [
        Column("PID", [str(r.pid) for r in records]),
        Column("AGENT", [printable(r.agent) or "-" for r in records]),
        Column("SESSION", [printable(r.session_id) for r in records], "middle"),
        Column("ADDRESS", [printable(r.addr) for r in records], "middle"),
        Column("STARTED", [record_age(r, now) for r in records]),
    ]
    if show_token:
        columns.append(Column("TOKEN", [printable(r.token or "-") for r in records]))
    if all_states:
        columns.append(Column("STATE", [liveness.state for _, liveness in runs]))
        columns.append(
            Column("REASON", [printable(liveness.detail) for _, liveness in runs], "end")
        )
    return columns
