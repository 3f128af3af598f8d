"""``runregistry wait``: block until TARGET names a live run, then print it like ``find``."""

from __future__ import annotations

import argparse
import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .. import SubParsers


def add_parser(subparsers: SubParsers) -> None:
    from .._output import FIELDS

    parser = subparsers.add_parser(
        "wait",
        help="wait until TARGET names a live run, then print it",
        description=(
            "Block until TARGET names a live run, then print it like find. Exit status 1 "
            "when --timeout expires first, 130 when interrupted."
        ),
    )
    parser.add_argument(
        "target",
        nargs="?",
        default="",
        metavar="TARGET",
        help="a pid, HOST:PID, an http(s):// address, or part of a session id (default: any run)",
    )
    parser.add_argument(
        "--timeout",
        type=seconds,
        metavar="SECONDS",
        help="give up after SECONDS with exit status 1; 0 checks once (default: wait forever)",
    )
    parser.add_argument(
        "--new",
        action="store_true",
        help="accept only runs started after wait itself started",
    )
    parser.add_argument("--json", action="store_true", help="print the record as JSON")
    parser.add_argument("--field", choices=FIELDS, help="print only this field's raw value")
    parser.add_argument(
        "--show-token", action="store_true", help="include the control-plane token in the output"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from .._app import open_registry
    from .._output import field_value, print_json, print_record, record_json

    record = open_registry(args).wait(args.target, timeout=args.timeout, new=args.new)
    if args.field:
        print(field_value(record, args.field))
    elif args.json:
        print_json(record_json(record, show_token=args.show_token))
    else:
        print_record(record, show_token=args.show_token)
    return 0


def seconds(text: str) -> float:
    """Parse a duration in seconds for argparse: a finite number, 0 or more."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(
            f"invalid duration {text!r}: give a number of seconds, 0 or more, such as 2.5"
        )
    return value
