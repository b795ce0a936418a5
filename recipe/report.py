"""What the user reads at the end of a stage: a summary table on the terminal."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

console = Console(stderr=True)


def outcome_rows(counts: dict) -> list[tuple[str, object]]:
    """Where the input lines went, as (outcome, lines): the terminal summary and report.html show
    the same rows ("?" for a count a hand-edited manifest lacks)."""
    rows = [("input lines", counts.get("lines", "?")), ("in a pair", counts.get("paired", "?"))]
    rows += [(f"no pair: {reason}", n) for reason, n in counts.get("unpaired", {}).items() if n]
    rows += [(f"rejected: {reason}", n) for reason, n in counts.get("rejected", {}).items()]
    return rows


def prepare_summary(manifest: dict) -> Table:
    table = Table(title="gym-dpo prepare", show_header=True, header_style="bold")
    table.add_column("outcome")
    table.add_column("lines", justify="right")
    for outcome, n in outcome_rows(manifest["counts"]):
        table.add_row(outcome, f"{n:,}")
    pairs = manifest["pairs"]
    table.add_section()
    table.add_row("train pairs (prompts)", f"{pairs['train']:,} ({pairs['prompts_train']:,})")
    table.add_row("val pairs (prompts)", f"{pairs['val']:,} ({pairs['prompts_val']:,})")
    return table
