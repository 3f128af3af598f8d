"""Where registries live: the per-user data directory, per app and for docker-agent."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Final

from ._errors import RegistryError

RUNS_FOLDER: Final = "runs"
DOCKER_AGENT_APP: Final = "cagent"


def user_data_dir() -> Path:
    """Return the per-user data directory, such as ``~/.local/share`` on Linux.

    ``$XDG_DATA_HOME`` wins on every platform when it is an absolute path; a
    relative value is ignored, as the XDG Base Directory specification requires.

    :raises RegistryError: no home directory can be determined. Falling back to
        a shared temporary directory would let other users plant records.
    """
    xdg = os.environ.get("XDG_DATA_HOME", "")
    if os.path.isabs(xdg):
        return Path(xdg)
    if sys.platform == "win32":
        local = os.environ.get("LOCALAPPDATA", "")
        if os.path.isabs(local):
            return Path(local)
        return _home() / "AppData" / "Local"
    if sys.platform == "darwin":
        return _home() / "Library" / "Application Support"
    return _home() / ".local" / "share"


def app_runs_dir(app: str) -> Path:
    """Return ``<data dir>/<app>/runs``, such as ``~/.local/share/myagent/runs``.

    :raises RegistryError: *app* is not a single, plain folder name.
    """
    check_app_name(app)
    return user_data_dir() / app / RUNS_FOLDER


def docker_agent_runs_dir() -> Path:
    """Return docker-agent's registry directory, resolved the way docker-agent does.

    Older docker-agent releases keep their data in ``~/.cagent``. Newer ones
    use ``<data dir>/cagent`` but stay on ``~/.cagent`` while the new folder does
    not exist and the legacy one does, so both tools see the same runs.
    """
    current = user_data_dir() / DOCKER_AGENT_APP
    legacy = _home() / f".{DOCKER_AGENT_APP}"
    if not current.is_dir() and legacy.is_dir():
        return legacy / RUNS_FOLDER
    return current / RUNS_FOLDER


def check_app_name(app: str) -> None:
    """Reject an app name that would not be one folder below the data directory."""
    bad = (
        not isinstance(app, str)
        or app in ("", ".", "..")
        or "/" in app
        or "\\" in app
        or "\0" in app
        or app != app.strip()
    )
    if bad:
        raise RegistryError(
            f"invalid app name {app!r}: use a plain folder name such as 'myagent', "
            "without path separators"
        )


def _home() -> Path:
    # Path.home() falls back to the password database on POSIX and raises
    # RuntimeError when neither it nor the environment knows a home.
    try:
        home = Path.home()
    except (RuntimeError, KeyError) as exc:
        raise RegistryError(
            f"cannot determine the home directory ({exc}): set HOME, or XDG_DATA_HOME "
            "to an absolute path, or RUNREGISTRY_DIR to the registry directory"
        ) from None
    if not home.is_absolute():
        raise RegistryError(
            f"home directory {str(home)!r} is not an absolute path: set HOME to an absolute "
            "path, or XDG_DATA_HOME, or RUNREGISTRY_DIR"
        )
    return home
