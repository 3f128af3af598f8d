"""Exceptions raised by runregistry; every one is a :class:`RegistryError`."""

from __future__ import annotations

from collections.abc import Sequence


class RegistryError(Exception):
    """Base class for every error runregistry raises on purpose.

    The message states what failed, on which value, and what to do next, so a
    command-line front end can print it as one line.
    """


class InvalidRecordError(RegistryError, ValueError):
    """A record's bytes or fields are not a valid run record."""


class UnsafeRegistryError(RegistryError):
    """The registry directory is not safe to trust: another user could plant records."""

    def __init__(self, message: str, path: str) -> None:
        super().__init__(message)
        self.path = path


class NoRunError(RegistryError, LookupError):
    """No live run matches the request."""

    def __init__(self, message: str, target: str = "", directory: str = "") -> None:
        super().__init__(message)
        self.target = target
        self.directory = directory


class AmbiguousRunError(RegistryError, LookupError):
    """A target matches more than one live run; :attr:`candidates` lists their session ids."""

    def __init__(self, message: str, target: str, candidates: Sequence[str]) -> None:
        super().__init__(message)
        self.target = target
        self.candidates: list[str] = list(candidates)


class WaitTimeoutError(RegistryError, TimeoutError):
    """A wait for a run expired before the target resolved."""

    def __init__(self, message: str, target: str, timeout: float) -> None:
        super().__init__(message)
        self.target = target
        self.timeout = timeout


class StillRunningError(RegistryError):
    """A stopped run's process was still running when the timeout expired."""

    def __init__(self, message: str, pid: int) -> None:
        super().__init__(message)
        self.pid = pid


class StopRefusedError(RegistryError):
    """A stop request was rejected because signalling the process would not be safe."""

    def __init__(self, message: str, target: str) -> None:
        super().__init__(message)
        self.target = target


class CallRefusedError(RegistryError):
    """A call was rejected before connecting because sending it would not be safe.

    Raised for an address that is not ``http`` or ``https``, and for a
    credential that would cross a network unencrypted.
    """

    def __init__(self, message: str, target: str) -> None:
        super().__init__(message)
        self.target = target


class InsecureBackendError(RegistryError):
    """A backend connection would expose records or tokens to other parties."""
