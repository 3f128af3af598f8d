"""The speed targets, checked against a run's results."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import notes

REFERENCE = "plain Python"
RUNREGISTRY = "runregistry"
PARTS = "parts of list()"
RUNREGISTRY_POPULATION = "runregistry-written"
GO_POPULATION = "Go format"
LARGE_SIZES = (1000, 10000)

NOT_MEASURED = "not measured in this run"

# Medians of two operations that do the same work, such as latest() and list()
# at N = 10 (where list() sorts only ten records), differ by noise alone, so a
# difference below this fraction counts as equal cost.
SAME_COST = 0.01


@dataclass
class Row:
    """One target: its requirement, the measured value, and whether it was met."""

    target: str
    measured: str
    verdict: str
    # Why a missed target was missed and what would close it; "" when met.
    note: str = ""


def evaluate(results: dict[str, Any]) -> list[Row]:
    """Return one row per target, met or missed, in the order the report shows them."""
    rows = [
        _list_ratio(results, RUNREGISTRY_POPULATION, "cold", 1.4, "list_cold"),
        _list_ratio(results, RUNREGISTRY_POPULATION, "warm", 1.0, "list_warm"),
        _list_ratio(results, GO_POPULATION, "cold", 2.5, "go_cold"),
        _list_ratio(results, GO_POPULATION, "warm", 2.5, "go_warm"),
        _find_pid(results),
        _not_above_list(results, "find(session substring)", "find_session"),
        _not_above_list(results, "latest()", "latest"),
        *_startup(results),
        _memory(results),
    ]
    rows.extend(_extra(results))
    return rows


def ratio_to_reference(results: dict[str, Any], timing: dict[str, Any]) -> float | None:
    """Return *timing*'s median over the reference's on the same files at the same N."""
    population = timing["population"]
    if population not in (RUNREGISTRY_POPULATION, GO_POPULATION):
        population = RUNREGISTRY_POPULATION
    base = _median(results, REFERENCE, "list()", population, timing["size"])
    return None if base is None else timing["median"] / base


def process_median(results: dict[str, Any], label: str, size: int) -> float | None:
    """Return the median seconds of whole-process command *label* at *size*, if measured."""
    for timing in results.get("processes", []):
        if timing["label"] == label and timing["size"] == size:
            return float(timing["median"])
    return None


def listing_series(
    results: dict[str, Any],
) -> dict[str, list[tuple[int, float, float | None]]]:
    """Return, per listing (peer and population), its points against N.

    Each point is N, the median seconds per record, and the ratio to the
    reference on the same files (None when the reference was not timed).
    """
    series: dict[str, list[tuple[int, float, float | None]]] = {}
    for timing in results.get("in_process", []):
        if timing["operation"] not in ("list()", "list() cold", "list() warm"):
            continue
        label = f"{timing['peer']} {timing['operation']}".replace(" list()", "")
        label = f"{label} ({timing['population']})"
        point = (
            timing["size"],
            timing["median"] / timing["size"],
            ratio_to_reference(results, timing),
        )
        series.setdefault(label, []).append(point)
    for points in series.values():
        points.sort()
    return series


def _timing(
    results: dict[str, Any], peer: str, operation: str, population: str, size: int
) -> dict[str, Any] | None:
    for timing in results.get("in_process", []):
        if (
            timing["peer"] == peer
            and timing["operation"] == operation
            and timing["population"] == population
            and timing["size"] == size
        ):
            return dict(timing)
    return None


def _median(
    results: dict[str, Any], peer: str, operation: str, population: str, size: int
) -> float | None:
    timing = _timing(results, peer, operation, population, size)
    return None if timing is None else float(timing["median"])


def _verdict(met: bool, key: str, results: dict[str, Any]) -> tuple[str, str]:
    if met:
        return "met", ""
    return "**missed**", notes.missed(key, _facts(results))


def _facts(results: dict[str, Any]) -> dict[str, float | int | None]:
    """Return the numbers the notes on missed targets quote, at the largest N measured."""
    size = max((timing["size"] for timing in results.get("in_process", [])), default=0)

    def ratio(peer: str, operation: str, population: str) -> float | None:
        own = _median(results, peer, operation, population, size)
        base = _median(results, REFERENCE, "list()", population, size)
        return None if own is None or base is None else own / base

    syscalls = ratio(PARTS, "system calls only", RUNREGISTRY_POPULATION)
    warm = ratio(RUNREGISTRY, "list() warm", RUNREGISTRY_POPULATION)
    from_json = ratio(PARTS, "Record.from_json only", RUNREGISTRY_POPULATION)
    return {
        "size": size,
        "syscalls": syscalls,
        "warm_python": None if warm is None or syscalls is None else warm - syscalls,
        "loads": ratio(PARTS, "json.loads only", RUNREGISTRY_POPULATION),
        "from_json": from_json,
        "cold_floor": None if syscalls is None or from_json is None else syscalls + from_json,
        "go_syscalls": ratio(PARTS, "system calls only", GO_POPULATION),
    }


def _list_ratio(results: dict[str, Any], population: str, mode: str, limit: float, key: str) -> Row:
    target = (
        f"`list()` {mode} on {population} records ≤ {limit} x reference at N = 1,000 and 10,000"
    )
    ratios = []
    for size in LARGE_SIZES:
        own = _median(results, RUNREGISTRY, f"list() {mode}", population, size)
        base = _median(results, REFERENCE, "list()", population, size)
        if own is not None and base is not None:
            ratios.append((size, own / base))
    if not ratios:
        return Row(target, NOT_MEASURED, "")
    measured = ", ".join(f"{ratio:.2f} x at {size:,}" for size, ratio in ratios)
    verdict, note = _verdict(all(ratio <= limit for _, ratio in ratios), key, results)
    return Row(target, measured, verdict, note)


def _find_pid(results: dict[str, Any]) -> Row:
    target = "`find(pid)` at N = 10,000 ≤ 1 % of `list()`"
    parts, met = [], True
    for population in (RUNREGISTRY_POPULATION, GO_POPULATION):
        for mode in ("cold", "warm"):
            find = _median(results, RUNREGISTRY, f"find(pid) {mode}", population, 10000)
            whole = _median(results, RUNREGISTRY, f"list() {mode}", population, 10000)
            if find is None or whole is None:
                continue
            share = find / whole
            met = met and share <= 0.01
            parts.append(f"{share:.3%} {mode} ({population})")
    if not parts:
        return Row(target, NOT_MEASURED, "")
    verdict, note = _verdict(met, "find_pid", results)
    return Row(target, ", ".join(parts), verdict, note)


def _not_above_list(results: dict[str, Any], operation: str, key: str) -> Row:
    target = f"`{operation}` ≤ `list()` at every N"
    worst: tuple[float, str] | None = None
    worst_minimum = 0.0
    for timing in results.get("in_process", []):
        if timing["peer"] != RUNREGISTRY or not timing["operation"].startswith(operation):
            continue
        mode = timing["operation"].rsplit(" ", 1)[1]
        population, size = timing["population"], timing["size"]
        whole = _timing(results, RUNREGISTRY, f"list() {mode}", population, size)
        if whole is None:
            continue
        ratio = timing["median"] / whole["median"]
        worst_minimum = max(worst_minimum, timing["minimum"] / whole["minimum"])
        where = f"{mode}, {population}, N = {size:,}"
        if worst is None or ratio > worst[0]:
            worst = (ratio, where)
    if worst is None:
        return Row(target, NOT_MEASURED, "")
    verdict, note = _verdict(worst[0] <= 1.0 + SAME_COST, key, results)
    if verdict == "met" and worst[0] > 1.0:
        verdict = f"met: within {SAME_COST:.0%}, counted as equal"
    measured = (
        f"medians: at most {worst[0]:.3f} x `list()` ({worst[1]}); "
        f"minimums: at most {worst_minimum:.3f} x"
    )
    return Row(target, measured, verdict, note)


def _startup(results: dict[str, Any]) -> list[Row]:
    base = process_median(results, "python -c pass", 10)
    own = process_median(results, "runregistry list", 10)
    jupyter = process_median(results, "jupyter server list --json", 10)
    within = "`runregistry list` at N = 10 within 30 ms of `python -c pass`"
    faster = "`runregistry list` at N = 10 ≥ 40 x faster than `jupyter server list --json`"
    rows = []
    if base is None or own is None:
        rows.append(Row(within, NOT_MEASURED, ""))
    else:
        verdict, note = _verdict(own - base <= 0.030, "startup", results)
        rows.append(Row(within, f"+{(own - base) * 1e3:.1f} ms", verdict, note))
    if jupyter is None or own is None:
        rows.append(Row(faster, NOT_MEASURED, ""))
    else:
        verdict, note = _verdict(jupyter / own >= 40, "startup_jupyter", results)
        rows.append(Row(faster, f"{jupyter / own:.0f} x faster", verdict, note))
    return rows


def _memory(results: dict[str, Any]) -> Row:
    target = "peak memory of `runregistry list --json` at N = 10,000 < 64 MiB"
    memory = results.get("memory")
    if not memory or memory["size"] != 10000:
        return Row(target, NOT_MEASURED, "")
    peak = memory["runregistry list --json"]
    verdict, note = _verdict(peak < 64 * 2**20, "memory", results)
    return Row(target, f"{peak / 2**20:.1f} MiB", verdict, note)


def _extra(results: dict[str, Any]) -> list[Row]:
    rows = []
    checks: list[tuple[str, Callable[[dict[str, Any], dict[str, Any]], Row | None]]] = [
        ("watch", _watch_row),
        ("etcd", _etcd_row),
    ]
    for key, build in checks:
        if results.get(key):
            row = build(results[key], results)
            if row is not None:
                rows.append(row)
    return rows


def _watch_row(watch: dict[str, Any], results: dict[str, Any]) -> Row | None:
    median = watch.get("median")
    if median is None:
        return None
    target = "`watch`: median from a writer's death to its event < 100 ms"
    verdict, note = _verdict(median < 0.100, "watch", results)
    return Row(target, f"{median * 1e3:.1f} ms (p99 {watch['p99'] * 1e3:.1f} ms)", verdict, note)


def _etcd_row(etcd: dict[str, Any], results: dict[str, Any]) -> Row | None:
    target = "etcd backend: `list()` of 10,000 records over 20 hosts < 250 ms"
    result = etcd.get("result")
    if result is None:
        return Row(target, "the etcd benchmark failed (see below)", "**missed**")
    seconds = result["median_seconds"]
    verdict, note = _verdict(seconds < 0.250, "etcd", results)
    return Row(target, f"{seconds * 1e3:.0f} ms (median)", verdict, note)
