"""Best vs worst of each group (what NeMo Gym's DPO docs page does), one pair per group."""

from __future__ import annotations

import numpy as np

from recipe.prepare import grouping


def select(group, options: dict) -> list[tuple[int, int]]:
    ranked = group.ranked()
    return worst_that_pairs(group, ranked[0], reversed(ranked[1:]), options["min_gap"])


def worst_that_pairs(group, best: int, lowest_first, min_gap: float) -> list[tuple[int, int]]:
    """[(best, the first of `lowest_first` that pairs with it)], or []: responses equal to the
    best's are passed over, and so is a pair that cannot be cut; once the gap is too small, every
    later (higher) candidate's is too."""
    for worst in lowest_first:
        if group.responses[worst] == group.responses[best]:
            continue
        if not group.can_pair(best, worst, min_gap):
            return []
        if group.can_cut(best, worst):
            return [(best, worst)]
    return []


def select_groups(scores: np.ndarray, responses: np.ndarray, starts: np.ndarray,
                  options: dict) -> tuple[np.ndarray, np.ndarray]:
    """`select` for every group at once, for groups whose pairs all can be cut (single-turn
    outputs): the best is the first top score in input order; the worst, the lowest score whose
    response differs from the best's, the latest in input order among equal scores (the order
    `select` tries them in). One pair at most: no cap applies."""
    n = len(scores)
    if n == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    position = np.arange(n)
    group = grouping.group_ids(starts, n)
    top = np.maximum.reduceat(scores, starts)
    best = np.minimum.reduceat(np.where(scores == top[group], position, n), starts)
    candidate = responses != responses[best][group]
    low = np.minimum.reduceat(np.where(candidate, scores, np.inf), starts)
    worst = np.maximum.reduceat(np.where(candidate & (scores == low[group]), position, -1), starts)
    found = worst >= 0
    with np.errstate(over="ignore"):  # rewards of +-1e308: an infinite gap still pairs
        gap = np.where(found, scores[best] - scores[np.maximum(worst, 0)], 0.0)
    keep = found & (gap > 0) & (gap >= options["min_gap"])
    return best[keep].astype(np.int64), worst[keep].astype(np.int64)
