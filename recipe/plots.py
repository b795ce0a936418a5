"""The report's figures, one function per plot: data in, a matplotlib Figure out.

Figures are built on matplotlib's object API with the Agg canvas (no pyplot, no display, no global
state), so they render the same on a laptop, in CI and in a container. The data stays on the axes
(bar heights, scatter offsets, line points), which is what the tests check, not pixels.
"""

from __future__ import annotations

import io

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

SIZE = (6.4, 3.6)
CHOSEN, REJECTED, NEUTRAL, LIMIT = "#2e7d32", "#c62828", "#1f77b4", "#6a1b9a"


def _figure(title: str, xlabel: str, ylabel: str) -> tuple[Figure, object]:
    figure = Figure(figsize=SIZE, dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.set_title(title)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.grid(alpha=0.3)
    return figure, axes


def png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _bar_width(values: np.ndarray) -> float:
    gaps = np.diff(np.unique(values))
    return float(gaps.min()) * 0.8 if len(gaps) else 0.8


def reward_distribution(values: list[float], counts: list[int], width: float | None = None) -> Figure:
    """Rollouts per reward: one bar per distinct reward, or per bin (`width` = the bin width)."""
    figure, axes = _figure("Reward of every usable rollout", "reward", "rollouts")
    x = np.asarray(values, dtype=float)
    axes.bar(x, counts, width=width or _bar_width(x), color=NEUTRAL, edgecolor="white")
    return figure


MAX_POINTS = 400  # more distinct (rejected, chosen) pairs than this are binned


def _distinct_points(xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(2 x k distinct (x, y) points in sorted order, how often each occurs): np.unique over
    rows, by a two-key sort (np.unique with an axis sorts structured rows, ~10x slower)."""
    order = np.lexsort((ys, xs))
    xs, ys = xs[order], ys[order]
    starts = np.flatnonzero(np.concatenate(([True], (xs[1:] != xs[:-1]) | (ys[1:] != ys[:-1]))))
    return np.stack([xs[starts], ys[starts]]), np.diff(np.append(starts, len(xs)))


def chosen_vs_rejected(chosen, rejected) -> Figure:
    """One point per distinct (rejected, chosen) reward pair, sized by how many pairs it holds;
    a 40 x 40 grid of bins coloured by count when rewards are too continuous for points to read
    (counted by numpy, so that a million pairs cost matplotlib no more than a thousand)."""
    figure, axes = _figure("Chosen vs rejected reward", "rejected reward", "chosen reward")
    xs, ys = np.asarray(rejected, dtype=float), np.asarray(chosen, dtype=float)
    if len(xs):
        low, high = float(min(xs.min(), ys.min())), float(max(xs.max(), ys.max()))
    else:
        low, high = 0.0, 1.0
    continuous = len(np.unique(xs)) > MAX_POINTS or len(np.unique(ys)) > MAX_POINTS
    points, sizes = (np.empty((2, 0)), np.empty(0, dtype=int)) if continuous or not len(xs) else \
        _distinct_points(xs, ys)
    if continuous or len(sizes) > MAX_POINTS:
        counts, x_edges, y_edges = np.histogram2d(xs, ys, bins=40)
        grid = axes.pcolormesh(x_edges, y_edges, np.ma.masked_equal(counts.T, 0), cmap="Blues")
        figure.colorbar(grid, ax=axes, label="pairs")
    else:
        axes.scatter(points[0], points[1], s=20 + 30 * sizes, color=CHOSEN, alpha=0.6, label="pairs")
        for x, y, n in zip(points[0], points[1], sizes):
            if n > 1:
                axes.annotate(str(n), (x, y), ha="center", va="center", fontsize=8)
    axes.plot([low, high], [low, high], color="gray", linestyle="--", linewidth=1, label="chosen = rejected")
    axes.legend(loc="lower right", fontsize=8)
    return figure


def gap_histogram(gaps: list[float], bins: int = 20) -> Figure:
    figure, axes = _figure("Reward gap of each pair", "reward gap (chosen - rejected)", "pairs")
    values = np.asarray(gaps, dtype=float)
    distinct = np.unique(values)
    if len(distinct) <= bins:  # few distinct gaps (0/1 rewards): one bar each
        counts = [int((values == d).sum()) for d in distinct]
        axes.bar(distinct, counts, width=_bar_width(distinct), color=NEUTRAL, edgecolor="white")
    else:
        axes.hist(values, bins=bins, color=NEUTRAL, edgecolor="white")
    return figure


def pairs_per_prompt(pairs_of_each_prompt: list[int]) -> Figure:
    figure, axes = _figure("Pairs per prompt", "pairs from one prompt", "prompts")
    keys, counts = np.unique(np.asarray(pairs_of_each_prompt, dtype=int), return_counts=True)
    axes.bar(keys, counts, width=0.8, color=NEUTRAL, edgecolor="white")
    axes.set_xticks(keys)
    return figure


def token_lengths(lengths: list[int], limit: int, bins: int = 30) -> Figure:
    """Tokens per pair (context + the longer answer) with NeMo RL's length limit as a line."""
    figure, axes = _figure("Tokens per pair", "tokens (context + longer answer)", "pairs")
    values = np.asarray(lengths, dtype=float)
    top = max(float(values.max()) if len(values) else 0.0, float(limit))
    axes.hist(values, bins=np.linspace(0, top * 1.02 + 1, bins + 1), color=NEUTRAL, edgecolor="white")
    over = int((values > limit).sum())
    axes.axvline(limit, color=LIMIT, linestyle="--", label=f"max length {limit} ({over} over)")
    axes.legend(loc="upper right", fontsize=8)
    return figure


def training_curves(rows: list[dict], metric: str, title: str, ylabel: str) -> Figure:
    """`train:<metric>` per step as a line, `val:validation-default_<metric>` as points."""
    figure, axes = _figure(title, "step", ylabel)
    train = [(r["step"], r[f"train:{metric}"]) for r in rows if f"train:{metric}" in r]
    val = [(r["step"], r[f"val:validation-default_{metric}"]) for r in rows
           if f"val:validation-default_{metric}" in r]
    if train:
        axes.plot(*zip(*train), color=NEUTRAL, marker=".", label=f"train:{metric}")
    if val:
        axes.plot(*zip(*val), color=CHOSEN, marker="o", linestyle="--", label=f"val:validation-default_{metric}")
    axes.legend(fontsize=8)
    return figure


def rounds_decomposition(rounds: list[int], series: dict[str, tuple[list, list]], chance: float | None) -> Figure:
    """Per round: each measure's value with ± 1 SE bars (`series`: name -> (values, SEs), None
    where a round has none), and the chance level of a letter prior as a line."""
    figure, axes = _figure("Held-out eval per round (± 1 SE over questions)", "round", "share")
    colors = iter([NEUTRAL, "#ef6c00", CHOSEN, LIMIT, "#00838f", "#5d4037", "#9e9d24"])
    for offset, (name, (values, errors)) in zip(np.linspace(-0.08, 0.08, max(len(series), 1)), series.items()):
        points = [(r + offset, v, e or 0.0) for r, v, e in zip(rounds, values, errors) if v is not None]
        if points:
            xs, ys, es = zip(*points)
            axes.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=name, color=next(colors))
    if chance is not None:
        axes.axhline(chance, color=REJECTED, linestyle="--", linewidth=1, label=f"chance ({chance:.2f})")
    axes.set_xticks(rounds)
    drawn = [v for values, _ in series.values() for v in values if v is not None]
    if all(0.0 <= v <= 1.0 for v in drawn):  # shares; a reward on another scale keeps its own range
        axes.set_ylim(0, 1.02)
    _legend(axes)
    return figure


def gain_heatmap(rows: list[str], rounds: list[int], gains: list[list], ses: list[list]) -> Figure:
    """Paired gains over round 0 (`gains[i][j]`: row i, round j; None where there is none), each
    cell coloured by gain / SE (blue up, red down, clipped at 4 SE) and labelled gain ± SE."""
    height = max(2.4, 0.45 * len(rows) + 1.2)
    figure = Figure(figsize=(max(4.8, 1.5 * len(rounds) + 3.2), height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.set_title("Gain over round 0, in standard errors (paired)")
    z = np.full((len(rows), len(rounds)), np.nan)
    for i, (row_gains, row_ses) in enumerate(zip(gains, ses)):
        for j, (gain, se) in enumerate(zip(row_gains, row_ses)):
            if gain is not None:
                z[i, j] = gain / se if se else (0.0 if gain == 0 else np.sign(gain) * 4)
                label = f"{gain:+.3f}" + (f"\n± {se:.3f}" if se else "")
                axes.text(j, i, label, ha="center", va="center", fontsize="small")
    image = axes.imshow(np.ma.masked_invalid(z), cmap="RdBu", vmin=-4, vmax=4, aspect="auto")
    figure.colorbar(image, ax=axes, label="gain / SE")
    axes.set_xticks(range(len(rounds)), [f"round {r}" for r in rounds])
    axes.set_yticks(range(len(rows)), rows)
    return figure


def families_by_round(rounds: list[int], families: dict[str, list]) -> Figure:
    """Accuracy among gradable replies of each task family, per round (None: no gradable reply)."""
    figure, axes = _figure("Accuracy among gradable replies, per task family", "round", "accuracy")
    for name, values in sorted(families.items()):
        points = [(r, v) for r, v in zip(rounds, values) if v is not None]
        if points:
            xs, ys = zip(*points)
            axes.plot(xs, ys, marker="o", label=name)
    axes.set_xticks(rounds)
    axes.set_ylim(0, 1.02)
    _legend(axes, ncol=2)
    return figure


def response_tokens(rounds: list[int], eval_tokens: list, train_tokens: list) -> Figure:
    """Mean response length per round: held-out eval, and the train rollouts each round collected."""
    figure, axes = _figure("Mean response length", "round", "tokens")
    for name, values, color in (("eval", eval_tokens, NEUTRAL), ("train rollouts", train_tokens, "#ef6c00")):
        points = [(r, v) for r, v in zip(rounds, values) if v is not None]
        if points:
            xs, ys = zip(*points)
            axes.plot(xs, ys, marker="o", label=name, color=color)
    axes.set_xticks(rounds)
    axes.set_ylim(bottom=0)
    _legend(axes)
    return figure


def _legend(axes, ncol: int = 1) -> None:
    """A legend when something was drawn (a round with no figure yet draws nothing)."""
    if axes.get_legend_handles_labels()[1]:
        axes.legend(fontsize="small", ncol=ncol)
