"""Entry point of the ``runregistry`` command: global options, dispatch, exit statuses."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .. import __version__
from .._errors import (
    AmbiguousRunError,
    NoRunError,
    RegistryError,
    StillRunningError,
    StopRefusedError,
    WaitTimeoutError,
)
from . import commands

if TYPE_CHECKING:
    from .._base import BaseRegistry

EXIT_OK = 0
EXIT_NO_RUN = 1
EXIT_USAGE = 2
EXIT_AMBIGUOUS = 3
EXIT_REGISTRY = 4
EXIT_STILL_RUNNING = 5
EXIT_REFUSED = 6
EXIT_INTERRUPTED = 130

_EPILOG = """\
exit status:
  0  success
  1  no run found, a wait timed out, or a command found problems (doctor, call)
  2  usage error
  3  ambiguous target: several runs match (stderr lists them)
  4  unsafe registry directory, I/O or connection error
  5  stop: the run is still running after the timeout
  6  stop or call refused: acting would not be safe
130  interrupted (Ctrl-C)

registry: --dir, --app, --docker-agent or --etcd; without them $RUNREGISTRY_ETCD,
then $RUNREGISTRY_DIR, then the default directory (see: runregistry dir).
"""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with *argv* (default: ``sys.argv[1:]``) and return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "run", None) is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    if args.verbose:
        _enable_debug_logging()

    try:
        return int(args.run(args))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader of our output went away (`runregistry list | head -1`).
        _silence_stdout()
        return EXIT_OK
    except UsageError as exc:
        parser.print_usage(sys.stderr)
        return _fail(args, f"runregistry: error: {exc}", EXIT_USAGE)
    except RegistryError as exc:
        return _fail(args, f"runregistry: {exc}", exit_status(exc))


class UsageError(Exception):
    """A bad combination of arguments that argparse itself cannot detect."""


def exit_status(exc: RegistryError) -> int:
    """Map a library error to the command line's exit status."""
    if isinstance(exc, (NoRunError, WaitTimeoutError)):
        return EXIT_NO_RUN
    if isinstance(exc, AmbiguousRunError):
        return EXIT_AMBIGUOUS
    if isinstance(exc, StillRunningError):
        return EXIT_STILL_RUNNING
    if isinstance(exc, StopRefusedError):
        return EXIT_REFUSED
    return EXIT_REGISTRY


def build_parser() -> argparse.ArgumentParser:
    """Build the parser for the global options and every command."""
    parser = argparse.ArgumentParser(
        prog="runregistry",
        description="Find the live local processes that serve an HTTP control plane.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"runregistry {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages to stderr")
    where = parser.add_argument_group("registry selection")
    where.add_argument("--dir", metavar="PATH", help="use the registry in directory PATH")
    where.add_argument("--app", metavar="NAME", help="use the registry of app NAME")
    where.add_argument(
        "--docker-agent", action="store_true", help="use docker-agent's own registry"
    )
    where.add_argument(
        "--etcd",
        metavar="URL[,URL...]",
        help="use the etcd backend at these endpoints ($RUNREGISTRY_ETCD)",
    )

    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for module in commands.ALL:
        module.add_parser(subparsers)
    return parser


def open_registry(args: argparse.Namespace) -> BaseRegistry:
    """Return the registry that the global options select."""
    from ..backends.file import Registry, default_registry

    chosen = [
        flag
        for flag, value in (("--dir", args.dir), ("--docker-agent", args.docker_agent))
        if value
    ]
    if args.etcd and chosen:
        raise UsageError(f"--etcd cannot be combined with {chosen[0]}: choose one registry")
    if args.dir and args.docker_agent:
        raise UsageError("--dir cannot be combined with --docker-agent: choose one registry")
    if args.app is not None and (args.dir or args.docker_agent):
        raise UsageError(f"--app cannot be combined with {chosen[0]}: choose one registry")

    etcd = args.etcd or (None if chosen else os.environ.get("RUNREGISTRY_ETCD"))
    if etcd:
        from ..backends.etcd import EtcdRegistry

        return EtcdRegistry(etcd, app=args.app or "runregistry")
    if args.dir:
        return Registry(args.dir, origin="the --dir option")
    if args.docker_agent:
        registry = Registry.for_docker_agent()
        registry.origin = "the --docker-agent option"
        return registry
    if args.app is not None:
        registry = Registry.for_app(args.app)
        registry.origin = "the --app option"
        return registry
    return default_registry()


def _fail(args: argparse.Namespace, message: str, status: int) -> int:
    if getattr(args, "verbose", False):
        import traceback

        traceback.print_exc()
    print(message, file=sys.stderr)
    return status


def _enable_debug_logging() -> None:
    import logging

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    logger = logging.getLogger("runregistry")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)


def _silence_stdout() -> None:
    # Python flushes stdout at exit and would report the broken pipe again.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
