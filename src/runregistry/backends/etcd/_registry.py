"""The etcd backend: runs of many machines under one key prefix, kept alive by leases."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Final, NamedTuple
from urllib.parse import urlsplit

from ..._base import BaseRegistry, Cleanup, Entry
from ..._errors import InsecureBackendError, InvalidRecordError, RegistryError
from ..._liveness import LIVE, RUNNING, Liveness, judge_identity, local_hostname
from ..._record import Record
from ._client import (
    GatewayClient,
    JsonObject,
    decode,
    encode,
    encode_bytes,
    number,
    prefix_end,
)
from ._identity import check_key_component, login_name, this_machine_id
from ._keys import KeyLayout
from ._lease import LeasePublisher
from ._settings import ENV_PASSWORD, ENV_USERNAME, Endpoint, connection_settings, prefix_from

if TYPE_CHECKING:
    from ..._watching import ChangeSource

log = logging.getLogger(__name__)

# Records are under 1 KiB; a larger value is not a record and is skipped.
MAX_RECORD_SIZE: Final = 64 * 1024

# Keys read per range request, so that a response stays a few megabytes however many
# records there are.
_PAGE_SIZE: Final = 5000


class Decoded(NamedTuple):
    """A key-value as read from etcd: its base64 value, its key, and its record or why not."""

    value: str
    key: str
    record: Record | None
    problem: str
    # The judgement of a record of another machine, which only its key's existence decides.
    remote_liveness: Liveness | None


class EtcdRegistry(BaseRegistry):
    """A registry kept in etcd, so that runs of many machines can be listed and found.

    *endpoints* is a URL, a comma-separated string of URLs, or a sequence of
    URLs. Records live under ``<prefix>/<user>/<app>/runs/<machine id>/<pid>-
    <started_at>``, each attached to the lease of the registry that wrote it.
    A key lives as long as its writer renews the lease. etcd deletes it when
    the writer dies or is cut off for longer than *ttl* seconds, and readers
    never delete keys.

    A record of this machine (same machine id and host name) is live only while
    its process also passes the same identity checks as in the file backend;
    records of other machines are live while their key exists.

    *ttl* is rounded up to whole seconds, and etcd raises it to its minimum
    (1.5 election timeouts rounded up to a second, 2 s with etcd's defaults).
    *user* is the key's user component (default: the etcd user name, else the
    login name). *host_name* and *machine_id* override this machine's identity,
    for tests and simulations of many hosts from one machine. *timeout* bounds
    each request in seconds. TLS files and credentials left None come from the
    environment (see the ``RUNREGISTRY_ETCD_*`` variables); the prefix too.

    Its threads are daemons, so they never keep the interpreter alive.

    :raises InsecureBackendError: an endpoint is plain HTTP and not on loopback,
        or a TLS endpoint that is not on loopback has no etcd user and password.
    :raises RegistryError: an endpoint, the app or a key component is invalid.
    """

    def __init__(
        self,
        endpoints: str | Sequence[str],
        *,
        app: str = "runregistry",
        ttl: float = 10.0,
        prefix: str | None = None,
        user: str | None = None,
        username: str | None = None,
        password: str | None = None,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
        host_name: str | None = None,
        machine_id: str | None = None,
        timeout: float = 5.0,
    ) -> None:
        self._settings = connection_settings(
            endpoints,
            ca_file=ca_file,
            cert_file=cert_file,
            key_file=key_file,
            username=username,
            password=password,
        )
        if not ttl > 0 or not math.isfinite(ttl):
            raise RegistryError(f"invalid lease ttl {ttl!r}: give a number of seconds above 0")
        if not timeout > 0:
            raise RegistryError(f"invalid timeout {timeout!r}: give a number of seconds above 0")

        self.app = check_key_component("app name", app)
        self.ttl = max(1, math.ceil(ttl))
        self.host_name = check_key_component("host name", host_name or local_hostname())
        self.machine_id = check_key_component("machine id", machine_id or this_machine_id())
        owner = user or self._settings.username or login_name()
        self.user = check_key_component("user name", owner)
        self.keys = KeyLayout(prefix_from(prefix), self.user, self.app)

        self.client = GatewayClient(
            self._settings.endpoints,
            ssl_context=self._settings.ssl_context(),
            credentials=self._settings.credentials,
            timeout=timeout,
        )
        self._publisher = LeasePublisher(self.client, self.keys, self.machine_id, self.ttl)
        self._warned_loopback = False
        # Decoded records by base64 key, with the base64 value they were decoded
        # from: a listing decodes only the keys and values that changed since the last.
        self._decoded: dict[str, Decoded] = {}
        # How the endpoints were chosen, for runregistry doctor.
        self.origin = "argument"

    @property
    def endpoints(self) -> tuple[Endpoint, ...]:
        """The etcd client URLs, in the order they are tried."""
        return self._settings.endpoints

    @property
    def secure(self) -> bool:
        """Whether every endpoint uses TLS and requests authenticate as an etcd user."""
        return self._settings.secure

    @property
    def location(self) -> str:
        return f"etcd {self.client.urls} under {self.keys.runs}"

    @property
    def how_to_start(self) -> str:
        return (
            f"start one with: runregistry --etcd {self.client.urls} exec --port auto -- COMMAND, "
            "or from Python with EtcdRegistry(...).register(addr=...)"
        )

    @property
    def lease(self) -> int | None:
        """The lease this registry's records are attached to, or None while it publishes none."""
        return self._publisher.lease

    def __repr__(self) -> str:
        return f"EtcdRegistry({self.client.urls!r}, app={self.app!r})"

    def accepts_tokens(self) -> None:
        """Check that a record with a token would be published: TLS and authentication.

        :raises InsecureBackendError: an endpoint is plain HTTP, or no etcd user is set.
        """
        if self.secure:
            return
        raise InsecureBackendError(
            f"a record with a control-plane token cannot go to etcd at {self.client.urls}: tokens "
            "are published only over TLS (https://) with an etcd user and password "
            f"(${ENV_USERNAME}, ${ENV_PASSWORD}); publish the record without a token"
        )

    def write(self, record: Record) -> Cleanup:
        """Publish *record* under this registry's lease, replacing any record of the same pid.

        ``host`` and ``machine_id`` are set to this registry's. The lease keeps
        the key alive instead of a lock, so ``lock`` is cleared. The returned
        cleanup's ``record`` is the record as stored. A loopback address is
        published with a warning, since other hosts cannot reach it.

        :raises InsecureBackendError: the record has a token and etcd is not
            reached over TLS with authentication.
        :raises InvalidRecordError: the address is not http(s) or the session id is empty.
        :raises RegistryError: etcd cannot be reached or rejected the write.
        """
        if record.token is not None:
            self.accepts_tokens()
        record = self._prepared(record)
        self._warn_if_loopback(record)
        publication = self._publisher.publish(record, self.keys.run_key(record, self.machine_id))
        log.debug("published %s under lease %x", publication.key, self._publisher.lease or 0)
        return Cleanup(record, lambda: self._publisher.unpublish(publication))

    def entries(self, *, prune: bool = True) -> list[Entry]:
        """Read and judge every record under this app's prefix; *prune* has no effect.

        Readers never delete keys: a dead writer's key goes when its lease expires.

        :raises RegistryError: etcd cannot be reached or rejected the request.
        """
        _, kvs = self.read_runs()
        entries = [self.entry(kv) for kv in kvs]
        if len(self._decoded) > len(kvs):
            self.forget_all_but(kv.get("key") for kv in kvs)
        return entries

    def read_runs(
        self, *, revision: int = 0, keys_only: bool = False
    ) -> tuple[JsonObject, list[JsonObject]]:
        """Return the header and the key-values of every record key, read at one revision.

        *revision* 0 reads the current one. With *keys_only*, values are left out.

        :raises EtcdError: etcd cannot be reached, or the revision was compacted or is
            in the future (code 11, out of range).
        """
        start = encode(self.keys.runs)
        end = prefix_end(self.keys.runs)
        header: JsonObject = {}
        kvs: list[JsonObject] = []
        while True:
            body: JsonObject = {"key": start, "range_end": end, "limit": str(_PAGE_SIZE)}
            if revision:
                # Later pages are read at the first page's revision: one consistent snapshot.
                body["revision"] = str(revision)
            if keys_only:
                body["keys_only"] = True
            answer = self.client.call("kv/range", body)
            header = header or answer.get("header", {})
            revision = revision or number(header, "revision")
            page = answer.get("kvs", [])
            kvs.extend(page)
            if not answer.get("more") or not page:
                return header, kvs
            # The next page starts right after the last key: the key plus a NUL byte.
            start = encode_bytes(decode(page[-1].get("key")) + b"\0")

    def entry(self, kv: JsonObject) -> Entry:
        """Decode and judge one key-value read from etcd."""
        decoded = self.decode_kv(kv)
        if decoded.record is None:
            log.debug("skipped etcd key %s: %s", decoded.key, decoded.problem)
            return Entry("invalid", decoded.key, None, None, decoded.problem)
        liveness = decoded.remote_liveness or judge_identity(decoded.record)
        return Entry("record", decoded.key, decoded.record, liveness)

    def decode_kv(self, kv: JsonObject) -> Decoded:
        """Return the key and record of a key-value read from etcd, decoding only what changed."""
        raw_key = kv.get("key") or ""
        value = kv.get("value") or ""
        cached = self._decoded.get(raw_key)
        if cached is not None and cached.value == value:
            return cached

        key = decode(raw_key).decode("utf-8", "replace")
        record, problem = self._decode_record(key, value)
        remote = None if record is None or self.is_local(record) else self.judge(record)
        decoded = Decoded(value, key, record, problem, remote)
        self._decoded[raw_key] = decoded
        return decoded

    def forget(self, raw_key: object) -> None:
        """Drop the decoded record of a deleted key (base64, as etcd sends it)."""
        if isinstance(raw_key, str):
            self._decoded.pop(raw_key, None)

    def forget_all_but(self, raw_keys: Iterable[object]) -> None:
        """Drop the decoded records of every key not in *raw_keys* (base64, as etcd sends them)."""
        present = set(raw_keys)
        # list() copies the keys in one step, while the watch thread may add some.
        for raw_key in list(self._decoded):
            if raw_key not in present:
                self._decoded.pop(raw_key, None)

    def is_local(self, record: Record) -> bool:
        """Tell whether *record* was published from this machine: same machine id and host name."""
        return record.machine_id == self.machine_id and record.host == self.host_name

    def judge(self, record: Record) -> Liveness:
        """Judge a record whose key exists: by its process here, by its lease elsewhere."""
        if self.is_local(record):
            return judge_identity(record)
        return Liveness(LIVE, RUNNING, f"published by host {record.host} under a live etcd lease")

    def change_source(self) -> ChangeSource:
        """Return the source of record changes that :meth:`watch` and :meth:`wait` follow."""
        from ._changes import EtcdChangeSource

        return EtcdChangeSource(self)

    def close(self) -> None:
        """Stop renewing the lease and close idle connections.

        Records whose cleanup has not run stay in etcd until the lease expires,
        within ``ttl`` seconds; writing afterwards raises :class:`RegistryError`.
        """
        self._publisher.close()
        self.client.close()

    def _prepared(self, record: Record) -> Record:
        if not record.addr.startswith(("http://", "https://")) or len(record.addr) <= len(
            "https://"
        ):
            raise InvalidRecordError(
                f"addr {record.addr!r} is not an HTTP address: give one such as "
                "http://build-host.example.com:8765"
            )
        if not record.session_id.strip():
            raise InvalidRecordError(
                "session_id is empty: give a session id, or let register() make one"
            )
        return record.replace(host=self.host_name, machine_id=self.machine_id, lock=None)

    def _warn_if_loopback(self, record: Record) -> None:
        host = urlsplit(record.addr).hostname or ""
        loopback = Endpoint("http", host, 80).loopback
        if not loopback:
            return
        if self._warned_loopback:
            log.debug("published loopback address %s to etcd", record.addr)
            return
        self._warned_loopback = True
        log.warning(
            "publishing loopback address %s to etcd: other hosts cannot reach it; listen on "
            "a reachable address, or use runregistry exec --advertise-host HOST",
            record.addr,
        )

    def _decode_record(self, key: str, value: str) -> tuple[Record | None, str]:
        parts = self.keys.parse_run_key(key)
        if parts is None:
            return None, "not a record key: expected runs/<machine id>/<pid>-<started_at>"
        data = decode(value)
        if len(data) > MAX_RECORD_SIZE:
            return None, f"{len(data)} bytes, more than the {MAX_RECORD_SIZE}-byte limit"
        try:
            record = Record.from_json(data)
        except InvalidRecordError as exc:
            return None, str(exc)
        if record.pid != parts.pid or record.machine_id != parts.machine_id:
            return None, (
                f"the key names pid {parts.pid} on machine {parts.machine_id}, but the record "
                f"holds pid {record.pid} on machine {record.machine_id}"
            )
        return record, ""
