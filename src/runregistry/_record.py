"""The run record: its fields, validation, and the JSON format shared with docker-agent."""

from __future__ import annotations

import json
import re
import sys
from datetime import datetime, timedelta, timezone
from typing import Any, Final

from ._errors import InvalidRecordError

# A pid is a C ``pid_t`` (int32) on POSIX and a DWORD on Windows. Records
# written by other programs can hold anything, so the range is checked before
# a pid ever reaches a system call.
MAX_PID: Final = 2**32 - 1 if sys.platform == "win32" else 2**31 - 1

# Value of ``lock`` in records whose writer holds an exclusive flock on the
# published file for as long as the record is published.
LOCK_FLOCK: Final = "flock"

# Go's zero ``time.Time``: docker-agent writes it when it never set the time.
ZERO_TIME: Final = datetime(1, 1, 1, tzinfo=timezone.utc)

# RFC 3339 as Go writes it: up to nine fractional digits and a numeric offset
# or Z. ``datetime.fromisoformat`` accepts neither nine digits nor Z on 3.10.
# ASCII digits only: ``\d`` would also match other scripts' digits.
_TIMESTAMP: Final = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})"
    r"(?:\.([0-9]{1,9}))?(?:([Zz])|([+-])([0-9]{2}):([0-9]{2}))\Z"
)

# Characters Go's encoder escapes inside strings: <, > and & so that JSON can
# sit in HTML, U+2028 and U+2029 for JavaScript. Lone surrogates have no UTF-8
# form, so they are escaped too, which keeps the output valid UTF-8.
_GO_ESCAPED: Final = re.compile("[<>&\u2028\u2029\ud800-\udfff]")

_REQUIRED_KEYS: Final = ("pid", "addr", "session_id", "started_at")


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


_FIELDS: Final = (
    "pid",
    "addr",
    "session_id",
    "agent",
    "started_at",
    "host",
    "lock",
    "token",
    "machine_id",
)


