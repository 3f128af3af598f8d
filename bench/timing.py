"""In-process timing: every case once per round, in a rotating order, with time.perf_counter.

Running the cases round by round, rather than one case many times and then
the next, spreads machine drift (other processes, CPU frequency, the page
cache) over all of them alike.
"""

from __future__ import annotations

import gc
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field


@dataclass
class Case:
    """One timed call: an operation of one peer on one population at one N."""

    peer: str
    operation: str
    population: str
    size: int
    call: Callable[[], object]
    # Returns what is wrong with a result of *call*, or "" when it is right.
    check: Callable[[object], str] = field(default=lambda _result: "")


@dataclass
class Timing:
    """Seconds per call of one case: median, minimum and maximum over the rounds."""

    peer: str
    operation: str
    population: str
    size: int
    median: float
    minimum: float
    maximum: float
    rounds: int
    loops: int

    @property
    def per_record(self) -> float:
        """Median seconds per record."""
        return self.median / self.size


def calibrate(case: Case, min_sample_seconds: float) -> int:
    """Call *case* once, check its result, and return how many calls make one sample.

    :raises RuntimeError: the result is wrong, so timing it would mean nothing.
    """
    start = time.perf_counter()
    result = case.call()
    elapsed = time.perf_counter() - start
    problem = case.check(result)
    if problem:
        raise RuntimeError(
            f"{case.peer} {case.operation} on {case.population} N={case.size}: {problem}"
        )
    return max(1, min(10_000, math.ceil(min_sample_seconds / max(elapsed, 1e-7))))


def time_rounds(cases: Sequence[Case], rounds: int, min_sample_seconds: float) -> list[Timing]:
    """Time every case in *rounds* rounds and return one :class:`Timing` per case."""
    loops = [calibrate(case, min_sample_seconds) for case in cases]
    samples: list[list[float]] = [[] for _ in cases]
    for round_index in range(rounds):
        shift = round_index % len(cases)
        for index in [*range(shift, len(cases)), *range(shift)]:
            samples[index].append(_sample(cases[index].call, loops[index]))

    return [
        Timing(
            case.peer,
            case.operation,
            case.population,
            case.size,
            statistics.median(values),
            min(values),
            max(values),
            rounds,
            count,
        )
        for case, values, count in zip(cases, samples, loops, strict=True)
    ]


def _sample(call: Callable[[], object], loops: int) -> float:
    # The collector is paused during a sample, as timeit does, so that a
    # collection triggered by one peer's garbage is not charged to another.
    enabled = gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter()
        for _ in range(loops):
            call()
        elapsed = time.perf_counter() - start
    finally:
        if enabled:
            gc.enable()
    return elapsed / loops
