"""Find the live local processes that serve an HTTP control plane.

A process publishes a :class:`Record` (pid, address, session id, agent, start
time) while it serves; readers list the live ones and find one by pid, address
or session id. Records live in one JSON file per process, in the same format as
docker-agent's Go package ``runregistry``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._base import BaseRegistry, Cleanup, Entry, Registration
from ._errors import (
    AmbiguousRunError,
    CallRefusedError,
    InsecureBackendError,
    InvalidRecordError,
    NoRunError,
    RegistryError,
    StillRunningError,
    StopRefusedError,
    UnsafeRegistryError,
    WaitTimeoutError,
)
from ._liveness import Liveness
from ._record import Record
from .backends.file import Registry, default_registry

if TYPE_CHECKING:
    from ._calling import CallResult
    from ._tokens import new_token
    from ._watching import RunEvent
    from .backends.etcd import EtcdRegistry

__version__ = "0.1.0"

__all__ = [
    "AmbiguousRunError",
    "BaseRegistry",
    "CallRefusedError",
    "CallResult",
    "Cleanup",
    "Entry",
    "EtcdRegistry",
    "InsecureBackendError",
    "InvalidRecordError",
    "Liveness",
    "NoRunError",
    "Record",
    "Registration",
    "Registry",
    "RegistryError",
    "RunEvent",
    "StillRunningError",
    "StopRefusedError",
    "UnsafeRegistryError",
    "WaitTimeoutError",
    "__version__",
    "default_registry",
    "find",
    "latest",
    "list_runs",
    "new_token",
    "write",
]

# Names whose modules only some programs need; imported on first use to keep
# the command line's start-up fast.
_LAZY = {
    "CallResult": "._calling",
    "RunEvent": "._watching",
    "EtcdRegistry": ".backends.etcd",
    "new_token": "._tokens",
}


def __getattr__(name: str) -> object:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'runregistry' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module_name, __name__), name)


def write(record: Record) -> Cleanup:
    """Publish *record* in the default registry; see :meth:`Registry.write`."""
    return default_registry().write(record)


def list_runs() -> list[Record]:
    """Return the live records of the default registry, oldest first."""
    return default_registry().list()


def latest() -> Record | None:
    """Return the most recently started live record of the default registry, or None."""
    return default_registry().latest()


def find(target: str = "") -> Record:
    """Resolve *target* in the default registry; see :meth:`Registry.find`."""
    return default_registry().find(target)
