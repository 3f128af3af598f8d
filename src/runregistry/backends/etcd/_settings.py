"""How to reach etcd safely: endpoints, TLS files, credentials and their environment variables.

Plain HTTP is accepted only on loopback, where no other machine can read or
plant records. Every other endpoint needs TLS and an etcd user with a
password, so that neither records nor the tokens in them cross a network
unprotected.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import urlsplit

from ..._errors import InsecureBackendError, RegistryError

log = logging.getLogger(__name__)

ENV_ENDPOINTS: Final = "RUNREGISTRY_ETCD"
ENV_CA_FILE: Final = "RUNREGISTRY_ETCD_CACERT"
ENV_CERT_FILE: Final = "RUNREGISTRY_ETCD_CERT"
ENV_KEY_FILE: Final = "RUNREGISTRY_ETCD_KEY"
ENV_USERNAME: Final = "RUNREGISTRY_ETCD_USER"
ENV_PASSWORD: Final = "RUNREGISTRY_ETCD_PASSWORD"  # noqa: S105 - a variable name, not a password
ENV_PREFIX: Final = "RUNREGISTRY_ETCD_PREFIX"

DEFAULT_PORT: Final = 2379
DEFAULT_PREFIX: Final = "/runregistry"

# Loopback endpoints already warned about: once per process is enough.
_warned_plain: set[str] = set()


@dataclass(frozen=True)
class Endpoint:
    """One etcd client URL, such as ``https://etcd1.example.com:2379``."""

    scheme: str
    host: str
    port: int

    @property
    def url(self) -> str:
        """The endpoint as a URL, IPv6 hosts in brackets."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    @property
    def loopback(self) -> bool:
        """Whether the endpoint is on this machine's loopback interface."""
        if self.host.lower() == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


@dataclass(frozen=True)
class ConnectionSettings:
    """Endpoints, TLS files and credentials, checked for safety."""

    endpoints: tuple[Endpoint, ...]
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    @property
    def secure(self) -> bool:
        """Whether every endpoint uses TLS and requests are authenticated as an etcd user."""
        tls = all(endpoint.scheme == "https" for endpoint in self.endpoints)
        return tls and self.credentials is not None

    @property
    def credentials(self) -> tuple[str, str] | None:
        """The etcd user name and password, or None without authentication."""
        if self.username is None or self.password is None:
            return None
        return self.username, self.password

    def ssl_context(self) -> ssl.SSLContext | None:
        """Return the TLS context for https endpoints, or None when none uses TLS.

        :raises RegistryError: a CA, certificate or key file cannot be loaded.
        """
        if not any(endpoint.scheme == "https" for endpoint in self.endpoints):
            return None
        try:
            # Without a CA file the system's trusted certificates verify etcd.
            context = ssl.create_default_context(cafile=self.ca_file)
            if self.cert_file is not None:
                context.load_cert_chain(self.cert_file, self.key_file)
        except (OSError, ssl.SSLError) as exc:
            raise RegistryError(
                f"cannot load the etcd TLS files (CA {self.ca_file!r}, certificate "
                f"{self.cert_file!r}, key {self.key_file!r}): {exc}; check the paths "
                f"and ${ENV_CA_FILE}, ${ENV_CERT_FILE} and ${ENV_KEY_FILE}"
            ) from None
        return context


def connection_settings(
    endpoints: str | Sequence[str],
    *,
    ca_file: str | None = None,
    cert_file: str | None = None,
    key_file: str | None = None,
    username: str | None = None,
    password: str | None = None,
) -> ConnectionSettings:
    """Return the checked settings; arguments left None come from the environment.

    :raises InsecureBackendError: an endpoint is plain HTTP and not loopback, or
        a TLS endpoint that is not loopback has no etcd user and password.
    :raises RegistryError: an endpoint is not an http(s) URL, or a user has no password.
    """
    settings = ConnectionSettings(
        parse_endpoints(endpoints),
        ca_file=_argument_or_environment(ca_file, ENV_CA_FILE),
        cert_file=_argument_or_environment(cert_file, ENV_CERT_FILE),
        key_file=_argument_or_environment(key_file, ENV_KEY_FILE),
        username=_argument_or_environment(username, ENV_USERNAME),
        password=password if password is not None else os.environ.get(ENV_PASSWORD),
    )
    if settings.username is not None and settings.password is None:
        raise RegistryError(
            f"etcd user {settings.username!r} has no password: pass password=... "
            f"or set ${ENV_PASSWORD}"
        )

    for endpoint in settings.endpoints:
        _check_endpoint(endpoint, settings)
    return settings


