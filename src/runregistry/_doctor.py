"""The diagnosis behind ``runregistry doctor``, made without changing anything.

The diagnosis never prunes, never removes a leftover and never tightens a
mode: records are read with ``entries(prune=False)``, which opens the
directory without repair, and the directory's own safety is judged from
``lstat`` and ``stat`` before anything is opened.
"""

from __future__ import annotations

import os
import shlex
import stat
from typing import TYPE_CHECKING, Final, Literal, NamedTuple

from ._errors import RegistryError, UnsafeRegistryError
from ._users import describe_user, user_name

if TYPE_CHECKING:
    from ._base import BaseRegistry, Entry
    from ._record import Record

Severity = Literal["ok", "info", "problem"]

PROBLEM: Final = "problem"
INFO: Final = "info"
OK: Final = "ok"

# Mode bits that let group or others create, rename or remove records.
_WRITABLE_BY_OTHERS: Final = stat.S_IWGRP | stat.S_IWOTH


class Finding(NamedTuple):
    """One thing the diagnosis found: a directory check, a record, an invalid file or a leftover."""

    # "directory", "record", "invalid" or "temporary".
    kind: str
    severity: Severity
    # Full path of the file or directory, or the key in a key-value backend.
    path: str
    message: str
    # A command that fixes the problem; "" when there is nothing to fix.
    fix: str = ""
    # For records: the liveness state and reason code.
    state: str = ""
    reason: str = ""
    record: Record | None = None


class Report(NamedTuple):
    """The diagnosis of one registry."""

    location: str
    # The option, variable or default that chose the registry.
    origin: str
    findings: list[Finding]

    @property
    def problems(self) -> int:
        """The number of findings that need fixing."""
        return sum(1 for finding in self.findings if finding.severity == PROBLEM)


def diagnose(registry: BaseRegistry) -> Report:
    """Diagnose *registry*: its directory's safety, then every record, invalid file and leftover."""
    from .backends.file import Registry

    origin = str(getattr(registry, "origin", ""))
    findings: list[Finding] = []
    # Readers of a key-value backend never delete keys: a stale key goes when
    # its writer's lease expires, and an invalid one only by hand.
    prune_command = ""
    remove_command = "etcdctl del"
    if isinstance(registry, Registry):
        remove_command = "rm --"
        prune_command = f"runregistry --dir {shlex.quote(registry.location)} prune"
        findings.extend(_directory_findings(registry.location))
        if any(finding.severity == PROBLEM for finding in findings):
            # Reading would fail the same trust checks; the fix above comes first.
            return Report(registry.location, origin, findings)

    try:
        entries = registry.entries(prune=False)
    except UnsafeRegistryError as exc:
        findings.append(Finding("directory", PROBLEM, exc.path, str(exc)))
        return Report(registry.location, origin, findings)
    findings.extend(
        _entry_finding(entry, prune_command, remove_command) for entry in _sorted(entries)
    )
    return Report(registry.location, origin, findings)


def diagnose_docker_agent(registry: BaseRegistry) -> Report | None:
    """Diagnose docker-agent's registry when it exists and is not *registry*; all information only.

    Its problems are reported as information: it belongs to docker-agent,
    and ``runregistry --docker-agent`` selects it when they are to be fixed.
    """
    from ._paths import docker_agent_runs_dir
    from .backends.file import Registry

    try:
        directory = str(docker_agent_runs_dir())
    except RegistryError:
        return None
    same = os.path.realpath(directory) == os.path.realpath(registry.location)
    if same or not os.path.isdir(directory):
        return None

    report = diagnose(Registry(directory, origin="docker-agent's data directory"))
    findings = [finding._replace(severity=_informational(finding)) for finding in report.findings]
    return report._replace(findings=findings)


def _informational(finding: Finding) -> Severity:
    return INFO if finding.severity == PROBLEM else finding.severity


