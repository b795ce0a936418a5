"""One process at a time in a run folder, and a folder of its own for every run that names none.

    with run_lock.held(folder, "gym-dpo stage=prepare"):   # refused if another process holds it
        ...

The lock is an `flock` on `folder/.gym-dpo.lock`, which also says who holds it (pid, host, what,
since when): the error of a second run names them and the file. The kernel drops a dead
process's lock however it died (kill -9, a lost node's lease on NFS), so a lock left by a dead
run is taken over without a word; workers forked by the holder share its lock, so a run whose
workers still write counts as alive. The file is removed on release (and the folder, if taking
the lock made it and nothing else is in it); a process that locked a file removed meanwhile
sees that its inode is no longer the path's and tries again.

`claim(root, stamp)` makes a run folder no other run has: `stamp`, else `stamp-2`, and so on
(made with mkdir, which one process wins): the CLI gives it to a run that names no folder
(recipe.cli.RunStart), so two runs started in the same second do not share results/<timestamp>/.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

from recipe.errors import RecipeError

LOCK = ".gym-dpo.lock"


class Busy(RecipeError):
    """The folder is held by another live process."""


def _holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return (f"{info['what']} (pid {info['pid']} on {info['host']}, since {info['since']})"
                if isinstance(info, dict) else "another process")
    except (ValueError, KeyError, OSError):
        return "another process"


class RunLock:
    def __init__(self, folder: Path | str, what: str):
        self.folder = Path(folder).absolute()
        self.path = self.folder / LOCK
        self.what = what
        self.fd: int | None = None
        self.created = False

    def acquire(self) -> RunLock:
        for _ in range(100):  # each turn: another process removed the file between our open and flock
            if not self.folder.exists():
                self.folder.mkdir(parents=True, exist_ok=True)
                self.created = True
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except FileNotFoundError:  # the folder was removed by the last holder's release
                continue
            except OSError as exc:
                raise RecipeError(f"cannot lock {self.folder} for {self.what}: {exc}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                holder = _holder(fd)
                os.close(fd)
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise RecipeError(f"cannot lock {self.folder} ({self.path}: {exc})") from None
                raise Busy(f"{self.folder} is in use by {holder}, which holds {self.path}: wait until that run "
                           "ends (or stop it), or give this one another folder") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self.fd = fd
                record = {"pid": os.getpid(), "host": socket.gethostname(), "what": self.what,
                          "since": datetime.now().astimezone().isoformat(timespec="seconds")}
                os.ftruncate(fd, 0)
                os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
                return self
            os.close(fd)
        raise RecipeError(f"could not lock {self.folder}: {self.path} kept changing")

    def release(self) -> None:
        fd, self.fd = self.fd, None
        if fd is None:
            return
        try:
            if os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                os.unlink(self.path)
        except OSError:
            pass
        finally:
            os.close(fd)
        if self.created:
            with contextlib.suppress(OSError):
                self.folder.rmdir()  # only when empty: a run refused or stopped before its first file


@contextlib.contextmanager
def held(folder: Path | str, what: str) -> Iterator[RunLock]:
    """`folder` locked for the block (made if missing; removed after if it was made and is empty)."""
    lock = RunLock(folder, what).acquire()
    try:
        yield lock
    finally:
        lock.release()


def claim(root: Path, stamp: str) -> str:
    """A name under `root`, `stamp` or `stamp-N`, whose folder this call made."""
    root.mkdir(parents=True, exist_ok=True)
    for n in range(1, 10_000):
        name = stamp if n == 1 else f"{stamp}-{n}"
        try:
            (root / name).mkdir()
            return name
        except FileExistsError:
            continue
    raise RecipeError(f"{root}: no free run folder name for {stamp}; give run_name=NAME")
