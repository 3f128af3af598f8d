"""The record format: Go's fixtures, key order, escapes, strict types and timestamps."""

from __future__ import annotations

import json
import os
import pickle
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import GO_FIXTURES
from runregistry import InvalidRecordError, Record, RegistryError
from runregistry._record import MAX_PID, ZERO_TIME, format_timestamp, parse_timestamp

_EXPECTED_PATH = GO_FIXTURES / "expected.json"
_EXPECTED: dict[str, dict[str, Any]] = (
    json.loads(_EXPECTED_PATH.read_text("utf-8")) if _EXPECTED_PATH.is_file() else {}
)
_FIXTURE_NAMES = sorted(_EXPECTED)

_STARTED = datetime(2026, 5, 13, 10, 20, 30, 123456, tzinfo=timezone(timedelta(hours=2)))


def test_go_fixtures_are_present() -> None:
    # The compatibility tests below are parametrized by the fixture files, so
    # without them they would vanish rather than fail; CI must not lose them.
    if _FIXTURE_NAMES:
        return
    message = f"Go record fixtures not found at {GO_FIXTURES}"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def _valid(**changes: object) -> dict[str, object]:
    """Return a valid record object as JSON would hold it, with *changes* applied."""
    obj: dict[str, object] = {
        "pid": 4242,
        "addr": "http://127.0.0.1:54321",
        "session_id": "s1",
        "agent": "coder",
        "started_at": "2026-05-13T10:20:30.5+02:00",
    }
    obj.update(changes)
    return obj


def _utc_instant(text: str) -> datetime:
    """Read Go's ``started_at_utc`` (``...Z`` with up to nine digits), truncated to microseconds."""
    match = re.fullmatch(r"([0-9T:-]+)(?:\.([0-9]+))?Z", text)
    assert match is not None, text
    whole = datetime.strptime(match.group(1), "%Y-%m-%dT%H:%M:%S")
    micro = int((match.group(2) or "")[:6].ljust(6, "0"))
    return whole.replace(microsecond=micro, tzinfo=timezone.utc)


def _truncated_to_microseconds(data: bytes) -> bytes:
    """Return Go's record bytes with the fraction of started_at cut to six digits, as Go prints."""

    def cut(match: re.Match[bytes]) -> bytes:
        digits = match.group(1)[:6].rstrip(b"0")
        return b"." + digits if digits else b""

    return re.sub(rb"\.([0-9]+)(?=(?:Z|[+-][0-9]{2}:[0-9]{2})\"\n)", cut, data)


# Go's fixtures


def test_every_fixture_has_expected_values(go_fixtures: Path) -> None:
    records = {path.name for path in go_fixtures.glob("*.json")} - {"expected.json"}
    assert records == set(_EXPECTED)


@pytest.mark.parametrize("name", _FIXTURE_NAMES)
def test_go_fixture_decodes_to_expected(go_fixtures: Path, name: str) -> None:
    expected = _EXPECTED[name]
    record = Record.from_json((go_fixtures / name).read_bytes())
    offset = record.started_at.utcoffset()

    assert record.pid == expected["pid"]
    assert record.addr == expected["addr"]
    assert record.session_id == expected["session_id"]
    assert record.agent == expected["agent"]
    assert record.started_at.astimezone(timezone.utc) == _utc_instant(expected["started_at_utc"])
    assert offset is not None
    assert offset.total_seconds() == expected["started_at_offset_seconds"]
    assert record.host is None
    assert record.lock is None


@pytest.mark.parametrize("name", _FIXTURE_NAMES)
def test_go_fixture_round_trips(go_fixtures: Path, name: str) -> None:
    record = Record.from_json((go_fixtures / name).read_bytes())

    assert Record.from_json(record.to_json()) == record


@pytest.mark.parametrize("name", _FIXTURE_NAMES)
def test_go_fixture_encodes_to_go_bytes(go_fixtures: Path, name: str) -> None:
    data = (go_fixtures / name).read_bytes()

    assert Record.from_json(data).to_json() == _truncated_to_microseconds(data)


def test_zero_time_fixture_is_zero(go_fixtures: Path) -> None:
    record = Record.from_json((go_fixtures / "zero-time.json").read_bytes())

    assert record.started_at == ZERO_TIME
    assert record.started_at_is_zero