def parse_endpoints(value: str | Sequence[str]) -> tuple[Endpoint, ...]:
    """Parse a URL, a comma-separated string of URLs, or a sequence of URLs.

    :raises RegistryError: there is no URL, or one is not ``http(s)://HOST[:PORT]``.
    """
    texts = value.split(",") if isinstance(value, str) else list(value)
    endpoints = tuple(_parse_endpoint(text.strip()) for text in texts if text.strip())
    if not endpoints:
        raise RegistryError(
            f"no etcd endpoint in {value!r}: give a URL such as http://127.0.0.1:2379"
        )
    return endpoints


def prefix_from(prefix: str | None) -> str:
    """Return the key prefix without a trailing slash, from *prefix* or the environment.

    :raises RegistryError: the prefix is empty or contains a NUL character.
    """
    text = _argument_or_environment(prefix, ENV_PREFIX) or DEFAULT_PREFIX
    text = text.rstrip("/")
    if not text or "\0" in text:
        raise RegistryError(
            f"invalid etcd key prefix {prefix!r}: give a path such as {DEFAULT_PREFIX}"
        )
    return text


def _parse_endpoint(text: str) -> Endpoint:
    parts = urlsplit(text)
    problem = ""
    if parts.scheme not in ("http", "https"):
        problem = "it does not start with http:// or https://"
    elif not parts.hostname:
        problem = "it has no host"
    elif parts.username is not None or parts.password is not None:
        problem = f"it contains credentials: set ${ENV_USERNAME} and ${ENV_PASSWORD} instead"
    elif parts.path not in ("", "/") or parts.query or parts.fragment:
        problem = "it has a path, query or fragment"
    if not problem:
        try:
            port = parts.port or DEFAULT_PORT
        except ValueError:
            problem = "its port is not a number from 1 to 65535"
    if problem:
        raise RegistryError(
            f"invalid etcd endpoint {text!r}: {problem}; write it as http://127.0.0.1:2379 "
            "or https://HOST:2379"
        )
    assert parts.hostname is not None
    return Endpoint(parts.scheme, parts.hostname, port)


def _check_endpoint(endpoint: Endpoint, settings: ConnectionSettings) -> None:
    if endpoint.loopback:
        if endpoint.scheme == "http" and endpoint.url not in _warned_plain:
            _warned_plain.add(endpoint.url)
            log.warning(
                "etcd endpoint %s uses plain HTTP: anyone who can reach that port on this "
                "machine can read and plant records",
                endpoint.url,
            )
        return

    if endpoint.scheme == "http":
        raise InsecureBackendError(
            f"etcd endpoint {endpoint.url} uses plain HTTP on a non-loopback address, so anyone "
            "on the network could read and plant records: use https:// with a CA file "
            f"(${ENV_CA_FILE}) and an etcd user and password (${ENV_USERNAME}, ${ENV_PASSWORD})"
        )
    if settings.credentials is None:
        raise InsecureBackendError(
            f"etcd endpoint {endpoint.url} is not on loopback and no etcd user is set, so any "
            "client could read and plant records: give username and password, or set "
            f"${ENV_USERNAME} and ${ENV_PASSWORD}"
        )


def _argument_or_environment(value: str | None, variable: str) -> str | None:
    if value is not None:
        return value
    return os.environ.get(variable) or None
