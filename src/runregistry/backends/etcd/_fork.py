"""Resetting connections, locks and threads that a child created by fork() must not share."""

from __future__ import annotations

import os
import weakref
from typing import Protocol


class ForkAware(Protocol):
    """An object that drops its parent's connections, locks and threads in a forked child."""

    def reset_after_fork(self) -> None:
        """Forget what belongs to the parent process; called in the child right after fork()."""


_objects: weakref.WeakSet[ForkAware] = weakref.WeakSet()


def reset_after_fork(obj: ForkAware) -> None:
    """Call ``obj.reset_after_fork()`` in every child this process forks, while *obj* lives."""
    _objects.add(obj)


def _reset_all() -> None:
    # A socket shared with the parent would interleave two processes' requests
    # on one connection, and a lock held by another parent thread at the
    # moment of fork() would stay held forever in the child.
    for obj in list(_objects):
        obj.reset_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_all)