def test_nanoseconds_are_truncated_not_rounded() -> None:
    value = parse_timestamp("2025-12-31T23:59:59.999999999-07:00")

    assert value.microsecond == 999999
    assert value.second == 59
    assert value.year == 2025


# Encoding


def test_to_json_key_order() -> None:
    record = Record(
        7, "http://127.0.0.1:1", "s", "coder", _STARTED, host="h", lock="flock", token="t"
    )
    record = record.replace(machine_id="m")

    keys = list(json.loads(record.to_json()))

    assert keys == [
        "pid",
        "addr",
        "session_id",
        "agent",
        "started_at",
        "host",
        "lock",
        "token",
        "machine_id",
    ]


def test_to_json_omits_empty_agent() -> None:
    data = json.loads(Record(7, "http://127.0.0.1:1", "s", "", _STARTED).to_json())

    assert "agent" not in data
    assert list(data) == ["pid", "addr", "session_id", "started_at"]


def test_to_json_layout_is_go_indent() -> None:
    data = Record(7, "http://127.0.0.1:1", "s", "a", _STARTED).to_json()

    assert data == (
        b'{\n  "pid": 7,\n  "addr": "http://127.0.0.1:1",\n  "session_id": "s",\n'
        b'  "agent": "a",\n  "started_at": "2026-05-13T10:20:30.123456+02:00"\n}'
    )


def test_to_json_escapes_like_go() -> None:
    record = Record(7, "http://127.0.0.1:1", "<a&b>\u2028\u2029é中", "", _STARTED)

    data = record.to_json()

    assert b'"\\u003ca\\u0026b\\u003e\\u2028\\u2029\xc3\xa9\xe4\xb8\xad"' in data
    assert Record.from_json(data) == record


def test_to_json_escapes_lone_surrogate() -> None:
    record = Record(7, "http://127.0.0.1:1", "bad\ud800", "", _STARTED)

    data = record.to_json()

    assert b"\\ud800" in data
    assert Record.from_json(data) == record


def test_to_dict_leaves_token_out_by_default() -> None:
    record = Record(7, "http://127.0.0.1:1", "s", token="secret-token")

    assert "token" not in record.to_dict()
    assert record.to_dict(include_token=True)["token"] == "secret-token"
    assert json.loads(record.to_json())["token"] == "secret-token"


def test_repr_hides_token() -> None:
    record = Record(7, "http://127.0.0.1:1", "s", token="secret-token")

    assert "secret-token" not in repr(record)
    assert "secret-token" not in str(record)


# Decoding is strict about types


@pytest.mark.parametrize(
    "pid",
    [
        pytest.param(True, id="bool"),
        pytest.param(4242.0, id="float"),
        pytest.param(1e3, id="exponent"),
        pytest.param("4242", id="string"),
        pytest.param(None, id="null"),
        pytest.param([4242], id="list"),
        pytest.param(0, id="zero"),
        pytest.param(-1, id="negative"),
        pytest.param(MAX_PID + 1, id="above-range"),
        pytest.param(2**64, id="huge"),
    ],
)
def test_bad_pid_is_invalid_record(pid: object) -> None:
    data = json.dumps(_valid(pid=pid)).encode()

    with pytest.raises(InvalidRecordError, match="pid"):
        Record.from_json(data)


def test_max_pid_is_valid() -> None:
    assert Record.from_dict(_valid(pid=MAX_PID)).pid == MAX_PID


@pytest.mark.parametrize(
    ("key", "value"),
    [
        pytest.param("addr", 5, id="addr-number"),
        pytest.param("addr", None, id="addr-null"),
        pytest.param("session_id", ["s"], id="session-list"),
        pytest.param("session_id", None, id="session-null"),
        pytest.param("agent", 5, id="agent-number"),
        pytest.param("agent", False, id="agent-false"),
        pytest.param("agent", 0, id="agent-zero"),
        pytest.param("started_at", 1778660430, id="started-number"),
        pytest.param("started_at", None, id="started-null"),
        pytest.param("host", 5, id="host-number"),
        pytest.param("lock", True, id="lock-bool"),
        pytest.param("token", {}, id="token-object"),
    ],
)
def test_wrong_field_type_is_invalid_record(key: str, value: object) -> None:
    with pytest.raises(InvalidRecordError, match=key):
        Record.from_dict(_valid(**{key: value}))


