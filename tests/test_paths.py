"""Default registry directories: the user data dir, app names, docker-agent and RUNREGISTRY_DIR."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

import runregistry
from runregistry import NoRunError, Record, Registry, RegistryError, default_registry


@pytest.fixture
def home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A private home directory, with XDG_DATA_HOME unset."""
    folder = tmp_path / "home"
    folder.mkdir()
    monkeypatch.setenv("HOME", str(folder))
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    return folder


# The user data directory


def test_for_app_uses_absolute_xdg_data_home(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))

    assert Registry.for_app("myagent").directory == tmp_path / "xdg" / "myagent" / "runs"


def test_for_app_defaults_to_local_share(home: Path) -> None:
    assert Registry.for_app("myagent").directory == home / ".local" / "share" / "myagent" / "runs"


def test_relative_xdg_data_home_is_ignored(monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", "relative/data")

    assert Registry.for_app("myagent").directory == home / ".local" / "share" / "myagent" / "runs"


def test_empty_xdg_data_home_is_ignored(monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", "")

    assert Registry.for_app("myagent").directory == home / ".local" / "share" / "myagent" / "runs"


def test_directory_is_a_path(home: Path) -> None:
    assert isinstance(Registry.for_app("myagent").directory, Path)


@pytest.mark.parametrize(
    "value",
    [pytest.param(None, id="missing"), pytest.param("", id="empty"), pytest.param("rel", id="rel")],
)
def test_unusable_home_names_variable(monkeypatch: pytest.MonkeyPatch, value: str | None) -> None:
    # Without HOME, even a user listed in the password database gets an error,
    # because Go's os.UserHomeDir() reads HOME alone.
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    if value is None:
        monkeypatch.delenv("HOME", raising=False)
    else:
        monkeypatch.setenv("HOME", value)

    with pytest.raises(RegistryError) as caught:
        Registry.for_app("myagent")

    message = str(caught.value)
    assert "set HOME" in message
    assert "XDG_DATA_HOME" in message
    assert "RUNREGISTRY_DIR" in message
    assert "/tmp" not in message


def test_missing_home_with_xdg_data_home_works(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("HOME", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))

    assert Registry.for_app("myagent").directory == tmp_path / "myagent" / "runs"


def test_macos_data_dir(monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    # Only the platform name is switched: the branch reads nothing from macOS itself.
    monkeypatch.setattr(sys, "platform", "darwin")

    expected = home / "Library" / "Application Support" / "myagent" / "runs"
    assert Registry.for_app("myagent").directory == expected


def test_windows_data_dir_is_localappdata(
    monkeypatch: pytest.MonkeyPatch, home: Path, tmp_path: Path
) -> None:
    # Only the platform name is switched; POSIX paths stand in for Windows ones.
    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setenv("LOCALAPPDATA", str(tmp_path / "local"))

    assert Registry.for_app("myagent").directory == tmp_path / "local" / "myagent" / "runs"


def test_windows_xdg_data_home_still_wins(
    monkeypatch: pytest.MonkeyPatch, home: Path, tmp_path: Path
) -> None:
    # Only the platform name is switched; POSIX paths stand in for Windows ones.
    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setenv("LOCALAPPDATA", str(tmp_path / "local"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))

    assert Registry.for_app("myagent").directory == tmp_path / "xdg" / "myagent" / "runs"


# App names


@pytest.mark.parametrize(
    "app",
    [
        pytest.param("", id="empty"),
        pytest.param(".", id="dot"),
        pytest.param("..", id="dot-dot"),
        pytest.param("a/b", id="slash"),
        pytest.param("/abs", id="absolute"),
        pytest.param("a\\b", id="backslash"),
        pytest.param("a\0b", id="nul"),
        pytest.param(" myagent", id="leading-space"),
        pytest.param("myagent\n", id="trailing-newline"),
    ],
)
def test_invalid_app_name_is_rejected(app: str) -> None:
    with pytest.raises(RegistryError, match="invalid app name"):
        Registry.for_app(app)


@pytest.mark.parametrize("app", ["myagent", "my.agent", "my-agent_2", "my agent", ".hidden"])
def test_plain_app_name_is_one_folder(home: Path, app: str) -> None:
    assert Registry.for_app(app).directory == home / ".local" / "share" / app / "runs"


def test_for_app_does_not_create_directory(home: Path) -> None:
    registry = Registry.for_app("myagent")

    assert registry.list() == []
    assert not registry.directory.exists()


# docker-agent


def test_docker_agent_uses_new_folder_by_default(home: Path) -> None:
    expected = home / ".local" / "share" / "cagent" / "runs"
    assert Registry.for_docker_agent().directory == expected


def test_docker_agent_keeps_legacy_folder(home: Path) -> None:
    (home / ".cagent").mkdir()

    assert Registry.for_docker_agent().directory == home / ".cagent" / "runs"


def test_docker_agent_prefers_new_folder_once_it_exists(home: Path) -> None:
    (home / ".cagent").mkdir()
    (home / ".local" / "share" / "cagent").mkdir(parents=True)

    expected = home / ".local" / "share" / "cagent" / "runs"
    assert Registry.for_docker_agent().directory == expected


def test_docker_agent_ignores_legacy_file(home: Path) -> None:
    (home / ".cagent").write_text("not a folder")

    expected = home / ".local" / "share" / "cagent" / "runs"
    assert Registry.for_docker_agent().directory == expected


def test_docker_agent_follows_xdg_data_home(
    monkeypatch: pytest.MonkeyPatch, home: Path, tmp_path: Path
) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))

    assert Registry.for_docker_agent().directory == tmp_path / "xdg" / "cagent" / "runs"


def test_docker_agent_legacy_wins_over_missing_xdg_folder(
    monkeypatch: pytest.MonkeyPatch, home: Path, tmp_path: Path
) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    (home / ".cagent").mkdir()

    assert Registry.for_docker_agent().directory == home / ".cagent" / "runs"


def test_docker_agent_without_home_uses_xdg_data_home(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("HOME", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))

    assert Registry.for_docker_agent().directory == tmp_path / "cagent" / "runs"


def test_docker_agent_without_home_or_xdg_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HOME", raising=False)
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)

    with pytest.raises(RegistryError, match="set HOME"):
        Registry.for_docker_agent()


