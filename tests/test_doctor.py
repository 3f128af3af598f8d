"""``runregistry doctor``: each kind of finding, its exit status, and a registry left untouched."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from runregistry import Record, Registry
from runregistry._doctor import diagnose
from runregistry._paths import docker_agent_runs_dir
from runregistry.cli import main

Sleeper = Callable[[], "subprocess.Popen[bytes]"]


def snapshot(directory: Path) -> dict[str, tuple[int, int, bytes]]:
    """Return every entry's mode, modification time and bytes, the directory's own mode included."""
    state = {".": (directory.stat().st_mode, 0, b"")}
    for path in directory.iterdir():
        info = path.lstat()
        data = path.read_bytes() if stat.S_ISREG(info.st_mode) else b""
        state[path.name] = (info.st_mode, info.st_mtime_ns, data)
    return state


def dead_pid(sleeper: Sleeper) -> int:
    """Return the pid of a process that has exited and been reaped."""
    child = sleeper()
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=10)
    return child.pid


def prepare_every_finding(registry: Registry, sleeper: Sleeper) -> dict[str, Path]:
    """Fill *registry* with live, stale and other-host records, an invalid file and a leftover."""
    directory = registry.directory
    live = sleeper()
    registry.write(Record(live.pid, "http://127.0.0.1:9", "live-run", "agent-a"))
    stale_pid = dead_pid(sleeper)
    registry.write(Record(stale_pid, "http://127.0.0.1:10", "stale-run"))
    registry.write(Record(4242, "http://10.0.0.9:9", "far-run", host="elsewhere"))
    invalid = directory / "77.json"
    invalid.write_bytes(b'{"pid": 77}')
    leftover = directory / f".55.{dead_pid(sleeper)}.0123abcd.tmp"
    leftover.write_bytes(b"{")
    # Readable by group: worth a note, but every reader would tighten it.
    directory.chmod(0o750)
    return {
        "live": directory / f"{live.pid}.json",
        "stale": directory / f"{stale_pid}.json",
        "far": directory / "4242.json",
        "invalid": invalid,
        "leftover": leftover,
    }


def doctor_json(registry: Registry, capsys: pytest.CaptureFixture[str]) -> tuple[int, Any]:
    status = main(["--dir", str(registry.directory), "doctor", "--json"])
    return status, json.loads(capsys.readouterr().out)


def by_path(report: Any) -> dict[str, Any]:
    return {finding["path"]: finding for finding in report["findings"]}


def test_doctor_reports_every_kind_of_finding(
    registry: Registry, sleeper: Sleeper, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = prepare_every_finding(registry, sleeper)
    directory = str(registry.directory)
    prune = f"runregistry --dir {directory} prune"

    status, report = doctor_json(registry, capsys)
    findings = by_path(report)

    assert status == 1
    assert report["location"] == directory
    assert report["origin"] == "the --dir option"
    assert report["problems"] == 3
    assert findings[directory]["severity"] == "info"
    assert findings[directory]["fix"] == f"chmod 700 {directory}"
    assert findings[str(paths["live"])]["state"] == "live"
    assert findings[str(paths["live"])]["severity"] == "ok"
    assert findings[str(paths["live"])]["record"]["session_id"] == "live-run"
    assert findings[str(paths["stale"])]["state"] == "stale"
    assert findings[str(paths["stale"])]["reason"] == "exited"
    assert findings[str(paths["stale"])]["fix"] == prune
    assert findings[str(paths["far"])]["state"] == "unknown"
    assert findings[str(paths["far"])]["reason"] == "other-host"
    assert findings[str(paths["far"])]["severity"] == "info"
    assert findings[str(paths["invalid"])]["kind"] == "invalid"
    assert "missing required key" in findings[str(paths["invalid"])]["message"]
    assert findings[str(paths["invalid"])]["fix"] == f"rm -- {paths['invalid']}"
    assert findings[str(paths["leftover"])]["kind"] == "temporary"
    assert findings[str(paths["leftover"])]["fix"] == prune
    assert report["docker_agent"] is None


def test_doctor_leaves_registry_byte_for_byte_unchanged(
    registry: Registry, sleeper: Sleeper, capsys: pytest.CaptureFixture[str]
) -> None:
    prepare_every_finding(registry, sleeper)
    before = snapshot(registry.directory)

    text_status = main(["--dir", str(registry.directory), "doctor"])
    capsys.readouterr()
    json_status, _ = doctor_json(registry, capsys)

    assert text_status == 1
    assert json_status == 1
    assert snapshot(registry.directory) == before


def test_doctor_text_names_paths_and_fixes(
    registry: Registry, sleeper: Sleeper, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = prepare_every_finding(registry, sleeper)

    main(["--dir", str(registry.directory), "doctor"])

    out = capsys.readouterr().out
    assert f"registry: {registry.directory}\n" in out
    assert "chosen by: the --dir option" in out
    assert f"[stale] {paths['stale']}: exited" in out
    assert f"[invalid] {paths['invalid']}" in out
    assert f"[temporary] {paths['leftover']}" in out
    assert f"fix: runregistry --dir {registry.directory} prune" in out
    assert out.endswith("3 problems found; the fix lines above show the commands\n")


def test_doctor_unsafe_directory_exits_one_and_keeps_mode(
    registry: Registry, sleeper: Sleeper, capsys: pytest.CaptureFixture[str]
) -> None:
    registry.write(Record(sleeper().pid, "http://127.0.0.1:9", "in-unsafe-directory"))
    registry.directory.chmod(0o777)

    status, report = doctor_json(registry, capsys)
    finding = by_path(report)[str(registry.directory)]

    assert status == 1
    assert finding["severity"] == "problem"
    assert "can write it" in finding["message"]
    assert finding["fix"] == f"chmod 700 {registry.directory}"
    assert stat.S_IMODE(registry.directory.stat().st_mode) == 0o777


def test_doctor_clean_registry_exits_zero(
    registry: Registry, sleeper: Sleeper, capsys: pytest.CaptureFixture[str]
) -> None:
    registry.write(Record(sleeper().pid, "http://127.0.0.1:9", "healthy"))
    registry.write(Record(4242, "http://10.0.0.9:9", "far-run", host="elsewhere"))

    status = main(["--dir", str(registry.directory), "doctor"])

    out = capsys.readouterr().out
    assert status == 0
    assert "[ok]" in out
    assert "[live]" in out
    assert "[unknown]" in out
    assert out.endswith("no problems found\n")


def test_doctor_missing_directory_exits_zero_and_creates_nothing(
    registry: Registry, capsys: pytest.CaptureFixture[str]
) -> None:
    status, report = doctor_json(registry, capsys)

    assert status == 0
    assert "does not exist yet" in report["findings"][0]["message"]
    assert not registry.directory.exists()
    assert not registry.directory.parent.exists()


def test_doctor_reports_origin_of_environment_variable(
    registry: Registry, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RUNREGISTRY_DIR", str(registry.directory))

    main(["doctor", "--json"])

    assert "RUNREGISTRY_DIR" in json.loads(capsys.readouterr().out)["origin"]


def test_doctor_reports_docker_agent_registry_as_information(
    registry: Registry, sleeper: Sleeper, capsys: pytest.CaptureFixture[str]
) -> None:
    registry.write(Record(sleeper().pid, "http://127.0.0.1:9", "ours"))
    docker_agent = Registry(docker_agent_runs_dir())
    docker_agent.write(Record(dead_pid(sleeper), "http://127.0.0.1:11", "theirs-stale"))
    docker_agent.write(Record(sleeper().pid, "http://127.0.0.1:12", "theirs-live"))
    before = snapshot(docker_agent.directory)

    status, report = doctor_json(registry, capsys)
    theirs = report["docker_agent"]

    assert status == 0
    assert theirs["location"] == str(docker_agent.directory)
    assert {finding["severity"] for finding in theirs["findings"]} <= {"ok", "info"}
    assert sorted(
        finding["record"]["session_id"] for finding in theirs["findings"] if "record" in finding
    ) == ["theirs-live", "theirs-stale"]
    assert snapshot(docker_agent.directory) == before


def test_doctor_library_report_counts_problems(registry: Registry, sleeper: Sleeper) -> None:
    registry.write(Record(dead_pid(sleeper), "http://127.0.0.1:9", "gone"))

    report = diagnose(registry)

    assert report.problems == 1
    assert os.path.basename(report.findings[-1].path).endswith(".json")


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a directory to another user needs root")
def test_doctor_foreign_directory_is_not_reported_ours(
    registry: Registry, sleeper: Sleeper, capsys: pytest.CaptureFixture[str]
) -> None:
    import pwd

    registry.write(Record(sleeper().pid, "http://127.0.0.1:9", "in-foreign-directory"))
    os.chown(registry.directory, pwd.getpwnam("nobody").pw_uid, -1)

    status, report = doctor_json(registry, capsys)
    severities = [finding["severity"] for finding in report["findings"]]

    assert status == 1
    assert "problem" in severities
    assert "ok" not in severities
