"""Whole-process timings and peak memory of commands, measured from their parent."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass
class Command:
    """A command to time: what the report calls it, its N, argv and environment."""

    label: str
    size: int
    argv: list[str]
    env: Mapping[str, str]


@dataclass
class ProcessTiming:
    """Wall-clock seconds from start to exit of one command over several runs."""

    label: str
    size: int
    median: float
    minimum: float
    maximum: float
    runs: int


def timing_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Return this environment with bytecode caching on, plus *extra*.

    Python then reads its modules from ``__pycache__`` as it does for users,
    rather than compiling every module of the command on each start.
    """
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.update(extra or {})
    return env


def time_commands(commands: Sequence[Command], runs: int) -> list[ProcessTiming]:
    """Run every command once to warm caches, then *runs* times each, round by round.

    :raises RuntimeError: a command exits with a non-zero status.
    """
    for command in commands:
        _run_checked(command)

    samples: list[list[float]] = [[] for _ in commands]
    for round_index in range(runs):
        shift = round_index % len(commands)
        for index in [*range(shift, len(commands)), *range(shift)]:
            samples[index].append(_run_timed(commands[index]))

    return [
        ProcessTiming(
            command.label,
            command.size,
            statistics.median(values),
            min(values),
            max(values),
            runs,
        )
        for command, values in zip(commands, samples, strict=True)
    ]


# Runs one command and reports its exit status and peak RSS. A child's
# ru_maxrss also counts the memory of the process it was forked from, up to
# its exec, so the command is started from this small interpreter (isolated,
# no site packages) rather than from the harness, which has the peers loaded.
_LAUNCHER = """
import os, sys
with open("/proc/self/status") as status_file:
    floor = status_file.read().split("VmHWM:")[1].split()[0]
devnull = [(os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0)]
pid = os.posix_spawn(sys.argv[1], sys.argv[1:], os.environ, file_actions=devnull)
_, status, usage = os.wait4(pid, 0)
print(os.waitstatus_to_exitcode(status), usage.ru_maxrss, floor)
"""


def peak_memory(command: Command) -> tuple[int, int]:
    """Return the peak resident set size of *command*, and the floor of the measurement, in bytes.

    The floor is the launcher's own peak, which the command's process
    inherits as its starting value: a command that never uses more is
    reported at the floor.

    :raises RuntimeError: the command exits with a non-zero status.
    """
    result = subprocess.run(
        [sys.executable, "-I", "-S", "-c", _LAUNCHER, *command.argv],
        check=False,
        env=command.env,
        capture_output=True,
        text=True,
    )
    status, _, rest = result.stdout.partition(" ")
    if result.returncode != 0 or status != "0":
        raise RuntimeError(
            _failure(command, int(status or result.returncode), result.stderr.encode())
        )
    peak, floor = rest.split()
    # Linux reports both in KiB.
    return int(peak) * 1024, int(floor) * 1024


def _run_checked(command: Command) -> None:
    result = subprocess.run(
        command.argv,
        check=False,
        env=command.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    if result.returncode != 0:
        raise RuntimeError(_failure(command, result.returncode, result.stderr))


def _run_timed(command: Command) -> float:
    start = time.perf_counter()
    result = subprocess.run(
        command.argv,
        check=False,
        env=command.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(_failure(command, result.returncode, b""))
    return elapsed


def _failure(command: Command, status: int, errors: bytes) -> str:
    text = errors.decode(errors="replace").strip()[-2000:]
    return f"{command.label} (N={command.size}) exited with status {status}: {text}"


def import_profile(
    argv: Sequence[str], env: Mapping[str, str], runs: int
) -> list[tuple[str, float]]:
    """Return the imports that ``python -X importtime`` reports for *argv*, by median self time.

    *argv* starts with the interpreter. Imports that ``python -c pass`` makes
    too are left out, so that what remains is what the command adds to the
    interpreter's own start-up. Times are in seconds, and -X importtime
    inflates each of them by its own bookkeeping.
    """
    baseline = set(_import_times([argv[0], "-X", "importtime", "-c", "pass"], env))
    samples: dict[str, list[float]] = {}
    for _ in range(runs):
        for module, seconds in _import_times([argv[0], "-X", "importtime", *argv[1:]], env).items():
            samples.setdefault(module, []).append(seconds)
    added = {
        module: statistics.median(values)
        for module, values in samples.items()
        if module not in baseline
    }
    return sorted(added.items(), key=lambda item: item[1], reverse=True)


def _import_times(argv: list[str], env: Mapping[str, str]) -> dict[str, float]:
    result = subprocess.run(
        argv, check=False, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    times = {}
    for line in result.stderr.splitlines():
        # "import time: <self us> | <cumulative us> | <indented module name>"
        fields = line.split("|")
        if len(fields) != 3 or not fields[0].startswith("import time:"):
            continue
        self_time = fields[0].removeprefix("import time:").strip()
        if self_time.isdigit():
            times[fields[2].strip()] = int(self_time) / 1e6
    return times
