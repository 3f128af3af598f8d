"""The harness: build live populations, time runregistry and its peers, write the report."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from types import FrameType, ModuleType
from typing import Any

from . import etcd, peers, population, processes, report, system, watch_latency
from .targets import GO_POPULATION, RUNREGISTRY_POPULATION
from .timing import Case, Timing, time_rounds

DEFAULT_SIZES = (10, 100, 1000, 10000)

# Rounds per N: enough for a stable median while a full run stays within
# about 15 minutes on 2 cores (it took under 4 minutes on the machine of
# docs/benchmarks.md, most of it at N = 10,000 and in forking the writers).
DEFAULT_ROUNDS = {10: 60, 100: 40, 1000: 40, 10000: 25}

# Whole-process timings run at these N (when measured at all), each command
# this many times; `jupyter server list` takes about a second per run.
PROCESS_SIZES = (10, 1000)
PROCESS_RUNS = 20
JUPYTER_PROCESS_RUNS = 10

# Parts of the run that --skip can leave out.
SKIPPABLE = ("processes", "watch", "etcd")

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and write the report; return the exit status."""
    args = _parser().parse_args(argv)
    if args.report_only:
        with open(args.results, encoding="utf-8") as file:
            results = json.load(file)
        report.write(results, args.output, args.chart)
        return 0

    problem = population.supported()
    if problem:
        print(f"bench: {problem}", file=sys.stderr)
        return 2

    results = run(args, argv if argv is not None else sys.argv[1:])
    _save(results, args.results)
    report.write(results, args.output, args.chart)
    print(f"bench: wrote {args.output}", file=sys.stderr)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--sizes",
        type=_sizes,
        default=DEFAULT_SIZES,
        help="comma-separated numbers of live records (default: 10,100,1000,10000)",
    )
    parser.add_argument("--rounds", type=int, help="rounds at every N (default: 60 to 25 by N)")
    parser.add_argument(
        "--process-runs",
        type=int,
        default=PROCESS_RUNS,
        help=f"runs of each whole-process command (default: {PROCESS_RUNS})",
    )
    parser.add_argument(
        "--min-sample-ms",
        type=float,
        default=2.0,
        help="repeat fast calls until one sample lasts this many milliseconds (default: 2)",
    )
    parser.add_argument(
        "--watch-samples", type=int, default=50, help="writers killed to time watch (default: 50)"
    )
    parser.add_argument(
        "--skip",
        type=_parts,
        default=frozenset(),
        metavar="PART[,PART...]",
        help=f"parts not to measure, among {', '.join(SKIPPABLE)}",
    )
    parser.add_argument(
        "--output", default=os.path.join(_REPO, "docs", "benchmarks.md"), help="report page"
    )
    parser.add_argument(
        "--chart",
        default=os.path.join(_REPO, "docs", "benchmarks.png"),
        help="chart PNG, shown in the page; 'none' draws no chart",
    )
    parser.add_argument(
        "--results",
        default=os.path.join(_REPO, "bench", "results", "latest.json"),
        help="raw results as JSON",
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="write the page and chart again from --results without measuring",
    )
    return parser


def _parts(text: str) -> frozenset[str]:
    parts = frozenset(part.strip() for part in text.split(",") if part.strip())
    unknown = parts - set(SKIPPABLE)
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown part(s) {', '.join(sorted(unknown))}: choose among {', '.join(SKIPPABLE)}"
        )
    return parts


def _sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(sorted({int(part) for part in text.split(",")}))
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid sizes {text!r}: use e.g. 10,100") from None
    if not sizes or sizes[0] < 1:
        raise argparse.ArgumentTypeError(f"invalid sizes {text!r}: each must be at least 1")
    return sizes


def run(args: argparse.Namespace, argv: Sequence[str]) -> dict[str, Any]:
    """Measure everything and return the results as JSON-ready data."""
    started = time.monotonic()
    results: dict[str, Any] = {
        "machine": system.describe(),
        "command": " ".join(["python -m bench", *argv]),
        # make sets MAKELEVEL in the environment of the commands it runs.
        "via_make": "MAKELEVEL" in os.environ,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "load_before": os.getloadavg(),
        "skipped": {},
    }
    busy_before, own_before = system.busy_cpu_seconds(), system.own_cpu_seconds()
    root = tempfile.mkdtemp(prefix="runregistry-bench-")
    results["machine"]["work_filesystem"] = system.filesystem_of(root)
    writers = population.Writers()
    previous_handler = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        layout = Layout(root)
        setup_started = time.monotonic()
        listed, watched = _start_writers(writers, layout, args)
        results["setup_seconds"] = time.monotonic() - setup_started
        _measure(results, writers, listed, layout, args)
        if "processes" not in args.skip:
            _measure_processes(results, layout, args)
        if "watch" not in args.skip:
            _measure_watch(results, writers, watched, layout)
        if "etcd" not in args.skip:
            _measure_etcd(results)
    finally:
        writers.stop()
        signal.signal(signal.SIGTERM, previous_handler)
        shutil.rmtree(root, ignore_errors=True)
    results["total_seconds"] = time.monotonic() - started
    # Every writer and command has been reaped by now, so the harness's own
    # count covers all the CPU time the benchmark used.
    busy = system.busy_cpu_seconds() - busy_before
    results["other_cpu_seconds"] = max(0.0, busy - (system.own_cpu_seconds() - own_before))
    return results


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    # Turned into SystemExit so that the finally clause stops every writer.
    raise SystemExit(128 + signum)


