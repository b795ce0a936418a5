"""What the user reads at the end of a stage: a summary table on the terminal."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

console = Console(stderr=True)


def prepare_summary(manifest: dict) -> Table:
    counts = manifest["counts"]
    table = Table(title="gym-dpo prepare", show_header=True, header_style="bold")
    table.add_column("outcome")
    table.add_column("lines", justify="right")
    table.add_row("input lines", f"{counts['lines']:,}")
    table.add_row("in a pair", f"{counts['paired']:,}")
    for reason, n in counts["unpaired"].items():
        if n:
            table.add_row(f"no pair: {reason}", f"{n:,}")
    for reason, n in counts["rejected"].items():
        table.add_row(f"rejected: {reason}", f"{n:,}")
    pairs = manifest["pairs"]
    table.add_section()
    table.add_row("train pairs (prompts)", f"{pairs['train']:,} ({pairs['prompts_train']:,})")
    table.add_row("val pairs (prompts)", f"{pairs['val']:,} ({pairs['prompts_val']:,})")
    return table
