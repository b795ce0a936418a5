"""Python workers (`Pool`, `Background`) are forked with the stop signals blocked, and set their
own disposition before anything else runs in them: they ignore Ctrl-C and a hang-up (the terminal
sends them to the whole process group; the parent decides), die quietly on SIGTERM, and get
SIGKILL when the process that forked them dies (kill -9 of the stage leaves none behind). A
signal that comes while a worker is being forked waits until the worker can take it, so none
ever runs the parent's handler in a half-made child. Each worker has pipes of its own: no lock is
shared between processes, so a worker that dies anywhere can block nobody, and the parent, which
waits on the workers' pipes and their exit at once, turns a death into an error naming the worker.

Every worker is recorded the moment it is forked (in the same signal-free section) until it is
joined, so `reaping()` stops those a block forked whatever line an error or a signal cut: one
forked but not yet handed to its owner (a signal between `Pool(...)` returning and its `with`)
included.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import signal
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from multiprocessing.connection import wait as wait_any
from multiprocessing.reduction import ForkingPickler as _ForkingPickler
from typing import Any

from recipe.errors import RecipeError, full_disk
from recipe.processes.signals import JOIN_TIMEOUT, SIGNALS, deferred, in_child, parent_death_signal

PIPE_SAFE_BYTES = 16 << 10  # a task this small fits in a pipe (64 KiB on Linux) beside another

_FORKED: dict[multiprocessing.Process, int] = {}  # every worker forked and not yet joined -> its number
_COUNT = [0]


def _context():
    return multiprocessing.get_context("fork")


def _fork(target: Callable, args: tuple, name: str) -> multiprocessing.Process:
    """A daemon child running `target(*args)` after `in_child()`, forked with the signals blocked
    (see the module docstring); call it inside a `deferred()` section that also hands the child
    to its owner. The child's collections leave the parent's objects, and so the pages it shares
    with them, alone (gc.freeze)."""
    process = _context().Process(target=_child_main, args=(target, args, os.getpid()), name=name, daemon=True)
    gc.freeze()
    try:
        with deferred():
            process.start()
            _COUNT[0] += 1
            _FORKED[process] = _COUNT[0]
    finally:
        gc.unfreeze()
    return process


def _child_main(target: Callable, args: tuple, parent: int) -> None:
    in_child()
    parent_death_signal(signal.SIGKILL, parent)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
    target(*args)


class reaping:
    """Within the block, workers are forked as usual; those still alive when it ends are killed
    (after an error or a signal: whatever line it cut; after a normal end there are none)."""

    def __enter__(self):
        self.first = _COUNT[0] + 1
        return self

    def __exit__(self, *exc) -> None:
        for process, number in list(_FORKED.items()):
            if number >= self.first:
                _stop(process)


def forked() -> list[multiprocessing.Process]:
    """The workers this process forked that were not joined yet (alive or not)."""
    return list(_FORKED)


def _outcome(where: str, function: Callable, *args) -> tuple[bool, Any]:
    """(True, result) or (False, the error to raise in the parent): a RecipeError as it was (bad
    input, reported by the parent as its own; a full disk likewise), anything else as a RuntimeError with the child's
    traceback (a bug: the parent shows where it happened)."""
    try:
        return True, function(*args)
    except RecipeError as exc:
        return False, exc
    except BaseException as exc:  # noqa: BLE001
        if (full := full_disk(exc)) is not None:
            return False, full
        name = getattr(function, "__qualname__", function)
        return False, RuntimeError(f"{name} failed in a {where} ({multiprocessing.current_process().name}):\n"
                                   f"{traceback.format_exc()}")


def _join(process: multiprocessing.Process, timeout: float = JOIN_TIMEOUT) -> None:
    process.join(timeout)
    if process.exitcode is not None:
        _FORKED.pop(process, None)


def _died(process: multiprocessing.Process) -> Exception:
    """A child that ended without handing back its result. Killed by a signal (the kernel's
    out-of-memory killer, a person's kill): an error to act on, one line, no traceback. Exited by
    itself: a bug (RuntimeError)."""
    _join(process)
    code = process.exitcode
    if code is not None and code < 0:
        return RecipeError(f"{process.name} died (signal {signal.Signals(-code).name}): it was killed from outside "
                           "the run (when nobody killed it, the system ran out of memory: `dmesg` names the kill); "
                           "rerun the same command")
    return RuntimeError(f"{process.name} died (exit code {code})")


def _stop(process: multiprocessing.Process) -> None:
    if process.is_alive():
        process.kill()
    _join(process)


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
                with deferred():  # forked and in `_workers` (so killed by `kill`), or neither
                    task_read, task_write = _context().Pipe(duplex=False)
                    result_read, result_write = _context().Pipe(duplex=False)
                    process = _fork(_worker_loop, (task_read, result_write, list(parents), initializer, initargs),
                                    f"{name}-{index + 1}")
                    self._workers.append((process, task_write, result_read))
                    task_read.close()
                    result_write.close()
                    parents += [task_write, result_read]
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
                try:
                    self._workers[worker][1].send_bytes(payload)
                except OSError:  # BrokenPipeError: the worker died while idle
                    raise _died(self._workers[worker][0]) from None
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
            _join(process)
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

    def __enter__(self) -> Pool:
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
        name = f"gym-dpo-{getattr(function, '__name__', 'background')}"
        self._process = None
        try:
            with deferred():
                self._receive, send = _context().Pipe(duplex=False)
                self._process = _fork(_background, (function, args, nice, send), name)
                send.close()  # the child holds the only writing end: its death reads as EOF here
        except BaseException:
            if self._process is not None:
                self.cancel()
            raise

    def result(self) -> Any:
        try:
            ok, value = self._receive.recv()
        except EOFError:
            raise _died(self._process) from None
        finally:
            self._receive.close()
        _join(self._process)
        if not ok:
            raise value
        return value

    def cancel(self) -> None:
        """Stop the child if it still runs (nobody wants the result); a no-op after `result()`."""
        _stop(self._process)
        self._receive.close()


# -- commands -----------------------------------------------------------------------------------
