"""The C fast path of prepare (`_native.c`): used when it was built and the options allow it.

It covers the default reading (grouping by context + task identity, lengths in characters, no
reasoning in responses); with `data.group_by`, `data.length_tokenizer` or
`data.include_reasoning=true` prepare runs in Python. `GYM_DPO_NATIVE=0` turns it off (the
tests run both ways). Whatever the C code is not sure of, it hands back to the Python path.
"""

from __future__ import annotations

import os
import sys

try:
    from recipe.prepare import _native
except ImportError:  # built without a C compiler: the Python path does everything
    _native = None


def enabled() -> bool:
    # little-endian only: its records and hashes are laid out as numpy and xxhash read them there
    return (_native is not None and sys.byteorder == "little"
            and os.environ.get("GYM_DPO_NATIVE", "1") != "0")


def covers(options) -> bool:
    """Whether the C path reads rows under these `scan.ScanOptions`."""
    return (enabled() and options.group_by is None and options.tokenizer is None
            and not options.chat.include_reasoning)


def scan(data: bytes, file_index: int, base_offset: int, options) -> tuple[bytearray, int, list]:
    """(RECORD bytes of the lines it accepted, lines in `data`, [(line, start, end)] handed back)."""
    return _native.scan(data, file_index, base_offset, options.chat.developer_role == "system",
                        options.binary)


def build_lines(fds: tuple[int, ...], pairs, options, sources: tuple[bytes, ...] | None = None
                ) -> list[bytes | None]:
    """The JSONL line of every `writer.PAIR` row (None: the Python path builds that one); with
    `sources` (each input path as the start of a JSON string), the `data.keep_extra_fields`
    fields too."""
    import numpy as np

    def column(name: str, kind) -> np.ndarray:
        return np.ascontiguousarray(pairs[name], dtype=kind)

    columns = [column(f"{side}_{name}", np.int64) for side in ("chosen", "rejected")
               for name in ("file", "offset", "nbytes")]
    extra = None if sources is None else (
        sources, column("chosen_reward", np.float64), column("rejected_reward", np.float64),
        column("key_hi", np.uint64), column("key_lo", np.uint64),
        column("chosen_line", np.int64), column("rejected_line", np.int64))
    return _native.build_lines(fds, *columns, options.chat.developer_role == "system", options.binary,
                               extra)


def convert(line: bytes, options) -> tuple[bytes, bytes, bytes | None] | None:
    """(context JSON, response JSON, single-user-turn prompt JSON or None), or None: ask Python."""
    return _native.convert(line, options.chat.developer_role == "system", options.binary)
