"""The child process of ``runregistry exec``: starting it, relaying signals to it, reaping it.

The child stays in exec's process group, so job control treats the pair as
one job: Ctrl-Z stops both, ``fg`` resumes both, ``kill -9 %1`` ends both, and
the child can read the terminal. The cost is that
the terminal's Ctrl-C and Ctrl-\\ reach the child directly as well as exec,
and servers such as uvicorn treat a second SIGINT as a forced exit. So exec
forwards a signal only when the child did not get it too:

* On Linux, exec blocks the signals it relays and collects them with
  ``sigtimedwait()``, whose siginfo names the sender. The terminal driver
  signals the whole foreground process group with ``si_code`` SI_KERNEL, while
  ``kill()`` sends SI_USER. A SI_KERNEL signal is not forwarded while the
  child shares exec's process group, with one exception: the SIGHUP of a
  hangup goes to the session leader alone, so it is forwarded when exec leads
  its session. NOTE: a signal that another program sends with ``kill()`` to
  the whole process group (``kill -TERM -PGID``) reaches the child twice,
  because siginfo does not tell a group from a single target.
* Elsewhere, siginfo is not available from Python, so SIGINT and SIGQUIT are
  taken to come from the terminal (and are not forwarded) when exec's process
  group is the terminal's foreground group.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import time
from collections.abc import Iterable, Sequence
from typing import Final, NamedTuple, Protocol

from ._log import get_logger

log = get_logger(__name__)

# Signals relayed to the child. SIGINT, SIGTERM and SIGHUP stop a server;
# SIGQUIT, SIGUSR1 and SIGUSR2 are relayed too because servers use them for
# dumps and reloads, and their default action would end exec without cleanup.
RELAYED_SIGNALS: Final = tuple(
    getattr(signal, name)
    for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2")
    if hasattr(signal, name)
)

# Python ignores these at start-up. The child gets the default action back,
# as subprocess.Popen(restore_signals=True) does.
_RESTORED_SIGNALS: Final = tuple(
    getattr(signal, name) for name in ("SIGPIPE", "SIGXFSZ") if hasattr(signal, name)
)

# si_code of a signal the kernel itself sent, such as the terminal driver's
# SIGINT on Ctrl-C (SI_KERNEL in <asm-generic/siginfo.h>).
_SI_KERNEL_LINUX: Final = 0x80


def spawn(argv: list[str], env: dict[str, str], mask: Iterable[int]) -> int:
    """Start *argv* with exec's standard streams, *mask* as its signal mask, and return its pid.

    posix_spawn sets the mask in the child before the program starts, which
    subprocess can do only through ``preexec_fn``, unsafe once threads run.

    :raises OSError: the program was not found or cannot be executed.
    """
    return os.posix_spawnp(
        argv[0], argv, env, setsigmask=set(mask), setsigdef=set(_RESTORED_SIGNALS)
    )


class Delivery(NamedTuple):
    """One signal that exec received."""

    signum: int
    # Whether the signal was sent to exec's whole process group by the
    # terminal, so that a child in that group received it as well.
    from_terminal: bool


class Relay(Protocol):
    """Takes over the relayed signals and reports them, and the child's exit, to exec."""

    # The signal mask exec had before the relay took over; the child gets it.
    original_mask: set[int]

    def wait(self, timeout: float | None) -> list[Delivery]:
        """Wait up to *timeout* seconds (None: forever) for a signal or a child's exit."""

    def close(self) -> None:
        """Give the relayed signals back their previous handling."""


def relayable_signals() -> list[int]:
    """Return the relayed signals that exec did not start with ignored.

    A signal ignored from the start (``nohup``, a background job of a
    non-interactive shell) stays ignored, and the child inherits that.
    """
    return [signum for signum in RELAYED_SIGNALS if signal.getsignal(signum) != signal.SIG_IGN]


def open_relay(signals: Sequence[int]) -> Relay:
    """Take over *signals* and SIGCHLD, with the best relay this platform allows."""
    if sys.platform == "linux" and hasattr(signal, "sigtimedwait"):
        return SigwaitRelay(signals)
    return HandlerRelay(signals)


