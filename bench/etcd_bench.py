"""Time ``EtcdRegistry.list()`` over many records of many simulated hosts against a real etcd.

``python -m bench.etcd_bench`` starts its own etcd on free 127.0.0.1 ports with
a temporary data directory. It publishes 10,000 records of 20 simulated hosts,
each host a registry with its own host name, machine id and lease. Then it
times ``list()`` from a registry of another machine. :func:`measure_list` is
the same measurement for the harness; it returns the timings in seconds.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from runregistry import EtcdRegistry, Record
from runregistry.backends.etcd._client import encode, encode_bytes

# The tests' etcd launcher, which the benchmark reuses rather than copies.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from etcd_server import EtcdServer, etcd_binary

# Records per etcd transaction while filling: below etcd's default --max-txn-ops of 128.
_BATCH = 100


def measure_list(
    url: str, *, records: int = 10_000, hosts: int = 20, rounds: int = 20, ttl: float = 60.0
) -> dict[str, Any]:
    """Publish *records* spread over *hosts* simulated hosts at *url*, then time ``list()``.

    The records go in under one lease per host, in batched transactions, so
    that filling takes seconds. A registry of another machine then lists them
    *rounds* times; repeated listings decode only records that changed, so
    ``cold_median_seconds`` also times the first listing of new registries.
    The keys live under a fresh prefix, and the hosts' leases are revoked at
    the end, which deletes them.
    """
    prefix = f"/bench-{time.time_ns()}"
    writers = [
        EtcdRegistry(url, prefix=prefix, ttl=ttl, host_name=f"bench-host-{index}",
                     machine_id=f"bench-machine-{index}")
        for index in range(hosts)
    ]  # fmt: skip
    reader = EtcdRegistry(url, prefix=prefix, host_name="bench-reader", machine_id="bench-reader")
    try:
        fill_started = time.perf_counter()
        for index, writer in enumerate(writers):
            count = records // hosts + (1 if index < records % hosts else 0)
            _fill(writer, count)
        fill_seconds = time.perf_counter() - fill_started

        cold = [_time_first_list(url, prefix) for _ in range(max(1, rounds // 4))]
        listed = len(reader.list())
        timings = []
        for _ in range(rounds):
            started = time.perf_counter()
            reader.list()
            timings.append(time.perf_counter() - started)
    finally:
        for writer in [*writers, reader]:
            _revoke(writer)
            writer.close()

    return {
        "records": records,
        "hosts": hosts,
        "listed": listed,
        "rounds": rounds,
        "fill_seconds": fill_seconds,
        "median_seconds": statistics.median(timings),
        "p90_seconds": sorted(timings)[int(0.9 * (len(timings) - 1))],
        "min_seconds": min(timings),
        "timings": timings,
        "cold_median_seconds": statistics.median(cold),
        "cold_timings": cold,
    }


def _time_first_list(url: str, prefix: str) -> float:
    """Time the first ``list()`` of a new registry, as one command-line run makes it."""
    registry = EtcdRegistry(url, prefix=prefix, host_name="bench-cold", machine_id="bench-cold")
    try:
        started = time.perf_counter()
        registry.list()
        return time.perf_counter() - started
    finally:
        registry.close()


def _fill(writer: EtcdRegistry, count: int) -> None:
    """Publish *count* records of made-up pids under *writer*'s host, one lease for all."""
    lease = writer.client.call("lease/grant", {"TTL": str(writer.ttl)})["ID"]
    writer.bench_lease = lease  # type: ignore[attr-defined]
    for start in range(0, count, _BATCH):
        operations = []
        for pid in range(1000 + start, 1000 + min(start + _BATCH, count)):
            record = Record(
                pid,
                f"http://{writer.host_name}.example.com:{8000 + pid % 1000}",
                f"{writer.host_name}-{pid}",
                "bench-agent",
                host=writer.host_name,
                machine_id=writer.machine_id,
            )
            key = writer.keys.run_key(record, writer.machine_id)
            put = {"key": encode(key), "value": encode_bytes(record.to_json()), "lease": lease}
            operations.append({"request_put": put})
        writer.client.call("kv/txn", {"success": operations})


def _revoke(writer: EtcdRegistry) -> None:
    lease = getattr(writer, "bench_lease", None)
    if lease is not None:
        writer.client.call("lease/revoke", {"ID": lease})


def main(argv: list[str] | None = None) -> int:
    """Start a private etcd, run :func:`measure_list`, and print the result as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--hosts", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--url", help="use this etcd instead of starting one (loopback only)")
    args = parser.parse_args(argv)

    if args.url:
        result = measure_list(args.url, records=args.records, hosts=args.hosts, rounds=args.rounds)
        print(json.dumps(result, indent=2))
        return 0

    binary = etcd_binary()
    if binary is None:
        print("etcd_bench: etcd is not installed (apt-get install etcd-server)", file=sys.stderr)
        return 2
    directory = Path(tempfile.mkdtemp(prefix="runregistry-etcd-bench-"))
    server = EtcdServer(binary, directory / "data")
    try:
        server.start()
        result = measure_list(
            server.url, records=args.records, hosts=args.hosts, rounds=args.rounds
        )
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
