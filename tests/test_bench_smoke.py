"""The benchmark harness still runs: N = 10, few rounds, peers skipped when not installed.

This checks that the harness works and writes its report, never how fast
anything is: timings belong to ``make bench``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(
    sys.platform != "linux", reason="the harness needs Linux: it reads /proc and forks writers"
)


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str]:
    """Run the harness once at N = 10 and return its results and report page."""
    out = tmp_path_factory.mktemp("bench")
    argv = [
        sys.executable,
        "-m",
        "bench",
        "--sizes",
        "10",
        "--rounds",
        "2",
        "--process-runs",
        "1",
        "--watch-samples",
        "3",
        "--min-sample-ms",
        "0.1",
        # The etcd benchmark fills an etcd server with 10,000 records: too slow here.
        "--skip",
        "etcd",
        "--output",
        str(out / "benchmarks.md"),
        "--chart",
        str(out / "benchmarks.png"),
        "--results",
        str(out / "results.json"),
    ]
    result = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=90, check=False)
    assert result.returncode == 0, result.stderr
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    return results, (out / "benchmarks.md").read_text(encoding="utf-8")


def test_harness_times_library_and_reference(bench_run: tuple[dict[str, Any], str]) -> None:
    results, _ = bench_run
    timed = {(t["peer"], t["operation"], t["population"]) for t in results["in_process"]}
    assert ("plain Python", "list()", "runregistry-written") in timed
    assert ("runregistry", "list() cold", "runregistry-written") in timed
    assert ("runregistry", "list() warm", "Go format") in timed
    assert ("runregistry", "write() + cleanup warm", "runregistry-written") in timed


def test_harness_timings_are_positive(bench_run: tuple[dict[str, Any], str]) -> None:
    results, _ = bench_run
    for timing in results["in_process"]:
        assert 0 < timing["minimum"] <= timing["median"] <= timing["maximum"], timing


def test_harness_times_whole_processes(bench_run: tuple[dict[str, Any], str]) -> None:
    results, _ = bench_run
    labels = {t["label"] for t in results["processes"]}
    assert {"python -c pass", "runregistry list"} <= labels
    assert results["memory"]["runregistry list --json"] > 0


def test_harness_reports_missing_peers(bench_run: tuple[dict[str, Any], str]) -> None:
    results, _ = bench_run
    timed_peers = {t["peer"] for t in results["in_process"]}
    for peer in ("jupyter_server", "tensorboard"):
        assert peer in timed_peers or peer in results["skipped"]


def test_harness_page_has_sections(bench_run: tuple[dict[str, Any], str]) -> None:
    _, page = bench_run
    assert page.startswith("# Benchmarks")
    assert "## Targets" in page
    assert "### N = 10" in page
    assert "## Method" in page
