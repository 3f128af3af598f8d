"""``runregistry list``: the live runs, oldest first."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .. import SubParsers


def add_parser(subparsers: SubParsers) -> None:
    parser = subparsers.add_parser(
        "list", aliases=["ls"], help="list the live runs, oldest first", description=__doc__
    )
    parser.add_argument("--json", action="store_true", help="print a JSON array of records")
    parser.add_argument("-q", "--quiet", action="store_true", help="print pids only, one per line")
    parser.add_argument(
        "--all", action="store_true", help="also list runs of other hosts, with their state"
    )
    parser.add_argument(
        "--show-token", action="store_true", help="include control-plane tokens in the output"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from .._app import open_registry
    from .._output import age, print_json, record_json

    registry = open_registry(args)
    wanted = ("live", "unknown") if args.all else ("live",)
    entries = [
        entry
        for entry in registry.entries()
        if entry.record is not None
        and entry.liveness is not None
        and entry.liveness.state in wanted
    ]
    entries.sort(key=lambda entry: (entry.record.started_at.timestamp(), entry.record.pid))  # type: ignore[union-attr]

    if args.json:
        print_json([record_json(e.record, e.liveness, show_token=args.show_token) for e in entries])  # type: ignore[arg-type]
        return 0
    for entry in entries:
        record = entry.record
        assert record is not None
        if args.quiet:
            print(record.pid)
        else:
            print(
                f"{record.pid}\t{record.agent}\t{record.session_id}\t{record.addr}\t{age(record.started_at)}"
            )
    return 0
