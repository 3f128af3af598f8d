"""``runregistry doctor``: explain the registry and what needs fixing, changing nothing."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..._doctor import Finding, Report
    from .. import SubParsers

_DESCRIPTION = """\
Explain the registry without changing it: the directory in use and how it was
chosen, whether its owner and mode are safe, every record with its state and
reason, invalid files, leftover temporary files, and docker-agent's registry
when it exists. Each finding names the file and the command that fixes it.

exit status: 1 when the directory is unsafe or there are invalid or stale
records or leftover temporary files; 0 otherwise. Records of other hosts and
docker-agent's registry are information only.
"""


def add_parser(subparsers: SubParsers) -> None:
    parser = subparsers.add_parser(
        "doctor",
        help="explain the registry and what needs fixing; changes nothing",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--json", action="store_true", help="print the findings as one JSON object")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..._doctor import diagnose, diagnose_docker_agent
    from .._app import open_registry
    from .._output import print_json

    registry = open_registry(args)
    report = diagnose(registry)
    docker_agent = diagnose_docker_agent(registry)
    if args.json:
        print_json(
            {
                **_report_json(report),
                "problems": report.problems,
                "docker_agent": None if docker_agent is None else _report_json(docker_agent),
            }
        )
    else:
        _print_report("registry", report)
        if docker_agent is not None:
            print()
            _print_report("docker-agent's registry (information only)", docker_agent)
        print()
        print(_summary(report.problems))
    return 1 if report.problems else 0


def _print_report(title: str, report: Report) -> None:
    # Names and fields come from files that other programs wrote, so control
    # characters in them are escaped before they reach the terminal.
    from .._output import printable

    print(f"{title}: {printable(report.location)}")
    if report.origin:
        print(f"  chosen by: {report.origin}")
    for finding in report.findings:
        print(f"  [{_label(finding)}] {printable(finding.path)}: {printable(finding.message)}")
        if finding.record is not None:
            record = finding.record
            agent = f" agent={printable(record.agent)}" if record.agent else ""
            session = printable(record.session_id)
            print(f"      pid={record.pid}{agent} session={session} addr={printable(record.addr)}")
        if finding.fix:
            print(f"      fix: {printable(finding.fix)}")
    if all(finding.kind == "directory" for finding in report.findings):
        print("  no records")


def _label(finding: Finding) -> str:
    if finding.kind == "record":
        return finding.state
    if finding.kind == "directory":
        return "unsafe" if finding.severity == "problem" else finding.severity
    return finding.kind


def _summary(problems: int) -> str:
    if not problems:
        return "no problems found"
    noun = "problem" if problems == 1 else "problems"
    return f"{problems} {noun} found; the fix lines above show the commands"


def _report_json(report: Report) -> dict[str, Any]:
    from .._output import record_json

    findings = []
    for finding in report.findings:
        item: dict[str, Any] = {
            "kind": finding.kind,
            "severity": finding.severity,
            "path": finding.path,
            "message": finding.message,
            "fix": finding.fix or None,
        }
        if finding.record is not None:
            item["state"] = finding.state
            item["reason"] = finding.reason
            item["record"] = record_json(finding.record)
        findings.append(item)
    return {"location": report.location, "origin": report.origin, "findings": findings}