@pytest.mark.parametrize("key", ["pid", "addr", "session_id", "started_at"])
def test_missing_key_is_invalid_record(key: str) -> None:
    obj = _valid()
    del obj[key]

    with pytest.raises(InvalidRecordError, match=key):
        Record.from_dict(obj)


def test_null_agent_is_empty() -> None:
    assert Record.from_dict(_valid(agent=None)).agent == ""


def test_missing_agent_is_empty() -> None:
    obj = _valid()
    del obj["agent"]

    assert Record.from_dict(obj).agent == ""


def test_unknown_fields_are_ignored() -> None:
    obj = _valid(future={"nested": [1, 2]}, version=3, extra=None)

    record = Record.from_dict(obj)

    assert record == Record.from_dict(_valid())


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"{", id="truncated"),
        pytest.param(b"\xff\xfe{}", id="not-utf8"),
        pytest.param(b"[]", id="array"),
        pytest.param(b"null", id="null"),
        pytest.param(b"4242", id="number"),
        pytest.param(b"[" * 100_000 + b"]" * 100_000, id="deep-nesting"),
        pytest.param(b'{"pid": ' + b"9" * 5000 + b"}", id="too-many-digits"),
    ],
)
def test_malformed_bytes_are_invalid_record(data: bytes) -> None:
    with pytest.raises(InvalidRecordError):
        Record.from_json(data)


def test_invalid_record_error_is_value_error() -> None:
    with pytest.raises(InvalidRecordError) as caught:
        Record.from_json(b"[]")

    assert isinstance(caught.value, ValueError)
    assert isinstance(caught.value, RegistryError)


# Timestamps


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("2026-05-13T10:20:30", id="no-offset"),
        pytest.param("2026-05-13T10:20:30.5", id="fraction-no-offset"),
        pytest.param("2026-05-13 10:20:30Z", id="space"),
        pytest.param("2026-05-13T10:20:30+0200", id="offset-without-colon"),
        pytest.param("2026-05-13T10:20:30+24:00", id="offset-hours"),
        pytest.param("2026-05-13T10:20:30+05:60", id="offset-minutes"),
        pytest.param("2026-05-13T10:20:30.1234567890Z", id="ten-digits"),
        pytest.param("2026-05-13T10:20:30.Z", id="empty-fraction"),
        pytest.param("2026-13-13T10:20:30Z", id="month"),
        pytest.param("2026-02-30T10:20:30Z", id="day"),
        pytest.param("2026-05-13T24:00:00Z", id="hour"),
        pytest.param("2026-05-13T10:20:60Z", id="leap-second"),
        pytest.param("0000-01-01T00:00:00Z", id="year-zero"),
        pytest.param("0001-01-01T00:30:00+01:00", id="before-year-one-in-utc"),
        pytest.param("9999-12-31T23:30:00-01:00", id="after-year-9999-in-utc"),
        pytest.param("\uff12\uff10\uff12\uff16-05-13T10:20:30Z", id="fullwidth-digits"),
        pytest.param("\u0662\u0660\u0662\u0666-05-13T10:20:30Z", id="arabic-indic-digits"),
        pytest.param("2026-05-13T10:20:30Z\n", id="trailing-newline"),
        pytest.param("", id="empty"),
    ],
)
def test_bad_timestamp_is_invalid_record(text: str) -> None:
    with pytest.raises(InvalidRecordError, match="started_at"):
        Record.from_dict(_valid(started_at=text))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-05-13T10:20:30Z", datetime(2026, 5, 13, 10, 20, 30, tzinfo=timezone.utc)),
        (
            "2026-05-13T10:20:30.000001+23:59",
            datetime(2026, 5, 13, 10, 20, 30, 1, tzinfo=timezone(timedelta(hours=23, minutes=59))),
        ),
        (
            "2026-05-13T10:20:30.1-00:30",
            datetime(2026, 5, 13, 10, 20, 30, 100000, tzinfo=timezone(-timedelta(minutes=30))),
        ),
        ("2026-05-13T10:20:30+00:00", datetime(2026, 5, 13, 10, 20, 30, tzinfo=timezone.utc)),
    ],
)
def test_timestamp_parses(text: str, expected: datetime) -> None:
    value = parse_timestamp(text)

    assert value == expected
    assert value.utcoffset() == expected.utcoffset()


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (datetime(2026, 5, 13, 8, 0, 0, 500000, tzinfo=timezone.utc), "2026-05-13T08:00:00.5Z"),
        (datetime(2026, 5, 13, 8, 0, 0, tzinfo=timezone.utc), "2026-05-13T08:00:00Z"),
        (
            datetime(2026, 5, 13, 8, 0, 0, 120, tzinfo=timezone(timedelta(hours=-7))),
            "2026-05-13T08:00:00.00012-07:00",
        ),
        (ZERO_TIME, "0001-01-01T00:00:00Z"),
        (
            datetime(2026, 5, 13, 8, 0, 30, tzinfo=timezone(timedelta(hours=1, seconds=30))),
            "2026-05-13T07:00:00Z",
        ),
    ],
)
def test_format_timestamp_matches_go(value: datetime, text: str) -> None:
    assert format_timestamp(value) == text


