"""Resolving a target (pid, address, host:pid or session id) to one record."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final

from ._errors import AmbiguousRunError, NoRunError
from ._liveness import local_hostname
from ._record import MAX_PID, Record

TARGET_FORMS: Final = (
    "a target is a pid, HOST:PID, an http:// or https:// address, or all or part of "
    "a session id, and an empty target means the latest run"
)

# ASCII digits only: str.isdigit() and \d also accept other scripts' digits and
# superscripts, which int() rejects or reads as a different number.
_HOST_PID: Final = re.compile(r"(.+):([0-9]+)\Z")
_MAX_PID_DIGITS: Final = len(str(MAX_PID))


def sort_key(record: Record) -> tuple[float, int]:
    """Order records oldest first; ties go to the lower pid."""
    return (record.started_at.timestamp(), record.pid)


def newest(records: Sequence[Record]) -> Record | None:
    """Return the most recently started record, or None when there is none."""
    return max(records, key=sort_key, default=None)


def target_pid(target: str) -> int | None:
    """Return the pid that *target* names when it is all ASCII digits, else None.

    Surrounding whitespace is ignored. A number too large to be a pid, however
    many digits it has, comes back as ``MAX_PID + 1``, which matches no record.
    """
    text = target.strip()
    if not (text.isascii() and text.isdigit()):
        return None
    digits = text.lstrip("0") or "0"
    if len(digits) > _MAX_PID_DIGITS:
        return MAX_PID + 1
    return int(digits)


def resolve(target: str, records: Sequence[Record], *, where: str, how_to_start: str) -> Record:
    """Return the one record that *target* names among *records*.

    *where* names the registry in messages, and *how_to_start* is the clause
    on starting a run that ends them. The rules, applied to the stripped target:

    * empty: the most recently started run;
    * all digits: the run with that pid; a pid found on several hosts is ambiguous;
    * ``http://`` or ``https://``: the run with that address, trailing slashes ignored;
    * ``HOST:PID``: the run of that host with that pid, else a session id as below;
    * anything else: the run whose session id equals the target, else the one
      session id that contains it.

    :raises NoRunError: nothing matches.
    :raises AmbiguousRunError: several runs match and none is an exact match.
    """
    text = target.strip()
    if not text:
        latest = newest(records)
        if latest is None:
            raise NoRunError(f"no live run in {where}; {how_to_start}", text, where)
        return latest

    pid = target_pid(text)
    if pid is not None:
        matches = [r for r in records if r.pid == pid]
        return _one(text, matches, f"no live run with pid {text}", where, how_to_start)

    if text.startswith(("http://", "https://")):
        wanted = text.rstrip("/")
        matches = [r for r in records if r.addr.rstrip("/") == wanted]
        return _one(text, matches, f"no live run at address {text}", where, how_to_start)

    missing = f"no live run whose session id contains {text!r}"
    host_pid = _HOST_PID.match(text)
    if host_pid is not None:
        host, pid = host_pid.group(1), target_pid(host_pid.group(2))
        matches = [r for r in records if r.pid == pid and host_of(r) == host]
        if matches:
            return _one(text, matches, "", where, how_to_start)
        missing = f"no live run with host and pid {text!r}, nor one whose session id contains it"

    exact = [r for r in records if r.session_id == text]
    if exact:
        return _one(text, exact, "", where, how_to_start)
    partial = [r for r in records if text in r.session_id]
    return _one(text, partial, missing, where, how_to_start)


def host_of(record: Record) -> str:
    """Return the host a record was written on; records without one are from this host."""
    return record.host if record.host is not None else local_hostname()


def _one(target: str, matches: list[Record], missing: str, where: str, how_to_start: str) -> Record:
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise NoRunError(f"{missing} in {where} ({TARGET_FORMS}); {how_to_start}", target, where)

    matches.sort(key=sort_key)
    listing = ", ".join(f"{host_of(r)}:{r.pid} {r.session_id}" for r in matches)
    raise AmbiguousRunError(
        f"target {target!r} matches {len(matches)} live runs in {where}: {listing}; "
        "give more of the session id, the full address, or HOST:PID",
        target,
        [r.session_id for r in matches],
    )
