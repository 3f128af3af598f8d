"""Text of the report: the method, and what the profile shows for each missed target.

The notes on missed targets come from profiling runregistry with
line_profiler and ``python -X importtime`` while building this harness. The
numbers in them come from the run that writes the page.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

# Other processes' share of the cores above which the report calls the machine shared.
_BUSY_SHARE: Final = 0.05

_LIST_WARM = """\
The bare system calls that `list()` makes per record cost {syscalls} x ref at \
N = {size} (row *system calls only*): open at the directory's descriptor, \
fstat, read, the flock probe, kill and close. The reference makes four (open, \
read, close and kill) and runs `json.loads`. The remaining {warm_python} x ref \
is Python, which line_profiler shows spread over the calls from `_scan` through \
`_read_entry`, `_judge_open_file` and `_decode` to `judge`, one `Entry` and one \
`Liveness` per record, and the sort. What would close it: fewer system calls \
per record. A warm `Registry` could keep each record's descriptor open, because \
an open descriptor keeps its inode number from being reused. One `fstatat` \
would then confirm that the name still refers to that inode before the lock and \
pid probes: three calls instead of six, at the price of one descriptor per \
record held between calls."""

_LIST_COLD = """\
Cold, every record is also decoded. `json.loads` alone costs {loads} x ref, and \
`Record.from_json` (decoding, checking every field and parsing the RFC 3339 \
time) costs {from_json} x ref (rows *json.loads only* and *Record.from_json \
only*). The system calls and `Record.from_json` alone add up to {cold_floor} x \
ref, above the target before any bookkeeping, so no trimming in Python closes \
it. What would close it: checking records in compiled code, or a format that \
needs no validation beyond what the JSON decoder does."""

_GO = """\
Go-format records carry no lock, so each one is judged by its process's start \
time. Besides the record file, `list()` opens and reads `/proc/<pid>/stat`, \
where the kernel formats about 50 fields. Those system calls alone cost \
{go_syscalls} x ref at N = {size} (row *system calls only*, Go format), and cold \
adds the decoding described above. What would close it: the read itself has \
no cheaper substitute, because Linux offers no cheaper source of a process's \
start time (a pidfd carries none), so only the bookkeeping and decoding around \
it can shrink, as above. Records written by runregistry avoid the read, because \
their lock proves liveness."""

_STARTUP = """\
The import profile below the whole-process table shows the time going to \
modules that `python -c pass` never loads: `typing` (imported at run time for \
`NamedTuple`, `Final` and `Literal`), `argparse` with `gettext` and `locale`, \
`re` with `enum`, `json`, `datetime`, and runregistry's own modules, two of which \
compile regular expressions at import. What would close it: no `typing` at run \
time (plain classes for `Entry`, `Liveness` and `ProcessInfo`, and annotations \
only under `TYPE_CHECKING`), and regular expressions compiled on first use."""

_NOT_ABOVE_LIST = """\
`latest()` and `find()` run the same code as `list()` (reading and judging \
every record) but skip its sort, so they do less work, and a median above \
`list()`'s measures load on the shared machine changing between rounds rather \
than the code. Compare the minimums after the medians, which load inflates least."""

# Shown next to a missed target: what the profile showed and what would close it.
_MISSED: Final = {
    "list_warm": _LIST_WARM,
    "list_cold": _LIST_COLD,
    "go_cold": _GO,
    "go_warm": _GO,
    "startup": _STARTUP,
    "find_session": _NOT_ABOVE_LIST,
    "latest": _NOT_ABOVE_LIST,
}


def missed(key: str, facts: Mapping[str, float | int | None]) -> str:
    """Return the note for missed target *key*, filled in with *facts*, or ""."""
    template = _MISSED.get(key, "")
    formatted = {name: _number(value) for name, value in facts.items()}
    return template.format(**formatted)


def _number(value: float | int | None) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.2f}"


METHOD: Final = """\
## Method

**Live records.** Every record names a live process, and records written by
runregistry are published by their own process. The harness forks one child
per pid. The child calls the public `Registry.write()` for its own pid in
every directory that needs its record, so the library takes the record's
flock. The child then clears the close-on-exec flag of those lock descriptors
and replaces itself with `sleep`. `exec` keeps the pid and the inheritable
descriptors, and a flock belongs to the open file description, so each
`sleep` process is a writer that keeps its own locks, as a live agent would.
Writer *i* publishes in every directory with more than *i* records, so the
same 10,000 processes serve N = 10 to 10,000. None of them has more than four
lock descriptors open, and the harness itself holds no lock, so no
`RLIMIT_NOFILE` needs raising. The harness stays the parent of every writer
and reaps each one after killing it by pid, so no pid can be reused by another
program during the run. Each writer also receives SIGKILL from the kernel if
the harness dies first. The writers are forked before Jupyter or TensorBoard
is imported, while the harness is small and a fork is cheap.

**Populations.** *runregistry-written* records carry `host` and
`lock: "flock"`, and the library judges them by probing the lock and the pid.
*Go format* records are what docker-agent writes (pid, addr, session_id,
agent and started_at, nothing else) for the same pids, and the library judges
them by the process start time in `/proc/<pid>/stat` and the boot time.
Jupyter's `jpserver-<pid>.json` files carry the keys that jupyter_server 2
writes, and TensorBoard's `pid-<pid>.info` files those of `TensorBoardInfo`,
for the same pids again. Every population lives in a fresh directory of its
own.

**The plain-Python reference** (`bench/reference.py`) lists the directory
with `os.scandir`, reads each `*.json` file with `os.open` and `os.read`,
decodes it with `json.loads` and probes its pid with `os.kill(pid, 0)`. It
checks no identity, lock, owner, size or field type, so it is the floor for a
Python reader. Every ratio (x ref) divides by its median on the same files at
the same N. The row *plain Python, open()* is the same loop written with the
built-in `open()`, as most scripts would. Its buffered file object costs more
system calls and allocations per file, and it is shown for context only.

**Parts of list().** These rows time pieces of a listing alone, to show where
its time goes. The first makes the system calls that `list()` makes per record,
with no Python logic around them (`bench/floors.py`). The others run
`json.loads` on every record's bytes, and `Record.from_json`, which also checks
every field.

**Timing.** Each case is called once to check its result (the right number
of live records, or the right record), then timed in rounds. Every round calls
every case of that N once, in an order that rotates by one case per round, so
drift on the shared machine hits all peers alike. A call shorter than 2 ms is
repeated until one sample lasts about 2 ms. The garbage collector is paused
during a sample, as `timeit` does. `write() + cleanup` publishes a record for
the harness's own pid and removes it again. Cold, the new `Registry` also
lists the directory once, to sweep leftover temporary files.
"""


def shared_machine(share: float) -> str:
    """Return a sentence about other processes' use of the cores, or "" when it was small."""
    if share <= _BUSY_SHARE:
        return ""
    return (
        " Other processes, other engineers' jobs among them, shared the machine, so absolute "
        "times are noisier than on an idle one; the ratios compare peers timed side by side."
    )
