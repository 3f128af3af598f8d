"""``runregistry prune``: remove stale records and leftover temporary files."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..._base import Entry
    from .. import SubParsers

_DESCRIPTION = """\
Remove the records of runs that ended and the temporary files that crashed
writers left behind, and print one line per file removed, with the reason.
Records written on another host and invalid files are never removed; each
invalid file is listed as skipped, with what is wrong with it.

Readers remove stale records on their own as they come across them, so this is
needed only to tidy up a directory that nothing reads.
"""


def add_parser(subparsers: SubParsers) -> None:
    parser = subparsers.add_parser(
        "prune",
        help="remove stale records and leftover temporary files",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print what would be removed, and remove nothing",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from .._app import EXIT_OK, UsageError, open_registry
    from .._output import printable

    registry = open_registry(args)
    prune = getattr(registry, "prune", None)
    if prune is None:
        raise UsageError(
            f"prune does not apply to {registry.location}: that backend expires "
            "the records of ended runs on its own"
        )

    # Pruned first: a real prune tightens a directory's loose permissions,
    # which a read without pruning would reject.
    removed: list[Entry] = prune(dry_run=args.dry_run)
    invalid = [entry for entry in registry.entries(prune=False) if entry.kind == "invalid"]

    verb = "would remove" if args.dry_run else "removed"
    for entry in sorted(removed, key=lambda entry: entry.path):
        print(f"{verb} {printable(entry.path)}: {printable(removal_reason(entry))}")
    for entry in sorted(invalid, key=lambda entry: entry.path):
        print(f"skipped {printable(entry.path)}: {printable(entry.problem)}")
    if invalid:
        print(
            f"runregistry: left {len(invalid)} invalid file(s) in place; "
            "remove them by hand once no program needs them",
            file=sys.stderr,
        )
    return EXIT_OK


def removal_reason(entry: Entry) -> str:
    """Say why *entry* is removable: a stale record's judgement or a leftover's problem."""
    if entry.liveness is None:
        return entry.problem
    return f"stale record ({entry.liveness.reason}): {entry.liveness.detail}"
