"""Pairing strategies: one module each, all behind `strategy(name)`.

A strategy sees one group of comparable rollouts (their scores, response hashes and order) and
returns (chosen, rejected) positions. What every strategy shares lives here, so that a strategy
module holds only its own choice:
- the scores it ranks by: rewards normalised per group (`normalize`), minus
  `length_penalty` x length (`scores`);
- the guarantees: a pair is never a tie, never two identical responses, respects `min_gap`
  (`Group.can_pair`), can be cut where its trajectories part (`Group.can_cut`, see `cut.py`),
  and is deterministic under `seed` whatever order the groups come in (`Group.rng`);
- the cap `max_pairs_per_prompt`, applied to what the strategy chose (its `KEEP` says which
  pairs stay: the largest gaps, in that order, or a sample drawn under the group's seed).

When the pair a strategy would pick cannot be cut, it takes its next candidate: the
one-pair-per-prompt strategies walk on to the next rejected response in their own order, and
the cap keeps the next pairs in its order (the next largest gap, the next seeded draw).
"""

from __future__ import annotations

import importlib
import math
import random
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from recipe.prepare import grouping

STRATEGIES = ("same_prompt", "stratified", "all_pairs", "distribution", "best_vs_subset_worst")
NORMALIZATIONS = ("none", "zscore", "rank")
# Options every strategy takes, with the values that leave rewards and pairs as they are.
SHARED = {"min_gap": 0.0, "max_pairs_per_prompt": None, "normalize": "none", "length_penalty": 0.0}


@dataclass(frozen=True)
class Group:
    """One group of comparable rollouts, in input order."""

    scores: np.ndarray  # what the strategy ranks by
    responses: np.ndarray  # response hashes: equal hash = identical text
    seed: int  # per-group seed: the same group pairs the same way in any run
    rewards: np.ndarray | None = None  # normalised rewards, no length term (thresholds); None: scores
    cuttable: Callable[[int, int], bool] | None = None  # None: every pair can be cut (single turns)

    def __post_init__(self):
        if self.rewards is None:
            object.__setattr__(self, "rewards", self.scores)

    def __len__(self) -> int:
        return len(self.scores)

    def rng(self) -> random.Random:
        return random.Random(self.seed)

    def ranked(self) -> list[int]:
        """Positions best first; equal scores keep input order."""
        return sorted(range(len(self.scores)), key=lambda i: -self.scores[i])

    def can_pair(self, chosen: int, rejected: int, min_gap: float) -> bool:
        """A gap that counts, between two different responses (`can_cut` is asked separately:
        it may read the lines, so strategies ask it last, in their own order)."""
        gap = self.scores[chosen] - self.scores[rejected]
        return gap > 0 and gap >= min_gap and self.responses[chosen] != self.responses[rejected]

    def can_cut(self, chosen: int, rejected: int) -> bool:
        return self.cuttable is None or self.cuttable(chosen, rejected)


Select = Callable[[Group, dict], list[tuple[int, int]]]


