"""Control-plane tokens: generation, and that no output shows one unless asked."""

from __future__ import annotations

import base64
import http.server
import json
import logging
import os
import queue
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest

import runregistry
from runregistry import InvalidRecordError, Record, Registry, new_token
from runregistry.cli import main

SESSION = "leak-test-session"
OTHER_SESSION = "leak-test-other"


def cli(registry_dir: Path, *argv: str) -> list[str]:
    return [sys.executable, "-m", "runregistry", "--dir", str(registry_dir), *argv]


@pytest.fixture
def token() -> str:
    return new_token()


@pytest.fixture
def control_plane(token: str) -> Iterator[str]:
    """Serve on 127.0.0.1, with 200 only for requests that carry the token; yield the address."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            allowed = self.headers.get("Authorization") == f"Bearer {token}"
            self.send_response(200 if allowed else 401)
            self.send_header("Content-Length", "3")
            self.end_headers()
            self.wfile.write(b"ok\n" if allowed else b"no\n")

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def tokened_run(registry: Registry, control_plane: str, token: str) -> Iterator[Record]:
    """A live record of this process, with *token*, for the control plane."""
    cleanup = registry.write(Record(os.getpid(), control_plane, SESSION, "agent", token=token))
    yield cleanup.record
    cleanup()


# Generation


def test_new_token_has_256_bits(token: str) -> None:
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))

    assert len(raw) >= 32
    assert re.fullmatch(r"[A-Za-z0-9_-]+", token)


def test_new_tokens_differ() -> None:
    tokens = {new_token() for _ in range(1000)}

    assert len(tokens) == 1000


def test_new_token_is_imported_lazily() -> None:
    code = (
        "import sys, runregistry\n"
        "assert 'runregistry._tokens' not in sys.modules\n"
        "print(len(runregistry.new_token()))\n"
    )

    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False
    )

    assert done.returncode == 0, done.stderr
    assert int(done.stdout) >= 43
    assert "new_token" in runregistry.__all__


# The record and its representations


def test_record_repr_and_str_hide_token(token: str) -> None:
    record = Record(42, "http://127.0.0.1:8", SESSION, token=token)

    assert token not in repr(record)
    assert token not in str(record)
    assert token not in f"{record!r} {record}"


def test_record_to_dict_leaves_token_out(token: str) -> None:
    record = Record(42, "http://127.0.0.1:8", SESSION, token=token)

    assert "token" not in record.to_dict()
    assert record.to_dict(include_token=True)["token"] == token


def test_record_json_stores_token(token: str) -> None:
    record = Record(42, "http://127.0.0.1:8", SESSION, token=token)

    decoded = Record.from_json(record.to_json())

    assert json.loads(record.to_json())["token"] == token
    assert decoded.token == token


def test_invalid_record_messages_hide_token(token: str) -> None:
    cases = [
        {"pid": 42, "addr": "http://x", "session_id": SESSION, "started_at": 1, "token": token},
        {"pid": -1, "addr": "http://x", "session_id": SESSION, "started_at": "x", "token": token},
        {"pid": 42, "addr": 7, "session_id": SESSION, "token": token},
        {"pid": 42, "addr": "http://x", "session_id": SESSION, "token": [token]},
        {
            "pid": 42,
            "addr": "http://x",
            "session_id": SESSION,
            "started_at": "2026-01-01T00:00:00Z",
            "token": {"nested": token},
        },
    ]

    for case in cases:
        with pytest.raises(InvalidRecordError) as caught:
            Record.from_dict(case)
        assert token not in str(caught.value), case


def test_cleanup_and_entry_reprs_hide_token(
    registry: Registry, tokened_run: Record, token: str
) -> None:
    entries = registry.entries()
    cleanup = registry.write(tokened_run)

    assert token not in repr(entries)
    assert token not in repr(cleanup)
    assert tokened_run.token == token


def test_library_debug_log_hides_token(
    registry: Registry, control_plane: str, token: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="runregistry")

    with registry.register(control_plane, SESSION, token=token):
        registry.list()
        registry.find(SESSION)
        result = registry.call(SESSION, "/status")

    assert result.status == 200
    assert "published" in caplog.text
    assert "calling GET" in caplog.text
    assert token not in caplog.text


# The command line


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["list"], id="list"),
        pytest.param(["ls", "--all"], id="ls-all"),
        pytest.param(["list", "-q"], id="list-quiet"),
        pytest.param(["list", "--json"], id="list-json"),
        pytest.param(["find"], id="find-latest"),
        pytest.param(["find", SESSION], id="find"),
        pytest.param(["find", "--json", SESSION], id="find-json"),
        pytest.param(["find", "--field", "addr", SESSION], id="find-field-addr"),
        pytest.param(["find", "no-such-session"], id="find-missing"),
        pytest.param(["call", SESSION, "/status"], id="call"),
        pytest.param(["call", SESSION, "//other/x"], id="call-bad-path"),
        pytest.param(["call", "no-such-session", "/x"], id="call-missing"),
        pytest.param(["wait", SESSION, "--timeout", "5"], id="wait"),
        pytest.param(["wait", "--json", SESSION, "--timeout", "5"], id="wait-json"),
        pytest.param(["doctor"], id="doctor"),
        pytest.param(["doctor", "--json"], id="doctor-json"),
        pytest.param(["__complete", "targets"], id="completion-candidates"),
    ],
)
def test_cli_output_hides_token(
    argv: list[str],
    registry_dir: Path,
    tokened_run: Record,
    token: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    main(["--dir", str(registry_dir), *argv])

    out, err = capsys.readouterr()
    assert token not in out
    assert token not in err


def test_cli_outputs_show_the_run(
    registry_dir: Path, tokened_run: Record, capsys: pytest.CaptureFixture[str]
) -> None:
    # The leak checks above would pass on empty output; this shows they print the run.
    for argv in (["list"], ["list", "--json"], ["find", SESSION], ["find", "--json", SESSION]):
        main(["--dir", str(registry_dir), *argv])
        assert SESSION in capsys.readouterr().out, argv


def test_cli_ambiguous_target_hides_tokens(
    registry: Registry,
    registry_dir: Path,
    tokened_run: Record,
    token: str,
    sleeper: Callable[[], subprocess.Popen[bytes]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    other_token = new_token()
    child = sleeper()
    registry.write(
        Record(
            child.pid,
            "http://127.0.0.1:9",
            OTHER_SESSION,
            started_at=datetime.now(timezone.utc),
            token=other_token,
        )
    )

    status = main(["--dir", str(registry_dir), "find", "leak-test"])

    out, err = capsys.readouterr()
    assert status == 3
    assert OTHER_SESSION in err
    for secret in (token, other_token):
        assert secret not in out
        assert secret not in err


def test_cli_refused_call_hides_token(
    registry: Registry, registry_dir: Path, token: str, capsys: pytest.CaptureFixture[str]
) -> None:
    cleanup = registry.write(Record(os.getpid(), "http://192.0.2.1:9", SESSION, token=token))
    try:
        status = main(["--dir", str(registry_dir), "call", SESSION, "/x"])
    finally:
        cleanup()

    out, err = capsys.readouterr()
    assert status == 6
    assert token not in out
    assert token not in err


@pytest.mark.parametrize(
    ("argv", "logged"),
    [
        pytest.param(["list"], "", id="list"),
        pytest.param(["list", "--json"], "", id="list-json"),
        pytest.param(["find", SESSION], "", id="find"),
        pytest.param(["find", "--json", SESSION], "", id="find-json"),
        pytest.param(["find", "no-such-session"], "Traceback", id="find-missing"),
        pytest.param(["call", SESSION, "/status"], "calling GET", id="call"),
        pytest.param(["call", SESSION, "/status", "--timeout", "1e-9"], "timed out", id="timeout"),
    ],
)
def test_cli_debug_log_hides_token(
    argv: list[str], logged: str, registry_dir: Path, tokened_run: Record, token: str
) -> None:
    done = subprocess.run(
        [*cli(registry_dir), "-v", *argv], capture_output=True, text=True, timeout=30, check=False
    )

    assert logged in done.stderr
    assert token not in done.stdout
    assert token not in done.stderr


def test_cli_debug_log_of_failed_call_hides_token(
    registry: Registry, registry_dir: Path, token: str
) -> None:
    # A bound socket that does not listen refuses the connection, and -v prints the traceback.
    import socket

    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))
        addr = f"http://127.0.0.1:{bound.getsockname()[1]}"
        cleanup = registry.write(Record(os.getpid(), addr, SESSION, token=token))
        try:
            done = subprocess.run(
                [*cli(registry_dir), "-v", "call", SESSION, "/x"],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
        finally:
            cleanup()

    assert done.returncode == 4
    assert "Traceback" in done.stderr
    assert token not in done.stderr
    assert token not in done.stdout


def test_find_field_token_prints_token(
    registry_dir: Path, tokened_run: Record, token: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(["--dir", str(registry_dir), "find", "--field", "token", SESSION])

    assert status == 0
    assert capsys.readouterr().out == f"{token}\n"


@pytest.mark.parametrize(
    ("argv", "pick"),
    [
        pytest.param(["find", "--json", "--show-token", SESSION], lambda data: data, id="find"),
        pytest.param(["list", "--json", "--show-token"], lambda data: data[0], id="list"),
    ],
)
def test_show_token_adds_token_to_json(
    argv: list[str],
    pick: Callable[[object], dict[str, object]],
    registry_dir: Path,
    tokened_run: Record,
    token: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    status = main(["--dir", str(registry_dir), *argv])

    assert status == 0
    assert pick(json.loads(capsys.readouterr().out))["token"] == token


def test_list_show_token_adds_token_column(
    registry_dir: Path, tokened_run: Record, token: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(["--dir", str(registry_dir), "list", "--show-token"])

    out = capsys.readouterr().out
    assert status == 0
    assert "TOKEN" in out
    assert token in out


def test_find_show_token_prints_token(
    registry_dir: Path, tokened_run: Record, token: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(["--dir", str(registry_dir), "find", "--show-token", SESSION])

    lines = capsys.readouterr().out.splitlines()
    assert status == 0
    assert any(re.fullmatch(rf"token:\s+{token}", line) for line in lines), lines


# watch --json


def _watch_is_built() -> bool:
    done = subprocess.run(
        [sys.executable, "-m", "runregistry", "watch", "--help"],
        capture_output=True,
        timeout=30,
        check=False,
    )
    return done.returncode == 0


def _watch_until_synced(registry_dir: Path, *options: str) -> list[str]:
    """Run ``watch --initial`` until its synced event; return the lines it printed."""
    child = subprocess.Popen(
        [*cli(registry_dir), "watch", "--initial", *options],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert child.stdout is not None
        for line in child.stdout:
            lines.put(line)
        lines.put(None)

    pumping = threading.Thread(target=pump, daemon=True)
    pumping.start()
    seen: list[str] = []
    try:
        while True:
            line = lines.get(timeout=10)
            if line is None:
                break
            seen.append(line)
            if "synced" in line:
                break
    finally:
        child.kill()
        child.wait(timeout=10)
        # The pump reaches the end of the pipe once the child is gone.
        pumping.join(timeout=10)
        if child.stdout is not None:
            child.stdout.close()
    return seen


@pytest.mark.parametrize(
    ("options", "show_token"),
    [
        pytest.param([], False, id="text"),
        pytest.param(["--json"], False, id="json"),
        pytest.param(["--json", "--show-token"], True, id="json-show-token"),
    ],
)
def test_watch_hides_token_unless_asked(
    options: list[str], show_token: bool, registry_dir: Path, tokened_run: Record, token: str
) -> None:
    if not _watch_is_built():
        pytest.skip("the watch command is not built yet")

    lines = _watch_until_synced(registry_dir, *options)

    output = "".join(lines)
    assert SESSION in output
    assert (token in output) is show_token


# The record file on disk


def test_record_file_with_token_is_0600(
    registry_dir: Path, tokened_run: Record, token: str
) -> None:
    path = registry_dir / f"{os.getpid()}.json"

    mode = stat.S_IMODE(path.stat().st_mode)

    assert mode == 0o600
    assert json.loads(path.read_bytes())["token"] == token


def _as_nobody(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *argv],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.fixture
def shared_base() -> Iterator[Path]:
    """A directory under /tmp that other users can traverse but not list."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("switching to the user nobody needs root")
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv is not installed, so nothing can run as nobody")
    base = Path(tempfile.mkdtemp(prefix="runregistry-token-", dir="/tmp"))
    base.chmod(0o711)
    yield base
    shutil.rmtree(base)


