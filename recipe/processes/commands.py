"""Commands (`run`, `Service`) run in a session of their own, so that stopping one stops all it
started (NeMo Gym's `ng_run` starts Ray and three servers; `stage=train` starts the trainer): a
stop signals every member of the child's session (read from /proc, so processes re-parented to
init are found too), SIGTERM first, SIGKILL after a grace period, and returns when the session is
empty. On Linux each command also gets SIGTERM if the process that started it dies.

"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from recipe.errors import RecipeError
from recipe.processes.signals import JOIN_TIMEOUT, deferred, parent_death_signal


def session_members(sid: int) -> list[int]:
    """PIDs whose session id is `sid` (the leader included while it lives), zombies left out."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                fields = handle.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        # after the command name: state, ppid, pgrp, session, ...
        if int(fields[3]) == sid and fields[0] != b"Z":
            members.append(int(entry))
    return members


_LEFT: list[str] = []  # what stop_session could not stop, in this process's life


def left_behind() -> list[str]:
    """Processes a stop could not end (pid and command), so a message never claims it did."""
    return list(_LEFT)


def stop_outcome(who: str) -> str:
    """What a stop left: "every process {who} started was stopped", or which ones were not."""
    if not _LEFT:
        return f"every process {who} started was stopped"
    return (f"{len(_LEFT)} process(es) {who} started could not be stopped: {'; '.join(_LEFT[:5])} "
            "(stop them by hand: kill -9 PID)")


def stop_session(process: subprocess.Popen, grace: float = 20.0) -> list[int]:
    """SIGTERM the leader (ng_run shuts its servers down on it), then every member left, then
    SIGKILL what is still there after `grace` seconds. Returns when the session is empty, or
    with the members that even SIGKILL did not end (also kept for `left_behind()`). A signal
    that comes meanwhile is raised when the stop is done: it never cuts a stop short."""
    with deferred():
        return _stop_session(process, grace)


def _stop_session(process: subprocess.Popen, grace: float) -> list[int]:
    sid = process.pid
    for step, sig in enumerate((signal.SIGTERM, signal.SIGTERM, signal.SIGKILL)):
        if step == 0:  # the leader while it lives (once reaped, its pid may be another process's)
            targets = [process.pid] if process.poll() is None else []
        else:
            targets = session_members(sid)
        for pid in targets:
            try:
                os.kill(pid, sig)
                if sig == signal.SIGTERM:  # a stopped process (SIGSTOP) acts on it only once continued
                    os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + (grace if sig != signal.SIGKILL else JOIN_TIMEOUT)
        while time.monotonic() < deadline:
            process.poll()
            members = session_members(sid)
            if process.returncode is not None and not members:
                return []
            if step == 0 and process.returncode is not None:
                break  # the leader is gone and left children: signal them now
            time.sleep(0.2)
    process.poll()
    left = list(dict.fromkeys(session_members(sid) + ([process.pid] if process.returncode is None else [])))
    _LEFT.extend(f"{pid} ({_command(pid)})" for pid in left)
    return left


