"""Entry point of the ``runregistry`` command: global options, dispatch, exit statuses."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Final, NoReturn

from .. import __version__
from .._errors import (
    AmbiguousRunError,
    CallRefusedError,
    NoRunError,
    RegistryError,
    StillRunningError,
    StopRefusedError,
    WaitTimeoutError,
)
from .._log import get_logger
from . import commands
from ._output import printable, terminal_columns

if TYPE_CHECKING:
    from types import ModuleType

    from .._base import BaseRegistry

log = get_logger(__name__)

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

# The namespace attribute that holds the command's name. A command's own
# argument may be named "command" (exec's is), so this one is named otherwise.
COMMAND_DEST: Final = "command_name"

# Global options that take a value, so the word after one is never the command.
_VALUE_OPTIONS: Final = frozenset({"--dir", "--app", "--etcd"})


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with *argv* (default: ``sys.argv[1:]``) and return the exit status.

    An expected failure prints one line on stderr, after its traceback with
    ``-v``. Ctrl-C returns 130, and a reader that closes the pipe early 0, both
    without a traceback.
    """
    arguments = list(sys.argv[1:] if argv is None else argv)
    parser: argparse.ArgumentParser | None = None
    args = argparse.Namespace()
    verbose = False
    if sys.stdout is None:
        # Started with descriptor 1 closed (`runregistry ls >&-`): Python sets
        # sys.stdout to None, and every result would be lost without a word.
        print(
            "runregistry: standard output is closed; send it to a file or /dev/null",
            file=sys.stderr,
        )
        return EXIT_REGISTRY
    _escape_unencodable_output()
    try:
        parser, args = parse_arguments(arguments)
        verbose = bool(args.verbose)
        with _debug_logging(verbose):
            status = _dispatch(parser, args)
        # Flushed here, so that a reader gone before the end is handled below.
        sys.stdout.flush()
    except SystemExit as exc:
        # argparse exits after --help, --version and usage errors.
        return _exit_code(exc)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader of our output went away (`runregistry list | head -1`).
        _silence_stdout()
        return EXIT_OK
    except UsageError as exc:
        if parser is not None:
            _command_parser(parser, args).print_usage(sys.stderr)
        return _fail(verbose, f"runregistry: error: {exc}", EXIT_USAGE)
    except RegistryError as exc:
        return _fail(verbose, f"runregistry: {exc}", exit_status(exc))
    except OSError as exc:
        return _fail(verbose, _os_error_message(exc), EXIT_REGISTRY)
    return status


def _os_error_message(exc: OSError) -> str:
    reason = exc.strerror or str(exc)
    if exc.filename:
        return f"runregistry: {reason}: {exc.filename}; check that path and its permissions"
    # No file named: in practice writing the results failed (a full disk, a
    # closed pipe on another platform).
    return (
        f"runregistry: cannot write the output: {reason}; check where standard output goes, "
        "or rerun with -v for the traceback"
    )


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
    if isinstance(exc, (StopRefusedError, CallRefusedError)):
        return EXIT_REFUSED
    return EXIT_REGISTRY


def parse_arguments(
    arguments: Sequence[str],
) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    """Parse *arguments*, building only the parser of the command they name when possible.

    Building every command's parser takes several milliseconds, a large share
    of the start-up budget of ``runregistry list``.

    :raises SystemExit: after ``--help`` or ``--version``, or after argparse
        reported a usage error.
    """
    module = commands.NAMES.get(command_word(arguments) or "")
    if module is not None:
        parser = _build_parser(_OneCommandParser, [commands.load(module)])
        try:
            return parser, parser.parse_args(arguments)
        except _ParseError:
            # Reported by the full parser below, whose messages list every command.
            pass
    parser = build_parser()
    return parser, parser.parse_args(arguments)


def command_word(arguments: Sequence[str]) -> str | None:
    """Return the word of *arguments* that names the command, or None when there is none.

    Only global options come before the command, so it is the first word that
    is neither an option nor the value of one. A word this gets wrong costs
    time, not correctness: the full parser parses again when the guess fails.
    """
    words = iter(arguments)
    for word in words:
        if word == "--":
            return next(words, None)
        if word == "-" or not word.startswith("-"):
            return word
        if word in _VALUE_OPTIONS:
            next(words, None)
    return None


def build_parser() -> argparse.ArgumentParser:
    """Build the parser for the global options and every command."""
    return _build_parser(_Parser, commands.load_all())


def open_registry(args: argparse.Namespace) -> BaseRegistry:
    """Return the registry that the global options select.

    :raises UsageError: the options contradict each other or have invalid values.
    """
    registry = _selected_registry(args)
    log.debug("registry %s, chosen by %s", registry.location, getattr(registry, "origin", "--etcd"))
    return registry