def test_naive_started_at_is_rejected() -> None:
    with pytest.raises(InvalidRecordError) as caught:
        Record(7, "http://127.0.0.1:1", "s", "", datetime(2026, 5, 13, 10, 20, 30))

    assert "naive" in str(caught.value)
    assert "timezone-aware" in str(caught.value)


def test_started_at_must_be_datetime() -> None:
    with pytest.raises(InvalidRecordError, match="started_at must be a datetime"):
        Record(7, "http://127.0.0.1:1", "s", "", "2026-05-13T10:20:30Z")  # type: ignore[arg-type]


def test_started_at_out_of_utc_range_is_rejected() -> None:
    early = datetime(1, 1, 1, 0, 30, tzinfo=timezone(timedelta(hours=1)))

    with pytest.raises(InvalidRecordError, match="out of range"):
        Record(7, "http://127.0.0.1:1", "s", "", early)


def test_started_at_defaults_to_now_in_utc() -> None:
    before = datetime.now(timezone.utc)
    record = Record(7, "http://127.0.0.1:1", "s")
    after = datetime.now(timezone.utc)

    assert before <= record.started_at <= after
    assert record.started_at.utcoffset() == timedelta(0)


# The value class


def test_record_is_immutable() -> None:
    record = Record(7, "http://127.0.0.1:1", "s")

    with pytest.raises(AttributeError):
        record.pid = 8


def test_replace_validates_changes() -> None:
    record = Record(7, "http://127.0.0.1:1", "s")

    assert record.replace(pid=8).pid == 8
    with pytest.raises(InvalidRecordError):
        record.replace(pid=0)
    with pytest.raises(TypeError, match="nope"):
        record.replace(nope=1)


def test_records_with_same_fields_are_equal() -> None:
    first = Record(7, "http://127.0.0.1:1", "s", "a", _STARTED, host="h")
    second = Record(7, "http://127.0.0.1:1", "s", "a", _STARTED, host="h")

    assert first == second
    assert hash(first) == hash(second)
    assert first != first.replace(host="other")


def test_record_pickles() -> None:
    record = Record(7, "http://127.0.0.1:1", "s", "a", _STARTED, host="h", token="t")

    assert pickle.loads(pickle.dumps(record)) == record


# Any record survives the round trip


# Every code point, lone surrogates included.
_text = st.text(st.characters(exclude_categories=()), max_size=40)
_offsets = st.integers(min_value=-(24 * 60 - 1), max_value=24 * 60 - 1).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)
_times = st.datetimes(
    min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=_offsets
)


_records = st.builds(
    Record,
    pid=st.integers(min_value=1, max_value=MAX_PID),
    addr=_text,
    session_id=_text,
    agent=_text,
    started_at=_times,
    host=st.none() | _text,
    token=st.none() | _text,
)


@settings(max_examples=200, deadline=None)
@given(record=_records)
def test_any_record_round_trips(record: Record) -> None:
    data = record.to_json()
    decoded = Record.from_json(data)

    assert decoded == record
    assert decoded.started_at.utcoffset() == record.started_at.utcoffset()
    assert data.decode("utf-8")
