"""Trust checks on the registry directory: owner, links and modes, for writers and readers.

Files owned by another user are made with ``os.chown`` to ``nobody``, which
needs root; those tests are skipped otherwise.
"""

from __future__ import annotations

import logging
import os
import pwd
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

import runregistry
from runregistry import Record, Registry, RegistryError, UnsafeRegistryError


def _nobody_uid() -> int | None:
    try:
        return pwd.getpwnam("nobody").pw_uid
    except KeyError:
        return None


NOBODY = _nobody_uid() or 65534

needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or _nobody_uid() is None,
    reason="making a file owned by another user needs root and a 'nobody' account",
)

READERS: dict[str, Callable[[Registry], object]] = {
    "list": lambda registry: registry.list(),
    "latest": lambda registry: registry.latest(),
    "find": lambda registry: registry.find(""),
    "find-pid": lambda registry: registry.find(str(os.getpid())),
    "entries": lambda registry: registry.entries(),
    "entries-no-prune": lambda registry: registry.entries(prune=False),
    "prune": lambda registry: registry.prune(),
    "prune-dry-run": lambda registry: registry.prune(dry_run=True),
}


def own_record(session_id: str = "trust-session") -> Record:
    return Record(os.getpid(), "http://127.0.0.1:8765", session_id)


def private_dir(path: Path, mode: int = 0o700) -> Path:
    path.mkdir(parents=True)
    path.chmod(mode)
    return path


def plant_record(directory: Path, record: Record) -> Path:
    """Write *record* as another program would: a plain file, no lock, no cleanup."""
    target = directory / f"{record.pid}.json"
    target.write_bytes(record.to_json())
    target.chmod(0o600)
    return target


def test_unsafe_registry_error_is_exported_registry_error() -> None:
    assert runregistry.UnsafeRegistryError is UnsafeRegistryError
    assert issubclass(UnsafeRegistryError, RegistryError)


def test_link_to_own_directory_is_followed(tmp_path: Path) -> None:
    real = private_dir(tmp_path / "real")
    link = tmp_path / "link"
    link.symlink_to(real)
    registry = Registry(link)

    cleanup = registry.write(own_record())

    assert registry.directory == link
    assert (real / f"{os.getpid()}.json").is_file()
    assert [record.session_id for record in registry.list()] == ["trust-session"]
    cleanup()
    assert list(real.iterdir()) == []


def test_link_to_own_loose_directory_tightens_target(tmp_path: Path) -> None:
    real = private_dir(tmp_path / "real", 0o777)
    link = tmp_path / "link"
    link.symlink_to(real)

    assert Registry(link).list() == []

    assert stat.S_IMODE(real.stat().st_mode) == 0o700
    assert link.is_symlink()


@needs_root
@pytest.mark.parametrize("reader", sorted(READERS))
def test_link_to_other_users_directory_rejected_by_readers(tmp_path: Path, reader: str) -> None:
    foreign = private_dir(tmp_path / "foreign")
    plant_record(foreign, own_record())
    os.chown(foreign, NOBODY, NOBODY)
    link = tmp_path / "link"
    link.symlink_to(foreign)

    with pytest.raises(UnsafeRegistryError) as caught:
        READERS[reader](Registry(link))

    assert caught.value.path == str(link)
    assert (foreign / f"{os.getpid()}.json").exists()


@needs_root
def test_link_to_other_users_directory_rejected_by_writer(tmp_path: Path) -> None:
    foreign = private_dir(tmp_path / "foreign")
    os.chown(foreign, NOBODY, NOBODY)
    link = tmp_path / "link"
    link.symlink_to(foreign)

    with pytest.raises(UnsafeRegistryError) as caught:
        Registry(link).write(own_record())

    message = str(caught.value)
    assert str(link) in message
    assert str(foreign) in message
    assert f"nobody (uid {NOBODY})" in message
    assert "drwx------" in message
    assert f"the target of link {link}" in message
    assert f"chown root {foreign}" in message
    assert "RUNREGISTRY_DIR" in message
    assert list(foreign.iterdir()) == []


@needs_root
def test_link_owned_by_other_user_rejected(tmp_path: Path) -> None:
    real = private_dir(tmp_path / "real")
    link = tmp_path / "link"
    link.symlink_to(real)
    os.lchown(link, NOBODY, NOBODY)
    registry = Registry(link)

    with pytest.raises(UnsafeRegistryError) as written:
        registry.write(own_record())
    with pytest.raises(UnsafeRegistryError) as listed:
        registry.list()

    message = str(written.value)
    assert f"symbolic link {link}" in message
    assert f"nobody (uid {NOBODY})" in message
    assert "lrwxrwxrwx" in message
    assert "remove the link" in message
    assert str(listed.value) == message
    assert list(real.iterdir()) == []


@needs_root
def test_other_users_directory_rejected_by_writer(tmp_path: Path) -> None:
    foreign = private_dir(tmp_path / "foreign", 0o755)
    os.chown(foreign, NOBODY, NOBODY)

    with pytest.raises(UnsafeRegistryError) as caught:
        Registry(foreign).write(own_record())

    message = str(caught.value)
    assert caught.value.path == str(foreign)
    assert f"registry directory {foreign} is owned by nobody (uid {NOBODY})" in message
    assert "drwxr-xr-x" in message
    assert f"chown root {foreign}" in message
    assert list(foreign.iterdir()) == []


