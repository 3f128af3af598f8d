"""Latency of ``Registry.watch``: from a writer's death by SIGKILL to its "stopped" event."""

from __future__ import annotations

import importlib.util
import os
import selectors
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from .population import Writers

# How long one death may take to be reported before it counts as missed.
EVENT_TIMEOUT_SECONDS = 5.0


def unavailable() -> str:
    """Return why watch cannot be measured here, or "" when it can."""
    if importlib.util.find_spec("runregistry._watching") is None:
        return "runregistry has no watch implementation (runregistry._watching) yet"
    return ""


def measure(writers: Writers, directory: str, pids: list[int]) -> dict[str, Any]:
    """Kill the writers *pids* one at a time and time each death until its event.

    The watcher runs in its own process (``bench._watcher``), so that its
    loop competes with nothing in the harness.
    """
    watcher = subprocess.Popen(
        [sys.executable, "-m", "bench._watcher", directory],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    try:
        lines = _Lines(watcher)
        lines.wait_for(lambda fields: fields[1] == "synced", "the synced event")
        latencies, missed = [], 0
        for pid in pids:
            killed_at = time.perf_counter()
            writers.kill(pid)
            fields = lines.wait_for(_stop_of(pid), f"the stop of pid {pid}", required=False)
            if fields is None:
                missed += 1
            else:
                latencies.append(float(fields[0]) - killed_at)
    finally:
        watcher.send_signal(signal.SIGKILL)
        watcher.wait()
        assert watcher.stdout is not None and watcher.stderr is not None
        watcher.stdout.close()
        watcher.stderr.close()
    return _summary(latencies, missed, len(pids))


def _stop_of(pid: int) -> Callable[[list[str]], bool]:
    return lambda fields: fields[1] == "stopped" and fields[2] == str(pid)


def _summary(latencies: list[float], missed: int, deaths: int) -> dict[str, Any]:
    if not latencies:
        return {"deaths": deaths, "missed": missed, "median": None}
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {
        "deaths": deaths,
        "missed": missed,
        "median": statistics.median(ordered),
        "p99": p99,
        "minimum": ordered[0],
        "maximum": ordered[-1],
    }


class _Lines:
    """The watcher's output lines, read from its pipe with a deadline.

    The pipe is read with ``os.read`` and split here, because a buffered
    reader may hold complete lines that ``select`` no longer reports.
    """

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stdout is not None
        self._process = process
        self._fd = process.stdout.fileno()
        self._buffer = b""
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._fd, selectors.EVENT_READ)

    def wait_for(
        self, wanted: Callable[[list[str]], bool], what: str, *, required: bool = True
    ) -> list[str] | None:
        """Return the fields of the next line that *wanted* accepts, or None after the timeout.

        :raises RuntimeError: *required* and the line did not come in time, or the watcher ended.
        """
        deadline = time.monotonic() + EVENT_TIMEOUT_SECONDS
        while True:
            line = self._next_line(deadline)
            if line is None:
                break
            fields = line.split()
            if len(fields) >= 3 and wanted(fields):
                return fields
        if required:
            raise RuntimeError(f"no {what} within {EVENT_TIMEOUT_SECONDS:.0f} s")
        return None

    def _next_line(self, deadline: float) -> str | None:
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._selector.select(remaining):
                return None
            chunk = os.read(self._fd, 65536)
            if not chunk:
                raise RuntimeError(f"the watcher ended: {self._errors()}")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode()

    def _errors(self) -> str:
        self._process.wait(timeout=5)
        assert self._process.stderr is not None
        return self._process.stderr.read().decode(errors="replace").strip()[-2000:]
