"""Live record populations: writer processes, and the files each peer reads.

Every record names a live process, because a reader that finds a dead pid
does extra work (it removes the file) and the comparison would be unfair.

Records written by runregistry are published by their own process. The
harness forks one child per pid. The child calls the public
``Registry.write`` for its own pid in every directory that needs it, so the
library takes the record's flock. The child then clears the close-on-exec
flag of those lock descriptors and replaces itself with ``sleep``. ``exec``
keeps the pid and the inheritable descriptors, and a flock belongs to the open
file description, so each ``sleep`` process is a writer that keeps its own
locks until the harness kills it. The harness stays the parent of every
writer, so a pid cannot be reused by another program before the harness reaps
it.

The same pids serve the other populations, which need live pids but no lock:
records in the Go implementation's format, Jupyter's ``jpserver-<pid>.json``
files and TensorBoard's ``pid-<pid>.info`` files.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import sys
import time
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone

from runregistry import Record, Registry

# Writers get SIGKILL when the harness dies, and live at most this long in
# any case, so that none outlives a harness killed before it could stop them.
WRITER_LIFETIME_SECONDS = 1800

# prctl(2) option that makes the kernel signal a process when its parent dies.
_PR_SET_PDEATHSIG = 1

# Ports in addresses are only text here: nothing listens on them.
_FIRST_PORT = 20000


class Writers:
    """Live writer processes, one per pid, started and stopped by this harness."""

    def __init__(self) -> None:
        self.pids: list[int] = []
        self.sessions: dict[int, str] = {}
        self.ports: dict[int, int] = {}
        self._sleep = shutil.which("sleep") or "/bin/sleep"

    def start(self, count: int, targets: Sequence[tuple[str, int]]) -> list[int]:
        """Start *count* writers and return their pids, in the order they published.

        *targets* pairs a registry directory with the number of records it
        needs: the *i*-th writer of this call publishes in every directory
        whose number is above *i*, so the first ten publish in every
        directory and the last ones only in the largest.
        """
        # Each registry writes once here first, so that the children, which
        # inherit these objects, skip the sweep for leftover temporary files
        # that a registry makes on its first write: that sweep lists the whole
        # directory, which would make starting N writers cost O(N^2).
        registries = {path: Registry(path) for path, _ in targets}
        for registry in registries.values():
            registry.write(Record(os.getpid(), "http://127.0.0.1:1", "bench-warm-up", "bench"))()

        started = []
        for index in range(count):
            chosen = [registries[path] for path, size in targets if index < size]
            started.append(self._start_one(len(self.pids), chosen))
        return started

    def _start_one(self, index: int, registries: list[Registry]) -> int:
        session = str(uuid.uuid4())
        port = _FIRST_PORT + index
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read_end)
            _become_writer(session, port, registries, write_end, self._sleep)

        # The pipe's write end is close-on-exec: end of file without a byte
        # means the child reached `sleep`; any bytes are its error message.
        os.close(write_end)
        try:
            failure = _read_all(read_end)
        finally:
            os.close(read_end)
        if failure:
            os.waitpid(pid, 0)
            raise RuntimeError(f"writer {index} failed: {failure.decode(errors='replace')}")
        self.pids.append(pid)
        self.sessions[pid] = session
        self.ports[pid] = port
        return pid

    def stop(self) -> None:
        """Kill every writer by its pid and reap it."""
        for pid in self.pids:
            _signal_quietly(pid)
        for pid in self.pids:
            _reap_quietly(pid)
        self.pids.clear()

    def kill(self, pid: int) -> None:
        """Kill one writer and reap it, as a crash would end it."""
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        self.pids.remove(pid)


def _signal_quietly(pid: int) -> None:
    # Writers are never reaped before this, so a missing pid means it was killed already.
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return


def _reap_quietly(pid: int) -> None:
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        return


def _become_writer(
    session: str, port: int, registries: list[Registry], report_fd: int, sleep: str
) -> None:
    """Publish this child's records, then exec ``sleep`` holding their locks; never returns."""
    try:
        _die_with_parent()
        pid = os.getpid()
        for registry in registries:
            registry.write(Record(pid, f"http://127.0.0.1:{port}", session, "bench"))
        _keep_lock_descriptors({os.path.join(r.location, f"{pid}.json") for r in registries})
        _detach_standard_streams()
        os.execv(sleep, ["sleep", str(WRITER_LIFETIME_SECONDS)])
    except BaseException as exc:
        os.write(report_fd, f"{type(exc).__name__}: {exc}".encode()[:4000])
    os._exit(1)