@needs_root
def test_other_users_directory_is_not_tightened(tmp_path: Path) -> None:
    foreign = private_dir(tmp_path / "foreign", 0o777)
    os.chown(foreign, NOBODY, NOBODY)

    with pytest.raises(UnsafeRegistryError):
        Registry(foreign).list()

    info = foreign.stat()
    assert stat.S_IMODE(info.st_mode) == 0o777
    assert info.st_uid == NOBODY


@needs_root
@pytest.mark.parametrize("reader", sorted(READERS))
def test_other_users_directory_rejected_by_readers(tmp_path: Path, reader: str) -> None:
    foreign = private_dir(tmp_path / "foreign")
    planted = plant_record(foreign, own_record())
    os.chown(foreign, NOBODY, NOBODY)

    with pytest.raises(UnsafeRegistryError) as caught:
        READERS[reader](Registry(foreign))

    assert f"nobody (uid {NOBODY})" in str(caught.value)
    assert planted.exists()


@needs_root
def test_other_users_parent_directory_is_created_below(tmp_path: Path) -> None:
    # Only the registry directory itself is the trust boundary: a private
    # directory of ours below someone else's parent is fine.
    parent = private_dir(tmp_path / "parent", 0o755)
    os.chown(parent, NOBODY, NOBODY)
    parent.chmod(0o777)
    registry = Registry(parent / "runs")

    cleanup = registry.write(own_record())

    assert [record.pid for record in registry.list()] == [os.getpid()]
    assert stat.S_IMODE((parent / "runs").stat().st_mode) == 0o700
    cleanup()


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o750, 0o707, 0o755, 0o701])
def test_loose_directory_tightened_by_reader(
    tmp_path: Path, mode: int, caplog: pytest.LogCaptureFixture
) -> None:
    directory = private_dir(tmp_path / "runs", mode)
    caplog.set_level(logging.DEBUG, logger="runregistry.backends.file")

    assert Registry(directory).list() == []

    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert f"tightened registry directory {directory} from mode {mode:o} to 700" in messages


def test_loose_directory_tightened_by_writer(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = private_dir(tmp_path / "runs", 0o777)
    caplog.set_level(logging.DEBUG, logger="runregistry.backends.file")

    cleanup = Registry(directory).write(own_record())

    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert any("tightened registry directory" in r.getMessage() for r in caplog.records)
    cleanup()


def test_readable_folder_with_other_files_keeps_mode(tmp_path: Path) -> None:
    directory = private_dir(tmp_path / "home", 0o755)
    (directory / "notes.txt").write_text("not a record")

    assert Registry(directory).list() == []

    assert stat.S_IMODE(directory.stat().st_mode) == 0o755


def test_writable_folder_with_other_files_rejected(tmp_path: Path) -> None:
    directory = private_dir(tmp_path / "shared", 0o777)
    (directory / "notes.txt").write_text("not a record")

    with pytest.raises(UnsafeRegistryError) as caught:
        Registry(directory).list()

    assert "'notes.txt', which is not a record" in str(caught.value)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o777


def test_private_directory_logs_no_tightening(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = private_dir(tmp_path / "runs")
    caplog.set_level(logging.DEBUG, logger="runregistry.backends.file")

    Registry(directory).list()

    assert not any("tightened" in r.getMessage() for r in caplog.records)


def test_writable_directory_rejected_without_repair(tmp_path: Path) -> None:
    directory = private_dir(tmp_path / "runs", 0o777)

    with pytest.raises(UnsafeRegistryError) as caught:
        Registry(directory).entries(prune=False)

    message = str(caught.value)
    assert "writable by group or others" in message
    assert "drwxrwxrwx" in message
    assert f"chmod 700 {directory}" in message
    assert stat.S_IMODE(directory.stat().st_mode) == 0o777


def test_readable_directory_accepted_without_repair(tmp_path: Path) -> None:
    directory = private_dir(tmp_path / "runs", 0o755)

    assert Registry(directory).entries(prune=False) == []

    assert stat.S_IMODE(directory.stat().st_mode) == 0o755


@pytest.mark.parametrize("mode", [0o1777, 0o1770])
def test_shared_sticky_directory_rejected(tmp_path: Path, mode: int) -> None:
    directory = private_dir(tmp_path / "shared", mode)
    registry = Registry(directory)

    with pytest.raises(UnsafeRegistryError) as written:
        registry.write(own_record())
    with pytest.raises(UnsafeRegistryError):
        registry.list()

    assert "shared directory" in str(written.value)
    assert stat.S_IMODE(directory.stat().st_mode) == mode
    assert list(directory.iterdir()) == []


def test_created_directories_private_whatever_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        cleanup = Registry(tmp_path / "a" / "b" / "runs").write(own_record())
    finally:
        os.umask(old)

    for folder in (tmp_path / "a", tmp_path / "a" / "b", tmp_path / "a" / "b" / "runs"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    record_file = tmp_path / "a" / "b" / "runs" / f"{os.getpid()}.json"
    assert stat.S_IMODE(record_file.stat().st_mode) == 0o600
    cleanup()


def test_record_fields_never_become_paths(tmp_path: Path) -> None:
    directory = tmp_path / "runs"
    record = Record(
        os.getpid(),
        "http://127.0.0.1:8765/../../escape",
        "../../../escape",
        "agent/../../escape",
        host="../escape",
    )

    cleanup = Registry(directory).write(record)

    assert [p.name for p in directory.iterdir()] == [f"{os.getpid()}.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]
    cleanup()


def test_registry_path_through_file_rejected(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")

    with pytest.raises(RegistryError) as caught:
        Registry(blocker / "runs").write(own_record())

    assert str(blocker / "runs") in str(caught.value)
    assert blocker.read_text() == "not a directory"
