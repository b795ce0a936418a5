"""Child processes and signals, in one place: every stage starts, tees, bounds and stops what it
runs through this module.

Signals. The CLI turns Ctrl-C and SIGTERM into `Interrupted` (a KeyboardInterrupt, so every
`finally` and `with` on the way out runs and stops what was started); the CLI prints one line and
exits 130 / 143. A stage says what the stop left in `Interrupted.outcome`.

Python workers (`Pool`, `Background`) are forked with SIGINT and SIGTERM blocked, and set their
own disposition before anything else runs in them: they ignore Ctrl-C (the terminal sends it to
the whole process group; the parent decides) and die quietly on SIGTERM. A signal that comes
while a worker is being forked waits until the worker can take it, so none ever runs the
parent's handler in a half-made child. Each worker has pipes of its own: no lock is shared
between processes, so a worker that dies anywhere can block nobody, and the parent, which waits
on the workers' pipes and their exit at once, turns a death into an error naming the worker.

Commands (`run`, `Service`) run in a session of their own, so that stopping one stops all it
started (NeMo Gym's `ng_run` starts Ray and three servers; `stage=train` starts the trainer): a
stop signals every member of the child's session (read from /proc, so processes re-parented to
init are found too), SIGTERM first, SIGKILL after a grace period, and returns when the session is
empty. On Linux each command also gets SIGTERM if the process that started it dies.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections import deque
from multiprocessing.connection import wait as wait_any
from multiprocessing.reduction import ForkingPickler as _ForkingPickler
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from recipe.errors import RecipeError

SIGNALS = (signal.SIGINT, signal.SIGTERM)
JOIN_TIMEOUT = 10.0  # seconds a stopped worker or a tee thread gets before it is killed / left
PIPE_SAFE_BYTES = 16 << 10  # a task this small fits in a pipe (64 KiB on Linux) beside another


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
def _context():
    return multiprocessing.get_context("fork")


def _fork(target: Callable, args: tuple, name: str) -> multiprocessing.Process:
    """A daemon child running `target(*args)` after `in_child()`, forked with the signals blocked
    (see the module docstring). The child's collections leave the parent's objects, and so the
    pages it shares with them, alone (gc.freeze)."""
    process = _context().Process(target=_child_main, args=(target, args), name=name, daemon=True)
    gc.freeze()
    with deferred():
        try:
            process.start()
        finally:
            gc.unfreeze()
    return process


def _child_main(target: Callable, args: tuple) -> None:
    in_child()
    signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
    target(*args)


def _outcome(where: str, function: Callable, *args) -> tuple[bool, Any]:
    """(True, result) or (False, the error to raise in the parent): a RecipeError as it was (bad
    input, reported by the parent as its own), anything else as a RuntimeError with the child's
    traceback (a bug: the parent shows where it happened)."""
    try:
        return True, function(*args)
    except RecipeError as exc:
        return False, exc
    except BaseException:  # noqa: BLE001
        name = getattr(function, "__qualname__", function)
        return False, RuntimeError(f"{name} failed in a {where} ({multiprocessing.current_process().name}):\n"
                                   f"{traceback.format_exc()}")


def _died(process: multiprocessing.Process) -> RuntimeError:
    process.join(JOIN_TIMEOUT)
    code = process.exitcode
    how = f"signal {signal.Signals(-code).name}" if code is not None and code < 0 else f"exit code {code}"
    return RuntimeError(f"{process.name} died ({how})")


def _stop(process: multiprocessing.Process) -> None:
    if process.is_alive():
        process.kill()
    process.join(JOIN_TIMEOUT)


def _worker_loop(tasks, results, parents, initializer, initargs) -> None:
    for connection in parents:  # the parent's ends of other workers' pipes, inherited by the fork
        connection.close()
    ok, error = _outcome("worker process", initializer, *initargs) if initializer else (True, None)
    while True:
        try:
            item = tasks.recv()
        except (EOFError, OSError):  # the parent is gone
            return
        if item is None:
            return
        function, argument = item
        try:
            results.send(_outcome("worker process", function, argument) if ok else (False, error))
        except (BrokenPipeError, OSError):
            return


class Pool:
    """`workers` forked processes (or in-process calls when workers <= 1); `map` returns results
    in the order of its items, with at most `ahead` items in flight so that memory stays bounded.
    A worker's error is raised in the parent; a worker that dies is a RuntimeError naming it.

    Tasks go to the worker with the fewest in flight, at most `depth` each, so a send never waits
    for a busy worker (tasks are small: big inputs reach the workers through `initargs`, which a
    fork hands over without copying). Used as a context manager, the pool is closed and joined on
    success and killed on an error or a signal."""

    def __init__(self, workers: int, initializer: Callable | None = None, initargs: tuple = (),
                 ahead: int | None = None, depth: int = 2, name: str = "gym-dpo-worker"):
        self.size = workers if workers > 1 else 0
        self.ahead = ahead or 4 * max(workers, 1)
        self.depth = depth
        self._workers: list[tuple[multiprocessing.Process, Any, Any]] = []
        if self.size == 0:
            if initializer:
                initializer(*initargs)
            return
        parents = []
        try:
            for index in range(self.size):
                task_read, task_write = _context().Pipe(duplex=False)
                result_read, result_write = _context().Pipe(duplex=False)
                process = _fork(_worker_loop, (task_read, result_write, list(parents), initializer, initargs),
                                f"{name}-{index + 1}")
                task_read.close()
                result_write.close()
                parents += [task_write, result_read]
                self._workers.append((process, task_write, result_read))
        except BaseException:
            self.kill()
            raise

    def map(self, function: Callable, items: Iterable) -> Iterator:
        if self.size == 0:
            yield from map(function, items)
            return
        source = iter(items)
        order: deque = deque()                     # task numbers not yet yielded, in order
        flight = [deque() for _ in self._workers]  # per worker: its task numbers, in order
        results: dict[int, tuple[bool, Any]] = {}
        payload = None                             # the next task, pickled, not yet sent
        submitted, exhausted = 0, False
        while True:
            while not exhausted and len(order) < self.ahead:
                if payload is None:
                    try:
                        payload = bytes(_ForkingPickler.dumps((function, next(source))))
                    except StopIteration:
                        exhausted = True
                        break
                worker = self._worker_for(flight, len(payload))
                if worker is None:
                    break
                self._workers[worker][1].send_bytes(payload)
                payload = None
                flight[worker].append(submitted)
                order.append(submitted)
                submitted += 1
            while order and order[0] in results:
                ok, value = results.pop(order.popleft())
                if not ok:
                    raise value
                yield value
            if not order:
                if exhausted:
                    return
                continue
            self._receive(flight, results)

    def _worker_for(self, flight: list[deque], size: int) -> int | None:
        """The worker to send a task of `size` bytes to now, or None: the least busy one below
        `depth`; a task bigger than a pipe holds only to an idle worker, which reads it at once (a
        send that waited on a busy worker, itself waiting to hand us its result, would hang)."""
        worker = min(range(self.size), key=lambda w: len(flight[w]))
        if len(flight[worker]) >= self.depth or (size > PIPE_SAFE_BYTES and flight[worker]):
            return None
        return worker

    def _receive(self, flight: list[deque], results: dict) -> None:
        """Wait for any worker's next result (or death); store what came."""
        busy = [w for w in range(self.size) if flight[w]]
        waitables = {}
        for w in busy:
            process, _, result_read = self._workers[w]
            waitables[result_read] = waitables[process.sentinel] = w
        for ready in wait_any(list(waitables)):
            w = waitables[ready]
            process, _, result_read = self._workers[w]
            if ready is result_read or result_read.poll():
                try:
                    results[flight[w].popleft()] = result_read.recv()
                    continue
                except (EOFError, OSError):
                    pass
            raise _died(process)

    def close(self) -> None:
        """Normal end: every worker is told to stop and joined (killed if it does not stop)."""
        workers, self._workers = self._workers, []
        for _, task_write, _ in workers:
            try:
                task_write.send(None)
            except OSError:
                pass
        stuck = []
        for process, task_write, result_read in workers:
            process.join(JOIN_TIMEOUT)
            if process.is_alive():
                stuck.append(process.name)
                _stop(process)
            task_write.close()
            result_read.close()
        if stuck:
            raise RuntimeError(f"{', '.join(stuck)} did not stop within {JOIN_TIMEOUT:.0f}s and was killed")

    def kill(self) -> None:
        """After an error or a signal: every worker is killed at once (nobody wants its work)."""
        workers, self._workers = self._workers, []
        for process, task_write, result_read in workers:
            _stop(process)
            task_write.close()
            result_read.close()

    def __enter__(self) -> "Pool":
        return self

    def __exit__(self, kind, value, trace) -> None:
        if kind is None:
            self.close()
        else:
            self.kill()


