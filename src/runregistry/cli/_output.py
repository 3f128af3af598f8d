"""Output shared by the commands: records as JSON, as text and as table rows."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Final, Literal, NamedTuple, TextIO

if TYPE_CHECKING:
    from .._liveness import Liveness
    from .._record import Record

# The record fields that ``find --field`` accepts.
FIELDS: Final = ("addr", "pid", "session_id", "agent", "started_at", "host", "token")

# The terminal width assumed when neither $COLUMNS nor the terminal gives one, as shutil does.
DEFAULT_COLUMNS: Final = 80

# Space between two table columns.
_GAP: Final = "  "

# A truncated cell keeps at least this many characters, ellipsis included, so
# that both ends of a session id or an address stay recognisable.
_MIN_TRUNCATED_WIDTH: Final = 9

_BOLD: Final = "\x1b[1m"
_RESET: Final = "\x1b[0m"

Truncation = Literal["", "middle", "end"]


class Column(NamedTuple):
    """One table column: its header, one cell per row, and how a cell too wide is cut."""

    header: str
    cells: list[str]
    # "" never cuts (a pid stays whole); "middle" keeps both ends; "end" keeps the start.
    truncate: Truncation = ""


def record_json(
    record: Record, liveness: Liveness | None = None, *, show_token: bool = False
) -> dict[str, Any]:
    """Return *record* as ``list --json`` prints it: the stored fields plus its liveness.

    The ``token`` key is left out unless *show_token* is true.
    """
    data = record.to_dict(include_token=show_token)
    if liveness is not None:
        data["state"] = liveness.state
        data["reason"] = liveness.reason
    return data


def print_json(value: object) -> None:
    """Print *value* as indented JSON on stdout."""
    sys.stdout.write(json.dumps(value, indent=2, ensure_ascii=False) + "\n")


def age(started_at: datetime, now: datetime | None = None) -> str:
    """Return how long ago *started_at* was, such as ``12s ago`` or ``3h ago``."""
    if now is None:
        now = datetime.now(timezone.utc)
    seconds = int((now - started_at).total_seconds())
    if seconds < 0:
        return "in the future"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def record_age(record: Record, now: datetime | None = None) -> str:
    """Return the age of *record*, or ``unknown`` when its writer never set ``started_at``."""
    if record.started_at_is_zero:
        return "unknown"
    return age(record.started_at, now)


def field_value(record: Record, name: str) -> str:
    """Return one field of *record* as stored, as text; "" when the record lacks it.

    The token is returned as well: asking for the field by name is the request.
    """
    value = record.to_dict(include_token=True).get(name)
    return "" if value is None else str(value)


def print_record(record: Record, *, show_token: bool = False) -> None:
    """Print *record* for people: one ``key: value`` line per stored field.

    The token is left out unless *show_token* is true.
    """
    data = record.to_dict(include_token=show_token)
    width = max(len(key) for key in data) + 1
    for key, value in data.items():
        text = printable(str(value))
        if key == "started_at":
            text = f"{text} ({record_age(record)})"
        print(f"{key + ':':<{width}} {text}")


def printable(text: str) -> str:
    """Return *text* with control characters escaped, such as ``\\x0a`` for a newline.

    Records can come from other programs, and a newline or a terminal escape
    sequence in a field would break a table or take over the terminal.
    """
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else _escape(char) for char in text)


def use_colour(stream: TextIO) -> bool:
    """Return True to colour output on *stream*: a terminal, not ``TERM=dumb``, no ``NO_COLOR``.

    An empty ``NO_COLOR`` counts as unset, following the variable's common convention.
    """
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    return _is_terminal(stream)


def table_width(stream: TextIO) -> int | None:
    """Return the width that a table on *stream* must fit, or None when it is not a terminal."""
    if not _is_terminal(stream):
        return None
    return terminal_columns(stream)


def terminal_columns(stream: TextIO | None = None) -> int:
    """Return the width of the terminal: ``$COLUMNS``, else the size of *stream*'s terminal.

    *stream* defaults to the process's original stdout. Without either, the
    width is 80 columns, as ``shutil.get_terminal_size`` assumes; that function
    is not used because importing ``shutil`` costs several milliseconds.
    """
    try:
        columns = int(os.environ.get("COLUMNS", ""))
    except ValueError:
        columns = 0
    if columns > 0:
        return columns

    stream = stream if stream is not None else sys.__stdout__
    try:
        columns = os.get_terminal_size(stream.fileno()).columns if stream is not None else 0
    except (AttributeError, ValueError, OSError):
        columns = 0
    return columns if columns > 0 else DEFAULT_COLUMNS


def ellipsis_for(stream: TextIO) -> str:
    """Return "…", or "..." when *stream*'s encoding cannot show it (a non-UTF-8 locale)."""
    try:
        "…".encode(stream.encoding or "ascii")
    except (UnicodeEncodeError, LookupError):
        return "..."
    return "…"


