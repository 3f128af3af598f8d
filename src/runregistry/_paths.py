"""Where registries live: the per-user data directory, per app and for docker-agent."""

from __future__ import annotations

import os
import sys
from typing import Final

from ._errors import RegistryError

RUNS_FOLDER: Final = "runs"
DOCKER_AGENT_APP: Final = "cagent"


def user_data_dir() -> str:
    """Return the per-user data directory, such as ``~/.local/share`` on Linux.

    ``$XDG_DATA_HOME`` wins on every platform when it is an absolute path; a
    relative value is ignored, as the XDG Base Directory specification requires.

    :raises RegistryError: the data directory depends on the home directory,
        and ``$HOME`` (``%USERPROFILE%`` on Windows) is unset, empty or
        relative. Falling back to a shared temporary directory would let other
        users plant records.
    """
    xdg = os.environ.get("XDG_DATA_HOME", "")
    if os.path.isabs(xdg):
        return xdg
    if sys.platform == "win32":
        local = os.environ.get("LOCALAPPDATA", "")
        if os.path.isabs(local):
            return local
        return os.path.join(_home(), "AppData", "Local")
    if sys.platform == "darwin":
        return os.path.join(_home(), "Library", "Application Support")
    return os.path.join(_home(), ".local", "share")


def app_runs_dir(app: str) -> str:
    """Return ``<data dir>/<app>/runs``, such as ``~/.local/share/myagent/runs``.

    :raises RegistryError: *app* is not a single, plain folder name.
    """
    check_app_name(app)
    return os.path.join(user_data_dir(), app, RUNS_FOLDER)


def docker_agent_runs_dir() -> str:
    """Return docker-agent's registry directory, resolved the way docker-agent does.

    Older docker-agent releases keep their data in ``~/.cagent``. Newer ones
    use ``<data dir>/cagent`` but stay on ``~/.cagent`` while the new folder does
    not exist and the legacy one does, so both tools see the same runs.

    :raises RegistryError: neither ``$XDG_DATA_HOME`` nor a home directory is set.
    """
    current = os.path.join(user_data_dir(), DOCKER_AGENT_APP)
    if os.path.isdir(current):
        return os.path.join(current, RUNS_FOLDER)

    # With an absolute $XDG_DATA_HOME and no home directory, there is no
    # legacy folder to look for, which is not an error.
    try:
        legacy = os.path.join(_home(), f".{DOCKER_AGENT_APP}")
    except RegistryError:
        return os.path.join(current, RUNS_FOLDER)
    if os.path.isdir(legacy):
        return os.path.join(legacy, RUNS_FOLDER)
    return os.path.join(current, RUNS_FOLDER)


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


def _home() -> str:
    # On POSIX only $HOME counts, never the password database: Go's
    # os.UserHomeDir() reads $HOME alone, and docker-agent must resolve the same
    # folder. On Windows, expanduser() reads %USERPROFILE% as Go does.
    if sys.platform == "win32":
        home, variable = os.path.expanduser("~"), "USERPROFILE"
    else:
        home, variable = os.environ.get("HOME", ""), "HOME"
    if not os.path.isabs(home):
        raise RegistryError(
            f"cannot determine the home directory: {variable} is {home!r}, not an absolute "
            f"path; set {variable} to your home directory, or XDG_DATA_HOME to an absolute "
            "path, or RUNREGISTRY_DIR to the registry directory"
        )
    return home