def _module(name: str):
    if name not in STRATEGIES:
        raise ValueError(f"unknown pairing strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
    return importlib.import_module(f"recipe.prepare.pairing.{name}")


def strategy(name: str) -> Select:
    """The strategy's choice for one group, capped at `max_pairs_per_prompt`."""
    module = _module(name)
    keep = getattr(module, "KEEP", "largest_gaps")

    def select(group: Group, options: dict) -> list[tuple[int, int]]:
        return cap(group, module.select(group, options), options.get("max_pairs_per_prompt"), keep)

    return select


def select_groups(name: str):
    """The strategy's choice for all groups at once, `select_groups(scores, responses, starts,
    options) -> (chosen, rejected)` over records sorted by group, when the strategy has such a
    vectorised form (it must pick exactly what `strategy(name)` picks group by group); else None."""
    return getattr(_module(name), "select_groups", None)


def cap(group: Group, pairs: list[tuple[int, int]], limit: int | None, keep: str):
    """At most `limit` pairs (None: all) of those that can be cut. `largest_gaps`: ordered
    largest gap first, the first ones kept; `seeded_sample`: a sample under the group's seed (a
    fair draw rather than always the first in the file), in input order; a drawn pair that
    cannot be cut gives its place to the next one drawn."""
    if keep == "seeded_sample":
        if limit is None or len(pairs) <= limit:
            return [p for p in pairs if group.can_cut(*p)]
        rng = group.rng()
        drawn = rng.sample(pairs, limit)
        kept = [p for p in drawn if group.can_cut(*p)]
        if len(kept) < limit:
            taken = set(drawn)
            rest = [p for p in pairs if p not in taken]
            rng.shuffle(rest)
            kept += _first_cuttable(group, rest, limit - len(kept))
        return sorted(kept)
    ordered = best_gaps_first(group, pairs) if len(pairs) > 1 else pairs
    return _first_cuttable(group, ordered, limit)


def _first_cuttable(group: Group, pairs: list[tuple[int, int]], limit: int | None) -> list[tuple[int, int]]:
    kept = []
    for pair in pairs:
        if limit is not None and len(kept) >= limit:
            break
        if group.can_cut(*pair):
            kept.append(pair)
    return kept


def best_gaps_first(group: Group, candidates: list[tuple[int, int]]):
    """Largest gap first, then input order."""
    return sorted(candidates, key=lambda p: (-(group.scores[p[0]] - group.scores[p[1]]), p))


def is_number(value) -> bool:
    """A finite int or float (not a bool, not a string): what numeric options accept."""
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def resolve_options(name: str, options: dict) -> dict:
    """The options a strategy runs with: shared defaults filled in, every value checked
    (ValueError says which), so a bad value stops the run before the input is read."""
    module = _module(name)
    resolved = {**SHARED, **options}
    if resolved["normalize"] not in NORMALIZATIONS:
        raise ValueError(f"data_prep.normalize={resolved['normalize']!r}: choose one of "
                         f"{', '.join(NORMALIZATIONS)}")
    for key in ("min_gap", "length_penalty"):
        if not is_number(resolved[key]) or resolved[key] < 0:
            raise ValueError(f"data_prep.{key}={resolved[key]!r}: must be a number >= 0")
    limit = resolved["max_pairs_per_prompt"]
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"data_prep.max_pairs_per_prompt={limit!r}: must be an integer >= 1, or null")
    if hasattr(module, "check"):
        module.check(resolved)
    return resolved


def normalize(rewards: np.ndarray, how: str, starts: np.ndarray | None = None) -> np.ndarray:
    """Rewards on a common scale per group, so that `min_gap` means the same in every
    environment: `zscore` (standard deviations from the group mean) or `rank` (0 for the
    group's lowest, 1 for its highest; equal rewards share their mean rank). Ties stay ties; a
    group whose rewards are all equal gets zeros.

    `starts`: where each group begins in `rewards` (sorted by group; None: one group). All groups
    are done at once, in numpy: per-group calls would cost more than the pairing itself.
    """
    if how == "none":
        return rewards
    n = len(rewards)
    starts = np.zeros(min(n, 1), dtype=np.int64) if starts is None else np.asarray(starts, dtype=np.int64)
    if n == 0:
        return np.zeros(0)
    sizes, group = grouping.group_sizes(starts, n), grouping.group_ids(starts, n)
    flat = (np.maximum.reduceat(rewards, starts) == np.minimum.reduceat(rewards, starts))[group]
    if how == "zscore":  # scale-free: a group of extreme rewards (+-1e308) is scaled first, or sums overflow
        top = np.maximum.reduceat(np.abs(rewards), starts)
        rewards = rewards / np.where(top > 1e150, top, 1.0)[group]
        deviation = rewards - (np.add.reduceat(rewards, starts) / sizes)[group]
        std = np.sqrt(np.add.reduceat(deviation * deviation, starts) / sizes)[group]
        return np.where(flat, 0.0, deviation / np.where(flat, 1.0, std))
    order = np.lexsort((rewards, group))  # groups stay where they are, each sorted by reward
    ordered, ordered_group = rewards[order], group[order]
    run_starts = np.flatnonzero(np.concatenate(([True], (ordered[1:] != ordered[:-1])
                                                | (ordered_group[1:] != ordered_group[:-1]))))
    run_sizes = np.diff(np.append(run_starts, n))
    mean_position = (run_starts + (run_sizes - 1) / 2 - starts[ordered_group[run_starts]])
    ranks = np.empty(n)
    ranks[order] = np.repeat(mean_position, run_sizes) / np.maximum(sizes - 1, 1)[ordered_group]
    return np.where(flat, 0.0, ranks)


def scores(rewards: np.ndarray, lengths: np.ndarray, options: dict,
           starts: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(scores to rank by, normalised rewards) of the groups beginning at `starts`: normalised
    reward minus `length_penalty` x length, the counter to responses that grow longer every
    iteration. With the defaults the scores are the rewards themselves, at no cost."""
    normalized = normalize(rewards, options["normalize"], starts)
    penalty = options["length_penalty"]
    return (normalized - penalty * lengths.astype(np.float64) if penalty else normalized), normalized
