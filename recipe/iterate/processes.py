"""Child processes of the loop, each in a session of its own, so that stopping one stops all it
started: NeMo Gym's `ng_run` starts Ray (gcs, raylet, dashboard, workers), three servers and
their uv venvs; `gym-dpo stage=train` starts the trainer. A stop signals every process of the
child's session (read from /proc, so processes re-parented to init are found too), first
SIGTERM, then SIGKILL after a grace period. Nothing is matched by name.

`run()` waits for a command (its output to a log file and, by line, to the terminal); `Service`
keeps one running until the `with` block ends, however it ends (success, error, Ctrl-C, SIGTERM).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

from recipe.errors import RecipeError


class Interrupted(RecipeError):
    """Ctrl-C or SIGTERM: everything started was stopped."""

    def __init__(self, signum: int):
        super().__init__(f"interrupted by {signal.Signals(signum).name}: every process the loop started "
                         "was stopped; rerun the same command (same run_dir) to resume")
        self.exit_code = 128 + signum


def session_members(sid: int) -> list[int]:
    """PIDs whose session id is `sid` (the leader included while it lives)."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                fields = handle.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        # after the command name: state, ppid, pgrp, session, ...; zombies are already gone
        if int(fields[3]) == sid and fields[0] != b"Z":
            members.append(int(entry))
    return members


def stop_session(process: subprocess.Popen, grace: float = 20.0) -> None:
    """SIGTERM the leader (ng_run shuts its servers down on it), then every member left, then
    SIGKILL what is still there after `grace` seconds. Returns when the session is empty."""
    sid = process.pid
    for step, sig in enumerate((signal.SIGTERM, signal.SIGTERM, signal.SIGKILL)):
        targets = [process.pid] if step == 0 else session_members(sid)
        for pid in targets:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + (grace if sig != signal.SIGKILL else 10.0)
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
    """Copy a child's output to its log file and, prefixed, to our stdout."""

    def __init__(self, stream, log_path: Path, prefix: str, echo: bool):
        super().__init__(daemon=True)
        self.stream, self.log_path, self.prefix, self.echo = stream, log_path, prefix, echo
        self.lines: list[str] = []

    def run(self) -> None:
        with open(self.log_path, "ab") as log:
            for raw in iter(self.stream.readline, b""):
                log.write(raw)
                log.flush()
                line = raw.decode("utf-8", "replace").rstrip("\n")
                self.lines = (self.lines + [line])[-200:]
                if self.echo:
                    sys.stdout.write(f"{self.prefix}{line}\n")
                    sys.stdout.flush()


def _start(argv: list[str], log_path: Path, cwd: Path | None, env: dict | None, prefix: str,
           echo: bool) -> tuple[subprocess.Popen, _Tee]:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        process = subprocess.Popen([str(a) for a in argv], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    except OSError as exc:
        raise RecipeError(f"could not start {argv[0]}: {exc}") from None
    tee = _Tee(process.stdout, log_path, prefix, echo)
    tee.start()
    return process, tee


def run(argv: list[str], log_path: Path, *, cwd: Path | None = None, env: dict | None = None,
        prefix: str = "", echo: bool = True, what: str = "", watch: Callable[[], None] | None = None) -> None:
    """Run to the end (calling `watch` every few seconds meanwhile, e.g. to show progress); a
    non-zero exit is a RecipeError with the end of the log."""
    process, tee = _start(argv, log_path, cwd, env, prefix, echo)
    try:
        while True:
            try:
                code = process.wait(timeout=5 if watch else None)
                break
            except subprocess.TimeoutExpired:
                watch()
    finally:
        if process.returncode is None:
            stop_session(process)
        tee.join(timeout=10)
    if code != 0:
        tail = "\n".join(tee.lines[-25:])
        raise RecipeError(f"{what or argv[0]} exited with code {code} (log: {log_path})\n{tail}")


class Service:
    """A long-running child: started on enter, ready when `ready()` says so, stopped on exit."""

    def __init__(self, name: str, argv: list[str], log_path: Path, *, cwd: Path | None = None,
                 env: dict | None = None, ready: Callable[["Service"], bool], timeout: float,
                 echo: bool = False):
        self.name, self.argv, self.log_path, self.cwd, self.env = name, argv, log_path, cwd, env
        self.ready, self.timeout, self.echo = ready, timeout, echo
        self.process: subprocess.Popen | None = None
        self.tee: _Tee | None = None

    @property
    def output(self) -> list[str]:
        return self.tee.lines if self.tee else []

    def __enter__(self) -> "Service":
        self.process, self.tee = _start(self.argv, self.log_path, self.cwd, self.env,
                                        f"[{self.name}] ", self.echo)
        try:
            deadline = time.monotonic() + self.timeout
            while not self.ready(self):
                if self.process.poll() is not None:
                    self.tee.join(timeout=10)  # its last words are the reason
                    raise RecipeError(f"{self.name} exited with code {self.process.returncode} before it "
                                      f"was ready (log: {self.log_path})\n" + "\n".join(self.output[-25:]))
                if time.monotonic() > deadline:
                    raise RecipeError(f"{self.name} was not ready after {self.timeout:.0f}s "
                                      f"(log: {self.log_path})\n" + "\n".join(self.output[-25:]))
                time.sleep(0.5)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.process is not None:
            stop_session(self.process)
            if self.tee:
                self.tee.join(timeout=10)
            self.process = None

    def __exit__(self, *exc) -> None:
        self.stop()


class signals_raise:
    """Within the block SIGTERM (and SIGINT) raise Interrupted, so every `finally` and `with`
    runs and stops what was started; the previous handlers come back after."""

    def __enter__(self):
        def handler(signum, frame):
            raise Interrupted(signum)

        self.previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
        return self

    def __exit__(self, *exc):
        for sig, old in self.previous.items():
            signal.signal(sig, old)
