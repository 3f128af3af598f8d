"""The command line as real processes: ``runregistry`` and ``python -m runregistry`` alike."""

from __future__ import annotations

import fcntl
import json
import os
import struct
import subprocess
import termios
from collections.abc import Callable
from pathlib import Path

import pytest

from cli_support import ENTRY_POINT_IDS, ENTRY_POINTS, TOKEN, publish
from conftest import Spawn
from runregistry import Record, Registry

Sleeper = Callable[[], "subprocess.Popen[bytes]"]


@pytest.fixture
def env(registry_dir: Path) -> dict[str, str]:
    """The commands' environment: the test's registry, no terminal width or colour setting."""
    environment = dict(os.environ, RUNREGISTRY_DIR=str(registry_dir))
    for name in ("COLUMNS", "NO_COLOR"):
        environment.pop(name, None)
    return environment


def run(
    entry_point: list[str], *argv: str, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*entry_point, *argv], env=env, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.fixture
def live_runs(registry: Registry, sleeper: Sleeper) -> list[int]:
    """Two live runs whose session ids share "6f1d"."""
    first, second = sleeper(), sleeper()
    publish(registry, first.pid, "6f1d-alpha", agent="claude", token=TOKEN)
    publish(registry, second.pid, "6f1d-beta", agent="aider")
    return [first.pid, second.pid]


@pytest.mark.parametrize("entry_point", ENTRY_POINTS, ids=ENTRY_POINT_IDS)
def test_list_json_parses_back(
    entry_point: list[str], live_runs: list[int], env: dict[str, str]
) -> None:
    result = run(entry_point, "list", "--json", env=env)

    records = json.loads(result.stdout)
    assert result.returncode == 0
    assert sorted(record["pid"] for record in records) == sorted(live_runs)
    assert all(record["state"] == "live" for record in records)
    assert TOKEN not in result.stdout
    assert result.stderr == ""


@pytest.mark.parametrize(
    "argv",
    [
        ["list"],
        ["list", "-q"],
        ["--version"],
        ["dir"],
        ["find", "alpha", "--json"],
        ["find", "alpha", "--field", "token"],
        ["find", "6f1d"],
        ["find", "nothing"],
        ["completion", "bash"],
        ["list", "--bogus"],
    ],
)
def test_python_m_behaves_like_console_script(
    argv: list[str], live_runs: list[int], env: dict[str, str]
) -> None:
    script = run(ENTRY_POINTS[0], *argv, env=env)
    module = run(ENTRY_POINTS[1], *argv, env=env)

    assert module.returncode == script.returncode
    assert module.stdout == script.stdout
    assert module.stderr == script.stderr


@pytest.mark.parametrize("entry_point", ENTRY_POINTS, ids=ENTRY_POINT_IDS)
@pytest.mark.parametrize(
    ("argv", "status"),
    [
        (["find", "alpha"], 0),
        (["find", "no-such-session"], 1),
        (["list", "--no-such-option"], 2),
        (["find", "6f1d"], 3),
        (["--dir", "/dev/null", "list"], 4),
    ],
)
def test_exit_statuses(
    entry_point: list[str],
    argv: list[str],
    status: int,
    live_runs: list[int],
    env: dict[str, str],
) -> None:
    result = run(entry_point, *argv, env=env)

    assert result.returncode == status
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("entry_point", ENTRY_POINTS, ids=ENTRY_POINT_IDS)
def test_expected_failure_prints_one_line(entry_point: list[str], env: dict[str, str]) -> None:
    result = run(entry_point, "find", "no-such-session", env=env)

    assert result.returncode == 1
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith("runregistry: no live run")


@pytest.mark.parametrize("entry_point", ENTRY_POINTS, ids=ENTRY_POINT_IDS)
def test_empty_registry_lists_nothing(entry_point: list[str], env: dict[str, str]) -> None:
    plain = run(entry_point, "list", env=env)
    as_json = run(entry_point, "list", "--json", env=env)

    assert (plain.returncode, plain.stdout, plain.stderr) == (0, "", "")
    assert (as_json.returncode, as_json.stdout) == (0, "[]\n")


@pytest.mark.parametrize("entry_point", ENTRY_POINTS, ids=ENTRY_POINT_IDS)
def test_closed_stdout_exits_quietly(
    entry_point: list[str], live_runs: list[int], env: dict[str, str]
) -> None:
    # The read end is closed before the command starts, so its first write fails with EPIPE.
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run(
            [*entry_point, "list"],
            env=env,
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write_end)

    assert result.returncode == 0
    assert result.stderr == ""