@dataclasses.dataclass
class Layout:
    """The directories of the populations: a fresh one per population and N."""

    root: str

    def runregistry_dir(self, size: int) -> str:
        return os.path.join(self.root, f"runregistry-{size}", "runs")

    def go_dir(self, size: int) -> str:
        return os.path.join(self.root, f"go-{size}", "runs")

    def jupyter_dir(self, size: int) -> str:
        return os.path.join(self.root, f"jupyter-{size}")

    def tensorboard_dir(self, size: int) -> str:
        return os.path.join(self.root, f"tensorboard-{size}")

    def watch_dir(self) -> str:
        return os.path.join(self.root, "watch", "runs")


def _start_writers(
    writers: population.Writers, layout: Layout, args: argparse.Namespace
) -> tuple[list[int], list[int]]:
    """Fork the writers of every N, and those killed to time watch, before any peer is imported.

    Forking is cheap while the harness is small. Returns the pids of the
    populations, oldest first, and the pids of the watch test.
    """
    start = time.monotonic()
    targets = [(layout.runregistry_dir(size), size) for size in args.sizes]
    listed = writers.start(max(args.sizes), targets)
    watched = []
    if args.watch_samples > 0 and "watch" not in args.skip and not watch_latency.unavailable():
        watched = writers.start(args.watch_samples, [(layout.watch_dir(), args.watch_samples)])
    print(
        f"bench: started {len(writers.pids)} writers in {time.monotonic() - start:.1f} s",
        file=sys.stderr,
    )
    return listed, watched


def _measure(
    results: dict[str, Any],
    writers: population.Writers,
    pids: list[int],
    layout: Layout,
    args: argparse.Namespace,
) -> None:
    """Time every in-process case, N by N, and add the timings to *results*."""
    jupyter, skip_jupyter = peers.load_peer("jupyter_server.serverapp")
    tensorboard, skip_tensorboard = peers.load_peer("tensorboard.manager")
    for name, reason in ((peers.JUPYTER, skip_jupyter), (peers.TENSORBOARD, skip_tensorboard)):
        if reason:
            results["skipped"][name] = reason
    tensorboard_version = _tensorboard_version() if tensorboard is not None else ""

    timings: list[Timing] = []
    for size in args.sizes:
        population.write_go_records(layout.go_dir(size), writers, pids[:size])
        if jupyter is not None:
            population.write_jupyter_files(layout.jupyter_dir(size), writers, pids[:size])
        if tensorboard is not None:
            population.write_tensorboard_files(
                layout.tensorboard_dir(size), writers, pids[:size], tensorboard_version
            )
        cases = _cases(size, writers, pids[:size], layout, jupyter=jupyter, tensorboard=tensorboard)
        rounds = args.rounds or DEFAULT_ROUNDS.get(size, 10)
        start = time.monotonic()
        timings.extend(time_rounds(cases, rounds, args.min_sample_ms / 1000))
        print(f"bench: N={size} timed in {time.monotonic() - start:.1f} s", file=sys.stderr)
    results["in_process"] = [dataclasses.asdict(timing) for timing in timings]


def _cases(
    size: int,
    writers: population.Writers,
    pids: list[int],
    layout: Layout,
    *,
    jupyter: ModuleType | None,
    tensorboard: ModuleType | None,
) -> list[Case]:
    sessions = [writers.sessions[pid] for pid in pids]
    target = size // 2
    part = _unique_part(sessions, target)
    cases = []
    for name, directory, include_write in (
        (RUNREGISTRY_POPULATION, layout.runregistry_dir(size), True),
        (GO_POPULATION, layout.go_dir(size), False),
    ):
        cases.append(peers.reference_case(name, directory, size))
        if include_write:
            cases.append(peers.buffered_reference_case(name, directory, size))
        cases.extend(peers.parts_cases(name, directory, size))
        cases.extend(
            peers.runregistry_cases(
                name,
                directory,
                size,
                pid=pids[target],
                session_part=part,
                newest_pid=pids[-1],
                include_write=include_write,
            )
        )
    if jupyter is not None:
        cases.append(peers.jupyter_case(jupyter, layout.jupyter_dir(size), size))
    if tensorboard is not None:
        cases.append(peers.tensorboard_case(tensorboard, layout.tensorboard_dir(size), size))
    return cases


