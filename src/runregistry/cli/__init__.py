"""The ``runregistry`` command line."""

from __future__ import annotations

import argparse
from typing import TypeAlias

from ._app import main

# The object argparse returns from add_subparsers(), which each command module extends.
SubParsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"

__all__ = ["SubParsers", "main"]