def render_table(
    columns: Sequence[Column],
    *,
    width: int | None = None,
    colour: bool = False,
    ellipsis: str = "…",
) -> list[str]:
    """Lay out *columns* as lines of text, a header line first.

    With *width*, the cells of columns that allow cutting are cut until each
    line fits or those columns reach their minimum width. *ellipsis* replaces
    the cut characters. Without *width*, cells stay whole. With *colour*, the
    header is bold.
    """
    # TODO: count East Asian wide characters as two terminal cells; until then a
    # row that contains them can be wider than *width*.
    widths = [max([len(column.header), *map(len, column.cells)]) for column in columns]
    if width is not None:
        widths = _fitted_widths(columns, widths, width)

    header = _join([column.header for column in columns], widths)
    lines = [f"{_BOLD}{header}{_RESET}" if colour else header]
    rows = len(columns[0].cells) if columns else 0
    for row in range(rows):
        cells = [
            truncate(column.cells[row], size, column.truncate, ellipsis)
            for column, size in zip(columns, widths, strict=True)
        ]
        lines.append(_join(cells, widths))
    return lines


def truncate(text: str, width: int, how: Truncation, ellipsis: str = "…") -> str:
    """Cut *text* to *width* characters with *ellipsis* in the middle or at the end."""
    if len(text) <= width or not how:
        return text
    keep = max(width - len(ellipsis), 0)
    if how == "end":
        return text[:keep] + ellipsis
    head = (keep + 1) // 2
    tail = keep - head
    return text[:head] + ellipsis + text[len(text) - tail :]


def _fitted_widths(columns: Sequence[Column], widths: list[int], limit: int) -> list[int]:
    """Narrow cuttable columns, one character at a time, until a line fits in *limit*.

    Free text cut at its end (a reason) goes first, so that identifiers cut in
    the middle (a session id, an address) keep as much as possible. Among
    columns of one kind, the widest is narrowed first.
    """
    fitted = list(widths)
    excess = sum(fitted) + len(_GAP) * (len(fitted) - 1) - limit
    for how in ("end", "middle"):
        while excess > 0:
            cuttable = [
                index
                for index, column in enumerate(columns)
                if column.truncate == how
                and fitted[index] > max(_MIN_TRUNCATED_WIDTH, len(column.header))
            ]
            if not cuttable:
                break
            widest = max(cuttable, key=lambda index: fitted[index])
            fitted[widest] -= 1
            excess -= 1
    return fitted


def _join(cells: Sequence[str], widths: Sequence[int]) -> str:
    # The last cell is not padded, so that no line ends in spaces.
    padded = [cell.ljust(size) for cell, size in zip(cells[:-1], widths, strict=False)]
    return _GAP.join([*padded, cells[-1]]) if cells else ""


def _escape(char: str) -> str:
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        # A replaced or closed stream is not a terminal.
        return False