def test_docker_agent_miss_names_its_command(home: Path) -> None:
    registry = Registry.for_docker_agent()

    with pytest.raises(NoRunError) as caught:
        registry.find()

    assert "docker-agent run --listen" in str(caught.value)
    assert str(registry.directory) in str(caught.value)


# RUNREGISTRY_DIR and the module-level functions


def test_default_registry_uses_runregistry_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("RUNREGISTRY_DIR", str(tmp_path / "mine"))

    assert default_registry().directory == tmp_path / "mine"


def test_default_registry_relative_dir_is_made_absolute(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RUNREGISTRY_DIR", "rel/runs")

    assert default_registry().directory == tmp_path / "rel" / "runs"


def test_default_registry_falls_back_to_app(home: Path) -> None:
    expected = home / ".local" / "share" / "runregistry" / "runs"
    assert default_registry().directory == expected


def test_empty_runregistry_dir_is_unset(monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    monkeypatch.setenv("RUNREGISTRY_DIR", "")

    expected = home / ".local" / "share" / "runregistry" / "runs"
    assert default_registry().directory == expected


def test_module_functions_use_default_registry(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("RUNREGISTRY_DIR", str(tmp_path / "mine"))
    record = Record(os.getpid(), "http://127.0.0.1:8765", "module-level")

    cleanup = runregistry.write(record)
    try:
        listed = runregistry.list_runs()
        latest = runregistry.latest()
        found = runregistry.find("module-level")
        on_disk = (tmp_path / "mine" / f"{os.getpid()}.json").is_file()
    finally:
        cleanup()

    assert [r.session_id for r in listed] == ["module-level"]
    assert latest is not None
    assert latest.session_id == "module-level"
    assert found.session_id == "module-level"
    assert on_disk
    assert runregistry.latest() is None
