"""Ctrl-C and SIGTERM: one line on the terminal, no traceback, exit 130 / 143, nothing left behind.

The CLI turns both signals into `Interrupted` (a KeyboardInterrupt, so every `finally` and
cleanup on the way out runs). Child processes leave the decision to the parent: they ignore
Ctrl-C, which the terminal sends to the whole process group, and die quietly on SIGTERM, which
the parent sends them when it stops them.
"""

from __future__ import annotations

import contextlib
import signal


class Interrupted(KeyboardInterrupt):
    """The run was stopped by a signal; `outcome` says what that left (set by the stage)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.exit_code = 128 + signum
        self.outcome = "stopped"


def _raise(signum, frame):
    raise Interrupted(signum)


def install() -> None:
    """In the CLI's process: SIGINT and SIGTERM raise `Interrupted`."""
    signal.signal(signal.SIGINT, _raise)
    signal.signal(signal.SIGTERM, _raise)


def in_child() -> None:
    """In a worker or background process: the parent decides (see the module docstring)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


@contextlib.contextmanager
def deferred():
    """A section a signal must not cut in two (the outputs renamed, then their manifest): a
    signal that arrives in it is delivered when it ends."""
    signals = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, signals)


def hold() -> None:
    """While the stage cleans up after a signal: a second Ctrl-C must not cut the cleanup short."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