class Record:
    """An immutable discovery record for one process that serves an HTTP control plane.

    ``pid``, ``addr``, ``session_id``, ``agent`` and ``started_at`` are the
    fields docker-agent writes; ``started_at`` defaults to now, in UTC, and must
    be timezone-aware. The keyword-only fields are runregistry's additions,
    which Go readers ignore: ``host`` is the writer's host name, ``lock`` says
    how liveness is proven (``"flock"``: the writer holds a lock on the record
    file), ``token`` is the control plane's bearer token (never shown by
    ``repr``), and ``machine_id`` tells hosts apart in a shared backend.

    It is a hand-written slotted class rather than a frozen dataclass because
    importing :mod:`dataclasses` costs the command line about 8 ms of start-up.

    :raises InvalidRecordError: a field has the wrong type, the pid is out of
        range, or ``started_at`` is naive.
    """

    __slots__ = _FIELDS

    pid: int
    addr: str
    session_id: str
    agent: str
    started_at: datetime
    host: str | None
    lock: str | None
    token: str | None
    machine_id: str | None

    def __init__(
        self,
        pid: int,
        addr: str,
        session_id: str,
        agent: str = "",
        started_at: datetime | None = None,
        *,
        host: str | None = None,
        lock: str | None = None,
        token: str | None = None,
        machine_id: str | None = None,
    ) -> None:
        if started_at is None:
            started_at = _utc_now()
        _check_pid(pid)
        for name, value in (("addr", addr), ("session_id", session_id), ("agent", agent)):
            _check_str(name, value)
        for name, optional in (
            ("host", host),
            ("lock", lock),
            ("token", token),
            ("machine_id", machine_id),
        ):
            if optional is not None:
                _check_str(name, optional)
        _check_time(started_at)

        init = object.__setattr__
        init(self, "pid", pid)
        init(self, "addr", addr)
        init(self, "session_id", session_id)
        init(self, "agent", agent)
        init(self, "started_at", started_at)
        init(self, "host", host)
        init(self, "lock", lock)
        init(self, "token", token)
        init(self, "machine_id", machine_id)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"Record is immutable: cannot set {name!r}; use replace()")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"Record is immutable: cannot delete {name!r}")

    def _values(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in _FIELDS)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in _FIELDS if name != "token")
        return f"Record({shown})"

    def __reduce__(self) -> tuple[object, ...]:
        # Unpickling would otherwise go through __setattr__, which refuses.
        return (_rebuild, self._values())

    def replace(self, **changes: object) -> Record:
        """Return a copy of the record with the given fields changed."""
        unknown = changes.keys() - set(_FIELDS)
        if unknown:
            raise TypeError(f"Record has no field(s) {', '.join(sorted(unknown))}")
        values = {name: getattr(self, name) for name in _FIELDS}
        values.update(changes)
        return Record(**values)

    def __str__(self) -> str:
        agent = f" agent={self.agent}" if self.agent else ""
        return f"run pid={self.pid} session={self.session_id}{agent} addr={self.addr}"

    @property
    def started_at_is_zero(self) -> bool:
        """Whether ``started_at`` is Go's zero time, meaning the writer never set it."""
        return self.started_at == ZERO_TIME

    def to_dict(self, *, include_token: bool = False) -> dict[str, Any]:
        """Return the JSON object for this record, keys in docker-agent's order.

        The token is left out unless *include_token* is true, so that output
        meant for people or logs never carries it by accident.
        """
        data: dict[str, Any] = {"pid": self.pid, "addr": self.addr, "session_id": self.session_id}
        if self.agent:
            data["agent"] = self.agent
        data["started_at"] = format_timestamp(self.started_at)
        if self.host is not None:
            data["host"] = self.host
        if self.lock is not None:
            data["lock"] = self.lock
        if self.token is not None and include_token:
            data["token"] = self.token
        if self.machine_id is not None:
            data["machine_id"] = self.machine_id
        return data

    def to_json(self) -> bytes:
        """Encode the record as stored on disk, token included.

        The layout is Go's ``json.MarshalIndent(record, "", "  ")``: two-space
        indent, no trailing newline, ``agent`` omitted when empty. Strings are
        UTF-8 with Go's escapes, so a record that Go wrote with a time of
        microsecond precision encodes to the same bytes.
        """
        text = json.dumps(self.to_dict(include_token=True), indent=2, ensure_ascii=False)
        return _GO_ESCAPED.sub(_escape_code_point, text).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> Record:
        """Decode a stored record; unknown keys are ignored.

        :raises InvalidRecordError: the bytes are not UTF-8 JSON, not an object,
            miss a required key, or hold a value of the wrong type or range.
        """
        try:
            # Decoded as UTF-8 here, as Go's decoder requires, rather than by
            # json.loads, which would also guess UTF-16 and UTF-32 and costs
            # more per record.
            obj = json.loads(data.decode("utf-8") if isinstance(data, bytes) else data)
        except (ValueError, RecursionError) as exc:
            raise InvalidRecordError(f"record is not valid JSON: {exc}") from None
        return cls.from_dict(obj)

    @classmethod
    def from_dict(cls, obj: object) -> Record:
        """Build a record from a decoded JSON object; see :meth:`from_json`."""
        if not isinstance(obj, dict):
            raise InvalidRecordError(f"record must be a JSON object, got {type(obj).__name__}")
        missing = [key for key in _REQUIRED_KEYS if key not in obj]
        if missing:
            raise InvalidRecordError(f"record is missing required key(s): {', '.join(missing)}")

        started_at = obj["started_at"]
        if not isinstance(started_at, str):
            raise InvalidRecordError(
                f"started_at must be an RFC 3339 string, got {type(started_at).__name__}"
            )
        # Go decodes a null string as "", so a null agent is no agent.
        agent = obj.get("agent")
        try:
            return cls(
                obj["pid"],
                obj["addr"],
                obj["session_id"],
                "" if agent is None else agent,
                parse_timestamp(started_at),
                host=obj.get("host"),
                lock=obj.get("lock"),
                token=obj.get("token"),
                machine_id=obj.get("machine_id"),
            )
        except TypeError as exc:
            raise InvalidRecordError(str(exc)) from None


