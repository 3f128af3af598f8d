"""The writer's identity: machine id, user name, and the key components built from them."""

from __future__ import annotations

import functools
import hashlib
import re
import subprocess
import sys
from typing import Final

from ..._errors import RegistryError
from ..._liveness import local_hostname

# systemd's machine-id(5) file and the older D-Bus copy; a container that
# mounts neither falls back to a value derived from its host name.
_MACHINE_ID_FILES: Final = ("/etc/machine-id", "/var/lib/dbus/machine-id")

_MAC_PLATFORM_UUID: Final = re.compile(rb'"IOPlatformUUID"\s*=\s*"([^"]+)"')


@functools.cache
def this_machine_id() -> str:
    """Return this machine's stable id, such as systemd's ``/etc/machine-id``.

    macOS uses the hardware ``IOPlatformUUID`` and Windows the ``MachineGuid``
    of its cryptography settings. When none can be read, the id is derived from
    the host name, which then no longer distinguishes cloned hosts.
    """
    found = _read_machine_id()
    if found:
        return found.lower()
    digest = hashlib.sha256(local_hostname().encode()).hexdigest()[:32]
    return f"host-{digest}"


def login_name() -> str:
    """Return the name of the user running this process, for the key's user component.

    :raises RegistryError: neither the environment nor the password database names the user.
    """
    import getpass

    try:
        return getpass.getuser()
    except (OSError, KeyError) as exc:
        raise RegistryError(
            f"cannot determine the user name ({exc}): set USER, or pass user=... to EtcdRegistry"
        ) from None


def check_key_component(kind: str, value: str) -> str:
    """Return *value* if it can be one component of an etcd key path.

    :raises RegistryError: it is empty, ``.`` or ``..``, or contains ``/`` or a control character.
    """
    bad = (
        not isinstance(value, str)
        or value in ("", ".", "..")
        or "/" in value
        or any(ord(char) < 32 for char in value)
    )
    if bad:
        raise RegistryError(
            f"invalid {kind} {value!r} for an etcd key: use a non-empty name without '/' "
            "or control characters"
        )
    return value


def _read_machine_id() -> str:
    if sys.platform == "darwin":
        return _mac_platform_uuid()
    if sys.platform == "win32":
        return _windows_machine_guid()
    for path in _MACHINE_ID_FILES:
        try:
            with open(path, encoding="ascii", errors="replace") as file:
                text = file.read(256).strip()
        except OSError:
            continue
        if text and "/" not in text:
            return text
    return ""


def _mac_platform_uuid() -> str:
    try:
        output = subprocess.run(
            ["/usr/sbin/ioreg", "-rd1", "-c", "IOPlatformExpertDevice"],
            capture_output=True,
            timeout=5,
            check=False,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    match = _MAC_PLATFORM_UUID.search(output)
    return match.group(1).decode("ascii", "replace") if match else ""


def _windows_machine_guid() -> str:
    import winreg  # type: ignore[import-not-found, unused-ignore]

    try:
        with winreg.OpenKey(  # type: ignore[attr-defined, unused-ignore]
            winreg.HKEY_LOCAL_MACHINE,  # type: ignore[attr-defined, unused-ignore]
            r"SOFTWARE\Microsoft\Cryptography",
            0,
            winreg.KEY_READ | winreg.KEY_WOW64_64KEY,  # type: ignore[attr-defined, unused-ignore]
        ) as key:
            value, _ = winreg.QueryValueEx(key, "MachineGuid")  # type: ignore[attr-defined, unused-ignore]
    except OSError:
        return ""
    return str(value)