def test_record_file_unreadable_to_other_user(shared_base: Path, token: str) -> None:
    registry_dir = shared_base / "registry" / "runs"
    registry = Registry(registry_dir)
    cleanup = registry.write(Record(os.getpid(), "http://127.0.0.1:9", SESSION, token=token))
    try:
        record_file = registry_dir / f"{os.getpid()}.json"
        # Make the directories traversable, so that only the file's own mode can deny access.
        for folder in (registry_dir.parent, registry_dir):
            folder.chmod(0o711)
        control = registry_dir / "control.txt"
        control.write_text("readable\n")
        control.chmod(0o644)

        control_read = _as_nobody("cat", str(control))
        if control_read.returncode != 0:
            pytest.skip(f"cannot read a 0644 file as nobody here: {control_read.stderr.strip()}")
        record_read = _as_nobody("cat", str(record_file))
    finally:
        cleanup()

    assert control_read.stdout == "readable\n"
    assert record_read.returncode != 0
    assert "Permission denied" in record_read.stderr
    assert token not in record_read.stdout


def test_registry_directory_hides_names_from_other_user(shared_base: Path, token: str) -> None:
    registry_dir = shared_base / "registry" / "runs"
    registry = Registry(registry_dir)
    cleanup = registry.write(Record(os.getpid(), "http://127.0.0.1:9", SESSION, token=token))
    try:
        registry_dir.parent.chmod(0o711)
        listing = _as_nobody("ls", str(registry_dir))
        parent_listing = _as_nobody("ls", str(registry_dir.parent))
    finally:
        cleanup()

    if parent_listing.returncode == 0:
        pytest.skip("listing a 0711 directory as nobody worked, so setpriv did not drop root")
    assert stat.S_IMODE(registry_dir.stat().st_mode) == 0o700
    assert listing.returncode != 0
    assert "Permission denied" in listing.stderr