def parse_timestamp(text: str) -> datetime:
    """Parse an RFC 3339 timestamp as Go writes it, keeping its UTC offset.

    Fractional seconds beyond microseconds are truncated, as Python's datetime
    cannot hold nanoseconds.

    :raises InvalidRecordError: *text* has no UTC offset, is malformed, or is
        out of the range a ``datetime`` can hold.
    """
    match = _TIMESTAMP.match(text)
    if match is None:
        raise InvalidRecordError(
            f"started_at {text!r} is not an RFC 3339 timestamp with a UTC offset, "
            "such as 2026-05-13T10:20:30.123456Z"
        )
    year, month, day, hour, minute, second, fraction, zulu, sign, off_h, off_m = match.groups()
    tz = timezone.utc
    if not zulu:
        if int(off_h) > 23 or int(off_m) > 59:
            raise InvalidRecordError(
                f"started_at {text!r} has a UTC offset out of range: expected -23:59 to +23:59"
            )
        offset = timedelta(hours=int(off_h), minutes=int(off_m))
        if offset:
            tz = timezone(-offset if sign == "-" else offset)
    microsecond = int(fraction[:6].ljust(6, "0")) if fraction else 0
    try:
        value = datetime(
            int(year), int(month), int(day), int(hour), int(minute), int(second), microsecond, tz
        )
        # Comparing aware datetimes converts them to UTC, which overflows for
        # instants just inside year 1 or year 9999; reject those here.
        if value.year in (1, 9999):
            value.astimezone(timezone.utc)
    except (ValueError, OverflowError) as exc:
        raise InvalidRecordError(f"started_at {text!r} is out of range: {exc}") from None
    return value


def format_timestamp(value: datetime) -> str:
    """Format an aware datetime as RFC 3339 the way Go's ``time.RFC3339Nano`` does.

    Trailing zeros of the fraction are dropped and UTC is written as ``Z``,
    such as ``2026-05-13T10:20:30.5+02:00``. An offset with seconds, which RFC
    3339 cannot express, is converted to UTC first.

    :raises InvalidRecordError: *value* is naive or out of range.
    """
    _check_time(value)
    offset = value.utcoffset()
    if offset is None or offset % timedelta(minutes=1):
        value = value.astimezone(timezone.utc)

    text = value.isoformat(timespec="seconds")
    date_time, zone = text[:19], text[19:]
    fraction = f".{value.microsecond:06d}".rstrip("0") if value.microsecond else ""
    return date_time + fraction + ("Z" if zone == "+00:00" else zone)


def _escape_code_point(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"


def _rebuild(*values: object) -> Record:
    return Record(*values[:5], **dict(zip(_FIELDS[5:], values[5:], strict=True)))  # type: ignore[arg-type]


def _check_pid(pid: object) -> None:
    # bool is an int subclass, and True would otherwise pass as pid 1.
    if not isinstance(pid, int) or isinstance(pid, bool):
        raise InvalidRecordError(f"pid must be an integer, got {type(pid).__name__} {pid!r}")
    if not 0 < pid <= MAX_PID:
        raise InvalidRecordError(f"pid {pid} is out of range: expected 1 to {MAX_PID}")


def _check_str(name: str, value: object) -> None:
    if not isinstance(value, str):
        raise InvalidRecordError(f"{name} must be a string, got {type(value).__name__}")


def _check_time(value: object) -> None:
    if not isinstance(value, datetime):
        raise InvalidRecordError(f"started_at must be a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidRecordError(
            f"started_at {value.isoformat()} is naive: pass a timezone-aware datetime, "
            "for example datetime.now(timezone.utc)"
        )
    try:
        # Ordering and timestamp() convert to UTC, which overflows for instants
        # within a day of year 1 or year 9999 given in a local offset; offsets
        # are under a day, so no other year can overflow.
        if value.year in (1, 9999):
            value.astimezone(timezone.utc)
    except OverflowError:
        raise InvalidRecordError(
            f"started_at {value.isoformat()} is out of range: its UTC time is before "
            "year 1 or after year 9999"
        ) from None