class _ParseError(Exception):
    """A usage error found by a parser built for one command only."""


class _Parser(argparse.ArgumentParser):
    """An argument parser whose help formatter is sized without importing ``shutil``."""

    def _get_formatter(self) -> argparse.HelpFormatter:
        # argparse builds a formatter for every add_argument() call, and its
        # formatters import shutil (several milliseconds) to measure the
        # terminal unless they are given a width.
        formatter_class = self.formatter_class
        if isinstance(formatter_class, type) and issubclass(
            formatter_class, argparse.HelpFormatter
        ):
            return formatter_class(prog=self.prog, width=terminal_columns() - 2)
        return super()._get_formatter()


class _OneCommandParser(_Parser):
    """A parser for one command, which leaves reporting usage errors to the full parser."""

    def error(self, message: str) -> NoReturn:
        raise _ParseError(message)


def _build_parser(
    parser_class: type[_Parser], modules: Sequence[ModuleType]
) -> argparse.ArgumentParser:
    parser = parser_class(
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

    # Subparsers are built by type(parser), so they share its error handling.
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND", dest=COMMAND_DEST)
    for module in modules:
        module.add_parser(subparsers)
    return parser


def _selected_registry(args: argparse.Namespace) -> BaseRegistry:
    from ..backends.file import Registry, default_registry

    chosen = [
        flag
        for flag, given in (("--dir", args.dir is not None), ("--docker-agent", args.docker_agent))
        if given
    ]
    if args.etcd and chosen:
        raise UsageError(f"--etcd cannot be combined with {chosen[0]}: choose one registry")
    if args.dir is not None and args.docker_agent:
        raise UsageError("--dir cannot be combined with --docker-agent: choose one registry")
    if args.app is not None and chosen:
        raise UsageError(f"--app cannot be combined with {chosen[0]}: choose one registry")
    _check_option_values(args)

    etcd = args.etcd or (None if chosen else os.environ.get("RUNREGISTRY_ETCD"))
    if etcd:
        from ..backends.etcd import EtcdRegistry

        etcd_registry = EtcdRegistry(etcd, app=args.app or "runregistry")
        etcd_registry.origin = (
            "the --etcd option" if args.etcd else "the RUNREGISTRY_ETCD environment variable"
        )
        return etcd_registry
    if args.dir is not None:
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


def _check_option_values(args: argparse.Namespace) -> None:
    if args.dir is not None and not args.dir.strip():
        raise UsageError("--dir is empty: give the path of a registry directory")
    if args.etcd is not None and not args.etcd.strip(" ,"):
        raise UsageError("--etcd is empty: give etcd URLs, such as http://127.0.0.1:2379")
    if args.app is not None:
        from .._paths import check_app_name

        try:
            check_app_name(args.app)
        except RegistryError as exc:
            raise UsageError(f"--app: {exc}") from None


def _dispatch(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if getattr(args, "run", None) is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    return int(args.run(args))


def _command_parser(
    parser: argparse.ArgumentParser, args: argparse.Namespace
) -> argparse.ArgumentParser:
    """Return the parser of the command in *args*, or *parser* when there is none."""
    name = getattr(args, COMMAND_DEST, None)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and isinstance(name, str):
            command: argparse.ArgumentParser = action.choices.get(name, parser)
            return command
    return parser


def _exit_code(exc: SystemExit) -> int:
    if exc.code is None or isinstance(exc.code, int):
        return exc.code or EXIT_OK
    # sys.exit("message") prints the message and exits 1, as Python itself does.
    print(exc.code, file=sys.stderr)
    return 1


def _fail(verbose: bool, message: str, status: int) -> int:
    if verbose:
        import traceback

        traceback.print_exc()
    # Messages quote session ids, agents and addresses from record files, so
    # control characters in them are escaped before they reach the terminal.
    print(printable(message), file=sys.stderr)
    return status


@contextmanager
def _debug_logging(enabled: bool) -> Iterator[None]:
    """Send the package's log records, debug level and up, to stderr while the block runs."""
    if not enabled:
        yield
        return
    import logging

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    logger = logging.getLogger("runregistry")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _escape_unencodable_output() -> None:
    # Fields of records written by other programs may hold any character, and
    # a stdout in another encoding (a Latin-1 locale, PYTHONIOENCODING=ascii)
    # would raise UnicodeEncodeError on them. stderr escapes them already.
    reconfigure = getattr(sys.stdout, "reconfigure", None)
    if reconfigure is not None:
        reconfigure(errors="backslashreplace")


def _silence_stdout() -> None:
    # Python flushes stdout at exit and would report the broken pipe again.
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, ValueError, OSError):
        # A stdout without a descriptor (a test's capture) has no pipe to break.
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)
