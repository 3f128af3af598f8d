"""The change source behind ``watch`` and ``wait`` on etcd: an etcd watch on the app's prefix.

A thread follows the watch stream and queues the keys that changed; the
watcher reads them when the source's pipe becomes readable. After a dropped
connection the watch resumes from the last revision seen plus one, so no event
is lost or repeated, once a read at that revision has shown the keys known
then. That read fails when the revision was compacted, and differs when etcd
came back without its data: such an etcd keeps its cluster id, and would
silently accept a watch from a revision that it has not reached yet or has
reached again with other writes. In both cases the records are listed again
and the differences reported.

A deleted key is a stop with reason ``removed`` when its writer named it in
its removal marker at the same revision, and ``lease-expired`` otherwise.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
from typing import TYPE_CHECKING, Final, NamedTuple

from ..._liveness import LEASE_EXPIRED, REMOVED
from ..._watching import ChangeSource, Slot
from ._client import (
    CODE_NOT_FOUND,
    CODE_OUT_OF_RANGE,
    EtcdError,
    GatewayStream,
    JsonObject,
    decode,
    encode,
    number,
    prefix_end,
)

if TYPE_CHECKING:
    from ..._record import Record
    from ._registry import EtcdRegistry

log = logging.getLogger(__name__)

# Delay before reconnecting a dropped watch; it doubles up to the maximum.
_FIRST_RETRY_SECONDS: Final = 0.1
_MAX_RETRY_SECONDS: Final = 2.0


class _Stored(NamedTuple):
    """A record key's value as etcd stores it; ``record`` is None for an invalid value."""

    record: Record | None
    lease: int
    create_revision: int
    mod_revision: int


class _Change(NamedTuple):
    """A key that changed: its new value, or None and why it was deleted."""

    key: str
    stored: _Stored | None
    vacated: str = REMOVED


class _RestartWatchError(Exception):
    """The watch must be opened again from the current revision."""


class _WatchRejectedError(EtcdError):
    """etcd canceled the watch for a reason that retrying does not cure, such as permissions."""


