"""`stage=compare_strategies`: every pairing strategy on one input, side by side, before training.

The input is read and validated once (the slow part) into record buckets in a temporary folder,
then each strategy pairs the same buckets; no pair file is written. One table shows what each
would give: pairs, prompts covered, mean gap and length bias.

The strategy `data_prep` selects runs with its composed options. The others run with their own
config files, taking the shared `normalize`, `length_penalty` and `min_gap` from `data_prep`, so
`gym-dpo stage=compare_strategies data.input=X data_prep.length_penalty=0.001` compares all of
them under that penalty. Their caps stay their own: a cap is part of what a strategy is.
"""

from __future__ import annotations

import dataclasses
import tempfile
from importlib import resources
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from recipe.errors import RecipeError
from recipe.prepare import pairing, stage
from recipe.prepare.pairing import report as pairing_report
from recipe.prepare.settings import Settings

CARRIED = ("normalize", "length_penalty", "min_gap")


def strategy_options(settings: Settings) -> dict[str, dict]:
    """Options for every strategy: the selected one as composed, the others from their files."""
    options = {}
    for name in pairing.STRATEGIES:
        if name == settings.strategy:
            options[name] = settings.strategy_options
            continue
        path = resources.files("recipe.configs") / "data_prep" / f"{name}.yaml"
        own = OmegaConf.to_container(OmegaConf.create(path.read_text()), resolve=True)
        own.pop("name")
        own.update({key: settings.strategy_options[key] for key in CARRIED})
        try:
            options[name] = pairing.resolve_options(name, own)
        except ValueError as exc:
            raise RecipeError(f"{name}: {exc}") from None
    return options


def table(summaries: list[dict], caption: str) -> Table:
    view = Table(title="gym-dpo compare_strategies", caption=caption, caption_justify="left",
                 header_style="bold")
    view.add_column("strategy", no_wrap=True)
    for column in ("pairs", "prompts covered", "mean gap", "length bias"):
        view.add_column(column, justify="right", no_wrap=True)
    for summary in summaries:
        gap, length = summary["score_gap"], summary["length_difference"]
        prompts = summary["prompts"]
        if summary["pairs"]:
            bias = f"{length['mean']:+.0f} / {length['median']:+.0f}, {length['chosen_longer_share']:.0%}"
            mean_gap = f"{gap['mean']:.3f}"
        else:
            bias = mean_gap = "-"
        view.add_row(summary["strategy"], f"{summary['pairs']:,}",
                     f"{prompts['with_pairs']:,} / {prompts['total']:,}", mean_gap, bias)
    return view


def run(cfg: DictConfig) -> list[dict]:
    """Scan once, pair with every strategy, print one table; returns the pairing summaries."""
    settings = Settings.from_config(cfg)
    options = strategy_options(settings)
    summaries = []
    with tempfile.TemporaryDirectory(prefix="gym-dpo-compare-") as spill, \
            stage.read_once(settings, Path(spill)) as (scanned, pair):
        for name in pairing.STRATEGIES:
            paired = pair(dataclasses.replace(settings, strategy=name, strategy_options=options[name]))
            summaries.append(pairing_report.summarize(name, paired.pairs, paired.groups, settings.length_unit))
    shared = settings.strategy_options
    caption = (f"{scanned.buckets.records:,} usable rollouts of {sum(scanned.lines_per_file):,} lines; "
               f"normalize={shared['normalize']}, length_penalty={shared['length_penalty']}, "
               f"min_gap={shared['min_gap']}.\nprompts covered: groups with a pair / all groups. "
               "gap: in score (normalised reward - length_penalty x characters).\nlength bias: "
               "characters of chosen - rejected, mean / median, and the share of pairs whose "
               "chosen is longer.")
    Console(soft_wrap=False).print(table(summaries, caption))
    return summaries
