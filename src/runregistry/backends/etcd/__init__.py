"""The etcd backend: runs of many machines in one etcd cluster, kept alive by leases.

It talks to etcd's v3 JSON gateway with the standard library's http.client,
so it needs no third-party package. Neither the file backend nor the command
line's start-up imports it.
"""

from __future__ import annotations

from ._client import EtcdError, EtcdUnavailableError
from ._registry import EtcdRegistry

__all__ = ["EtcdError", "EtcdRegistry", "EtcdUnavailableError"]
