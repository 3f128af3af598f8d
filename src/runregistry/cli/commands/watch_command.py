"""``runregistry watch``: not built yet."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .. import SubParsers


def add_parser(subparsers: SubParsers) -> None:
    """Register no parser until the command exists."""
