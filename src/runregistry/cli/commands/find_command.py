"""``runregistry find``: resolve a target to one live run and print its record."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from .._output import FIELDS

if TYPE_CHECKING:
    from .. import SubParsers

_DESCRIPTION = """\
Print the record of the one live run that TARGET names: a pid, HOST:PID, an
http:// or https:// address, or all or part of a session id. Without TARGET,
the most recently started run. A target that matches several runs fails with
exit status 3 and lists them on stderr.

--field prints one value and nothing else, for scripts:
  curl "$(runregistry find 6f1d --field addr)/health"
"""


def add_parser(subparsers: SubParsers) -> None:
    parser = subparsers.add_parser(
        "find",
        help="print the live run that TARGET names",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "target",
        nargs="?",
        default="",
        metavar="TARGET",
        help="a pid, HOST:PID, an http(s):// address, or part of a session id (default: latest)",
    )
    form = parser.add_mutually_exclusive_group()
    form.add_argument("--json", action="store_true", help="print the record as JSON")
    form.add_argument(
        "--field",
        choices=FIELDS,
        metavar="NAME",
        help=f"print only the raw value of field NAME, empty when the record has none "
        f"({', '.join(FIELDS)})",
    )
    parser.add_argument(
        "--show-token", action="store_true", help="include the control-plane token in the output"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from .._app import EXIT_OK, open_registry
    from .._output import field_value, print_json, print_record, record_json

    record = open_registry(args).find(args.target)
    if args.field:
        print(field_value(record, args.field))
    elif args.json:
        print_json(record_json(record, show_token=args.show_token))
    else:
        print_record(record, show_token=args.show_token)
    return EXIT_OK
