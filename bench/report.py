"""Write ``docs/benchmarks.md`` and its chart from the harness's results."""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterable
from typing import Any

from . import notes, targets

MiB = 2**20

_SINGLE_FILE_OPERATIONS = ("find(pid)", "write()")


def write(results: dict[str, Any], output: str, chart: str) -> None:
    """Write the report page to *output* and, unless *chart* is "none", the chart PNG."""
    chart_name = ""
    if chart != "none":
        problem = draw_chart(results, chart)
        if problem:
            results["skipped"]["chart"] = problem
        else:
            chart_name = os.path.relpath(chart, os.path.dirname(os.path.abspath(output)))
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output, "w", encoding="utf-8") as file:
        file.write(render(results, chart_name))


def render(results: dict[str, Any], chart_name: str) -> str:
    """Return the report page as Markdown; *chart_name* is the chart's path from the page."""
    sections = [
        _header(results),
        _targets(results),
        _in_process(results, chart_name),
        _processes(results),
        _memory(results),
        _watch(results),
        _etcd(results),
        notes.METHOD,
        _skipped(results),
    ]
    return "\n".join(section for section in sections if section)


def _header(results: dict[str, Any]) -> str:
    machine = results["machine"]
    load_before = results["load_before"]
    lines = [
        "# Benchmarks",
        "",
        "How fast runregistry lists and finds live runs, against a plain-Python reference and "
        "the peers that solve the same problem (Jupyter Server and TensorBoard), measured in one "
        "run by `make bench` (the harness is in `bench/`). The page is written by that run; "
        "the notes on missed targets are part of the harness. `make bench` measures again, "
        "and `make bench BENCH_ARGS='--sizes 10,100'` makes a short run.",
        "",
        f"- Machine: {machine['cpu']}, {machine['cores']} cores, {machine['memory_gib']} GiB, "
        f"{machine['kernel']}; records on {machine.get('work_filesystem', 'unknown')}",
        f"- Python: {machine['python']} ({machine['python_implementation']})",
        f"- Command: {_command(results)}",
        f"- Date: {results['date']}; the run took {results.get('total_seconds', 0) / 60:.1f} min",
        f"- Load average (1, 5, 15 min) before the run: {_load(load_before)}",
        _other_load(results),
    ]
    return "\n".join(lines) + "\n"


def _command(results: dict[str, Any]) -> str:
    interpreter = results["machine"]["executable"]
    if results.get("via_make"):
        return f"`make bench`, which ran `{results['command']}` with `{interpreter}`"
    return f"`{results['command']}` with `{interpreter}`"


def _other_load(results: dict[str, Any]) -> str:
    other = results.get("other_cpu_seconds")
    if other is None:
        return "- CPU time of other processes during the run: not recorded"
    cores = results["machine"]["cores"] or 1
    share = other / (results["total_seconds"] * cores)
    return (
        f"- Other processes used {other:.0f} CPU-seconds during the run, {share:.0%} of the "
        f"{cores} cores.{notes.shared_machine(share)}"
    )


def _load(values: Iterable[float]) -> str:
    return ", ".join(f"{value:.2f}" for value in values)


def _targets(results: dict[str, Any]) -> str:
    rows = targets.evaluate(results)
    lines = [
        "## Targets",
        "",
        "| Target | Measured | Result |",
        "| --- | --- | --- |",
    ]
    lines += [f"| {row.target} | {row.measured} | {row.verdict} |" for row in rows]
    judged = [row for row in rows if row.verdict]
    met = sum(row.verdict.startswith("met") for row in judged)
    lines += ["", f"{met} of the {len(judged)} targets measured in this run are met."]
    missed = [row for row in rows if row.note]
    if missed:
        lines.append("")
        lines.extend(f"- **{row.target}**: {row.note}" for row in missed)
    return "\n".join(lines) + "\n"


