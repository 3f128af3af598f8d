"""``runregistry completion``: print a shell completion script; ``__complete``: its candidates."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .. import SubParsers

SHELLS = ("bash", "zsh", "fish")

_DESCRIPTION = """\
Print a completion script for SHELL. It completes commands, options and their
values, and a TARGET with the pids and session ids of the live runs in the
registry that the global options on the command line select.

Enable it:
  bash  add to ~/.bashrc:  source <(runregistry completion bash)
  zsh   add to ~/.zshrc, after compinit:  source <(runregistry completion zsh)
        or save it as _runregistry in a folder of $fpath
  fish  runregistry completion fish > ~/.config/fish/completions/runregistry.fish
"""


def add_parser(subparsers: SubParsers) -> None:
    parser = subparsers.add_parser(
        "completion",
        help="print a shell completion script",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("shell", choices=SHELLS, metavar="SHELL", help=", ".join(SHELLS))
    parser.set_defaults(run=run)

    # Called by the completion scripts; left out of --help on purpose.
    candidates = subparsers.add_parser(
        "__complete", description="Print completion candidates, one per line, for scripts."
    )
    candidates.add_argument("kind", choices=["targets"], help="targets: pids and session ids")
    candidates.set_defaults(run=run_candidates)


def run(args: argparse.Namespace) -> int:
    import sys

    from .._app import EXIT_OK, build_parser
    from .._completion import completion_script

    sys.stdout.write(completion_script(args.shell, build_parser()))
    return EXIT_OK


def run_candidates(args: argparse.Namespace) -> int:
    from .._app import EXIT_OK, open_registry
    from .._completion import target_candidates

    for value, description in target_candidates(open_registry(args).list()):
        print(f"{value}\t{description}")
    return EXIT_OK
