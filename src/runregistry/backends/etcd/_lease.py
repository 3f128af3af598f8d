"""Publishing records under one etcd lease, keeping it alive, and recovering when it is lost.

A writing registry holds one lease for all its records. A daemon thread
renews it at a third of its TTL. When the lease is lost (etcd was unreachable
for longer than the TTL, or came back without its data), the thread grants a
new lease and publishes every record again as soon as etcd responds. Failures
are logged as warnings and retried; they never reach the application.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Sequence
from typing import Final

from ..._errors import RegistryError
from ..._record import Record
from ._client import (
    CODE_NOT_FOUND,
    EtcdError,
    GatewayClient,
    JsonObject,
    decode,
    encode,
    encode_bytes,
    number,
    prefix_end,
)
from ._fork import reset_after_fork
from ._keys import KeyLayout

log = logging.getLogger(__name__)

# etcd rejects a transaction of more than --max-txn-ops operations (128 by default).
_MAX_TXN_OPS: Final = 100

# First retry after a failed renewal; the delay doubles up to the renewal interval.
_FIRST_RETRY_SECONDS: Final = 0.25


class Publication:
    """A record this registry published: its key and the exact value stored."""

    __slots__ = ("key", "record", "value")

    def __init__(self, key: str, value: bytes, record: Record) -> None:
        self.key = key
        self.value = value
        self.record = record


class LeasePublisher:
    """Publishes and removes records under one lease, renewed by a background thread."""

    def __init__(self, client: GatewayClient, layout: KeyLayout, machine_id: str, ttl: int) -> None:
        self._client = client
        self._layout = layout
        self._machine_id = machine_id
        self._ttl = ttl
        self._lock = threading.RLock()
        self._published: dict[str, Publication] = {}
        self._lease: int | None = None
        self._granted_ttl = ttl
        # True while the current lease lacks records that were published under a lost one.
        self._dirty = False
        self._stopping: threading.Event | None = None
        self._closed = False
        reset_after_fork(self)

    @property
    def lease(self) -> int | None:
        """The current lease id, or None when none is held."""
        return self._lease

    @property
    def granted_ttl(self) -> int:
        """The lease TTL etcd granted, in whole seconds; at least the TTL requested."""
        return self._granted_ttl

    def publish(self, record: Record, key: str) -> Publication:
        """Store *record* under *key* and the lease, replacing other records of its pid.

        :raises EtcdError: etcd cannot be reached or rejected the write.
        :raises RegistryError: the registry was closed.
        """
        value = record.to_json()
        with self._lock:
            if self._closed:
                raise RegistryError("this EtcdRegistry is closed: create a new one to publish")
            self._restore()
            replaced = self._other_keys_of_pid(record.pid, key)
            try:
                self._put(key, value, replaced)
            except EtcdError as exc:
                if exc.code != CODE_NOT_FOUND:
                    raise
                # The lease expired after its last renewal; a new one holds this record too.
                self._lost_lease()
                self._put(key, value, replaced)
            for name in replaced:
                self._published.pop(name, None)
            publication = Publication(key, value, record)
            self._published[key] = publication
            self._start_keeper()
        return publication

    def unpublish(self, publication: Publication) -> None:
        """Remove *publication*'s key if it is still this registry's.

        A failure to reach etcd is logged as a warning, not raised: the key
        then goes when the lease expires. When the last record goes, the lease
        is revoked and renewal stops.
        """
        with self._lock:
            if self._published.get(publication.key) is not publication:
                return
            del self._published[publication.key]
            if self._lease is not None:
                self._delete(publication.key, self._lease)
            if not self._published:
                self._retire()

    def close(self) -> None:
        """Stop renewing the lease; records not removed yet vanish when it expires."""
        with self._lock:
            self._closed = True
            self._stop_keeper()

    def reset_after_fork(self) -> None:
        """Forget the parent's records, lease and thread: a child publishes under its own lease."""
        self._lock = threading.RLock()
        self._published = {}
        self._lease = None
        self._dirty = False
        self._stopping = None

    def _restore(self) -> None:
        """Grant a lease if none is held, and publish again what a lost lease took along."""
        if self._lease is None:
            answer = self._client.call("lease/grant", {"TTL": str(self._ttl)})
            self._lease = number(answer, "ID")
            self._granted_ttl = max(number(answer, "TTL"), self._ttl)
            self._dirty = bool(self._published)
            log.debug("granted etcd lease %x with a TTL of %d s", self._lease, self._granted_ttl)
        if not self._dirty:
            return

        publications = list(self._published.values())
        for start in range(0, len(publications), _MAX_TXN_OPS):
            batch = publications[start : start + _MAX_TXN_OPS]
            self._transaction([self._put_operation(p.key, p.value) for p in batch])
        self._dirty = False
        log.warning(
            "published %d record(s) again in etcd at %s under new lease %x",
            len(publications),
            self._client.urls,
            self._lease,
        )

    def _lost_lease(self) -> None:
        log.warning(
            "etcd lease %x at %s is gone: etcd was unreachable for longer than its TTL of %d s, "
            "or lost its data; granting a new lease",
            self._lease or 0,
            self._client.urls,
            self._granted_ttl,
        )
        self._lease = None
        self._restore()

    def _other_keys_of_pid(self, pid: int, key: str) -> list[str]:
        prefix = self._layout.pid_prefix(self._machine_id, pid)
        answer = self._client.call(
            "kv/range", {"key": encode(prefix), "range_end": prefix_end(prefix), "keys_only": True}
        )
        keys = [_text(kv.get("key")) for kv in answer.get("kvs", [])]
        return [name for name in keys if name != key]

    def _put(self, key: str, value: bytes, replaced: Sequence[str]) -> None:
        operations = [self._put_operation(key, value)]
        operations += [{"request_delete_range": {"key": encode(name)}} for name in replaced]
        if replaced:
            operations.append(self._removal_marker(replaced))
        self._transaction(operations)

    def _delete(self, key: str, lease: int) -> None:
        # Deleted only while the key still holds this lease: a key this process
        # no longer owns is left alone.
        compare = {"key": encode(key), "target": "LEASE", "result": "EQUAL", "lease": str(lease)}
        operations = [{"request_delete_range": {"key": encode(key)}}, self._removal_marker([key])]
        try:
            self._transaction(operations, compare=[compare])
        except EtcdError as exc:
            log.warning(
                "cannot remove record %s from etcd at %s: %s; it disappears when lease %x "
                "expires, within %d s",
                key,
                self._client.urls,
                exc,
                lease,
                self._granted_ttl,
            )

    def _removal_marker(self, keys: Sequence[str]) -> JsonObject:
        # The marker is put in the same transaction as the deletion, so a watcher
        # receives both at one revision and can tell that the writer removed the record.
        assert self._lease is not None
        marker = self._layout.removal_key(self._machine_id, self._lease)
        return self._put_operation(marker, json.dumps(list(keys)).encode())

    def _put_operation(self, key: str, value: bytes) -> JsonObject:
        return {
            "request_put": {
                "key": encode(key),
                "value": encode_bytes(value),
                "lease": str(self._lease),
            }
        }

    def _transaction(
        self, operations: list[JsonObject], *, compare: list[JsonObject] | None = None
    ) -> None:
        body: JsonObject = {"success": operations}
        if compare:
            body["compare"] = compare
        self._client.call("kv/txn", body)

    def _start_keeper(self) -> None:
        if self._stopping is not None:
            return
        self._stopping = threading.Event()
        thread = threading.Thread(
            target=self._keep_alive,
            args=(self._stopping,),
            name=f"runregistry-etcd-lease-{os.getpid()}",
            daemon=True,
        )
        thread.start()

    def _stop_keeper(self) -> None:
        if self._stopping is not None:
            self._stopping.set()
            self._stopping = None

    def _retire(self) -> None:
        self._stop_keeper()
        lease, self._lease = self._lease, None
        if lease is None:
            return
        try:
            self._client.call("lease/revoke", {"ID": str(lease)})
        except EtcdError as exc:
            log.debug("revoking etcd lease %x failed, it expires by itself: %s", lease, exc)

    def _keep_alive(self, stopping: threading.Event) -> None:
        """Renew the lease until *stopping* is set; runs in the keeper thread."""
        delay = self._granted_ttl / 3
        failing = False
        while not stopping.wait(delay):
            try:
                self._renew(stopping)
            except Exception as exc:
                # The thread must outlive every failure, a bug included. Retries
                # start fast, so that records return soon after etcd does.
                delay = min(delay * 2, self._granted_ttl / 3) if failing else _FIRST_RETRY_SECONDS
                if not failing:
                    # A bug shows its traceback; an unreachable etcd needs no more than its message.
                    log.warning(
                        "cannot renew the etcd lease at %s: %s; retrying until etcd responds",
                        self._client.urls,
                        exc,
                        exc_info=not isinstance(exc, EtcdError),
                    )
                failing = True
                continue
            if failing:
                log.warning("etcd at %s responds again; records stay published", self._client.urls)
            failing = False
            delay = self._granted_ttl / 3

    def _renew(self, stopping: threading.Event) -> None:
        with self._lock:
            if stopping.is_set():
                return
            lease = self._lease
            if lease is None or self._dirty:
                self._restore()
                return

        answer = self._client.call("lease/keepalive", {"ID": str(lease)})
        if number(answer, "TTL") > 0:
            return

        # A keep-alive response without a TTL means that etcd no longer has the lease.
        with self._lock:
            if self._lease == lease and not stopping.is_set():
                self._lost_lease()


def _text(value: object) -> str:
    return decode(value if isinstance(value, str) else None).decode("utf-8", "replace")