def _in_process(results: dict[str, Any], chart_name: str) -> str:
    timings = results.get("in_process", [])
    if not timings:
        return ""
    lines = [
        "## In-process timings",
        "",
        "Median, minimum and maximum time of one call over the rounds, the median per record, "
        "and the median against the plain-Python reference on the same files (x ref). Cold "
        "calls build a new `Registry` each time; warm calls reuse one whose cache of decoded "
        "records is filled. Jupyter and TensorBoard read their own files, one per live pid "
        "as for runregistry, so they are compared with the reference on runregistry's files.",
        "",
    ]
    if chart_name:
        lines += [f"![Cost per record of listing live runs against N]({chart_name})", ""]
    lines += _listing_summary(results)

    for size in sorted({t["size"] for t in timings}):
        rows = [t for t in timings if t["size"] == size]
        lines += [
            f"### N = {size:,}",
            "",
            "| Peer | Operation | Records | Median | Min | Max | Per record | x ref |",
            "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for timing in rows:
            per_record, ratio = "", ""
            # find(pid) and write() touch one file, so neither divides by N nor
            # compares with a listing.
            if not timing["operation"].startswith(_SINGLE_FILE_OPERATIONS):
                per_record = _duration(timing["median"] / size)
                ratio = _ratio(targets.ratio_to_reference(results, timing))
            lines.append(
                f"| {timing['peer']} | {timing['operation']} | {timing['population']} "
                f"| {_duration(timing['median'])} | {_duration(timing['minimum'])} "
                f"| {_duration(timing['maximum'])} | {per_record} | {ratio} |"
            )
        lines.append("")
    return "\n".join(lines)


def _listing_summary(results: dict[str, Any]) -> list[str]:
    """Return a table of the median cost per record of every listing, N by N."""
    series = targets.listing_series(results)
    sizes = sorted({point[0] for points in series.values() for point in points})
    lines = [
        "Listing at a glance: median µs per record, and in brackets the ratio to the "
        "plain-Python reference on the same files.",
        "",
        "| Listing | " + " | ".join(f"N = {size:,}" for size in sizes) + " |",
        "| --- |" + " ---: |" * len(sizes),
    ]
    for label, points in series.items():
        cells = {size: (per_record, ratio) for size, per_record, ratio in points}
        row = []
        for size in sizes:
            if size not in cells:
                row.append("")
                continue
            per_record, ratio = cells[size]
            suffix = f" ({ratio:.2f})" if ratio is not None else ""
            row.append(f"{per_record * 1e6:.1f}{suffix}")
        lines.append(f"| {label} | " + " | ".join(row) + " |")
    return [*lines, ""]


def _processes(results: dict[str, Any]) -> str:
    timings = results.get("processes", [])
    if not timings:
        return ""
    lines = [
        "## Whole processes",
        "",
        "Wall-clock time from start to exit, measured by the parent, with bytecode caching "
        "on (`PYTHONDONTWRITEBYTECODE` unset) and one warm-up run each. Commands of one N run "
        "round by round; `jupyter server list --json` runs fewer times because each run takes "
        "about a second.",
        "",
        "| Command | N | Runs | Median | Min | Max | Median - `python -c pass` |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for timing in timings:
        base = targets.process_median(results, "python -c pass", timing["size"])
        extra = ""
        if base is not None and timing["label"] != "python -c pass":
            extra = _duration(timing["median"] - base)
        lines.append(
            f"| `{timing['label']}` | {timing['size']:,} | {timing['runs']} "
            f"| {_duration(timing['median'])} | {_duration(timing['minimum'])} "
            f"| {_duration(timing['maximum'])} | {extra} |"
        )
    profile = results.get("import_profile")
    if profile:
        lines += [
            "",
            "What `runregistry list` imports beyond `python -c pass`, largest first: the median "
            "self time of each module over 5 runs of `runregistry list` under `python -X "
            "importtime`, which adds its own bookkeeping to every import.",
            "",
            "| Module | Self time |",
            "| --- | ---: |",
        ]
        lines += [f"| `{module}` | {_duration(seconds)} |" for module, seconds in profile]
        total = sum(seconds for _, seconds in profile)
        lines.append(f"| these {len(profile)} together | {_duration(total)} |")
    return "\n".join(lines) + "\n"


def _memory(results: dict[str, Any]) -> str:
    memory = results.get("memory")
    if not memory:
        return ""
    return "\n".join(
        [
            "## Peak memory",
            "",
            f"Peak resident set size at N = {memory['size']:,}: `ru_maxrss` of the command, "
            "read with `wait4` by a small launcher (`python -I -S`) that starts it, because a "
            "child's count starts from the memory of the process it was forked from. The "
            f"launcher's own peak, {memory['floor'] / MiB:.1f} MiB, is the lowest value this "
            "can report.",
            "",
            "| Command | Peak RSS |",
            "| --- | ---: |",
            f"| `python -c pass` | {memory['python -c pass'] / MiB:.1f} MiB |",
            f"| `runregistry list --json` | {memory['runregistry list --json'] / MiB:.1f} MiB |",
            "",
        ]
    )


def _watch(results: dict[str, Any]) -> str:
    watch = results.get("watch")
    if not watch:
        return ""
    lines = [
        "## Watch: from death to event",
        "",
        f"{watch['deaths']} live writers (processes holding their records' locks, as above) "
        "killed one at a time with SIGKILL, with `Registry.watch(initial=True)` running in a "
        "process of its own (`bench/_watcher.py`). Each latency runs from the harness's "
        '`kill()` to the watcher\'s `perf_counter()` when it receives the "stopped" event; '
        "both read CLOCK_MONOTONIC, which all processes share. A death without an event "
        "within 5 s counts as missed.",
        "",
    ]
    if watch["median"] is None:
        lines.append(f"No death was reported: {watch['missed']} missed.")
        return "\n".join(lines) + "\n"
    lines += [
        "| Deaths | Missed | Median | p99 | Min | Max |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| {watch['deaths']} | {watch['missed']} | {_duration(watch['median'])} "
        f"| {_duration(watch['p99'])} | {_duration(watch['minimum'])} "
        f"| {_duration(watch['maximum'])} |",
    ]
    return "\n".join(lines) + "\n"


def _etcd(results: dict[str, Any]) -> str:
    etcd = results.get("etcd")
    if not etcd:
        return ""
    lines = ["## etcd backend", ""]
    result = etcd["result"]
    if result is None:
        status = etcd["status"]
        outcome = "timed out" if status is None else f"exited with status {status}"
        lines += [f"`python -m bench.etcd_bench` {outcome}:", "", "```", etcd["output"], "```"]
        return "\n".join([*lines, ""])
    lines += [
        f"`python -m bench.etcd_bench` starts its own etcd server on 127.0.0.1, publishes "
        f"{result['records']:,} records of {result['hosts']} simulated hosts (filled in "
        f"{result['fill_seconds']:.1f} s), and times `EtcdRegistry.list()` from another host "
        f"{result['rounds']} times; it listed {result['listed']:,} records.",
        "",
        "| Median | p90 | Min |",
        "| ---: | ---: | ---: |",
        f"| {_duration(result['median_seconds'])} | {_duration(result['p90_seconds'])} "
        f"| {_duration(result['min_seconds'])} |",
        "",
    ]
    return "\n".join(lines)


def _skipped(results: dict[str, Any]) -> str:
    skipped = results.get("skipped", {})
    if not skipped:
        return ""
    lines = ["## Not measured in this run", ""]
    lines += [f"- {name}: {reason}" for name, reason in sorted(skipped.items())]
    return "\n".join(lines) + "\n"


def _duration(seconds: float) -> str:
    if abs(seconds) >= 1:
        return f"{seconds:.2f} s"
    if abs(seconds) >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.2f} µs"


def _ratio(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


# Colours by peer, so that each peer keeps its colour on both populations;
# Go-format records are drawn dashed.
_COLOURS = (
    ("plain Python, open()", "tab:gray"),
    ("plain Python", "black"),
    ("runregistry cold", "tab:blue"),
    ("runregistry warm", "tab:green"),
    ("jupyter_server", "tab:orange"),
    ("tensorboard", "tab:red"),
)


def _style(label: str) -> tuple[str, str]:
    colour = next((colour for prefix, colour in _COLOURS if label.startswith(prefix)), "tab:purple")
    return colour, "--" if "Go format" in label else "-"


def draw_chart(results: dict[str, Any], path: str) -> str:
    """Draw the cost per record of each peer's listing against N; return why not, or ""."""
    # Imported by name: matplotlib lives in bench/.venv only, where the type checker does not look.
    try:
        matplotlib = importlib.import_module("matplotlib")
        matplotlib.use("Agg")
        plt = importlib.import_module("matplotlib.pyplot")
    except ImportError:
        return "matplotlib is not installed here"

    series = targets.listing_series(results)
    if not series:
        return "chart: no listing was timed"
    figure, axes = plt.subplots(figsize=(10, 5), dpi=110)
    for label, points in series.items():
        sizes = [point[0] for point in points]
        costs = [point[1] * 1e6 for point in points]
        color, line = _style(label)
        axes.plot(sizes, costs, marker="o", color=color, linestyle=line, label=label)
    axes.set_xscale("log")
    axes.set_xlabel("live records (N)")
    axes.set_ylabel("median µs per record")
    axes.set_ylim(bottom=0)
    axes.set_title("Listing live runs: cost per record")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    figure.savefig(path, bbox_inches="tight")
    plt.close(figure)
    return ""
