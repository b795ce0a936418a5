"""Commands (`run`, `Service`) run in a session of their own, so that stopping one stops all it
started (NeMo Gym's `ng_run` starts Ray and three servers; `stage=train` starts the trainer): a
stop signals every member of the child's session (read from /proc, so processes re-parented to
init are found too), SIGTERM first, SIGKILL after a grace period, and returns when the session is
empty. On Linux each command also gets SIGTERM if the process that started it dies.

"""

from __future__ import annotations

import ctypes
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
from recipe.processes.signals import JOIN_TIMEOUT


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


def stop_session(process: subprocess.Popen, grace: float = 20.0) -> None:
    """SIGTERM the leader (ng_run shuts its servers down on it), then every member left, then
    SIGKILL what is still there after `grace` seconds. Returns when the session is empty."""
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
                return
            if step == 0 and process.returncode is not None:
                break  # the leader is gone and left children: signal them now
            time.sleep(0.2)
    process.poll()


class _Tee(threading.Thread):
    """Copy a child's output to its log file and, prefixed, to our stdout; keep its last lines."""

    def __init__(self, stream, log_path: Path, prefix: str, echo: bool):
        super().__init__(daemon=True)
        self.stream, self.log_path, self.prefix, self.echo = stream, log_path, prefix, echo
        self.lines: deque[str] = deque(maxlen=200)

    def run(self) -> None:
        with open(self.log_path, "ab") as log:
            for raw in iter(self.stream.readline, b""):
                log.write(raw)
                log.flush()
                line = raw.decode("utf-8", "replace").rstrip("\n")
                self.lines.append(line)
                if self.echo:
                    sys.stdout.write(f"{self.prefix}{line}\n")
                    sys.stdout.flush()

    def tail(self, count: int = 25) -> str:
        return "\n".join(list(self.lines)[-count:])


try:  # looked up here: the child between fork and exec only calls it
    _PRCTL = ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None
except (OSError, AttributeError):
    _PRCTL = None
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In a command's child, before exec: SIGTERM when the thread that started it ends (Linux:
    commands are started from the main thread, so that is when the stage's process dies)."""
    _PRCTL(PR_SET_PDEATHSIG, int(signal.SIGTERM))


def start(argv: list, log_path: Path, *, cwd: Path | str | None = None, env: dict | None = None,
          prefix: str = "", echo: bool = True) -> tuple[subprocess.Popen, _Tee]:
    """A command in a session of its own, its output teed to `log_path` (and our stdout)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        process = subprocess.Popen([str(a) for a in argv], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
                                   preexec_fn=_die_with_parent if _PRCTL else None)
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
    try:
        while True:
            try:
                code = process.wait(timeout=1 if watch else None)
                break
            except subprocess.TimeoutExpired:
                watch()
    finally:
        if process.returncode is None or session_members(process.pid):
            stop_session(process)
        tee.join(JOIN_TIMEOUT)
    if check and code != 0:
        raise RecipeError(f"{what or argv[0]} exited with code {code} (log: {log_path})\n{tee.tail()}")
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
