"""Module loggers that do not import :mod:`logging` until something could be emitted.

Importing :mod:`logging` costs several milliseconds, a large share of the
command line's start-up budget. A debug record reaches a handler only after the
application has imported and configured logging, so until ``logging`` is
imported by someone else, debug messages are dropped without importing it.
Warnings always import it, because Python prints them even without a handler.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import logging


class LazyLogger:
    """A stand-in for ``logging.getLogger(name)`` with the same lazy ``%`` arguments."""

    __slots__ = ("_logger", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self._logger: logging.Logger | None = None

    def debug(self, message: str, *args: object) -> None:
        """Log *message* at debug level, if logging is in use at all."""
        if self._logger is None and "logging" not in sys.modules:
            return
        self._get().debug(message, *args, stacklevel=2)

    def warning(self, message: str, *args: object) -> None:
        """Log *message* at warning level."""
        self._get().warning(message, *args, stacklevel=2)

    def _get(self) -> logging.Logger:
        if self._logger is None:
            import logging

            self._logger = logging.getLogger(self.name)
        return self._logger


def get_logger(name: str) -> LazyLogger:
    """Return the lazy logger for module *name*."""
    return LazyLogger(name)
