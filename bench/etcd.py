"""Runs the etcd backend's benchmark, ``bench/etcd_bench.py``, when it and an etcd binary exist.

That script starts its own etcd server and measures ``list()`` of 10,000
records over 20 simulated hosts. The harness runs it as ``python -m
bench.etcd_bench``, which prints its result as one JSON object, and reports
that object's median, p90 and minimum time of ``list()``.
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
    """Run the etcd benchmark and return its exit status, result or output.

    ``result`` is the script's JSON object when it printed one; otherwise
    ``output`` is the end of what it printed.
    """
    try:
        completed = subprocess.run(
            [sys.executable, "-m", "bench.etcd_bench"],
            cwd=os.path.dirname(_BENCH_DIR),
            capture_output=True,
            text=True,
            timeout=TIMEOUT_SECONDS,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {"status": None, "result": None, "output": f"timed out after {TIMEOUT_SECONDS} s"}
    result = _result(completed.stdout) if completed.returncode == 0 else None
    output = "" if result else (completed.stdout + completed.stderr).strip()[-2000:]
    return {"status": completed.returncode, "result": result, "output": output}


def _result(stdout: str) -> dict[str, Any] | None:
    try:
        result = json.loads(stdout)
    except ValueError:
        return None
    if not isinstance(result, dict) or not isinstance(result.get("median_seconds"), float):
        return None
    return result
