"""Print each event of ``Registry(<dir>).watch(initial=True)`` with its ``time.perf_counter()``.

Run by the harness as ``python -m bench._watcher DIR``. ``perf_counter`` reads
CLOCK_MONOTONIC on Linux, which all processes share, so the harness can
subtract the time it killed a writer from the time printed here.
"""

from __future__ import annotations

import sys
import time

from runregistry import Registry


def main() -> None:
    """Watch the registry in ``sys.argv[1]`` until killed, one line per event."""
    registry = Registry(sys.argv[1])
    for event in registry.watch(initial=True):
        pid = event.record.pid if event.record is not None else 0
        print(f"{time.perf_counter():.9f} {event.kind} {pid} {event.reason}", flush=True)


if __name__ == "__main__":
    main()
