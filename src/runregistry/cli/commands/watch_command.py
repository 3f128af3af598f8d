"""``runregistry watch``: print a line each time a run starts or stops, until interrupted."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..._watching import RunEvent
    from .. import SubParsers


def add_parser(subparsers: SubParsers) -> None:
    parser = subparsers.add_parser(
        "watch",
        help="print a line each time a run starts or stops",
        description=(
            "Print one line each time a run starts or stops, until interrupted (exit status "
            "130). A stop gives its reason: removed, exited, pid-reused, before-boot, "
            "lock-released or lease-expired."
        ),
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help='print one JSON object per line: {"event", "initial", "reason", "record"}',
    )
    parser.add_argument(
        "--initial",
        action="store_true",
        help="first print the live runs, then a synced line",
    )
    parser.add_argument(
        "--show-token", action="store_true", help="include control-plane tokens in the output"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from .._app import open_registry

    with open_registry(args).watch(initial=args.initial) as events:
        for event in events:
            line = event_json(event, args.show_token) if args.json else event_text(event)
            print(line, flush=True)
    return 0


def event_text(event: RunEvent) -> str:
    """Return *event* as one line for people, such as ``stopped pid=12 ... reason=exited``."""
    from .._output import printable

    if event.record is None:
        return event.kind
    record = event.record
    parts = [f"{event.kind:<7}", f"pid={record.pid}"]
    if record.agent:
        parts.append(f"agent={printable(record.agent)}")
    parts += [f"session={printable(record.session_id)}", f"addr={printable(record.addr)}"]
    if event.reason is not None:
        parts.append(f"reason={event.reason}")
    if event.initial:
        parts.append("(initial)")
    return " ".join(parts)


def event_json(event: RunEvent, show_token: bool = False) -> str:
    """Return *event* as one compact JSON object; the record is as ``list --json`` prints it."""
    import json

    from ..._liveness import LIVE, RUNNING, STALE, Liveness
    from .._output import record_json

    if event.record is None:
        return json.dumps({"event": event.kind})
    if event.kind == "started":
        liveness = Liveness(LIVE, RUNNING, "")
    else:
        liveness = Liveness(STALE, event.reason or "", "")
    data = {
        "event": event.kind,
        "initial": event.initial,
        "reason": event.reason,
        "record": record_json(event.record, liveness, show_token=show_token),
    }
    return json.dumps(data, ensure_ascii=False)
