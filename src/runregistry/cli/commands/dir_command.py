"""``runregistry dir``: print the registry directory in use."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .. import SubParsers

_DESCRIPTION = """\
Print the registry that the global options select: the directory of the file
backend, which need not exist yet, or the endpoints and prefix of etcd.
"""


def add_parser(subparsers: SubParsers) -> None:
    parser = subparsers.add_parser(
        "dir",
        help="print the registry directory in use",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from .._app import EXIT_OK, open_registry

    print(open_registry(args).location)
    return EXIT_OK