def _directory_findings(path: str) -> list[Finding]:
    """Judge the registry directory's owner and mode from ``lstat`` and ``stat`` alone."""
    try:
        link = os.lstat(path)
    except FileNotFoundError:
        message = "does not exist yet; the first run that registers creates it"
        return [Finding("directory", INFO, path, message)]
    except OSError as exc:
        return [Finding("directory", PROBLEM, path, f"cannot be inspected: {exc.strerror}")]

    findings = []
    if stat.S_ISLNK(link.st_mode):
        findings.extend(_owner_findings(path, link, "the symbolic link"))
        try:
            info = os.stat(path)
        except OSError as exc:
            message = f"is a link that leads nowhere: {exc.strerror}"
            return [*findings, Finding("directory", PROBLEM, path, message)]
    else:
        info = link
    if not stat.S_ISDIR(info.st_mode):
        message = "exists but is not a directory"
        return [
            *findings,
            Finding("directory", PROBLEM, path, message, f"mv {_q(path)} {_q(path)}.old"),
        ]

    owner = _owner_findings(path, info, "the directory")
    findings.extend(owner)
    # The mode's "ok" finding says the directory is ours, which is false for another user's.
    findings.extend(
        finding for finding in _mode_findings(path, info) if not owner or finding.severity != OK
    )
    return findings


def _owner_findings(path: str, info: os.stat_result, what: str) -> list[Finding]:
    if not hasattr(os, "geteuid") or info.st_uid == os.geteuid():
        return []
    owner = describe_user(info.st_uid)
    return [
        Finding(
            "directory",
            PROBLEM,
            path,
            f"{what} is owned by {owner}, not by the current user {describe_user(os.geteuid())}, "
            "so that user could plant records; use a directory of your own",
            f"sudo chown {user_name(os.geteuid())} {_q(path)}",
        )
    ]


def _mode_findings(path: str, info: os.stat_result) -> list[Finding]:
    mode = stat.S_IMODE(info.st_mode)
    shown = stat.filemode(info.st_mode)
    if mode & _WRITABLE_BY_OTHERS:
        message = f"has mode {shown}: group or others can write it and plant records"
        return [Finding("directory", PROBLEM, path, message, f"chmod 700 {_q(path)}")]
    if mode & 0o077:
        message = (
            f"has mode {shown}: group or others can list the pids of runs; every reader "
            "tightens it to 0700"
        )
        return [Finding("directory", INFO, path, message, f"chmod 700 {_q(path)}")]
    return [Finding("directory", OK, path, f"owned by the current user, mode {shown}")]


def _entry_finding(entry: Entry, prune_command: str, remove_command: str) -> Finding:
    if entry.kind == "invalid":
        message = f"invalid, skipped by every reader: {entry.problem}"
        fix = f"{remove_command} {_q(entry.path)}"
        return Finding("invalid", PROBLEM, entry.path, message, fix)
    if entry.kind == "temporary":
        message = f"leftover temporary file: {entry.problem}"
        return Finding("temporary", PROBLEM, entry.path, message, prune_command)

    assert entry.record is not None and entry.liveness is not None
    liveness = entry.liveness
    severity: Severity = OK
    fix = ""
    if liveness.state == "stale":
        severity = PROBLEM
        fix = prune_command
        if remove_command == "etcdctl del":
            fix = f"wait for the writer's lease to expire, or run: etcdctl del {_q(entry.path)}"
    elif liveness.state == "unknown":
        severity = INFO
    return Finding(
        "record",
        severity,
        entry.path,
        f"{liveness.reason}: {liveness.detail}",
        fix,
        liveness.state,
        liveness.reason,
        entry.record,
    )


def _sorted(entries: list[Entry]) -> list[Entry]:
    order = {"record": 0, "invalid": 1, "temporary": 2}
    return sorted(entries, key=lambda entry: (order.get(entry.kind, 3), entry.path))


def _q(path: str) -> str:
    return shlex.quote(path)
