"""Hydra override values on the command lines gym-dpo builds for its child stages.

A path is one value whatever it holds: `run_dir=runs/lr1e-5,b0.1` unquoted is a list to Hydra
("Ambiguous value"), `a[1].jsonl` a list element, `${x}` an interpolation. `override(key, path)`
writes `key=path` as it is when the path is plain, else single-quoted as Hydra's grammar reads it
back: `'` escaped, a run of backslashes before a quote or at the end doubled (elsewhere Hydra
keeps backslashes as they are), `${` escaped so OmegaConf leaves it alone.
"""

from __future__ import annotations

import re

_PLAIN = re.compile(r"[\w./@:+-]+")
_BACKSLASHES = re.compile(r"(\\+)(?='|$)")


def quote(value) -> str:
    """`value` (a path or other text) as one Hydra override value that reads back as that text."""
    text = str(value)
    if _PLAIN.fullmatch(text) and "/" in text:  # a path of plain characters: a string as it is
        return text
    text = _BACKSLASHES.sub(lambda m: m.group(1) * 2, text).replace("'", "\\'").replace("${", "\\${")
    return f"'{text}'"


def override(key: str, value) -> str:
    return f"{key}={quote(value)}"
