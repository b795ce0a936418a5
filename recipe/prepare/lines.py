"""The second look at a rollout: its line read again by position, decoded and converted.

The scan keeps a fixed-size record per usable rollout, not its text. What needs the messages
later (a pair's line, a cut that the records alone do not settle) reads the line back by offset
with pread: a file mapping would count the pages it touched as the process's memory (PSS), up to
the whole input.
"""

from __future__ import annotations

import os

from recipe.prepare import rollouts, scan


class LineSource:
    def __init__(self, paths: list[str], options: scan.ScanOptions):
        self.options = options
        self.reader = rollouts.Reader(options.group_by)
        self.files = [open(path, "rb", buffering=0) for path in paths]  # closed with the process
        self.fds = tuple(handle.fileno() for handle in self.files)

    def line(self, file: int, offset: int, nbytes: int) -> bytes:
        return os.pread(self.fds[file], nbytes, offset)

    def convert(self, file: int, offset: int, nbytes: int) -> tuple[list[dict], str | list[dict]]:
        """(context messages, output) of a usable rollout's line (`scan.convert`)."""
        return scan.convert(*self.reader.decode(self.line(file, offset, nbytes)), self.options)

    def output(self, file: int, offset: int, nbytes: int) -> str | list[dict]:
        return scan.checked_response(*self.reader.decode(self.line(file, offset, nbytes)), self.options)
