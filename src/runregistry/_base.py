"""What every registry offers, whatever stores its records.

A backend implements :meth:`BaseRegistry.write` and :meth:`BaseRegistry.entries`.
Lookup, registration, waiting, watching, stopping and calling are built here
on those two, so the file and etcd backends behave alike.
"""

from __future__ import annotations

import builtins
import os
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Literal, NamedTuple

from ._liveness import LIVE, UNKNOWN, Liveness, local_hostname, started_at_now
from ._lookup import newest, resolve, sort_key, target_pid
from ._record import Record

if TYPE_CHECKING:
    from types import TracebackType

    from ._calling import CallResult
    from ._watching import ChangeSource, EventStream, RunEvent

EntryKind = Literal["record", "invalid", "temporary"]


class Entry(NamedTuple):
    """One stored item as a reader saw it: a judged record, an invalid file or a leftover."""

    kind: EntryKind
    # Full path of the file, or the key in a key-value backend.
    path: str
    # None unless kind is "record".
    record: Record | None
    # None unless kind is "record".
    liveness: Liveness | None
    # Why an invalid entry was skipped, or why a leftover is removable; "" otherwise.
    problem: str = ""


class Cleanup:
    """Removes one published record; calling it again, or after the record is gone, does nothing."""

    def __init__(self, record: Record, remove: Callable[[], None]) -> None:
        self.record = record
        self._remove = remove
        self._owner_pid = os.getpid()
        self._done = False

    def __call__(self) -> None:
        # A child created by fork() inherits this object, but the record is its
        # parent's: only the process that wrote it may remove it.
        if self._done or os.getpid() != self._owner_pid:
            return
        self._done = True
        self._remove()

    def __repr__(self) -> str:
        state = "done" if self._done else "pending"
        return f"<Cleanup {state} for {self.record}>"


class Registration:
    """Context manager returned by :meth:`BaseRegistry.register`; yields the published record."""

    def __init__(self, registry: BaseRegistry, record: Record) -> None:
        self._registry = registry
        self._record = record
        self._cleanup: Cleanup | None = None

    def __enter__(self) -> Record:
        self._cleanup = self._registry.write(self._record)
        return self._cleanup.record

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        # Runs on a normal exit, an exception and KeyboardInterrupt alike.
        if self._cleanup is not None:
            self._cleanup()


