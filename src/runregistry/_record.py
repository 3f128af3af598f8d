"""The run record: its fields, validation, and the JSON format shared with docker-agent."""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass, field
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
_TIMESTAMP: Final = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)[Tt](\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?(?:([Zz])|([+-])(\d\d):(\d\d))\Z"
)

_REQUIRED_KEYS: Final = ("pid", "addr", "session_id", "started_at")


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True, slots=True)
class Record:
    """A discovery record for one process that serves an HTTP control plane.

    ``pid``, ``addr``, ``session_id``, ``agent`` and ``started_at`` are the
    fields docker-agent writes. The keyword-only fields are runregistry's own
    additions, which Go readers ignore: ``host`` is the writer's host name,
    ``lock`` says how liveness is proven (``"flock"``: the writer holds a lock
    on the record file), ``token`` is the control plane's bearer token (never
    shown by ``repr``), and ``machine_id`` tells hosts apart in a shared backend.
    """

    pid: int
    addr: str
    session_id: str
    agent: str = ""
    started_at: datetime = field(default_factory=_utc_now)
    host: str | None = field(default=None, kw_only=True)
    lock: str | None = field(default=None, kw_only=True)
    token: str | None = field(default=None, kw_only=True, repr=False)
    machine_id: str | None = field(default=None, kw_only=True)

    def __post_init__(self) -> None:
        _check_pid(self.pid)
        for name in ("addr", "session_id", "agent"):
            _check_str(name, getattr(self, name))
        for name in ("host", "lock", "token", "machine_id"):
            value = getattr(self, name)
            if value is not None:
                _check_str(name, value)
        _check_time(self.started_at)

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
        indent, no trailing newline, ``agent`` omitted when empty.
        """
        return json.dumps(self.to_dict(include_token=True), indent=2).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> Record:
        """Decode a stored record; unknown keys are ignored.

        :raises InvalidRecordError: the bytes are not UTF-8 JSON, not an object,
            miss a required key, or hold a value of the wrong type or range.
        """
        try:
            obj = json.loads(data)
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
        try:
            return cls(
                obj["pid"],
                obj["addr"],
                obj["session_id"],
                obj.get("agent") or "",
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
        offset = timedelta(hours=int(off_h), minutes=int(off_m))
        if offset >= timedelta(days=1):
            raise InvalidRecordError(f"started_at {text!r} has a UTC offset out of range")
        if offset:
            tz = timezone(-offset if sign == "-" else offset)
    microsecond = int(fraction[:6].ljust(6, "0")) if fraction else 0
    try:
        value = datetime(
            int(year), int(month), int(day), int(hour), int(minute), int(second), microsecond, tz
        )
        # Comparing aware datetimes converts them to UTC, which overflows for
        # instants just inside year 1 or year 9999; reject those here.
        value.astimezone(timezone.utc)
    except (ValueError, OverflowError) as exc:
        raise InvalidRecordError(f"started_at {text!r} is out of range: {exc}") from None
    return value


def format_timestamp(value: datetime) -> str:
    """Format an aware datetime as RFC 3339, with ``Z`` for UTC as Go does."""
    text = value.isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


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