def _die_with_parent() -> None:
    # The setting survives exec, so the `sleep` this child becomes dies with the harness.
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:
        raise RuntimeError("the harness died before this writer started")


def _keep_lock_descriptors(paths: set[str]) -> None:
    # The library opens its descriptors close-on-exec; the locked ones must survive exec.
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
        if target in paths:
            os.set_inheritable(int(name), True)
            paths.discard(target)
    if paths:
        raise RuntimeError(f"no lock descriptor found for {sorted(paths)}")


def _detach_standard_streams() -> None:
    # A writer that kept the harness's stdout would hold a caller's pipe open.
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 4096):
        chunks.append(chunk)
    return b"".join(chunks)


def make_private_dir(path: str) -> str:
    """Create *path* and its parents with mode 0700, as the library expects."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def write_go_records(directory: str, writers: Writers, pids: Sequence[int]) -> None:
    """Write Go-format records (no host, no lock) for *pids*, as docker-agent does."""
    make_private_dir(directory)
    now = datetime.now(timezone.utc)
    for index, pid in enumerate(pids):
        # One microsecond apart, in the order of *pids*, so that the last is the latest run.
        started_at = now + timedelta(microseconds=index)
        record = Record(pid, _addr(writers, pid), writers.sessions[pid], "bench", started_at)
        _write_file(os.path.join(directory, f"{pid}.json"), record.to_json())


def write_jupyter_files(directory: str, writers: Writers, pids: Sequence[int]) -> None:
    """Write ``jpserver-<pid>.json`` files with the keys jupyter_server 2 writes."""
    make_private_dir(directory)
    for pid in pids:
        port = writers.ports[pid]
        info = {
            "base_url": "/",
            "hostname": "localhost",
            "password": False,
            "pid": pid,
            "port": port,
            "root_dir": "/tmp",
            "secure": False,
            "sock": "",
            "token": uuid.uuid4().hex,
            "url": f"http://localhost:{port}/",
            "version": "2.21.1",
        }
        data = json.dumps(info, indent=2, sort_keys=True).encode()
        _write_file(os.path.join(directory, f"jpserver-{pid}.json"), data)


def write_tensorboard_files(
    temp_dir: str, writers: Writers, pids: Sequence[int], version: str
) -> None:
    """Write TensorBoard info files in ``<temp_dir>/.tensorboard-info``, as TensorBoard does."""
    info_dir = make_private_dir(os.path.join(temp_dir, ".tensorboard-info"))
    start = int(time.time())
    for pid in pids:
        info = {
            "cache_key": uuid.uuid4().hex,
            "db": "",
            "logdir": "/tmp/logs",
            "path_prefix": "",
            "pid": pid,
            "port": writers.ports[pid],
            "start_time": start,
            "version": version,
        }
        data = json.dumps(info, sort_keys=True, indent=4).encode() + b"\n"
        _write_file(os.path.join(info_dir, f"pid-{pid}.info"), data)


def _addr(writers: Writers, pid: int) -> str:
    return f"http://127.0.0.1:{writers.ports[pid]}"


def _write_file(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def supported() -> str:
    """Return why this platform cannot run the harness, or "" when it can."""
    if sys.platform != "linux":
        return "the harness needs Linux: it reads /proc and forks its writers"
    return ""
