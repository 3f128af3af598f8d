"""The timed calls: runregistry's operations, the plain-Python reference and the peers.

Jupyter and TensorBoard are imported only when installed (they live in
``bench/.venv``); a peer that is missing is reported as skipped.
"""

from __future__ import annotations

import importlib
import os
import tempfile
from collections.abc import Callable, Sized
from types import ModuleType

from runregistry import Record, Registry

from . import floors, reference
from .targets import GO_POPULATION, PARTS, REFERENCE, RUNREGISTRY
from .timing import Case

REFERENCE_BUFFERED = "plain Python, open()"
JUPYTER = "jupyter_server"
TENSORBOARD = "tensorboard"

# Names of the in-process operations, as the report shows them.
LIST = "list()"
FIND_PID = "find(pid)"
FIND_SESSION = "find(session substring)"
LATEST = "latest()"
WRITE = "write() + cleanup"


def load_peer(module: str) -> tuple[ModuleType | None, str]:
    """Import a peer's module; return it and "", or None and why it is skipped."""
    try:
        return importlib.import_module(module), ""
    except ImportError as exc:
        return None, f"not installed here ({exc.name or module} is missing)"


def count_check(expected: int) -> Callable[[object], str]:
    """Return a check that a listing contains exactly *expected* items."""

    def check(result: object) -> str:
        if not isinstance(result, Sized):
            return f"expected a list, got {type(result).__name__}"
        if len(result) != expected:
            return f"expected {expected} live items, got {len(result)}"
        return ""

    return check


def number_check(expected: int) -> Callable[[object], str]:
    """Return a check that a call handled exactly *expected* records."""

    def check(result: object) -> str:
        return "" if result == expected else f"expected {expected} records, got {result!r}"

    return check


def parts_cases(population: str, directory: str, size: int) -> list[Case]:
    """Time the system calls of ``list()`` alone, and for written records its decoding alone."""
    if population == GO_POPULATION:
        calls: Callable[[str], int] = floors.identity_record_calls
    else:
        calls = floors.locked_record_calls
    cases = [Case(PARTS, "system calls only", population, size, lambda: calls(directory))]
    if population != GO_POPULATION:
        contents = floors.record_contents(directory)
        cases += [
            Case(PARTS, "json.loads only", population, size, floors.json_loads_all(contents)),
            Case(
                PARTS,
                "Record.from_json only",
                population,
                size,
                floors.record_from_json_all(contents),
            ),
        ]
    for case in cases:
        case.check = number_check(size)
    return cases


def pid_check(expected: int) -> Callable[[object], str]:
    """Return a check that a lookup returned the record of pid *expected*."""

    def check(result: object) -> str:
        if not isinstance(result, Record) or result.pid != expected:
            return f"expected the record of pid {expected}, got {result!r}"
        return ""

    return check


def reference_case(population: str, directory: str, size: int) -> Case:
    """Time the plain-Python reference on the records in *directory*."""
    return Case(
        REFERENCE,
        LIST,
        population,
        size,
        lambda: reference.list_live(directory),
        count_check(size),
    )


def buffered_reference_case(population: str, directory: str, size: int) -> Case:
    """Time the reference loop written with the built-in ``open()``, for context."""
    return Case(
        REFERENCE_BUFFERED,
        LIST,
        population,
        size,
        lambda: reference.list_live_buffered(directory),
        count_check(size),
    )


def runregistry_cases(
    population: str,
    directory: str,
    size: int,
    *,
    pid: int,
    session_part: str,
    newest_pid: int,
    include_write: bool,
) -> list[Case]:
    """Time runregistry's operations on *directory*, cold and warm.

    Cold builds a new :class:`Registry` for every call, so no decoded record
    is carried over; warm reuses one registry whose cache is already filled.
    """
    warm = Registry(directory)
    warm.list()
    operations: list[tuple[str, Callable[[Registry], object], Callable[[object], str]]] = [
        (LIST, lambda registry: registry.list(), count_check(size)),
        (FIND_PID, lambda registry: registry.find(str(pid)), pid_check(pid)),
        (FIND_SESSION, lambda registry: registry.find(session_part), pid_check(pid)),
        (LATEST, lambda registry: registry.latest(), pid_check(newest_pid)),
    ]
    if include_write:
        operations.append((WRITE, _write_and_clean_up, lambda _result: ""))

    cases = []
    for operation, call, check in operations:
        cases.append(
            Case(
                RUNREGISTRY,
                f"{operation} cold",
                population,
                size,
                _cold(call, directory),
                check,
            )
        )
        cases.append(
            Case(RUNREGISTRY, f"{operation} warm", population, size, _warm(call, warm), check)
        )
    return cases


def _cold(call: Callable[[Registry], object], directory: str) -> Callable[[], object]:
    return lambda: call(Registry(directory))


def _warm(call: Callable[[Registry], object], registry: Registry) -> Callable[[], object]:
    return lambda: call(registry)


_OWN_RECORD = Record(os.getpid(), "http://127.0.0.1:1", "bench-write-probe", "bench")


def _write_and_clean_up(registry: Registry) -> None:
    cleanup = registry.write(_OWN_RECORD)
    cleanup()


def jupyter_case(module: ModuleType, directory: str, size: int) -> Case:
    """Time ``jupyter_server.serverapp.list_running_servers`` on *directory*."""
    list_running_servers = module.list_running_servers
    return Case(
        JUPYTER,
        LIST,
        "peer files",
        size,
        lambda: list(list_running_servers(directory)),
        count_check(size),
    )


def tensorboard_case(module: ModuleType, temp_dir: str, size: int) -> Case:
    """Time ``tensorboard.manager.get_all`` on the info files under *temp_dir*.

    TensorBoard keeps its info files in ``<tempfile.gettempdir()>/.tensorboard-info``
    and takes no directory argument, so each call points :mod:`tempfile` there first.
    """
    get_all = module.get_all

    def call() -> object:
        previous = tempfile.tempdir
        tempfile.tempdir = temp_dir
        try:
            return get_all()
        finally:
            tempfile.tempdir = previous

    return Case(TENSORBOARD, LIST, "peer files", size, call, count_check(size))
