"""A writer process for the etcd tests: publishes records, reports them, removes them on request.

It prints one JSON line once its records are published: ``{"pid": ...,
"sessions": [...]}``. On SIGTERM it removes them and exits 0. Killed with
SIGKILL instead, it leaves its records to its lease.

With ``--count 1`` and no ``--fake-pids`` the record is this process's own;
otherwise the records carry made-up pids, as runs of a simulated host would.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import uuid
from contextlib import ExitStack

from runregistry import EtcdRegistry, Record


def main() -> int:
    """Publish the records that the arguments describe and keep them until SIGTERM arrives."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--app", default="runregistry")
    parser.add_argument("--ttl", type=float, default=2.0)
    parser.add_argument("--host-name")
    parser.add_argument("--machine-id")
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--fake-pids", type=int, default=0, help="first made-up pid")
    args = parser.parse_args()
    # Blocked so that sigwait() receives it, in place of the default handler that ends the process.
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGTERM])
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING)

    registry = EtcdRegistry(
        args.url,
        prefix=args.prefix,
        app=args.app,
        ttl=args.ttl,
        host_name=args.host_name,
        machine_id=args.machine_id,
    )
    with ExitStack() as stack:
        sessions = []
        for index in range(args.count):
            if args.fake_pids:
                record = Record(
                    args.fake_pids + index, f"http://127.0.0.1:{20000 + index}", uuid.uuid4().hex
                )
                stack.callback(registry.write(record))
                sessions.append(record.session_id)
            else:
                published = stack.enter_context(registry.register("http://127.0.0.1:8999"))
                sessions.append(published.session_id)
        print(json.dumps({"pid": os.getpid(), "sessions": sessions}), flush=True)

        signal.sigwait([signal.SIGTERM])
    registry.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