def run_on_terminal(entry_point: list[str], *argv: str, columns: int, env: dict[str, str]) -> str:
    """Run a command with stdout on a pseudo-terminal *columns* wide; return what it printed."""
    controller, terminal = os.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    try:
        child = subprocess.run(
            [*entry_point, *argv], env=env, stdout=terminal, timeout=60, check=False
        )
    finally:
        os.close(terminal)
    assert child.returncode == 0

    output = b""
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:
            # Linux reports EIO once the terminal side is closed and drained.
            break
        if not chunk:
            break
        output += chunk
    os.close(controller)
    return output.decode().replace("\r\n", "\n")


@pytest.fixture
def long_run(registry: Registry, sleeper: Sleeper) -> int:
    child = sleeper()
    publish(
        registry,
        child.pid,
        "6f1d2c3b-aaaa-bbbb-cccc-0123456789ab-very-long-session-id",
        addr="http://127.0.0.1:48213/a/rather/long/path/prefix",
    )
    return child.pid


def test_list_on_terminal_fits_its_width(long_run: int, env: dict[str, str]) -> None:
    output = run_on_terminal(ENTRY_POINTS[0], "list", columns=70, env=env)

    header, row = output.splitlines()
    assert header.startswith("\x1b[1mPID")
    assert header.endswith("\x1b[0m")
    assert len(row) <= 70
    assert row.startswith(f"{long_run}  ")
    assert "6f1d" in row
    assert row.count("…") == 2


def test_no_color_turns_off_colour(long_run: int, env: dict[str, str]) -> None:
    output = run_on_terminal(ENTRY_POINTS[0], "list", columns=70, env={**env, "NO_COLOR": "1"})

    assert "\x1b" not in output
    assert output.startswith("PID ")


def test_list_on_wide_terminal_keeps_values(long_run: int, env: dict[str, str]) -> None:
    output = run_on_terminal(ENTRY_POINTS[0], "list", columns=200, env=env)

    assert "6f1d2c3b-aaaa-bbbb-cccc-0123456789ab-very-long-session-id" in output
    assert "…" not in output


def test_columns_variable_overrides_terminal_size(long_run: int, env: dict[str, str]) -> None:
    output = run_on_terminal(ENTRY_POINTS[0], "list", columns=200, env={**env, "COLUMNS": "60"})

    assert all(len(line) <= 60 for line in output.splitlines()[1:])


def test_stale_record_is_not_listed_by_other_process(
    registry: Registry, spawn: Spawn, env: dict[str, str]
) -> None:
    child = spawn("true")
    child.wait(timeout=10)
    publish(registry, child.pid, "ended")

    result = run(ENTRY_POINTS[0], "list", "-q", env=env)

    assert (result.returncode, result.stdout) == (0, "")


@pytest.mark.parametrize("argv", [["list"], ["list", "--json"], ["find", "accent"]])
def test_ascii_stdout_escapes_non_ascii_fields(
    argv: list[str], registry: Registry, sleeper: Sleeper, env: dict[str, str]
) -> None:
    publish(registry, sleeper().pid, "accent-run", agent="agënt")

    result = subprocess.run(
        [*ENTRY_POINTS[0], *argv],
        env={**env, "PYTHONIOENCODING": "ascii"},
        capture_output=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0
    assert b"Traceback" not in result.stderr
    assert b"ag\\xebnt" in result.stdout


@pytest.mark.parametrize("entry_point", ENTRY_POINTS, ids=ENTRY_POINT_IDS)
def test_closed_stdout_is_an_error(entry_point: list[str], env: dict[str, str]) -> None:
    result = subprocess.run(
        [*entry_point, "ls"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        timeout=60,
        check=False,
        pass_fds=(),
        preexec_fn=lambda: os.close(1),
    )

    assert result.returncode == 4
    assert (
        result.stderr == "runregistry: standard output is closed; send it to a file or /dev/null\n"
    )


@pytest.mark.parametrize("entry_point", ENTRY_POINTS, ids=ENTRY_POINT_IDS)
def test_full_disk_output_names_the_cause(
    entry_point: list[str], env: dict[str, str], registry: Registry
) -> None:
    cleanup = registry.write(Record(os.getpid(), "http://127.0.0.1:9", "full-disk"))
    with open("/dev/full", "w") as full:
        result = subprocess.run(
            [*entry_point, "ls", "--json"],
            env=env,
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            check=False,
        )
    cleanup()

    assert result.returncode == 4
    assert "cannot write the output: No space left on device" in result.stderr
    assert "Traceback" not in result.stderr
