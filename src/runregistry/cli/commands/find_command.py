"""``runregistry find``: resolve a target to one live run and print it."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .. import SubParsers

FIELDS = ("addr", "pid", "session_id", "agent", "started_at", "host", "token")


def add_parser(subparsers: SubParsers) -> None:
    parser = subparsers.add_parser(
        "find", help="print the live run that TARGET names", description=__doc__
    )
    parser.add_argument(
        "target",
        nargs="?",
        default="",
        metavar="TARGET",
        help="a pid, HOST:PID, an http(s):// address, or part of a session id (default: latest)",
    )
    parser.add_argument("--json", action="store_true", help="print the record as JSON")
    parser.add_argument("--field", choices=FIELDS, help="print only this field's raw value")
    parser.add_argument(
        "--show-token", action="store_true", help="include the control-plane token in the output"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from .._app import open_registry
    from .._output import print_json, record_json

    record = open_registry(args).find(args.target)
    if args.field:
        value = record.to_dict(include_token=True).get(args.field, "")
        print(value if value is not None else "")
    elif args.json:
        print_json(record_json(record, show_token=args.show_token))
    else:
        for key, value in record_json(record, show_token=args.show_token).items():
            print(f"{key}: {value}")
    return 0
