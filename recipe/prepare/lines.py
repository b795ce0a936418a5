"""The second look at a rollout: its line read again by position, decoded and converted.

The scan keeps a fixed-size record per usable rollout, not its text. What needs the messages
later (a pair's line, a cut that the records alone do not settle) reads the line back by offset
with pread: a file mapping would count the pages it touched as the process's memory (PSS), up to
the whole input. The scan validated and checked these lines already: here they are decoded into
only what is needed (`rollouts.PairSide`, `rollouts.Output`) and converted.
"""

from __future__ import annotations

import os

import msgspec

from recipe.prepare import chat, rollouts, scan


class LineSource:
    def __init__(self, paths: list[str], options: scan.ScanOptions):
        self.options = options
        self._sides = msgspec.json.Decoder(rollouts.PairSide)
        self._outputs = msgspec.json.Decoder(rollouts.Output)
        self._inputs = msgspec.json.Decoder(rollouts.Input)
        self.files = [open(path, "rb", buffering=0) for path in paths]  # closed with the process
        self.fds = tuple(handle.fileno() for handle in self.files)

    def line(self, file: int, offset: int, nbytes: int) -> bytes:
        return os.pread(self.fds[file], nbytes, offset)

    def convert(self, file: int, offset: int, nbytes: int) -> tuple[list[dict], str | list[dict]]:
        """(context messages, output) of a usable rollout's line (what `scan.convert` gives)."""
        side = rollouts.from_episode(self._sides.decode(self.line(file, offset, nbytes)))
        request = side.responses_create_params
        params_input = request.input
        if isinstance(params_input, msgspec.Raw):  # an episode's opening turns (`rollouts.from_episode`)
            params_input = self._inputs.decode(params_input)
        return (chat.context_of(params_input, request.instructions, self.options.chat),
                scan.output_of(side, self.options))

    def output(self, file: int, offset: int, nbytes: int) -> str | list[dict]:
        return scan.output_of(rollouts.from_episode(self._outputs.decode(self.line(file, offset, nbytes))),
                              self.options)