class BaseRegistry(ABC):
    """The registry API shared by every backend."""

    @property
    @abstractmethod
    def location(self) -> str:
        """Where the records are kept, for messages: a directory or an endpoint and prefix."""

    @property
    def how_to_start(self) -> str:
        """One clause telling how to start a run, appended to "no run" messages."""
        return (
            "start one with: runregistry exec --port auto -- COMMAND, "
            "or from Python with registry.register(addr=...)"
        )

    def accepts_tokens(self) -> None:
        """Check, without writing anything, that this registry would publish a record with a token.

        ``runregistry exec --token auto`` calls it before it starts the command.
        The base implementation accepts; a backend that would expose tokens
        overrides it.

        :raises InsecureBackendError: a record with a token would be rejected;
            the message says why and what to change.
        """

    @abstractmethod
    def write(self, record: Record) -> Cleanup:
        """Publish *record* atomically, replacing any record of the same process.

        Returns a :class:`Cleanup` that removes the record, only in the process
        that wrote it and only while the stored record is still this one.
        """

    @abstractmethod
    def entries(self, *, prune: bool = True) -> list[Entry]:
        """Read and judge every stored item, in no particular order.

        With *prune*, stale records and leftovers are removed on a best-effort
        basis, and only if they are still what was judged.
        """

    def list(self, *, include_unknown: bool = False) -> list[Record]:
        """Return the live records, oldest ``started_at`` first (ties: lower pid first).

        Stale records are skipped and removed on a best-effort basis. With
        *include_unknown*, records whose state cannot be judged here (written on
        another host) are included; :meth:`entries` returns their reason.
        """
        records = self._live_records(include_unknown=include_unknown)
        records.sort(key=sort_key)
        return records

    # builtins.list, because inside the class body `list` names the method above.
    def _live_records(self, *, include_unknown: bool = False) -> builtins.list[Record]:
        """Return the records that :meth:`list` returns, unsorted.

        :meth:`latest` and :meth:`find` use it, because sorting would cost them
        more than picking their answer does.
        """
        wanted = (LIVE, UNKNOWN) if include_unknown else (LIVE,)
        return [
            entry.record
            for entry in self.entries()
            if entry.record is not None
            and entry.liveness is not None
            and entry.liveness.state in wanted
        ]

    def latest(self) -> Record | None:
        """Return the most recently started live record, or None when there is none."""
        return newest(self._live_records())

    def find(self, target: str = "") -> Record:
        """Return the one live record that *target* names.

        Empty means the latest run; digits a pid; ``http://`` or ``https://``
        an address (trailing slashes ignored); ``HOST:PID`` a host's pid;
        anything else a session id, exact match first, then a unique substring.

        :raises NoRunError: nothing matches; the message names the registry.
        :raises AmbiguousRunError: several runs match; ``candidates`` lists them.
        """
        text = target.strip()
        pid = target_pid(text)
        records = self._records_for_pid(pid) if pid is not None else self._live_records()
        return resolve(text, records, where=self.location, how_to_start=self.how_to_start)

    def _records_for_pid(self, pid: int) -> Sequence[Record]:
        """Return the live records with *pid*; backends override this to read less."""
        return [record for record in self._live_records() if record.pid == pid]

    def register(
        self,
        addr: str,
        session_id: str | None = None,
        agent: str = "",
        *,
        token: str | None = None,
    ) -> Registration:
        """Publish a record for this process for the duration of a ``with`` block.

        ``pid`` is this process, ``started_at`` is now, ``session_id`` defaults
        to a fresh UUID4. The record is removed when the block exits, normally,
        by an exception or by KeyboardInterrupt. If the process is killed
        (SIGTERM with no handler, SIGKILL), the writer's lock is released by the
        kernel and the next reader judges the record stale and removes it.
        """
        if session_id is None:
            import uuid

            session_id = str(uuid.uuid4())
        record = Record(
            os.getpid(),
            addr,
            session_id,
            agent,
            started_at_now(),
            host=local_hostname(),
            token=token,
        )
        return Registration(self, record)

    def wait(self, target: str = "", *, timeout: float | None = None, new: bool = False) -> Record:
        """Block until *target* resolves to a live run and return its record.

        *timeout* is in seconds; None waits forever and 0 checks once. With
        *new*, only runs started after this call began count.

        :raises WaitTimeoutError: the timeout expired first.
        :raises AmbiguousRunError: the target matches several live runs.
        """
        from ._waiting import wait

        return wait(self, target, timeout=timeout, new=new)

    def watch(self, *, initial: bool = False) -> EventStream:
        """Yield a :class:`RunEvent` each time a run starts or stops, until closed.

        With *initial*, the live runs come first (``initial=True``), then one
        ``synced`` event. The stream is an iterator, a context manager, and
        has ``close()``, which releases its descriptors.
        """
        from ._watching import watch

        return watch(self, initial=initial)

    def awatch(self, *, initial: bool = False) -> AsyncGenerator[RunEvent, None]:
        """Asynchronous counterpart of :meth:`watch`; ``aclose()`` releases its descriptors."""
        from ._watching import awatch

        return awatch(self, initial=initial)

    def is_local(self, record: Record) -> bool:
        """Whether *record* was written on this machine, so that its pid names a process here.

        Only such a run may be stopped. This default compares host names; a
        backend that tells machines apart by more (the etcd backend's machine
        id) overrides it.
        """
        return record.host is None or record.host == local_hostname()

    def change_source(self) -> ChangeSource:
        """Return the feed of record changes that watch, awatch and wait read.

        This default reads every record at each poll; a backend with change
        notifications overrides it (see :class:`runregistry._watching.ChangeSource`).
        """
        from ._watching import PollingSource

        return PollingSource(self)

    def stop(self, target: str, *, timeout: float = 10.0, force: bool = False) -> Record:
        """Stop the live run that *target* names and return its record.

        :raises StopRefusedError: signalling the process would not be safe.
        :raises StillRunningError: the process still runs after *timeout* seconds.
        """
        from ._stopping import stop

        return stop(self, target, timeout=timeout, force=force)

    def call(
        self,
        target: str,
        path: str,
        *,
        method: str = "GET",
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = 10.0,
    ) -> CallResult:
        """Send one HTTP request to the control plane of the run that *target* names.

        The run's token goes as a bearer header unless *headers* has an
        Authorization header, a redirect is returned unfollowed, and *timeout*
        bounds the whole exchange in seconds.

        :raises CallRefusedError: a guard rejected the request; nothing was sent.
        :raises RegistryError: the connection failed or timed out.
        """
        from ._calling import call

        return call(self, target, path, method=method, body=body, headers=headers, timeout=timeout)

    def __enter__(self) -> BaseRegistry:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Release what the registry holds open; published records stay published."""
