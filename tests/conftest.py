"""Fixtures shared by the test suite: private registries, real child processes, fixtures dir."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

# The etcd server fixtures, shared by the etcd backend's test files.
from etcd_server import etcd_prefix, etcd_server, etcd_session_server, etcd_url  # noqa: F401
from runregistry import Registry

# Records written by docker-agent's Go implementation, shipped beside the repository.
GO_FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "go-records"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--stress-seconds",
        type=float,
        default=3.0,
        help="how long each writer of the concurrency stress test keeps going, in seconds "
        "(default 3); the timeout of tests marked slow grows to match",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # A longer stress run is asked for on the command line, so its timeout follows it.
    seconds = float(config.getoption("--stress-seconds"))
    for item in items:
        if item.get_closest_marker("slow") is not None:
            item.add_marker(pytest.mark.timeout(seconds + 120))


@pytest.fixture(autouse=True)
def _isolated_environment(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keep every test away from the user's real registries and etcd."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_DATA_HOME", str(home / "data"))
    monkeypatch.delenv("RUNREGISTRY_DIR", raising=False)
    monkeypatch.delenv("RUNREGISTRY_ETCD", raising=False)
    for suffix in ("PREFIX", "USER", "PASSWORD", "CACERT", "CERT", "KEY"):
        monkeypatch.delenv(f"RUNREGISTRY_ETCD_{suffix}", raising=False)
    monkeypatch.delenv("NO_COLOR", raising=False)


@pytest.fixture
def registry_dir(tmp_path: Path) -> Path:
    """A registry directory path that does not exist yet."""
    return tmp_path / "registry" / "runs"


@pytest.fixture
def registry(registry_dir: Path) -> Registry:
    """A registry in a private temporary directory."""
    return Registry(registry_dir)


@pytest.fixture
def go_fixtures() -> Path:
    """The folder of records written by the Go implementation."""
    if not GO_FIXTURES.is_dir():
        pytest.skip(f"Go record fixtures not found at {GO_FIXTURES}")
    return GO_FIXTURES


Spawn = Callable[..., "subprocess.Popen[bytes]"]


@pytest.fixture
def spawn() -> Iterator[Spawn]:
    """Start real child processes; afterwards each is killed if running, reaped and closed."""
    children: list[subprocess.Popen[bytes]] = []

    def start(*argv: str, **kwargs: object) -> subprocess.Popen[bytes]:
        child: subprocess.Popen[bytes] = subprocess.Popen(argv, **kwargs)  # type: ignore[call-overload]
        children.append(child)
        return child

    yield start

    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
        # Pipes left open would trip ResourceWarning, which the suite treats as an error.
        for pipe in (child.stdin, child.stdout, child.stderr):
            if pipe is not None:
                pipe.close()


@pytest.fixture
def sleeper(spawn: Spawn) -> Callable[[], subprocess.Popen[bytes]]:
    """Start a `sleep` child that lives until the test ends."""

    def start() -> subprocess.Popen[bytes]:
        return spawn("sleep", "600")

    return start


def python_child(code: str) -> list[str]:
    """Return the argv that runs *code* in a fresh interpreter with this checkout importable."""
    return [sys.executable, "-c", code]


def child_env(**extra: str) -> dict[str, str]:
    """Return this process's environment plus *extra*, for child processes."""
    env = dict(os.environ)
    env.update(extra)
    return env