def _background(function: Callable, args: tuple, nice: int, send) -> None:
    if nice and hasattr(os, "nice"):
        os.nice(nice)
    outcome = _outcome("background process", function, *args)
    try:
        send.send(outcome)
    except (BrokenPipeError, OSError):
        pass
    send.close()


class Background:
    """Work that need not hold up the stage, in a child process of its own: `Background(f, *args)`
    starts `f(*args)` at once, `.result()` waits for what it returned (raising what it raised),
    `.cancel()` stops it. With `nice=19` the child runs in the CPU time the stage leaves idle."""

    def __init__(self, function: Callable, *args: Any, nice: int = 0):
        self._receive, send = _context().Pipe(duplex=False)
        name = f"gym-dpo-{getattr(function, '__name__', 'background')}"
        self._process = _fork(_background, (function, args, nice, send), name)
        send.close()  # the child holds the only writing end: its death reads as EOF here

    def result(self) -> Any:
        try:
            ok, value = self._receive.recv()
        except EOFError:
            raise _died(self._process) from None
        finally:
            self._receive.close()
        self._process.join(JOIN_TIMEOUT)
        if not ok:
            raise value
        return value

    def cancel(self) -> None:
        """Stop the child if it still runs (nobody wants the result); a no-op after `result()`."""
        _stop(self._process)
        self._receive.close()


