"""One module per command; each has ``add_parser(subparsers)`` and sets ``run`` on its namespace.

Modules here import only what building their parser needs; the work of a
command imports its own dependencies when it runs, so that ``runregistry
list`` does not pay for ``exec`` or ``call``.
"""

from __future__ import annotations

from . import (
    call_command,
    completion_command,
    dir_command,
    doctor_command,
    exec_command,
    find_command,
    list_command,
    prune_command,
    stop_command,
    wait_command,
    watch_command,
)

ALL = (
    list_command,
    find_command,
    dir_command,
    prune_command,
    wait_command,
    watch_command,
    stop_command,
    exec_command,
    call_command,
    doctor_command,
    completion_command,
)
