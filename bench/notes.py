"""Fixed text of the report: the method, and what the profile says about each missed target."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

# A 1-minute load average above this means other programs used the cores.
_BUSY_LOAD: Final = 0.5

# Shown next to a missed target: what the profile showed and what would close it.
MISSED: Final[dict[str, str]] = {}

METHOD: Final = """\
## Method

**Live records.** Every record names a live process. Records written by
runregistry are published by their own process: the harness forks one child
per pid; the child calls the public `Registry.write()` for its own pid in
every directory that needs its record (the library then holds the record's
flock), clears the close-on-exec flag of those lock descriptors and replaces
itself with `sleep`. `exec` keeps the pid and the inheritable descriptors, and
a flock belongs to the open file description, so each of the 10,000 `sleep`
processes is a writer holding its own locks, as a live agent would. Writer
*i* publishes in every directory with more than *i* records, so
the same 10,000 processes serve N = 10 to 10,000 and none of them holds more
than four descriptors; the harness itself holds no lock and needs no higher
`RLIMIT_NOFILE`. The harness stays the parent of every writer and reaps each
one after killing it by pid, so no pid can be reused by another program while
the run uses it. The writers are forked before Jupyter or TensorBoard is
imported, while the harness is small and a fork is cheap.

**Populations.** *runregistry-written* records carry `host` and
`lock: "flock"`; the library judges them by probing the lock and the pid. *Go
format* records are what docker-agent writes (pid, addr, session_id, agent,
started_at and nothing else), for the same pids; the library judges them by
the process start time in `/proc/<pid>/stat` and the boot time. Jupyter's
`jpserver-<pid>.json` files carry the keys jupyter_server 2 writes, and
TensorBoard's `pid-<pid>.info` files those of `TensorBoardInfo`, for the same
pids again. Every population lives in a fresh directory of its own.

**The plain-Python reference** (`bench/reference.py`) lists the directory
with `os.scandir`, reads each `*.json` file with `os.open` and `os.read`,
decodes it with `json.loads` and probes its pid with `os.kill(pid, 0)`. It
checks no identity, lock, owner, size or field type: it is the floor for a
Python reader, and every ratio (x ref) divides by its median on the same files
at the same N. The row *plain Python, open()* is the same loop written with
the built-in `open()`, as most scripts would; its buffered file object costs
more system calls and allocations per file, and it is shown for context only.

**Timing.** Each case is called once to check its result (the right number
of live records, or the right record), then timed in rounds: every round
calls every case of that N once, in an order that rotates by one case per
round, so drift on the shared machine hits all peers alike. A call shorter
than 2 ms is repeated until one sample lasts about 2 ms. The garbage
collector is paused during a sample, as `timeit` does. `write() + cleanup`
publishes a record for the harness's own pid and removes it again; cold, the
new `Registry` also lists the directory once to sweep leftover temporary
files.
"""


def shared_machine(before: Sequence[float], after: Sequence[float]) -> str:
    """Return a sentence about other load on the machine, or "" when it was idle."""
    if max(before[0], after[0]) <= _BUSY_LOAD:
        return ""
    return (
        " Other engineers' jobs shared the 2 cores during the run, so absolute times are "
        "noisier than on an idle machine; the ratios compare peers timed side by side."
    )
