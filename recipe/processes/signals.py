"""Signals. The CLI turns Ctrl-C and SIGTERM into `Interrupted` (a KeyboardInterrupt, so every
`finally` and `with` on the way out runs and stops what was started); the CLI prints one line and
exits 130 / 143. A stage says what the stop left in `Interrupted.outcome`.
"""

from __future__ import annotations

import contextlib
import signal

SIGNALS = (signal.SIGINT, signal.SIGTERM)
JOIN_TIMEOUT = 10.0  # seconds a stopped worker or a tee thread gets before it is killed / left


# -- signals ------------------------------------------------------------------------------------
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
    """For the rest of the process: SIGINT and SIGTERM raise `Interrupted` (the CLI)."""
    for sig in SIGNALS:
        signal.signal(sig, _raise)


class signals_raise:
    """Within the block SIGINT and SIGTERM raise `Interrupted`; the previous handlers come back
    after. The CLI runs every stage inside one."""

    def __enter__(self):
        self.previous = {s: signal.signal(s, _raise) for s in SIGNALS}
        return self

    def __exit__(self, *exc):
        for sig, old in self.previous.items():
            signal.signal(sig, old)


def in_child() -> None:
    """A worker's disposition: Ctrl-C is the parent's to handle, SIGTERM ends the worker."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


@contextlib.contextmanager
def deferred():
    """A section a signal must not cut in two (outputs renamed, then their manifest; a fork): a
    SIGINT or SIGTERM that arrives in it is delivered when it ends. Both are blocked in this
    thread (what a fork inherits) and, as any thread may be the one that receives a signal,
    their handlers only note it meanwhile."""
    noted = []
    signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    previous = {s: signal.signal(s, lambda signum, frame: noted.append(signum)) for s in SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)  # one that was pending runs its handler now
        if noted:
            signal.raise_signal(noted[0])


def block() -> None:
    """From the start of the CLI until a stage runs (`unblock`): composing the config is not cut
    short by a signal (it would leave a library's state half-changed); one that comes waits."""
    signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)


def unblock() -> None:
    signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)


def hold() -> None:
    """While a stage cleans up after a signal: a second Ctrl-C must not cut the cleanup short."""
    for sig in SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


# -- forked Python workers ----------------------------------------------------------------------
