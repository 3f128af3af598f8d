"""The etcd backend over TLS with client certificates and per-user roles.

The test makes its own certificate authority with the ``openssl`` command,
starts etcd with TLS and client-certificate checks, creates the users and
roles through the same API that ``etcdctl`` uses, and enables authentication.
"""

from __future__ import annotations

import logging
import shutil
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

from etcd_server import EtcdServer, TcpProxy, require_etcd
from runregistry import EtcdRegistry, Record, RegistryError
from runregistry.backends.etcd._client import GatewayClient, encode, prefix_end
from runregistry.backends.etcd._settings import parse_endpoints

pytestmark = pytest.mark.etcd

# Throwaway passwords of the test server.
ROOT_PASSWORD = "root-secret"
ALICE_PASSWORD = "alice-secret"


class Certificates(NamedTuple):
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def _issue(
    directory: Path, name: str, ca: Certificates | None, usage: str, subject: str
) -> tuple[Path, Path]:
    key, cert, request = directory / f"{name}.key", directory / f"{name}.pem", directory / "r.csr"
    curve = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl("req", *curve, "-keyout", str(key), "-out", str(request), "-subj", subject)
    extensions = directory / f"{name}.ext"
    extensions.write_text(
        f"subjectAltName=IP:127.0.0.1\nextendedKeyUsage={usage}\n"
        "authorityKeyIdentifier=keyid,issuer\nbasicConstraints=CA:FALSE\n"
    )
    assert ca is not None
    _openssl(
        "x509", "-req", "-in", str(request), "-CA", str(ca.ca), "-CAkey", str(ca.server_key),
        "-CAcreateserial", "-out", str(cert), "-days", "1", "-extfile", str(extensions),
    )  # fmt: skip
    return cert, key


def make_certificates(directory: Path) -> Certificates:
    """Create a CA, a server certificate for 127.0.0.1 and a client certificate for alice."""
    ca_key, ca_cert = directory / "ca.key", directory / "ca.pem"
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", str(ca_key), "-out", str(ca_cert), "-days", "1",
        "-subj", "/CN=runregistry-test-ca",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        "-addext", "subjectKeyIdentifier=hash",
    )  # fmt: skip
    issuer = Certificates(ca_cert, ca_cert, ca_key, ca_cert, ca_key)
    # etcd's JSON gateway connects to its own gRPC port with the server
    # certificate, so with client certificates required it must allow clientAuth too.
    server_cert, server_key = _issue(
        directory, "server", issuer, "serverAuth,clientAuth", "/CN=127.0.0.1"
    )
    # With authentication on, the gateway rejects a client certificate that
    # has a common name, since it cannot pass that name on as the user.
    client_cert, client_key = _issue(directory, "client", issuer, "clientAuth", "/O=runregistry")
    return Certificates(ca_cert, server_cert, server_key, client_cert, client_key)


def admin_client(server: EtcdServer, certs: Certificates, root: bool) -> GatewayClient:
    context = ssl.create_default_context(cafile=str(certs.ca))
    context.load_cert_chain(str(certs.client_cert), str(certs.client_key))
    return GatewayClient(
        parse_endpoints(server.url),
        ssl_context=context,
        credentials=("root", ROOT_PASSWORD) if root else None,
        timeout=5,
    )


def set_up_users(server: EtcdServer, certs: Certificates) -> None:
    """Create root and alice, give alice a role for her own prefix only, enable authentication."""
    admin = admin_client(server, certs, root=False)
    admin.call("auth/user/add", {"name": "root", "password": ROOT_PASSWORD})
    admin.call("auth/role/add", {"name": "root"})
    admin.call("auth/user/grant", {"user": "root", "role": "root"})
    admin.call("auth/user/add", {"name": "alice", "password": ALICE_PASSWORD})
    admin.call("auth/role/add", {"name": "runregistry-alice"})
    own_prefix = "/runregistry/alice/"
    permission = {
        "permType": "READWRITE",
        "key": encode(own_prefix),
        "range_end": prefix_end(own_prefix),
    }
    admin.call("auth/role/grant", {"name": "runregistry-alice", "perm": permission})
    admin.call("auth/user/grant", {"user": "alice", "role": "runregistry-alice"})
    # Carol may read her records but not the rest of her app's prefix, which a watch needs.
    admin.call("auth/user/add", {"name": "carol", "password": ALICE_PASSWORD})
    admin.call("auth/role/add", {"name": "runs-only"})
    runs_only = "/runregistry/carol/runregistry/runs/"
    permission = {"permType": "READ", "key": encode(runs_only), "range_end": prefix_end(runs_only)}
    admin.call("auth/role/grant", {"name": "runs-only", "perm": permission})
    admin.call("auth/user/grant", {"user": "carol", "role": "runs-only"})
    admin.call("auth/enable", {})
    admin.close()


