"""The command line driven in-process through ``main(argv)``: list, find, dir, prune, globals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from cli_support import TOKEN, publish
from conftest import Spawn
from runregistry import BaseRegistry, Cleanup, Entry, Record, Registry
from runregistry.cli import _app, main
from runregistry.cli._output import Column, age, render_table, truncate
from runregistry.cli.commands import MODULES, NAMES, list_command

Sleeper = Callable[[], "subprocess.Popen[bytes]"]


@pytest.fixture
def runs(registry: Registry, registry_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Registry:
    """The test's registry, selected through RUNREGISTRY_DIR as a user would."""
    monkeypatch.setenv("RUNREGISTRY_DIR", str(registry_dir))
    return registry


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run ``main(argv)`` and return its exit status, stdout and stderr."""
    status = main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def dead_pid(spawn: Spawn) -> int:
    """Return the pid of a child that has exited and been reaped."""
    child = spawn("true")
    child.wait(timeout=10)
    return child.pid


def write_file(directory: Path, name: str, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = directory / name
    path.write_text(text)
    path.chmod(0o600)
    return path


# list


def test_list_empty_registry_prints_nothing(
    runs: Registry, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = run_cli(capsys, "list")

    assert status == 0
    assert out == ""
    assert err == ""


def test_list_json_empty_registry_prints_empty_array(
    runs: Registry, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, _ = run_cli(capsys, "list", "--json")

    assert status == 0
    assert json.loads(out) == []


def test_list_table_shows_each_run(
    runs: Registry, sleeper: Sleeper, capsys: pytest.CaptureFixture[str]
) -> None:
    child = sleeper()
    publish(runs, child.pid, "table-session-1", agent="claude", addr="http://127.0.0.1:8765")

    status, out, err = run_cli(capsys, "list")

    header, row = out.splitlines()
    assert status == 0
    assert err == ""
    assert header.split() == ["PID", "AGENT", "SESSION", "ADDRESS", "STARTED"]
    assert row.split()[:4] == [str(child.pid), "claude", "table-session-1", "http://127.0.0.1:8765"]
    assert row.endswith("s ago")


def test_list_orders_oldest_first(
    runs: Registry, sleeper: Sleeper, capsys: pytest.CaptureFixture[str]
) -> None:
    newer, older = sleeper(), sleeper()
    now = datetime.now(timezone.utc)
    publish(runs, newer.pid, "newer", started_at=now)
    # Started before its record claims, so it stays live with an older started_at.
    publish(runs, older.pid, "older", started_at=now - timedelta(milliseconds=400))

    _, out, _ = run_cli(capsys, "list", "-q")

    assert out.split() == [str(older.pid), str(newer.pid)]


def test_list_shows_unknown_age_for_zero_time(
    runs: Registry, sleeper: Sleeper, capsys: pytest.CaptureFixture[str], spawn: Spawn
) -> None:
    child = sleeper()
    publish(runs, child.pid, "zero-time", started_at=datetime(1, 1, 1, tzinfo=timezone.utc))

    _, out, _ = run_cli(capsys, "list")

    assert out.splitlines()[1].endswith("unknown")


def test_list_quiet_prints_pids_only(
    runs: Registry, sleeper: Sleeper, capsys: pytest.CaptureFixture[str]
) -> None:
    first, second = sleeper(), sleeper()
    publish(runs, first.pid, "quiet-1")
    publish(runs, second.pid, "quiet-2")

    status, out, _ = run_cli(capsys, "ls", "--quiet")

    assert status == 0
    assert sorted(out.split()) == sorted([str(first.pid), str(second.pid)])
    assert all(line.isdigit() for line in out.splitlines())


def test_list_json_parses_back(
    runs: Registry, sleeper: Sleeper, capsys: pytest.CaptureFixture[str]
) -> None:
    child = sleeper()
    record = publish(runs, child.pid, "json-session", agent="aider", token=TOKEN)

    status, out, _ = run_cli(capsys, "list", "--json")

    [item] = json.loads(out)
    assert status == 0
    assert item["pid"] == child.pid
    assert item["session_id"] == "json-session"
    assert item["addr"] == record.addr
    assert item["agent"] == "aider"
    assert item["started_at"] == record.to_dict()["started_at"]
    assert item["state"] == "live"
    assert item["reason"] == "running"
    assert "token" not in item
    assert TOKEN not in out


def test_list_json_show_token_includes_token(
    runs: Registry, sleeper: Sleeper, capsys: pytest.CaptureFixture[str]
) -> None:
    publish(runs, sleeper().pid, "token-session", token=TOKEN)

    _, out, _ = run_cli(capsys, "list", "--json", "--show-token")

    assert json.loads(out)[0]["token"] == TOKEN


def test_list_table_shows_token_only_when_asked(
    runs: Registry, sleeper: Sleeper, capsys: pytest.CaptureFixture[str]
) -> None:
    publish(runs, sleeper().pid, "token-table", token=TOKEN)

    _, hidden, _ = run_cli(capsys, "list")
    _, shown, _ = run_cli(capsys, "list", "--show-token")

    assert TOKEN not in hidden
    assert "TOKEN" not in hidden
    assert "TOKEN" in shown.splitlines()[0]
    assert TOKEN in shown


def test_list_leaves_out_stale_runs(
    runs: Registry, sleeper: Sleeper, spawn: Spawn, capsys: pytest.CaptureFixture[str]
) -> None:
    live = sleeper()
    publish(runs, live.pid, "still-running")
    publish(runs, dead_pid(spawn), "already-ended")

    _, out, _ = run_cli(capsys, "list", "-q")

    assert out.split() == [str(live.pid)]


def test_list_all_adds_other_host_runs_with_state(
    runs: Registry, sleeper: Sleeper, capsys: pytest.CaptureFixture[str]
) -> None:
    local = sleeper()
    publish(runs, local.pid, "local-run")
    publish(runs, 4242, "remote-run", host="elsewhere.invalid")

    _, without_all, _ = run_cli(capsys, "list")
    _, with_all, _ = run_cli(capsys, "list", "--all")

    assert "remote-run" not in without_all
    header, *rows = with_all.splitlines()
    assert header.split() == ["PID", "AGENT", "SESSION", "ADDRESS", "STARTED", "STATE", "REASON"]
    remote = next(row for row in rows if "remote-run" in row)
    assert " unknown " in remote
    assert "elsewhere.invalid" in remote
    assert " live " in next(row for row in rows if "local-run" in row)


def test_list_all_json_gives_unknown_state_and_reason(
    runs: Registry, capsys: pytest.CaptureFixture[str]
) -> None:
    publish(runs, 4242, "remote-run", host="elsewhere.invalid")

    _, out, _ = run_cli(capsys, "list", "--all", "--json")

    [item] = json.loads(out)
    assert item["state"] == "unknown"
    assert item["reason"] == "other-host"
    assert item["host"] == "elsewhere.invalid"


def test_list_skips_malformed_files(
    runs: Registry,
    registry_dir: Path,
    sleeper: Sleeper,
    capsys: pytest.CaptureFixture[str],
) -> None:
    child = sleeper()
    publish(runs, child.pid, "good-run")
    write_file(registry_dir, "111.json", "{not json")
    write_file(registry_dir, "112.json", '{"pid": 112}')

    status, out, err = run_cli(capsys, "list", "--json")

    assert status == 0
    assert [item["session_id"] for item in json.loads(out)] == ["good-run"]
    assert err == ""


def test_list_piped_prints_whole_values_without_colour(
    runs: Registry, sleeper: Sleeper, capsys: pytest.CaptureFixture[str]
) -> None:
    session = "s" * 150
    address = "http://127.0.0.1:9999/" + "a" * 150
    publish(runs, sleeper().pid, session, addr=address)

    _, out, _ = run_cli(capsys, "list")

    assert session in out
    assert address in out
    assert "\x1b" not in out
    assert "…" not in out


def test_list_escapes_control_characters(
    runs: Registry, sleeper: Sleeper, capsys: pytest.CaptureFixture[str]
) -> None:
    publish(runs, sleeper().pid, "escape-run", agent="evil\x1b[2J\nagent")

    _, out, _ = run_cli(capsys, "list")

    assert "\x1b" not in out
    assert len(out.splitlines()) == 2
    assert "evil\\x1b[2J\\x0aagent" in out


# table layout


def test_truncate_middle_keeps_both_ends() -> None:
    assert truncate("6f1d2c3b-aaaa-bbbb-cccc-0123456789ab", 11, "middle") == "6f1d2…789ab"


def test_truncate_end_keeps_the_start() -> None:
    assert truncate("process 123 is running", 10, "end") == "process 1…"


def test_truncate_leaves_short_text_and_uncut_columns() -> None:
    assert truncate("short", 10, "middle") == "short"
    assert truncate("1234567890", 4, "") == "1234567890"


def table_columns(pid: str = "123456") -> list[Column]:
    return [
        Column("PID", [pid]),
        Column("AGENT", ["claude"]),
        Column("SESSION", ["6f1d2c3b-aaaa-bbbb-cccc-0123456789ab"], "middle"),
        Column("ADDRESS", ["http://127.0.0.1:48213"], "middle"),
        Column("STARTED", ["12s ago"]),
    ]


def test_render_table_fits_width_and_keeps_pid() -> None:
    lines = render_table(table_columns(), width=60)

    assert all(len(line) <= 60 for line in lines)
    assert lines[1].startswith("123456  claude  ")
    assert "…" in lines[1]
    assert lines[1].endswith("12s ago")


def test_render_table_cuts_in_middle() -> None:
    row = render_table(table_columns(), width=60)[1].split()

    assert row[2].startswith("6f1d")
    assert row[2].endswith("89ab")
    assert row[3].startswith("http://")
    assert row[3].endswith(":48213")


def test_render_table_cuts_reason_before_identifiers() -> None:
    columns = [*table_columns(), Column("REASON", ["process 123456 is running fine"], "end")]

    natural = len(render_table(columns)[1])
    row = render_table(columns, width=natural - 10)[1]

    assert "6f1d2c3b-aaaa-bbbb-cccc-0123456789ab" in row
    assert row.endswith("…")


def test_render_table_never_cuts_below_minimum() -> None:
    lines = render_table(table_columns(), width=10)

    assert lines[1].split()[0] == "123456"
    assert len(lines[1].split()[2]) == 9


def test_render_table_without_width_keeps_values_whole() -> None:
    lines = render_table(table_columns())

    assert "6f1d2c3b-aaaa-bbbb-cccc-0123456789ab" in lines[1]
    assert not lines[1].endswith(" ")


def test_render_table_colour_makes_only_header_bold() -> None:
    lines = render_table(table_columns(), colour=True)

    assert lines[0].startswith("\x1b[1m")
    assert lines[0].endswith("\x1b[0m")
    assert "\x1b" not in lines[1]


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        (0, "0s ago"),
        (12, "12s ago"),
        (150, "2m ago"),
        (3 * 3600 + 5, "3h ago"),
        (2 * 86400, "2d ago"),
    ],
)
def test_age_formats(seconds: int, expected: str) -> None:
    now = datetime(2026, 5, 13, 12, 0, tzinfo=timezone.utc)

    assert age(now - timedelta(seconds=seconds), now) == expected


def test_age_of_future_time() -> None:
    now = datetime(2026, 5, 13, 12, 0, tzinfo=timezone.utc)

    assert age(now + timedelta(seconds=30), now) == "in the future"


# find


@pytest.fixture
def two_runs(runs: Registry, sleeper: Sleeper) -> tuple[int, int]:
    """Two live runs whose session ids share "6f1d"; the second is the latest."""
    first, second = sleeper(), sleeper()
    now = datetime.now(timezone.utc)
    publish(
        runs,
        first.pid,
        "6f1d-alpha",
        agent="claude",
        addr="http://127.0.0.1:8001",
        token=TOKEN,
        started_at=now - timedelta(milliseconds=300),
    )
    publish(runs, second.pid, "6f1d-beta", agent="", addr="http://127.0.0.1:8002", started_at=now)
    return first.pid, second.pid


def test_find_prints_fields_without_token(
    two_runs: tuple[int, int], capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, _ = run_cli(capsys, "find", "alpha")

    fields = dict(line.split(": ", 1) for line in out.splitlines())
    assert status == 0
    assert fields["pid"].strip() == str(two_runs[0])
    assert fields["session_id"].strip() == "6f1d-alpha"
    assert fields["addr"].strip() == "http://127.0.0.1:8001"
    assert fields["started_at"].endswith("s ago)")
    assert "token" not in fields
    assert TOKEN not in out


def test_find_without_target_prints_latest(
    two_runs: tuple[int, int], capsys: pytest.CaptureFixture[str]
) -> None:
    _, out, _ = run_cli(capsys, "find", "--field", "pid")

    assert out == f"{two_runs[1]}\n"


@pytest.mark.parametrize(
    ("target", "session"),
    [
        ("6f1d-alpha", "6f1d-alpha"),
        ("beta", "6f1d-beta"),
        ("http://127.0.0.1:8001/", "6f1d-alpha"),
    ],
)
def test_find_resolves_session_and_address(
    two_runs: tuple[int, int], capsys: pytest.CaptureFixture[str], target: str, session: str
) -> None:
    status, out, _ = run_cli(capsys, "find", target, "--field", "session_id")

    assert status == 0
    assert out == f"{session}\n"


def test_find_resolves_pid(two_runs: tuple[int, int], capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = run_cli(capsys, "find", str(two_runs[1]), "--field", "session_id")

    assert out == "6f1d-beta\n"


def test_find_json_parses_back_without_token(
    two_runs: tuple[int, int], capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, _ = run_cli(capsys, "find", "alpha", "--json")

    record = json.loads(out)
    assert status == 0
    assert record["pid"] == two_runs[0]
    assert record["session_id"] == "6f1d-alpha"
    assert record["agent"] == "claude"
    assert "token" not in record


def test_find_show_token_includes_token(
    two_runs: tuple[int, int], capsys: pytest.CaptureFixture[str]
) -> None:
    _, text, _ = run_cli(capsys, "find", "alpha", "--show-token")
    _, as_json, _ = run_cli(capsys, "find", "alpha", "--json", "--show-token")

    assert f"token:      {TOKEN}" in text
    assert json.loads(as_json)["token"] == TOKEN


@pytest.mark.parametrize(
    ("field", "expected"),
    [
        ("addr", "http://127.0.0.1:8001"),
        ("session_id", "6f1d-alpha"),
        ("agent", "claude"),
        ("token", TOKEN),
    ],
)
def test_find_field_prints_raw_value(
    two_runs: tuple[int, int], capsys: pytest.CaptureFixture[str], field: str, expected: str
) -> None:
    status, out, err = run_cli(capsys, "find", "alpha", "--field", field)

    assert status == 0
    assert out == f"{expected}\n"
    assert err == ""


def test_find_field_pid_started_at_and_host(
    two_runs: tuple[int, int], runs: Registry, capsys: pytest.CaptureFixture[str]
) -> None:
    record = runs.find("alpha")

    assert run_cli(capsys, "find", "alpha", "--field", "pid")[1] == f"{record.pid}\n"
    assert run_cli(capsys, "find", "alpha", "--field", "host")[1] == f"{record.host}\n"
    started = run_cli(capsys, "find", "alpha", "--field", "started_at")[1]
    assert started == f"{record.to_dict()['started_at']}\n"


def test_find_field_missing_value_prints_empty_line(
    two_runs: tuple[int, int], capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli(capsys, "find", "beta", "--field", "agent") == (0, "\n", "")
    assert run_cli(capsys, "find", "beta", "--field", "token") == (0, "\n", "")


def test_find_no_match_exits_1_with_one_line(
    two_runs: tuple[int, int], capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = run_cli(capsys, "find", "no-such-session")

    assert status == 1
    assert out == ""
    assert len(err.splitlines()) == 1
    assert "no-such-session" in err
    assert "Traceback" not in err


def test_find_in_empty_registry_exits_1(runs: Registry, capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run_cli(capsys, "find")

    assert status == 1
    assert err.startswith("runregistry: no live run in ")


def test_find_ambiguous_target_exits_3_and_lists_candidates(
    two_runs: tuple[int, int], capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = run_cli(capsys, "find", "6f1d")

    assert status == 3
    assert out == ""
    assert "6f1d-alpha" in err
    assert "6f1d-beta" in err
    assert str(two_runs[0]) in err
    assert "Traceback" not in err


def test_error_escapes_control_characters_from_records(
    runs: Registry, sleeper: Sleeper, capsys: pytest.CaptureFixture[str]
) -> None:
    publish(runs, sleeper().pid, "dup-\x1b]0;title\x07-one")
    publish(runs, sleeper().pid, "dup-\x1b[2J-two")

    status, _, err = run_cli(capsys, "find", "dup")

    assert status == 3
    assert "\x1b" not in err
    assert "\x07" not in err
    assert "dup-\\x1b[2J-two" in err


def test_find_field_and_json_together_is_usage_error(
    runs: Registry, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = run_cli(capsys, "find", "--json", "--field", "addr")

    assert status == 2
    assert out == ""
    assert "not allowed with" in err


def test_find_unknown_field_is_usage_error(
    runs: Registry, capsys: pytest.CaptureFixture[str]
) -> None:
    status, _, err = run_cli(capsys, "find", "--field", "port")

    assert status == 2
    assert "invalid choice: 'port'" in err


# dir and the registry options


def test_dir_prints_runregistry_dir(runs: Registry, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(capsys, "dir") == (0, f"{runs.location}\n", "")


def test_dir_default_is_in_user_data_dir(capsys: pytest.CaptureFixture[str]) -> None:
    expected = Path(os.environ["XDG_DATA_HOME"]) / "runregistry" / "runs"

    assert run_cli(capsys, "dir") == (0, f"{expected}\n", "")


def test_dir_option_wins_over_environment(
    runs: Registry, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "other"

    assert run_cli(capsys, "--dir", str(other), "dir") == (0, f"{other}\n", "")


def test_app_option_selects_app_registry(capsys: pytest.CaptureFixture[str]) -> None:
    expected = Path(os.environ["XDG_DATA_HOME"]) / "myagent" / "runs"

    assert run_cli(capsys, "--app", "myagent", "dir") == (0, f"{expected}\n", "")


def test_docker_agent_option_selects_its_registry(capsys: pytest.CaptureFixture[str]) -> None:
    expected = Path(os.environ["XDG_DATA_HOME"]) / "cagent" / "runs"

    assert run_cli(capsys, "--docker-agent", "dir") == (0, f"{expected}\n", "")


def test_dir_option_lists_that_registry(
    tmp_path: Path, sleeper: Sleeper, capsys: pytest.CaptureFixture[str]
) -> None:
    other = Registry(tmp_path / "elsewhere")
    child = sleeper()
    publish(other, child.pid, "elsewhere-run")

    _, default_out, _ = run_cli(capsys, "list", "-q")
    _, other_out, _ = run_cli(capsys, "--dir", str(tmp_path / "elsewhere"), "list", "-q")

    assert default_out == ""
    assert other_out == f"{child.pid}\n"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--dir", "x", "--docker-agent", "dir"], "--dir cannot be combined with --docker-agent"),
        (["--app", "a", "--dir", "x", "dir"], "--app cannot be combined with --dir"),
        (["--etcd", "http://127.0.0.1:2379", "--dir", "x", "dir"], "--etcd cannot be combined"),
        (["--dir", "", "dir"], "--dir is empty"),
        (["--app", "a/b", "dir"], "invalid app name 'a/b'"),
        (["--app", "..", "list"], "invalid app name '..'"),
    ],
)
def test_bad_registry_options_are_usage_errors(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    status, out, err = run_cli(capsys, *argv)

    assert status == 2
    assert out == ""
    assert err.startswith("usage: runregistry")
    assert message in err


# prune


def test_prune_removes_stale_record_and_says_why(
    runs: Registry, registry_dir: Path, spawn: Spawn, capsys: pytest.CaptureFixture[str]
) -> None:
    pid = dead_pid(spawn)
    publish(runs, pid, "ended-run")

    status, out, err = run_cli(capsys, "prune")

    assert status == 0
    assert (
        out == f"removed {registry_dir / f'{pid}.json'}: stale record (exited): no process {pid}\n"
    )
    assert err == ""
    assert not (registry_dir / f"{pid}.json").exists()


def test_prune_dry_run_removes_nothing(
    runs: Registry, registry_dir: Path, spawn: Spawn, capsys: pytest.CaptureFixture[str]
) -> None:
    pid = dead_pid(spawn)
    publish(runs, pid, "ended-run")

    status, out, _ = run_cli(capsys, "prune", "--dry-run")

    assert status == 0
    assert out.startswith(f"would remove {registry_dir / f'{pid}.json'}: stale record (exited)")
    assert (registry_dir / f"{pid}.json").exists()


def test_prune_removes_leftover_temporary_file(
    runs: Registry, registry_dir: Path, spawn: Spawn, capsys: pytest.CaptureFixture[str]
) -> None:
    writer = dead_pid(spawn)
    leftover = write_file(registry_dir, f".4242.{writer}.0a1b2c3d.tmp", "{")

    _, out, _ = run_cli(capsys, "prune")

    assert (
        out == f"removed {leftover}: temporary file of writer pid {writer}, which no longer runs\n"
    )
    assert not leftover.exists()


def test_prune_lists_malformed_files_and_keeps_them(
    runs: Registry, registry_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = write_file(registry_dir, "111.json", "{not json")
    partial = write_file(registry_dir, "112.json", '{"pid": 112}')

    status, out, err = run_cli(capsys, "prune")

    lines = out.splitlines()
    assert status == 0
    assert lines[0].startswith(f"skipped {broken}: record is not valid JSON")
    assert lines[1].startswith(f"skipped {partial}: record is missing required key(s)")
    assert "left 2 invalid file(s) in place" in err
    assert broken.exists()
    assert partial.exists()


def test_prune_keeps_live_and_other_host_records(
    runs: Registry, registry_dir: Path, sleeper: Sleeper, capsys: pytest.CaptureFixture[str]
) -> None:
    live = sleeper()
    publish(runs, live.pid, "live-run")
    publish(runs, 4242, "remote-run", host="elsewhere.invalid")

    assert run_cli(capsys, "prune") == (0, "", "")
    assert (registry_dir / f"{live.pid}.json").exists()
    assert (registry_dir / "4242.json").exists()


def test_prune_missing_directory_prints_nothing(
    runs: Registry, registry_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli(capsys, "prune") == (0, "", "")
    assert not registry_dir.exists()


class _NoPruneRegistry(BaseRegistry):
    """A backend without ``prune``, as etcd is: its leases expire the records of ended runs."""

    @property
    def location(self) -> str:
        return "etcd http://127.0.0.1:2379 prefix /runregistry/"

    def write(self, record: Record) -> Cleanup:
        raise NotImplementedError

    def entries(self, *, prune: bool = True) -> list[Entry]:
        return []


def test_prune_on_backend_without_prune_is_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(_app, "open_registry", lambda args: _NoPruneRegistry())

    status, out, err = run_cli(capsys, "prune")

    assert status == 2
    assert out == ""
    assert "prune does not apply to etcd http://127.0.0.1:2379" in err


# global options and conventions


def test_version_prints_version(capsys: pytest.CaptureFixture[str]) -> None:
    from runregistry import __version__

    assert run_cli(capsys, "--version") == (0, f"runregistry {__version__}\n", "")


def test_help_documents_commands_and_exit_statuses(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run_cli(capsys, "--help")

    assert status == 0
    for command in ("list (ls)", "find", "dir", "prune", "completion"):
        assert command in out
    for line in ("0  success", "1  no run found", "2  usage error", "3  ambiguous target"):
        assert line in out
    assert "4  unsafe registry directory" in out
    assert "__complete" not in out


def test_command_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run_cli(capsys, "list", "--help")

    assert status == 0
    assert out.startswith("usage: runregistry list")


def test_no_command_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run_cli(capsys)

    assert status == 2
    assert out == ""
    assert err.startswith("usage: runregistry")


@pytest.mark.parametrize(
    "argv",
    [["frobnicate"], ["list", "--bogus"], ["--bogus", "list"], ["list", "--json", "-q"]],
)
def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    status, out, err = run_cli(capsys, *argv)

    assert status == 2
    assert out == ""
    assert "error:" in err


def test_unknown_command_error_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    _, _, err = run_cli(capsys, "frobnicate")

    assert "'list'" in err
    assert "'completion'" in err


def test_argv_defaults_to_sys_argv(
    runs: Registry, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.argv", ["runregistry", "dir"])

    assert main() == 0
    assert capsys.readouterr().out == f"{runs.location}\n"


def test_verbose_logs_debug_and_traceback(
    runs: Registry, capsys: pytest.CaptureFixture[str]
) -> None:
    status, _, err = run_cli(capsys, "-v", "find", "no-such-session")

    assert status == 1
    assert "runregistry.cli._app DEBUG registry " in err
    assert "Traceback (most recent call last):" in err
    assert err.splitlines()[-1].startswith("runregistry: no live run whose session id")


def test_verbose_logging_ends_with_the_call(
    runs: Registry, capsys: pytest.CaptureFixture[str]
) -> None:
    run_cli(capsys, "-v", "list")

    _, _, err = run_cli(capsys, "list")

    assert err == ""


def test_registry_path_that_is_a_file_exits_4(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "plain-file"
    path.write_text("")

    status, out, err = run_cli(capsys, "--dir", str(path), "list")

    assert status == 4
    assert out == ""
    assert len(err.splitlines()) == 1
    assert "is not a directory" in err


def test_registry_writable_by_others_exits_4(
    runs: Registry, registry_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    registry_dir.mkdir(parents=True)
    registry_dir.chmod(0o777)

    # A dry run repairs nothing, so it must reject the directory rather than tighten it.
    status, _, err = run_cli(capsys, "prune", "--dry-run")

    assert status == 4
    assert "writable by group or others" in err
    assert f"chmod 700 {registry_dir}" in err


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a directory to another user needs root")
def test_registry_of_another_user_exits_4(
    runs: Registry, registry_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    registry_dir.mkdir(parents=True, mode=0o700)
    os.chown(registry_dir, 65534, 65534)

    status, out, err = run_cli(capsys, "list")

    assert status == 4
    assert out == ""
    assert "not by the current user" in err


def test_keyboard_interrupt_exits_130_without_traceback(
    runs: Registry, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # list never blocks, so its work is replaced by a wait that a real SIGINT interrupts.
    def interrupted(args: object) -> int:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(10)
        return 0

    monkeypatch.setattr(list_command, "run", interrupted)

    status, out, err = run_cli(capsys, "list")

    assert status == 130
    assert out == ""
    assert "Traceback" not in err


# parsing only the named command


@pytest.mark.parametrize(
    ("argv", "word"),
    [
        (["list"], "list"),
        (["--dir", "list", "find"], "find"),
        (["--dir=x", "ls"], "ls"),
        (["-v", "--docker-agent", "prune", "--dry-run"], "prune"),
        (["--", "dir"], "dir"),
        (["-v"], None),
        ([], None),
    ],
)
def test_command_word_skips_global_options(argv: list[str], word: str | None) -> None:
    assert _app.command_word(argv) == word


@pytest.mark.parametrize(
    "argv",
    [
        ["list"],
        ["ls", "--json", "--all"],
        ["-v", "--dir", "/tmp/x", "find", "abc", "--field", "addr"],
        ["--app", "myagent", "prune", "--dry-run"],
        ["completion", "zsh"],
        ["__complete", "targets"],
    ],
)
def test_one_command_parser_matches_full_parser(argv: list[str]) -> None:
    _, quick = _app.parse_arguments(argv)
    full = _app.build_parser().parse_args(argv)

    assert vars(quick) == vars(full)


def test_misread_command_word_falls_back_to_full_parser(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # "--ap" abbreviates --app, whose value is "list": the command is "dir".
    status, out, _ = run_cli(capsys, "--ap", "list", "dir")

    assert status == 0
    assert out.strip().endswith(os.path.join("list", "runs"))


def test_every_command_module_is_listed() -> None:
    folder = Path(list_command.__file__).parent
    on_disk = {path.stem for path in folder.glob("*_command.py")}

    assert set(MODULES) == on_disk
    assert set(NAMES.values()) <= on_disk


def test_every_parsed_command_name_is_in_names() -> None:
    parser = _app.build_parser()
    names = {
        name
        for action in parser._actions
        if hasattr(action, "choices") and isinstance(action.choices, dict)
        for name in action.choices
    }

    assert names == set(NAMES)