class EtcdChangeSource(ChangeSource):
    """Reports the record keys that change under an :class:`EtcdRegistry`'s app prefix."""

    def __init__(self, registry: EtcdRegistry) -> None:
        self._registry = registry
        self._client = registry.client
        self._keys = registry.keys
        self._lock = threading.Lock()
        # The keys as the thread has seen them, and as reported to the watcher.
        self._mirror: dict[str, _Stored] = {}
        self._delivered: dict[str, _Stored] = {}
        self._pending: list[_Change] = []
        # Every event up to this revision is in the mirror.
        self._revision = 0
        self._raft_term = 0
        self._cluster_id = ""
        self._closing = threading.Event()
        self._stream: GatewayStream | None = None
        self._read_fd = -1
        self._write_fd = -1
        self._failure: EtcdError | None = None

    def open(self) -> None:
        """List the records and start following changes from the listing's revision.

        :raises RegistryError: etcd cannot be reached or rejected the request.
        """
        header, kvs = self._registry.read_runs()
        self._mirror = {self._key(kv): self._stored(kv) for kv in kvs}
        self._delivered = dict(self._mirror)
        self._note_header(header)
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._read_fd, False)
        os.set_blocking(self._write_fd, False)
        threading.Thread(target=self._follow, name="runregistry-etcd-watch", daemon=True).start()

    def snapshot(self) -> list[Slot]:
        """Return the records reported to the watcher so far, judged again now."""
        return [
            self._slot(key, stored)
            for key, stored in self._delivered.items()
            if stored.record is not None
        ]

    def changes(self) -> list[Slot] | None:
        """Return the keys that changed since the last call, oldest change first.

        :raises EtcdError: etcd rejected the watch (for example, permission denied).
        """
        self._drain_pipe()
        with self._lock:
            pending, self._pending = self._pending, []
            failure = self._failure
        if failure is not None and not pending:
            raise failure
        slots = []
        for change in pending:
            if change.stored is None:
                self._delivered.pop(change.key, None)
                slots.append(Slot(change.key, vacated=change.vacated))
            else:
                self._delivered[change.key] = change.stored
                slots.append(self._slot(change.key, change.stored))
        return slots

    def fileno(self) -> int | None:
        """Return the pipe that becomes readable when changes are queued."""
        return self._read_fd

    def close(self) -> None:
        """Stop the watch thread and close the pipe."""
        self._closing.set()
        with self._lock:
            stream, self._stream = self._stream, None
            fds = (self._read_fd, self._write_fd)
            self._read_fd = self._write_fd = -1
        if stream is not None:
            stream.close()
        for fd in fds:
            if fd >= 0:
                os.close(fd)

    def _slot(self, key: str, stored: _Stored) -> Slot:
        record = stored.record
        if record is None:
            return Slot(key)
        registry = self._registry
        return Slot(key, record, registry.judge(record), local=registry.is_local(record))

    def _follow(self) -> None:
        """Follow the watch stream until closed, resuming after every failure; runs in a thread."""
        delay = _FIRST_RETRY_SECONDS
        failing = False
        resuming = False
        while not self._closing.is_set():
            try:
                if resuming and not self._history_kept():
                    self._relist()
                resuming = True
                self._watch_once()
            except _RestartWatchError:
                delay = _FIRST_RETRY_SECONDS
                resuming = False
                continue
            except _WatchRejectedError as exc:
                # Reported to the reader of the events, which would otherwise wait forever.
                self._fail(exc)
                return
            except Exception as exc:
                # The thread must outlive every failure, a bug included.
                if self._closing.is_set():
                    return
                if not failing:
                    log.warning(
                        "watch on etcd at %s interrupted: %s; resuming from revision %d",
                        self._client.urls,
                        exc,
                        self._revision + 1,
                        exc_info=not isinstance(exc, EtcdError),
                    )
                failing = True
            else:
                failing = False
            self._closing.wait(delay)
            delay = min(delay * 2, _MAX_RETRY_SECONDS)

    def _history_kept(self) -> bool:
        """Check whether etcd still has, at the last revision seen, exactly the keys known then.

        A watch resumed from a revision that etcd lost (it came back without
        its data and has since passed that revision) would silently skip
        writes, so the keys known at that revision are compared first.
        """
        try:
            _, kvs = self._registry.read_runs(revision=self._revision, keys_only=True)
        except EtcdError as exc:
            if exc.code != CODE_OUT_OF_RANGE:
                raise
            # Compacted, or a future revision for an etcd that lost its data.
            log.warning(
                "etcd at %s no longer has revision %d: %s; listing the records again",
                self._client.urls,
                self._revision,
                exc,
            )
            return False
        found = {self._key(kv): _versions(kv) for kv in kvs}
        known = {key: (s.create_revision, s.mod_revision) for key, s in self._mirror.items()}
        if found == known:
            return True
        log.warning(
            "etcd at %s has other keys at revision %d than this watch saw, so it lost its data; "
            "listing the records again",
            self._client.urls,
            self._revision,
        )
        return False

    def _watch_once(self) -> None:
        """Open a watch from the next revision and apply its messages until it ends."""
        prefix = self._keys.app_prefix
        request = {
            "key": encode(prefix),
            "range_end": prefix_end(prefix),
            "start_revision": str(self._revision + 1),
            "prev_kv": True,
        }
        stream = self._client.open_stream("watch", {"create_request": request})
        with self._lock:
            if self._closing.is_set():
                stream.close()
                return
            self._stream = stream
        try:
            for message in stream:
                self._on_message(message)
        finally:
            with self._lock:
                self._stream = None
            stream.close()

    def _on_message(self, message: JsonObject) -> None:
        if message.get("created"):
            self._check_data_kept(message.get("header", {}))
        if message.get("canceled"):
            compacted = number(message, "compact_revision")
            if not compacted:
                reason = message.get("cancel_reason") or "no reason given"
                raise _WatchRejectedError(
                    f"etcd at {self._client.urls} canceled the watch on {self._keys.app_prefix}: "
                    f"{reason}; check that the etcd user may read that whole prefix"
                )
            log.warning(
                "etcd at %s compacted revision %d that this watch needs; listing the records again",
                self._client.urls,
                self._revision + 1,
            )
            self._relist()
            raise _RestartWatchError
        events = message.get("events")
        if events:
            self._on_events(events)

    def _check_data_kept(self, header: JsonObject) -> None:
        """Relist when etcd's revision or term went back, or its cluster id changed."""
        revision = number(header, "revision")
        term = number(header, "raft_term")
        cluster = str(header.get("cluster_id", ""))
        lost = (
            revision < self._revision
            or term < self._raft_term
            or (bool(self._cluster_id) and cluster != self._cluster_id)
        )
        if not lost:
            self._raft_term = max(self._raft_term, term)
            return
        log.warning(
            "etcd at %s is at revision %d and term %d, below the revision %d and term %d "
            "seen before: it lost its data; listing the records again",
            self._client.urls,
            revision,
            term,
            self._revision,
            self._raft_term,
        )
        self._relist()
        raise _RestartWatchError

    def _on_events(self, events: list[JsonObject]) -> None:
        # A writer puts its removal marker in the transaction that deletes the
        # record, so both carry the same revision. etcd never splits the events
        # of one revision over two messages.
        removed_at: dict[int, set[str]] = {}
        for event in events:
            kv = event.get("kv", {})
            key = self._key(kv)
            if key.startswith(self._keys.removals) and event.get("type") != "DELETE":
                removed_at.setdefault(number(kv, "mod_revision"), set()).update(_names(kv))

        changes = []
        for event in events:
            kv = event.get("kv", {})
            key = self._key(kv)
            revision = number(kv, "mod_revision")
            self._revision = max(self._revision, revision)
            if not key.startswith(self._keys.runs):
                continue
            if event.get("type") != "DELETE":
                stored = self._stored(kv)
                self._mirror[key] = stored
                changes.append(_Change(key, stored))
            elif self._mirror.pop(key, None) is not None:
                self._registry.forget(kv.get("key"))
                reason = REMOVED if key in removed_at.get(revision, ()) else LEASE_EXPIRED
                changes.append(_Change(key, None, reason))
        self._queue(changes)

    def _relist(self) -> None:
        """List every record again and queue the differences from what was known."""
        header, kvs = self._registry.read_runs()
        fresh = {self._key(kv): self._stored(kv) for kv in kvs}
        reasons: dict[int, str] = {}
        changes = []
        for key, old in self._mirror.items():
            new = fresh.get(key)
            if new is not None and (new.lease, new.create_revision) == (
                old.lease,
                old.create_revision,
            ):
                if new.mod_revision != old.mod_revision:
                    changes.append(_Change(key, new))
                continue
            # Gone, or published again under another lease: the old run stopped.
            if old.lease not in reasons:
                reasons[old.lease] = self._vacated_reason(old.lease)
            changes.append(_Change(key, None, reasons[old.lease]))
            if new is not None:
                changes.append(_Change(key, new))
        changes.extend(_Change(key, new) for key, new in fresh.items() if key not in self._mirror)
        self._registry.forget_all_but(kv.get("key") for kv in kvs)

        self._mirror = fresh
        self._revision = 0
        self._raft_term = 0
        self._cluster_id = ""
        self._note_header(header)
        self._queue(changes)

    def _vacated_reason(self, lease: int) -> str:
        """Tell why a key that vanished unseen went: its lease is gone, or its writer removed it."""
        if not lease:
            return REMOVED
        try:
            answer = self._client.call("lease/timetolive", {"ID": str(lease)})
        except EtcdError as exc:
            if exc.code == CODE_NOT_FOUND:
                return LEASE_EXPIRED
            raise
        return LEASE_EXPIRED if number(answer, "TTL") <= 0 else REMOVED

    def _note_header(self, header: JsonObject) -> None:
        self._revision = max(self._revision, number(header, "revision"))
        self._raft_term = max(self._raft_term, number(header, "raft_term"))
        self._cluster_id = str(header.get("cluster_id", "")) or self._cluster_id

    def _queue(self, changes: list[_Change]) -> None:
        if not changes:
            return
        with self._lock:
            self._pending.extend(changes)
            self._wake()

    def _fail(self, failure: EtcdError) -> None:
        log.warning("%s", failure)
        with self._lock:
            self._failure = failure
            self._wake()

    def _wake(self) -> None:
        """Make the pipe readable; called with the lock held."""
        if self._write_fd >= 0:
            # A full pipe already contains wake-ups that the watcher has not read.
            with contextlib.suppress(BlockingIOError):
                os.write(self._write_fd, b"\0")

    def _drain_pipe(self) -> None:
        with contextlib.suppress(OSError):
            while os.read(self._read_fd, 4096):
                pass

    def _key(self, kv: JsonObject) -> str:
        return decode(kv.get("key")).decode("utf-8", "replace")

    def _stored(self, kv: JsonObject) -> _Stored:
        return _Stored(
            self._registry.decode_kv(kv).record,
            number(kv, "lease"),
            number(kv, "create_revision"),
            number(kv, "mod_revision"),
        )


def _versions(kv: JsonObject) -> tuple[int, int]:
    return number(kv, "create_revision"), number(kv, "mod_revision")


def _names(kv: JsonObject) -> list[str]:
    """Return the keys a removal marker names; an unreadable marker names none."""
    try:
        names = json.loads(decode(kv.get("value")))
    except ValueError:
        return []
    if not isinstance(names, list):
        return []
    return [name for name in names if isinstance(name, str)]