# -- commands -----------------------------------------------------------------------------------
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


class Service:
    """A long-running command: started on enter, ready when `ready(self)` says so (within
    `timeout` seconds), stopped on exit however the block ends. `check()` raises, with the end of
    its log, once it has exited."""

    def __init__(self, name: str, argv: list, log_path: Path, *, cwd: Path | str | None = None,
                 env: dict | None = None, ready: Callable[["Service"], bool], timeout: float,
                 echo: bool = False):
        self.name, self.argv, self.log_path, self.cwd, self.env = name, argv, log_path, cwd, env
        self.ready, self.timeout, self.echo = ready, timeout, echo
        self.process: subprocess.Popen | None = None
        self.tee: _Tee | None = None

    @property
    def output(self) -> list[str]:
        return list(self.tee.lines) if self.tee else []

    def check(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            self.tee.join(JOIN_TIMEOUT)  # its last words are the reason
            raise RecipeError(f"{self.name} exited with code {self.process.returncode} (log: "
                              f"{self.log_path})\n{self.tee.tail()}")

    def __enter__(self) -> "Service":
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
        return self

    def stop(self) -> None:
        if self.process is not None:
            stop_session(self.process)
            if self.tee:
                self.tee.join(JOIN_TIMEOUT)
            self.process = None

    def __exit__(self, *exc) -> None:
        self.stop()
