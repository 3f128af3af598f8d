"""``runregistry call``: send one HTTP request to a run's control plane, with its token."""

from __future__ import annotations

import argparse
import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..._calling import CallResult
    from .. import SubParsers

_DESCRIPTION = """\
Send one HTTP request to the control plane of the run that TARGET names, and
print the response body. The request goes to the run's address with PATH
appended, with the run's token as a bearer header when its record has one.

It exits 0 for a 2xx status. For any other status, it prints the status line
and the body on stderr and exits 1. A redirect is never followed: its Location
is printed instead. A failed connection or a timeout exits 4.

Guards: PATH must start with a single '/'. Proxy variables are ignored. A
token goes over plain http only to a loopback address (localhost, 127.0.0.0/8,
::1). Only http:// and https:// addresses are called. A refused call exits 6.

An Authorization header given with -H replaces the run's token, under the same
plain-http rule. The body of -d is sent byte for byte, and no Content-Type is
added: give one with -H when the server needs it.
"""

# An error body goes to stderr, usually a terminal, so only its first 4 KiB are printed.
_MAX_ERROR_BODY = 4096


def add_parser(subparsers: SubParsers) -> None:
    parser = subparsers.add_parser(
        "call",
        help="send one HTTP request to a run's control plane",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "target",
        metavar="TARGET",
        help="a pid, HOST:PID, an http(s):// address, or part of a session id ('' for the latest)",
    )
    parser.add_argument("path", metavar="PATH", help="the request path, such as /health")
    parser.add_argument(
        "-X",
        "--request",
        dest="method",
        metavar="METHOD",
        help="HTTP method (default: GET, or POST with -d)",
    )
    parser.add_argument(
        "-d",
        "--data",
        metavar="DATA",
        help="request body: DATA as UTF-8, @FILE for a file's bytes, @- for standard input",
    )
    parser.add_argument(
        "-H",
        "--header",
        dest="headers",
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="add a request header; repeat for more",
    )
    parser.add_argument(
        "--timeout",
        type=_seconds,
        default=10.0,
        metavar="SECONDS",
        help="limit for the whole exchange, in seconds (default: 10)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..._calling import check_method, check_path
    from .._app import UsageError, open_registry

    # Checked before the registry is opened, so nothing is ever sent for a bad argument.
    method = args.method or ("GET" if args.data is None else "POST")
    try:
        check_path(args.path)
        check_method(method)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    headers = _parse_headers(args.headers)
    body = _read_body(args.data)

    result = open_registry(args).call(
        args.target, args.path, method=method, body=body, headers=headers, timeout=args.timeout
    )
    return _print_result(result)


def _parse_headers(texts: list[str]) -> dict[str, str]:
    """Return the ``-H`` headers by name; a name given twice (ignoring case) is a usage error."""
    from ..._calling import parse_header
    from .._app import UsageError

    headers: dict[str, str] = {}
    for text in texts:
        try:
            name, value = parse_header(text)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        if name.lower() in {known.lower() for known in headers}:
            raise UsageError(f"header {name} is given more than once: give it once")
        headers[name] = value
    return headers


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(
            f"invalid timeout {text!r}: give a positive number of seconds"
        )
    return value


def _read_body(data: str | None) -> bytes | None:
    """Return the bytes that ``-d`` names: the text itself, a file's bytes, or standard input."""
    import sys

    from .._app import UsageError

    if data is None:
        return None
    if data == "@-":
        return sys.stdin.buffer.read()
    if not data.startswith("@"):
        return data.encode()
    try:
        with open(data[1:], "rb") as file:
            return file.read()
    except OSError as exc:
        raise UsageError(
            f"cannot read the request body from {data[1:]!r}: {exc.strerror}; "
            "give an existing file after @"
        ) from None


def _print_result(result: CallResult) -> int:
    import sys

    if result.ok:
        sys.stdout.buffer.write(result.body)
        sys.stdout.buffer.flush()
        return 0

    print(_printable(result.status_line), file=sys.stderr)
    location = result.headers.get("Location")
    if 300 <= result.status < 400 and location is not None:
        print(f"Location: {_printable(location)}", file=sys.stderr)
        print("runregistry: the redirect was not followed", file=sys.stderr)
    elif result.body:
        text = result.body[:_MAX_ERROR_BODY].decode("utf-8", "replace")
        more = len(result.body) - _MAX_ERROR_BODY
        print(_printable(text.rstrip("\n"), keep="\n\t"), file=sys.stderr)
        if more > 0:
            print(f"runregistry: {more} more bytes of the body not shown", file=sys.stderr)
    return 1


def _printable(text: str, keep: str = "") -> str:
    """Escape control characters a server sent, so that they cannot drive the terminal."""
    return "".join(
        char if char.isprintable() or char in keep else char.encode("unicode_escape").decode()
        for char in text
    )
