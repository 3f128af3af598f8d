"""The etcd backend's configuration: endpoints, security rules, key layout, identity.

Nothing here contacts etcd: every check runs in the constructor or in
``write`` before a request is sent.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from typing import Any

import pytest

from runregistry import EtcdRegistry, InsecureBackendError, Record, RegistryError
from runregistry.backends.etcd._keys import KeyLayout
from runregistry.backends.etcd._settings import parse_endpoints

# A port on loopback where no test listens; the constructor never connects.
UNUSED = "http://127.0.0.1:9"


def test_endpoints_accept_comma_separated_string() -> None:
    endpoints = parse_endpoints("http://127.0.0.1:2379, https://[::1]:2380")

    assert [endpoint.url for endpoint in endpoints] == [
        "http://127.0.0.1:2379",
        "https://[::1]:2380",
    ]


def test_endpoints_accept_sequence_and_default_port() -> None:
    endpoints = parse_endpoints(["http://localhost", "https://etcd.example.com/"])

    assert [endpoint.port for endpoint in endpoints] == [2379, 2379]
    assert endpoints[0].loopback
    assert not endpoints[1].loopback


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("", id="empty"),
        pytest.param(" , ", id="only-commas"),
        pytest.param("127.0.0.1:2379", id="no-scheme"),
        pytest.param("ftp://127.0.0.1:2379", id="other-scheme"),
        pytest.param("http://127.0.0.1:2379/v3", id="path"),
        pytest.param("http://user:secret@127.0.0.1:2379", id="credentials"),
        pytest.param("http://127.0.0.1:99999", id="port-out-of-range"),
        pytest.param("http://:2379", id="no-host"),
    ],
)
def test_invalid_endpoint_is_rejected(value: str) -> None:
    with pytest.raises(RegistryError, match="etcd endpoint"):
        EtcdRegistry(value)


def test_plain_http_off_loopback_is_insecure() -> None:
    with pytest.raises(InsecureBackendError, match="plain HTTP on a non-loopback"):
        EtcdRegistry("http://10.1.2.3:2379")


def test_one_insecure_endpoint_among_several_is_rejected() -> None:
    with pytest.raises(InsecureBackendError):
        EtcdRegistry([UNUSED, "http://192.0.2.10:2379"])


def test_tls_off_loopback_without_user_is_insecure() -> None:
    with pytest.raises(InsecureBackendError, match="no etcd user"):
        EtcdRegistry("https://192.0.2.10:2379")


def test_tls_off_loopback_with_user_is_accepted() -> None:
    registry = EtcdRegistry("https://192.0.2.10:2379", username="alice", password="pw")

    assert registry.secure
    assert registry.user == "alice"


def test_user_without_password_is_rejected() -> None:
    with pytest.raises(RegistryError, match="has no password"):
        EtcdRegistry(UNUSED, username="alice")


def test_credentials_come_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNREGISTRY_ETCD_USER", "bob")
    monkeypatch.setenv("RUNREGISTRY_ETCD_PASSWORD", "pw")

    registry = EtcdRegistry("https://192.0.2.10:2379")

    assert registry.secure
    assert registry.user == "bob"


def test_missing_ca_file_is_reported(tmp_path: object) -> None:
    with pytest.raises(RegistryError, match="cannot load the etcd TLS files"):
        EtcdRegistry("https://127.0.0.1:2379", ca_file="/nonexistent/ca.pem")


def test_plain_loopback_logs_warning(caplog: pytest.LogCaptureFixture) -> None:
    # Warned once per process and endpoint, so the endpoint is one no other test uses.
    with caplog.at_level(logging.WARNING, logger="runregistry"):
        EtcdRegistry("http://127.0.0.2:2379")

    assert "plain HTTP" in caplog.text
    assert "plant records" in caplog.text


def test_token_over_plain_http_is_refused_before_connecting() -> None:
    registry = EtcdRegistry(UNUSED)
    record = Record(1234, "http://127.0.0.1:8000", "session", token="secret-token")

    with pytest.raises(InsecureBackendError, match="only over TLS") as raised:
        registry.write(record)

    assert "secret-token" not in str(raised.value)


def test_accepts_tokens_needs_tls_and_user() -> None:
    with pytest.raises(InsecureBackendError):
        EtcdRegistry(UNUSED).accepts_tokens()
    with pytest.raises(InsecureBackendError):
        EtcdRegistry("https://127.0.0.1:2379").accepts_tokens()
    EtcdRegistry("https://127.0.0.1:2379", username="u", password="p").accepts_tokens()


@pytest.mark.parametrize(("ttl", "expected"), [(0.2, 1), (1.0, 1), (2.5, 3), (10.0, 10)], ids=str)
def test_ttl_rounds_up_to_whole_seconds(ttl: float, expected: int) -> None:
    assert EtcdRegistry(UNUSED, ttl=ttl).ttl == expected


@pytest.mark.parametrize("ttl", [0.0, -1.0, float("nan"), float("inf")], ids=str)
def test_invalid_ttl_is_rejected(ttl: float) -> None:
    with pytest.raises(RegistryError, match="invalid lease ttl"):
        EtcdRegistry(UNUSED, ttl=ttl)


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({"app": "a/b"}, id="app-with-slash"),
        pytest.param({"app": ".."}, id="app-dotdot"),
        pytest.param({"host_name": "h/1"}, id="host-with-slash"),
        pytest.param({"machine_id": ""}, id="empty-machine-id-is-default"),
        pytest.param({"machine_id": "m\n1"}, id="machine-id-control-char"),
        pytest.param({"user": "a/b"}, id="user-with-slash"),
    ],
)
def test_key_components_are_checked(overrides: dict[str, Any]) -> None:
    if overrides.get("machine_id") == "":
        # An empty override means "this machine", like None.
        assert EtcdRegistry(UNUSED, **overrides).machine_id
        return
    with pytest.raises(RegistryError, match="for an etcd key"):
        EtcdRegistry(UNUSED, **overrides)


def test_key_layout_puts_user_app_machine_pid_and_time() -> None:
    registry = EtcdRegistry(UNUSED, app="agent", user="carol", prefix="/rr/", machine_id="m1")
    record = Record.from_json(
        b'{"pid": 42, "addr": "http://h:1", "session_id": "s",'
        b' "started_at": "2026-05-13T10:20:30.5Z"}'
    )

    key = registry.keys.run_key(record, registry.machine_id)

    assert key == "/rr/carol/agent/runs/m1/42-2026-05-13T10:20:30.5Z"
    assert registry.keys.parse_run_key(key) == ("m1", 42, "2026-05-13T10:20:30.5Z")


def test_key_layout_rejects_foreign_keys() -> None:
    layout = KeyLayout("/rr", "carol", "agent")

    assert layout.parse_run_key("/rr/carol/agent/runs/m1/notapid") is None
    assert layout.parse_run_key("/rr/carol/agent/runs/42-x") is None
    assert layout.parse_run_key("/rr/carol/other/runs/m1/42-x") is None


def test_prefix_comes_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNREGISTRY_ETCD_PREFIX", "/fleet")

    registry = EtcdRegistry(UNUSED, user="dan")

    assert registry.keys.runs == "/fleet/dan/runregistry/runs/"


def test_machine_id_defaults_to_this_machine() -> None:
    registry = EtcdRegistry(UNUSED)

    try:
        with open("/etc/machine-id", encoding="ascii") as file:
            expected = file.read().strip()
    except OSError:
        pytest.skip("no /etc/machine-id on this machine")
    assert registry.machine_id == expected


def test_file_backend_never_imports_etcd_backend() -> None:
    code = (
        "import sys, runregistry\n"
        "runregistry.Registry('/tmp/unused-runregistry-dir').list()\n"
        "from runregistry.cli import _app\n"
        "print(any(name.startswith('runregistry.backends.etcd') for name in sys.modules))"
    )

    output = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30
    ).stdout

    assert output.strip() == "False"