class SigwaitRelay:
    """Relay that blocks the signals and takes them with their siginfo (Linux)."""

    def __init__(self, signals: Sequence[int]) -> None:
        if signal.getsignal(signal.SIGCHLD) == signal.SIG_IGN:
            # An ignored SIGCHLD makes the kernel reap the child at once, and
            # its exit status would be lost; the child then inherits SIG_DFL.
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        self._signals = set(signals)
        self._waited = self._signals | {signal.SIGCHLD}
        self.original_mask = set(signal.pthread_sigmask(signal.SIG_BLOCK, self._waited))

    def wait(self, timeout: float | None) -> list[Delivery]:
        if timeout is None:
            info: signal.struct_siginfo | None = signal.sigwaitinfo(self._waited)
        else:
            info = signal.sigtimedwait(self._waited, max(timeout, 0.0))
        deliveries = []
        while info is not None:
            if info.si_signo in self._signals:
                deliveries.append(Delivery(info.si_signo, self._from_terminal(info)))
            info = signal.sigtimedwait(self._waited, 0)
        return deliveries

    def close(self) -> None:
        # Pending relayed signals are dropped rather than acted on after the child is gone.
        while signal.sigtimedwait(self._waited, 0) is not None:
            pass
        signal.pthread_sigmask(signal.SIG_SETMASK, self.original_mask)

    @staticmethod
    def _from_terminal(info: signal.struct_siginfo) -> bool:
        if info.si_code != _SI_KERNEL_LINUX:
            return False
        # A hangup sends SIGHUP to the session leader alone, not to its group.
        leads_session = os.getsid(0) == os.getpid()
        return not (info.si_signo == signal.SIGHUP and leads_session)


class HandlerRelay:
    """Relay built on signal handlers and a wake-up pipe, for systems without sigtimedwait."""

    def __init__(self, signals: Sequence[int]) -> None:
        self.original_mask = set(signal.pthread_sigmask(signal.SIG_BLOCK, []))
        self._pending: list[int] = []
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._read_fd, False)
        os.set_blocking(self._write_fd, False)
        self._previous_wakeup = signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
        self._previous = {
            signum: signal.signal(signum, self._on_signal) for signum in (*signals, signal.SIGCHLD)
        }

    def _on_signal(self, signum: int, frame: object) -> None:
        if signum != signal.SIGCHLD:
            self._pending.append(signum)

    def wait(self, timeout: float | None) -> list[Delivery]:
        if not self._pending:
            select.select([self._read_fd], [], [], timeout)
        while True:
            try:
                if not os.read(self._read_fd, 512):
                    break
            except BlockingIOError:
                break
        received, self._pending = self._pending, []
        return [Delivery(signum, keyboard_signal_from_terminal(signum)) for signum in received]

    def close(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        signal.set_wakeup_fd(self._previous_wakeup)
        os.close(self._read_fd)
        os.close(self._write_fd)


def keyboard_signal_from_terminal(signum: int) -> bool:
    """Tell whether *signum* is a keyboard signal and exec's group is the terminal's foreground.

    NOTE: without siginfo this cannot tell a ``kill -INT`` from Ctrl-C, so
    such a SIGINT is not relayed while exec runs in the terminal's foreground.
    """
    if signum not in (signal.SIGINT, signal.SIGQUIT):
        return False
    try:
        fd = os.open("/dev/tty", os.O_RDONLY | getattr(os, "O_NOCTTY", 0))
    except OSError:
        return False
    try:
        return os.tcgetpgrp(fd) == os.getpgrp()
    except OSError:
        return False
    finally:
        os.close(fd)


class Child:
    """The supervised child: relays signals to it and collects its exit status."""

    def __init__(self, pid: int, relay: Relay) -> None:
        self.pid = pid
        self._relay = relay
        self._status: int | None = None

    def poll(self) -> int | None:
        """Return exec's exit status for the child if it has exited, else None."""
        if self._status is None:
            pid, wait_status = os.waitpid(self.pid, os.WNOHANG)
            if pid == self.pid:
                code = os.waitstatus_to_exitcode(wait_status)
                self._status = 128 - code if code < 0 else code
        return self._status

    def wait(self, timeout: float | None) -> int | None:
        """Relay the signals that arrive within *timeout* seconds; return the status once exited."""
        status = self.poll()
        if status is not None:
            return status
        for delivery in self._relay.wait(timeout):
            self._relay_signal(delivery)
        return self.poll()

    def wait_for_exit(self) -> int:
        """Relay signals until the child exits, and return its status."""
        while True:
            status = self.wait(None)
            if status is not None:
                return status

    def stop(self, grace: float) -> int:
        """Send SIGTERM, then SIGKILL after *grace* seconds, and return the status."""
        self._send(signal.SIGTERM)
        deadline = time.monotonic() + grace
        while (remaining := deadline - time.monotonic()) > 0:
            status = self.wait(remaining)
            if status is not None:
                return status
        self._send(signal.SIGKILL)
        return self.wait_for_exit()

    def _relay_signal(self, delivery: Delivery) -> None:
        name = signal.Signals(delivery.signum).name
        if delivery.from_terminal and self._shares_process_group():
            log.debug("%s came from the terminal, which sent it to pid %d too", name, self.pid)
            return
        log.debug("forwarding %s to pid %d", name, self.pid)
        self._send(delivery.signum)

    def _shares_process_group(self) -> bool:
        try:
            return os.getpgid(self.pid) == os.getpgrp()
        except OSError:
            return False

    def _send(self, signum: int) -> None:
        if self.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signum)
