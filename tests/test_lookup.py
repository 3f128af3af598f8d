"""Resolving a target to one record: pid, address, HOST:PID, session id, and the errors."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from runregistry import AmbiguousRunError, NoRunError, Record, RegistryError
from runregistry._liveness import local_hostname
from runregistry._lookup import TARGET_FORMS, newest, resolve, sort_key, target_pid
from runregistry._record import MAX_PID

_T0 = datetime(2026, 5, 13, 8, 0, 0, tzinfo=timezone.utc)
_WHERE = "/reg/runs"
_HOW = "start one with: my-tool serve"


def _record(
    pid: int,
    session_id: str,
    *,
    addr: str = "",
    seconds: float = 0,
    host: str | None = None,
) -> Record:
    return Record(
        pid,
        addr or f"http://127.0.0.1:{pid}",
        session_id,
        "",
        _T0 + timedelta(seconds=seconds),
        host=host,
    )


def _find(target: str, records: list[Record]) -> Record:
    return resolve(target, records, where=_WHERE, how_to_start=_HOW)


_RUNS = [
    _record(100, "6f1d2c3b-aaaa", seconds=0),
    _record(200, "6f1d9999-bbbb", seconds=10),
    _record(300, "abc", addr="https://127.0.0.1:8443/", seconds=5),
    _record(400, "abcdef", addr="http://127.0.0.1:8765", seconds=1),
]


# Empty target


def test_empty_target_is_latest() -> None:
    assert _find("", _RUNS).pid == 200


def test_whitespace_target_is_latest() -> None:
    assert _find("  \t\n", _RUNS).pid == 200


def test_empty_target_without_runs_raises() -> None:
    with pytest.raises(NoRunError) as caught:
        _find("", [])

    assert "no live run in /reg/runs" in str(caught.value)
    assert _HOW in str(caught.value)
    assert caught.value.directory == _WHERE


# Pid


def test_pid_matches_exactly() -> None:
    assert _find("300", _RUNS).session_id == "abc"


def test_pid_is_stripped() -> None:
    assert _find(" 300\n", _RUNS).session_id == "abc"


def test_pid_is_not_a_substring_match() -> None:
    with pytest.raises(NoRunError) as caught:
        _find("30", _RUNS)

    message = str(caught.value)
    assert "no live run with pid 30 " in message
    assert _WHERE in message
    assert TARGET_FORMS in message
    assert _HOW in message


def test_digits_never_match_session_ids() -> None:
    runs = [_record(1, "12345")]

    with pytest.raises(NoRunError, match="pid 12345"):
        _find("12345", runs)


def test_huge_pid_target_matches_nothing() -> None:
    with pytest.raises(NoRunError, match="pid"):
        _find("9" * 5000, _RUNS)


@pytest.mark.parametrize(
    "target",
    [
        pytest.param("\u00b2", id="superscript-two"),
        pytest.param("\u0663\u0660\u0660", id="arabic-indic-300"),
        pytest.param("\uff13\uff10\uff10", id="fullwidth-300"),
    ],
)
def test_non_ascii_digits_are_session_text(target: str) -> None:
    with pytest.raises(NoRunError) as caught:
        _find(target, _RUNS)

    assert "session id contains" in str(caught.value)


@pytest.mark.parametrize(
    ("target", "pid"),
    [
        ("300", 300),
        (" 0300 ", 300),
        ("0", 0),
        (str(MAX_PID), MAX_PID),
        (str(MAX_PID + 1), MAX_PID + 1),
        ("9" * 5000, MAX_PID + 1),
        ("0" * 5000 + "7", 7),
        ("", None),
        ("+300", None),
        ("-1", None),
        ("3e2", None),
        ("\u00b2", None),
        ("http://127.0.0.1:1", None),
    ],
)
def test_target_pid(target: str, pid: int | None) -> None:
    assert target_pid(target) == pid


# Address


@pytest.mark.parametrize(
    "target",
    [
        "https://127.0.0.1:8443",
        "https://127.0.0.1:8443/",
        "https://127.0.0.1:8443//",
        " https://127.0.0.1:8443/ ",
    ],
)
def test_address_ignores_trailing_slashes(target: str) -> None:
    assert _find(target, _RUNS).pid == 300


def test_address_record_slash_is_ignored() -> None:
    assert _find("http://127.0.0.1:8765/", _RUNS).pid == 400


@pytest.mark.parametrize(
    "target",
    [
        pytest.param("http://127.0.0.1:876", id="prefix"),
        pytest.param("http://127.0.0.1:87650", id="longer"),
        pytest.param("https://127.0.0.1:8765", id="other-scheme"),
        pytest.param("http://localhost:8765", id="other-host"),
        pytest.param("http://127.0.0.1:8765/path", id="with-path"),
    ],
)
def test_address_matches_exactly(target: str) -> None:
    with pytest.raises(NoRunError) as caught:
        _find(target, _RUNS)

    assert f"no live run at address {target}" in str(caught.value)
    assert TARGET_FORMS in str(caught.value)


def test_address_is_not_a_session_id() -> None:
    runs = [_record(1, "http://127.0.0.1:1/session")]

    with pytest.raises(NoRunError, match="address"):
        _find("http://127.0.0.1:1/session", runs)


# Session id


def test_exact_session_wins_over_substring() -> None:
    assert _find("abc", _RUNS).pid == 300


def test_unique_substring_matches() -> None:
    assert _find("cdef", _RUNS).pid == 400


def test_unique_prefix_matches() -> None:
    assert _find("6f1d2c", _RUNS).pid == 100


def test_session_match_is_case_sensitive() -> None:
    with pytest.raises(NoRunError):
        _find("ABC", _RUNS)


def test_ambiguous_substring_lists_every_match() -> None:
    with pytest.raises(AmbiguousRunError) as caught:
        _find("6f1d", _RUNS)

    error = caught.value
    assert error.candidates == ["6f1d2c3b-aaaa", "6f1d9999-bbbb"]
    assert "6f1d2c3b-aaaa" in str(error)
    assert "6f1d9999-bbbb" in str(error)
    assert "2 live runs" in str(error)
    assert error.target == "6f1d"


def test_ambiguous_lists_three_matches() -> None:
    runs = [_record(1, "x-1"), _record(2, "x-2"), _record(3, "x-3")]

    with pytest.raises(AmbiguousRunError) as caught:
        _find("x-", runs)

    assert caught.value.candidates == ["x-1", "x-2", "x-3"]
    for session_id in ("x-1", "x-2", "x-3"):
        assert session_id in str(caught.value)


def test_ambiguity_is_not_a_no_run_error() -> None:
    with pytest.raises(AmbiguousRunError) as caught:
        _find("6f1d", _RUNS)

    assert not isinstance(caught.value, NoRunError)
    assert isinstance(caught.value, LookupError)
    assert isinstance(caught.value, RegistryError)


def test_no_run_error_is_lookup_error() -> None:
    with pytest.raises(NoRunError) as caught:
        _find("nothing-like-this", _RUNS)

    assert isinstance(caught.value, LookupError)
    assert isinstance(caught.value, RegistryError)


def test_no_session_match_names_text() -> None:
    with pytest.raises(NoRunError) as caught:
        _find("nothing-like-this", _RUNS)

    message = str(caught.value)
    assert "no live run whose session id contains 'nothing-like-this'" in message
    assert "a pid" in message
    assert "http:// or https:// address" in message
    assert "part of a session id" in message
    assert _HOW in message
    assert caught.value.target == "nothing-like-this"


def test_same_session_twice_is_ambiguous() -> None:
    runs = [_record(1, "dup"), _record(2, "dup")]

    with pytest.raises(AmbiguousRunError) as caught:
        _find("dup", runs)

    assert caught.value.candidates == ["dup", "dup"]


# HOST:PID


def test_host_pid_matches_host_and_pid() -> None:
    runs = [_record(42, "a", host="box-a"), _record(42, "b", host="box-b")]

    assert _find("box-b:42", runs).session_id == "b"


def test_host_pid_without_host_field_is_this_host() -> None:
    runs = [_record(42, "mine")]

    assert _find(f"{local_hostname()}:42", runs).session_id == "mine"


def test_host_pid_falls_back_to_session_id() -> None:
    runs = [_record(42, "job:42", host="box-a")]

    assert _find("job:42", runs).pid == 42


def test_host_pid_miss_names_both_forms() -> None:
    with pytest.raises(NoRunError) as caught:
        _find("box-z:42", [_record(42, "a", host="box-a")])

    assert "'box-z:42'" in str(caught.value)
    assert "host and pid" in str(caught.value)


def test_pid_on_two_hosts_is_ambiguous() -> None:
    runs = [_record(42, "a", host="box-a"), _record(42, "b", host="box-b")]

    with pytest.raises(AmbiguousRunError) as caught:
        _find("42", runs)

    assert caught.value.candidates == ["a", "b"]
    assert "box-a:42" in str(caught.value)
    assert "box-b:42" in str(caught.value)


# Order


def test_sort_key_orders_oldest_first_then_lower_pid() -> None:
    runs = [_record(9, "c", seconds=1), _record(5, "b", seconds=1), _record(7, "a", seconds=0)]

    assert [r.pid for r in sorted(runs, key=sort_key)] == [7, 5, 9]


def test_sort_key_compares_instants_across_offsets() -> None:
    plus_two = timezone(timedelta(hours=2))
    early = Record(1, "http://127.0.0.1:1", "x", "", datetime(2026, 5, 13, 9, 0, tzinfo=plus_two))
    late = Record(
        2, "http://127.0.0.1:2", "y", "", datetime(2026, 5, 13, 8, 0, tzinfo=timezone.utc)
    )

    assert [r.pid for r in sorted([late, early], key=sort_key)] == [1, 2]


def test_newest_breaks_ties_by_higher_pid() -> None:
    runs = [_record(5, "a"), _record(9, "b"), _record(7, "c")]

    latest = newest(runs)

    assert latest is not None
    assert latest.pid == 9


def test_newest_of_nothing_is_none() -> None:
    assert newest([]) is None
