"""Work that need not hold up the stage, in a child process of its own: `Background(f, *args)`
starts `f(*args)` at once, `.result()` waits for what it returned.

Prepare keeps both cores busy with its worker processes; what it also has to do but nobody
waits for until the end (the inputs' sha256, the report's plots) runs here instead of in a thread
of the parent, where it would hold the parent's GIL or take a core from the workers. With
`nice=19` the child runs in the CPU time the stage leaves idle (start-up, gaps between phases,
the end) and still gets its share on a busy machine.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import traceback
from typing import Any, Callable

from recipe import interrupts
from recipe.errors import RecipeError


def _context():
    return multiprocessing.get_context("fork" if os.name == "posix" else "spawn")


def _child(function: Callable, args: tuple, nice: int, send) -> None:
    interrupts.in_child()  # Ctrl-C is the parent's to handle; it stops this process (`cancel`)
    if nice and hasattr(os, "nice"):
        os.nice(nice)
    try:
        outcome = (True, function(*args))
    except RecipeError as exc:  # bad input: the parent reports it as its own
        outcome = (False, exc)
    except BaseException:  # a bug: the parent shows where it happened
        outcome = (False, RuntimeError(f"{getattr(function, '__qualname__', function)} failed in a "
                                       f"background process:\n{traceback.format_exc()}"))
    send.send(outcome)
    send.close()


class Background:
    def __init__(self, function: Callable, *args: Any, nice: int = 0):
        context = _context()
        self._receive, send = context.Pipe(duplex=False)
        self._process = context.Process(target=_child, args=(function, args, nice, send), daemon=True,
                                        name=f"gym-dpo-{getattr(function, '__name__', 'background')}")
        gc.freeze()  # the child's collections then leave the parent's objects (and their pages) alone
        try:
            self._process.start()
        finally:
            gc.unfreeze()
        send.close()  # the child holds the only writing end: its death reads as EOF here

    def result(self) -> Any:
        """What the function returned; raises what it raised (RecipeError as it was, anything
        else as RuntimeError with the child's traceback)."""
        try:
            ok, value = self._receive.recv()
        except EOFError:
            self._process.join()
            raise RuntimeError(f"background process {self._process.name} died "
                               f"(exit code {self._process.exitcode})") from None
        finally:
            self._receive.close()
        self._process.join()
        if not ok:
            raise value
        return value

    def cancel(self) -> None:
        """Stop the child if it still runs (the stage failed: nobody wants the result)."""
        if self._process.is_alive():
            self._process.terminate()
        self._process.join()
        self._receive.close()
