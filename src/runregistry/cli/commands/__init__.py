"""One module per command; each has ``add_parser(subparsers)`` and sets ``run`` on its namespace.

Modules here import only what building their parser needs; the work of a
command imports its own dependencies when it runs, so that ``runregistry
list`` does not pay for ``exec`` or ``call``.

The shell completion scripts are generated from the parsers, and a positional
argument whose ``dest`` is ``target`` is completed with the pids and session
ids of live runs. A ``formatter_class`` that subclasses argparse's
``HelpFormatter`` is sized without importing ``shutil``.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Final

# Every command module, in the order in which ``runregistry --help`` lists the commands.
MODULES: Final = (
    "list_command",
    "find_command",
    "dir_command",
    "prune_command",
    "wait_command",
    "watch_command",
    "stop_command",
    "exec_command",
    "call_command",
    "doctor_command",
    "completion_command",
)

# The module of each command name and alias. Running a command named here
# imports and builds only its own parser; any other word builds them all.
NAMES: Final = {
    "list": "list_command",
    "ls": "list_command",
    "find": "find_command",
    "dir": "dir_command",
    "prune": "prune_command",
    "wait": "wait_command",
    "watch": "watch_command",
    "stop": "stop_command",
    "exec": "exec_command",
    "call": "call_command",
    "doctor": "doctor_command",
    "completion": "completion_command",
    "__complete": "completion_command",
}


def load(module: str) -> ModuleType:
    """Import the command module named *module*, such as ``"list_command"``."""
    return importlib.import_module(f"{__name__}.{module}")


def load_all() -> list[ModuleType]:
    """Import every command module, in the order of :data:`MODULES`."""
    return [load(module) for module in MODULES]
