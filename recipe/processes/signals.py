"""Signals. The CLI turns Ctrl-C, SIGTERM and SIGHUP (a dropped ssh session) into `Interrupted` (a
KeyboardInterrupt, so every `finally` and `with` on the way out runs and stops what was started);
the CLI prints one line and exits 130 / 143 / 129. A stage says what the stop left in
`Interrupted.outcome`.

One handler (`_handle`) decides for every signal, from the state of this process: inside a
`deferred()` section the signal is noted and raised at its end; once a first signal has been
raised (or `hold()` was called) later ones are only counted, so nothing cuts the cleanup short;
else it raises `Interrupted`. The handler is never swapped in and out around a section: a
signal that came while handlers were being swapped could find half of them changed.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
JOIN_TIMEOUT = 10.0  # seconds a stopped worker or a tee thread gets before it is killed / left


try:  # looked up here: a child between fork and exec only calls it
    _PRCTL = ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None
except (OSError, AttributeError):
    _PRCTL = None
PR_SET_PDEATHSIG = 1


def parent_death_signal(signum: int, parent: int) -> None:
    """In a child: `signum` when the thread that started it ends (Linux; processes are started
    from the main thread, so that is when the stage's process dies, even by kill -9), or now if
    `parent` is already gone."""
    if _PRCTL is not None:
        _PRCTL(PR_SET_PDEATHSIG, int(signum))
        if os.getppid() != parent:
            os.kill(os.getpid(), signum)


# -- signals ------------------------------------------------------------------------------------
class Interrupted(KeyboardInterrupt):
    """The run was stopped by a signal; `outcome` says what that left (set by the stage)."""

    outcome = "stopped"

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.exit_code = 128 + signum


class _State:
    depth = 0             # deferred() sections open (nested)
    held = False          # a stop is under way: further signals are only counted
    pending: list = []    # signals noted inside a deferred() section, raised at its end
    ignored: list = []    # signals that came while held


def _fire(signum: int):
    _State.held = True  # set before the raise: the cleanup that follows is not cut short
    raise Interrupted(signum)


def _handle(signum, frame):
    if _State.depth:
        _State.pending.append(signum)
    elif _State.held:
        _State.ignored.append(signum)
    else:
        _fire(signum)


def install() -> None:
    """For the rest of the process: SIGINT, SIGTERM and SIGHUP raise `Interrupted`, once (the CLI)."""
    _State.held, _State.pending, _State.ignored = False, [], []
    for sig in SIGNALS:
        signal.signal(sig, _handle)


def _ours() -> bool:
    return all(signal.getsignal(sig) is _handle for sig in SIGNALS)


class signals_raise:
    """Within the block SIGINT, SIGTERM and SIGHUP raise `Interrupted`; the previous handlers
    come back after."""

    def __enter__(self):
        self.previous = {s: signal.getsignal(s) for s in SIGNALS}
        install()
        return self

    def __exit__(self, *exc):
        for sig, old in self.previous.items():
            signal.signal(sig, old)


def in_child() -> None:
    """A worker's disposition: Ctrl-C and a hang-up are the parent's to handle, SIGTERM ends the
    worker."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


class deferred:
    """A section a signal must not cut in two (outputs renamed, then their manifest; a fork): a
    signal that arrives in it is raised as `Interrupted` when it ends (not at all once a stop is
    under way). The signals are also blocked in this thread meanwhile (what a fork inherits).
    Outside the CLI (its handler not installed) the section installs it and puts the previous
    handlers back at its end, re-sending a signal that came meanwhile to them (in the main thread:
    Python sets handlers, and runs them, there only)."""

    def __enter__(self):
        _State.depth += 1  # first: a signal from here on is noted
        self.previous = None
        try:
            if _State.depth == 1 and not _ours() and threading.current_thread() is threading.main_thread():
                self.previous = {s: signal.getsignal(s) for s in SIGNALS}
                for sig in SIGNALS:
                    signal.signal(sig, _handle)
            signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
        except BaseException:  # the previous handler raised before ours was in place
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc):
        if _State.depth == 1:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)  # one that was pending is noted now
        _State.depth -= 1
        if _State.depth:
            return
        pending, _State.pending = _State.pending, []
        if self.previous is not None:
            for sig, handler in self.previous.items():
                signal.signal(sig, handler)
            if pending:
                signal.raise_signal(pending[0])
        elif pending and not _State.held:
            _fire(pending[0])


def block() -> None:
    """From the start of the CLI until a stage runs (`unblock`): composing the config is not cut
    short by a signal (it would leave a library's state half-changed); one that comes waits."""
    signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)


def unblock() -> None:
    signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)


def hold() -> None:
    """While a stage cleans up: a signal must not cut the cleanup short; from now on they are
    only counted (`ignored()`). Not SIG_IGN: an ignored signal would stay ignored in a command
    started meanwhile (exec keeps it), and its stop would then need SIGKILL."""
    _State.held = True
    if not _ours():
        for sig in SIGNALS:
            signal.signal(sig, _handle)


def ignored() -> list[int]:
    """The signals that came while a stop was under way (held), oldest first."""
    return list(_State.ignored)