def _unique_part(sessions: list[str], index: int) -> str:
    """Return a part of ``sessions[index]`` that no other session id contains."""
    session = sessions[index]
    for start in range(len(session) - 8):
        part = session[start : start + 8]
        if sum(part in other for other in sessions) == 1:
            return part
    raise RuntimeError(f"session id {session} has no unique 8-character part")


def _tensorboard_version() -> str:
    from importlib.metadata import version

    return version("tensorboard")


def _measure_processes(results: dict[str, Any], layout: Layout, args: argparse.Namespace) -> None:
    bin_dir = os.path.dirname(sys.executable)
    runregistry = shutil.which("runregistry", path=bin_dir)
    jupyter = shutil.which("jupyter", path=bin_dir)
    if runregistry is None:
        results["skipped"]["runregistry command"] = f"no runregistry script in {bin_dir}"
        return
    if jupyter is None:
        results["skipped"]["jupyter server list"] = f"no jupyter script in {bin_dir}"

    env = processes.timing_environment()
    commands = []
    for size in (s for s in args.sizes if s in PROCESS_SIZES):
        commands.append(
            processes.Command("python -c pass", size, [sys.executable, "-c", "pass"], env)
        )
        commands.append(
            processes.Command(
                "runregistry list",
                size,
                [runregistry, "--dir", layout.runregistry_dir(size), "list"],
                env,
            )
        )
    timings = processes.time_commands(commands, args.process_runs) if commands else []

    if jupyter is not None:
        jupyter_commands = [
            processes.Command(
                "jupyter server list --json",
                size,
                [jupyter, "server", "list", "--json"],
                _jupyter_environment(layout, size),
            )
            for size in args.sizes
            if size in PROCESS_SIZES
        ]
        runs = min(args.process_runs, JUPYTER_PROCESS_RUNS)
        timings.extend(processes.time_commands(jupyter_commands, runs))
    results["processes"] = [dataclasses.asdict(timing) for timing in timings]

    if runregistry_startup := [c for c in commands if c.label == "runregistry list"]:
        # The same start as the console script's, which python -m would not reproduce.
        main = "import sys; from runregistry.cli import main; sys.exit(main(sys.argv[1:]))"
        argv = [sys.executable, "-c", main, *runregistry_startup[0].argv[1:]]
        results["import_profile"] = processes.import_profile(argv, env, runs=5)[:12]

    largest = max(args.sizes)
    listing = processes.Command(
        "runregistry list --json",
        largest,
        [runregistry, "--dir", layout.runregistry_dir(largest), "list", "--json"],
        env,
    )
    baseline = processes.Command("python -c pass", largest, [sys.executable, "-c", "pass"], env)
    memory: dict[str, Any] = {"size": largest}
    for command in (baseline, listing):
        peak, floor = processes.peak_memory(command)
        memory[command.label] = peak
        memory["floor"] = floor
    results["memory"] = memory


def _jupyter_environment(layout: Layout, size: int) -> dict[str, str]:
    # A private home and configuration keep the user's Jupyter set-up out of the timing.
    home = os.path.join(layout.root, "jupyter-home")
    os.makedirs(home, exist_ok=True)
    return processes.timing_environment(
        {
            "HOME": home,
            "JUPYTER_CONFIG_DIR": os.path.join(home, "config"),
            "JUPYTER_DATA_DIR": os.path.join(home, "data"),
            "JUPYTER_RUNTIME_DIR": layout.jupyter_dir(size),
            "JUPYTER_PLATFORM_DIRS": "1",
        }
    )


def _measure_watch(
    results: dict[str, Any], writers: population.Writers, pids: list[int], layout: Layout
) -> None:
    reason = watch_latency.unavailable()
    if reason or not pids:
        results["skipped"]["watch latency"] = reason or "no deaths asked for (--watch-samples 0)"
        return
    results["watch"] = watch_latency.measure(writers, layout.watch_dir(), pids)


def _measure_etcd(results: dict[str, Any]) -> None:
    reason = etcd.unavailable()
    if reason:
        results["skipped"]["etcd backend"] = reason
        return
    start = time.monotonic()
    results["etcd"] = etcd.measure()
    print(f"bench: etcd benchmark ran in {time.monotonic() - start:.1f} s", file=sys.stderr)


def _save(results: dict[str, Any], path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as file:
        json.dump(results, file, indent=2)
        file.write("\n")