@pytest.fixture(scope="module")
def secure_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[EtcdServer, Certificates]]:
    """An etcd server with TLS, client certificates and authentication; simple tokens live 1 s."""
    binary = require_etcd()
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed; it makes the test certificates")
    directory = tmp_path_factory.mktemp("etcd-tls")
    certs = make_certificates(directory)
    health = ssl.create_default_context(cafile=str(certs.ca))
    health.load_cert_chain(str(certs.client_cert), str(certs.client_key))
    server = EtcdServer(
        binary,
        directory / "data",
        extra_args=(
            f"--cert-file={certs.server_cert}",
            f"--key-file={certs.server_key}",
            f"--trusted-ca-file={certs.ca}",
            "--client-cert-auth",
            "--auth-token=simple",
            "--auth-token-ttl=1",
        ),
        tls=health,
    )
    server.start()
    try:
        set_up_users(server, certs)
        yield server, certs
    finally:
        server.stop()


def alice_registry(
    server: EtcdServer, certs: Certificates, endpoints: str = "", **options: object
) -> EtcdRegistry:
    settings: dict[str, object] = {
        "ttl": 2,
        "username": "alice",
        "password": ALICE_PASSWORD,
        "ca_file": str(certs.ca),
        "cert_file": str(certs.client_cert),
        "key_file": str(certs.client_key),
    }
    settings.update(options)
    return EtcdRegistry(endpoints or server.url, **settings)  # type: ignore[arg-type]


def test_token_is_published_over_tls_with_auth(
    secure_server: tuple[EtcdServer, Certificates],
) -> None:
    registry = alice_registry(*secure_server)
    reader = alice_registry(*secure_server, machine_id="reader-id", host_name="reader")

    with registry.register("http://127.0.0.1:8000", "with-token", token="control-plane-token"):
        [record] = reader.list()

    assert registry.user == "alice"
    assert record.token == "control-plane-token"
    assert reader.list() == []
    registry.close()
    reader.close()


def test_user_cannot_read_another_users_prefix(
    secure_server: tuple[EtcdServer, Certificates],
) -> None:
    registry = alice_registry(*secure_server, user="bob")

    with pytest.raises(RegistryError, match="permission denied"):
        registry.list()
    registry.close()


def test_wrong_password_is_reported(secure_server: tuple[EtcdServer, Certificates]) -> None:
    server, certs = secure_server
    registry = EtcdRegistry(
        server.url,
        username="alice",
        password="wrong",
        ca_file=str(certs.ca),
        cert_file=str(certs.client_cert),
        key_file=str(certs.client_key),
    )

    with pytest.raises(RegistryError, match="authentication failed"):
        registry.list()
    registry.close()


def test_expired_auth_token_is_renewed(
    secure_server: tuple[EtcdServer, Certificates], caplog: pytest.LogCaptureFixture
) -> None:
    registry = alice_registry(*secure_server)
    registry.list()

    # The server's simple tokens live 1 s without use.
    time.sleep(2.5)
    with caplog.at_level(logging.DEBUG, logger="runregistry"):
        listed = registry.list()

    assert listed == []
    assert "authenticating again" in caplog.text
    registry.close()


def test_untrusted_server_certificate_is_reported(
    secure_server: tuple[EtcdServer, Certificates],
) -> None:
    server, certs = secure_server
    registry = EtcdRegistry(
        server.url,
        username="alice",
        password=ALICE_PASSWORD,
        cert_file=str(certs.client_cert),
        key_file=str(certs.client_key),
    )

    with pytest.raises(RegistryError, match="certificate verification failed"):
        registry.list()
    registry.close()


def test_watch_works_over_tls(secure_server: tuple[EtcdServer, Certificates]) -> None:
    watcher = alice_registry(*secure_server)
    writer = alice_registry(*secure_server, machine_id="writer-id", host_name="writer")

    with watcher.watch() as stream:
        cleanup = writer.write(Record(321, "http://127.0.0.1:8000", "over-tls"))
        started = next(stream)
        cleanup()
        stopped = next(stream)

    assert (started.kind, stopped.kind, stopped.reason) == ("started", "stopped", "removed")
    watcher.close()
    writer.close()


def test_watch_resumes_after_auth_token_expired(
    secure_server: tuple[EtcdServer, Certificates],
) -> None:
    server, certs = secure_server
    proxy = TcpProxy(server.client_port)
    proxy.start()
    watcher = alice_registry(server, certs, endpoints=f"https://127.0.0.1:{proxy.port}")
    writer = alice_registry(server, certs, machine_id="writer-id", host_name="writer")

    with watcher.watch() as stream:
        # The token expires while the watch runs; the dropped connection then
        # needs a new one to resume.
        time.sleep(2.5)
        proxy.stop()
        proxy.start()
        cleanup = writer.write(Record(322, "http://127.0.0.1:8000", "after-expiry"))
        started = next(stream)
        cleanup()

    assert started.record is not None
    assert started.record.session_id == "after-expiry"
    proxy.stop()
    watcher.close()
    writer.close()


def test_watch_without_permission_raises(secure_server: tuple[EtcdServer, Certificates]) -> None:
    registry = alice_registry(*secure_server, username="carol")

    with registry.watch() as stream, pytest.raises(RegistryError, match="canceled the watch"):
        next(stream)
    registry.close()