def _command(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()[:120]
    except OSError:
        return "?"


def stdout_gone() -> None:
    """Our stdout was closed (`gym-dpo ... | head -3`) or its terminal hung up: from now on what
    is printed goes to /dev/null, so that printing never stops the run."""
    with contextlib.suppress(OSError, ValueError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


class _Tee(threading.Thread):
    """Copy a child's output to its log file and, prefixed, to our stdout; keep its last lines.

    It drains the child's pipe to the end whatever happens (a child that fills its pipe would
    block for ever): when stdout is closed it stops echoing; when the log cannot be written (a
    full disk) it keeps reading, and `error` says why (the caller fails the step with it)."""

    def __init__(self, stream, log_path: Path, prefix: str, echo: bool):
        super().__init__(daemon=True)
        self.stream, self.log_path, self.prefix, self.echo = stream, log_path, prefix, echo
        self.lines: deque[str] = deque(maxlen=200)
        self.error: OSError | None = None

    def run(self) -> None:
        log = None
        try:
            log = open(self.log_path, "ab")
        except OSError as exc:
            self.error = exc
        try:
            for raw in iter(self.stream.readline, b""):
                if log is not None:
                    try:
                        log.write(raw)
                        log.flush()
                    except OSError as exc:
                        self.error, log = exc, self._close(log)
                line = raw.decode("utf-8", "replace").rstrip("\n")
                self.lines.append(line)
                if self.echo:
                    try:
                        sys.stdout.write(f"{self.prefix}{line}\n")
                        sys.stdout.flush()
                    except (OSError, ValueError):
                        self.echo = False
                        stdout_gone()
        except BaseException:  # a bug of ours: still drain, so the child never blocks on its pipe
            for _ in iter(self.stream.readline, b""):
                pass
            raise
        finally:
            self._close(log)

    @staticmethod
    def _close(log) -> None:
        with contextlib.suppress(OSError, AttributeError):
            log.close()

    def failure(self, what: str) -> RecipeError | None:
        """The error that fails the step when the log could not be written, else None."""
        if self.error is None:
            return None
        return RecipeError(f"{what}: could not write its log {self.log_path} ({self.error.strerror or self.error}); "
                           "the command was stopped. Free space there (or fix the folder) and rerun")

    def tail(self, count: int = 25) -> str:
        return "\n".join(list(self.lines)[-count:])


def _die_with_parent(parent: int) -> Callable[[], None]:
    """In a command's child, before exec: SIGTERM when the stage's process dies."""
    return lambda: parent_death_signal(signal.SIGTERM, parent)


def start(argv: list, log_path: Path, *, cwd: Path | str | None = None, env: dict | None = None,
          prefix: str = "", echo: bool = True) -> tuple[subprocess.Popen, _Tee]:
    """A command in a session of its own, its output teed to `log_path` (and our stdout)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        process = subprocess.Popen([str(a) for a in argv], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
                                   preexec_fn=_die_with_parent(os.getpid()))
    except OSError as exc:
        raise RecipeError(f"could not start {argv[0]}: {exc}") from None
    tee = _Tee(process.stdout, log_path, prefix, echo)
    tee.start()
    return process, tee


def run(argv: list, log_path: Path, *, cwd: Path | str | None = None, env: dict | None = None,
        prefix: str = "", echo: bool = True, what: str = "", watch: Callable[[], None] | None = None,
        check: bool = True) -> int:
    """Run a command to its end; its exit code. `watch()` is called every second meanwhile (to
    show progress, or to raise when something the command needs has died: the command is then
    stopped). With `check`, a non-zero exit is a RecipeError with the end of the log. However
    the wait ends (error, Ctrl-C, SIGTERM), the command's whole session is stopped."""
    process, tee = start(argv, log_path, cwd=cwd, env=env, prefix=prefix, echo=echo)
    what = what or str(argv[0])
    try:
        while True:
            try:
                code = process.wait(timeout=1)
                break
            except subprocess.TimeoutExpired:
                if tee.error is not None:
                    raise tee.failure(what) from None
                if watch:
                    watch()
    finally:
        if process.returncode is None or session_members(process.pid):
            stop_session(process)
        tee.join(JOIN_TIMEOUT)
    if tee.error is not None:
        raise tee.failure(what)
    if check and code != 0:
        raise RecipeError(f"{what} exited with code {code} (log: {log_path})\n{tee.tail()}")
    return code


_LIVE: list[Service] = []  # the services of this process that are up, oldest first


def live_services() -> list[Service]:
    """The services this process started that are up, oldest first."""
    return list(_LIVE)


def check_services() -> None:
    """Raise (`Service.check`) if a service this process started has exited since: a command
    that talks to them (NeMo Gym's collection) would otherwise retry forever."""
    for service in list(_LIVE):
        service.check()


class Service:
    """A long-running command: started on enter, ready when `ready(self)` says so (within
    `timeout` seconds), stopped on exit however the block ends. `check()` raises, with the end of
    its log, once it has exited; `explain(lines)` may name the cause from its last lines (which
    of the servers it runs stopped, say)."""

    def __init__(self, name: str, argv: list, log_path: Path, *, cwd: Path | str | None = None,
                 env: dict | None = None, ready: Callable[[Service], bool], timeout: float,
                 echo: bool = False, explain: Callable[[list[str]], str | None] | None = None):
        self.name, self.argv, self.log_path, self.cwd, self.env = name, argv, log_path, cwd, env
        self.ready, self.timeout, self.echo, self.explain = ready, timeout, echo, explain
        self.process: subprocess.Popen | None = None
        self.tee: _Tee | None = None

    @property
    def output(self) -> list[str]:
        return list(self.tee.lines) if self.tee else []

    def check(self) -> None:
        if self.tee is not None and self.tee.error is not None:
            raise self.tee.failure(self.name)
        if self.process is not None and self.process.poll() is not None:
            self.tee.join(JOIN_TIMEOUT)  # its last words are the reason
            cause = self.explain(self.output) if self.explain else None
            raise RecipeError(f"{self.name} exited with code {self.process.returncode}"
                              + (f": {cause}" if cause else "") + f" (log: {self.log_path})\n{self.tee.tail()}")

    def __enter__(self) -> Service:
        self.process, self.tee = start(self.argv, self.log_path, cwd=self.cwd, env=self.env,
                                       prefix=f"[{self.name}] ", echo=self.echo)
        try:
            deadline = time.monotonic() + self.timeout
            while not self.ready(self):
                if self.process.poll() is not None:
                    self.tee.join(JOIN_TIMEOUT)
                    raise RecipeError(f"{self.name} exited with code {self.process.returncode} before it "
                                      f"was ready (log: {self.log_path})\n{self.tee.tail()}")
                if time.monotonic() > deadline:
                    raise RecipeError(f"{self.name} was not ready after {self.timeout:.0f}s "
                                      f"(log: {self.log_path})\n{self.tee.tail()}")
                time.sleep(0.5)
        except BaseException:
            self.stop()
            raise
        _LIVE.append(self)
        return self

    def stop(self) -> None:
        if self in _LIVE:
            _LIVE.remove(self)
        if self.process is not None:
            stop_session(self.process)
            if self.tee:
                self.tee.join(JOIN_TIMEOUT)
            self.process = None

    def __exit__(self, *exc) -> None:
        self.stop()
