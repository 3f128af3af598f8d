"""Runs the etcd backend's benchmark, ``bench/etcd_bench.py``, when it and an etcd binary exist.

That script starts its own etcd server and measures ``list()`` of 10,000
records over 20 hosts. The harness runs it as ``python -m bench.etcd_bench``,
shows its output in the report, and reads the time of ``list()`` from its last
line when that line is a JSON object with a ``list_seconds`` number.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from typing import Any

_BENCH_DIR = os.path.dirname(os.path.abspath(__file__))

# The script starts etcd and writes 10,000 records; more than this means it hangs.
TIMEOUT_SECONDS = 600


def unavailable() -> str:
    """Return why the etcd benchmark cannot run here, or "" when it can."""
    if not os.path.isfile(os.path.join(_BENCH_DIR, "etcd_bench.py")):
        return "bench/etcd_bench.py does not exist yet"
    if shutil.which("etcd") is None:
        return "no etcd binary on PATH (Debian's etcd-server package provides one)"
    return ""


def measure() -> dict[str, Any]:
    """Run the etcd benchmark and return its output, exit status and ``list()`` time."""
    try:
        result = subprocess.run(
            [sys.executable, "-m", "bench.etcd_bench"],
            cwd=os.path.dirname(_BENCH_DIR),
            capture_output=True,
            text=True,
            timeout=TIMEOUT_SECONDS,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {"status": None, "output": f"timed out after {TIMEOUT_SECONDS} s"}
    output = result.stdout.strip() or result.stderr.strip()[-2000:]
    return {
        "status": result.returncode,
        "output": output,
        "list_seconds": _list_seconds(result.stdout) if result.returncode == 0 else None,
    }


def _list_seconds(stdout: str) -> float | None:
    lines = stdout.strip().splitlines()
    if not lines:
        return None
    try:
        summary = json.loads(lines[-1])
    except ValueError:
        return None
    value = summary.get("list_seconds") if isinstance(summary, dict) else None
    return float(value) if isinstance(value, (int, float)) else None
