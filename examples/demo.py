"""The ``make run`` demo: a real control plane under ``runregistry exec``, and how to reach it.

``python examples/demo.py`` starts ``runregistry exec --port auto --token auto``
on this file's ``serve`` mode (the standard-library control plane of
``stdlib_control_plane.py``, listening on the port and checking the token that
exec passes in the environment). Once exec has published the run, it prints
the commands that list, find and call the server from a second terminal.
Ctrl-C stops the server, and exec removes its record.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from types import FrameType

from stdlib_control_plane import ControlPlane

import runregistry

AGENT = "demo"

# How long a first run may take to publish. Starting Python is most of it.
PUBLISH_TIMEOUT = 30.0


def main(argv: list[str]) -> int:
    """Run the demo, or with ``serve``, the server that the demo runs under exec."""
    if argv[:1] == ["serve"]:
        return serve(argv[1:])
    return launch()


def launch() -> int:
    """Start the server under exec, print how to reach it, and wait until it stops."""
    session_id = str(uuid.uuid4())
    exec_command = [
        *_runregistry_command(),
        "exec",
        "--port",
        "auto",
        "--token",
        "auto",
        "--agent",
        AGENT,
        "--session-id",
        session_id,
        "--",
        sys.executable,
        os.path.abspath(__file__),
        "serve",
        "--port",
        "{port}",
        "--session-id",
        session_id,
    ]

    # Ctrl-C reaches exec and the server directly from the terminal; the demo
    # only waits for them, so it neither dies nor passes the signal on.
    signal.signal(signal.SIGINT, _ignore)
    supervisor = subprocess.Popen(exec_command)
    record = _await_publication(session_id, supervisor)
    if record is not None:
        _print_instructions(record)
    status = supervisor.wait()

    if record is not None:
        print(f"\nstopped: exec exited with status {status} and removed the record.")
    return status


def serve(argv: list[str]) -> int:
    """Serve on ``--port`` with the token from ``$RUNREGISTRY_TOKEN`` until Ctrl-C or SIGTERM."""
    parser = argparse.ArgumentParser(prog="demo.py serve")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--session-id", required=True)
    args = parser.parse_args(argv)
    token = os.environ.get("RUNREGISTRY_TOKEN")
    if not token:
        parser.error("RUNREGISTRY_TOKEN is not set: run this under runregistry exec --token auto")

    signal.signal(signal.SIGTERM, _interrupt)
    with ControlPlane(("127.0.0.1", args.port), token) as server:
        server.session = {
            "pid": os.getpid(),
            "addr": f"http://127.0.0.1:{server.port}",
            "session_id": args.session_id,
            "agent": AGENT,
        }
        with contextlib.suppress(KeyboardInterrupt):
            server.serve_forever()
    return 0


def _await_publication(
    session_id: str, supervisor: subprocess.Popen[bytes]
) -> runregistry.Record | None:
    """Return the run's record once exec publishes it, or None if exec exits first."""
    registry = runregistry.default_registry()
    deadline = time.monotonic() + PUBLISH_TIMEOUT
    while supervisor.poll() is None and time.monotonic() < deadline:
        for record in registry.list():
            if record.session_id == session_id:
                return record
        time.sleep(0.1)
    return None


def _print_instructions(record: runregistry.Record) -> None:
    command = " ".join(shlex.quote(word) for word in _runregistry_command(display=True))
    short_id = record.session_id[:8]
    print(
        f"""
A control plane is running under runregistry exec at {record.addr}.
Find and call it from a second terminal, in this directory:

  {command} ls
  {command} find {short_id}
  {command} call {short_id} /session
  curl {record.addr}/health
  curl -i {record.addr}/session        # 401: the token is missing

The token never appears in a command line; to send it with curl, pipe it in:

  {command} find {short_id} --field token | sed 's/^/Authorization: Bearer /' \\
    | curl -H @- {record.addr}/session

Press Ctrl-C here to stop the server; exec then removes its record.
""",
        flush=True,
    )


def _runregistry_command(*, display: bool = False) -> list[str]:
    """Return the argv that runs this interpreter's ``runregistry``, short when *display*."""
    script = Path(sys.executable).parent / "runregistry"
    if not script.exists():
        return [sys.executable, "-m", "runregistry"]
    if display:
        relative = os.path.relpath(script)
        return [relative if not relative.startswith("..") else str(script)]
    return [str(script)]


def _ignore(signum: int, frame: FrameType | None) -> None:
    pass


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
