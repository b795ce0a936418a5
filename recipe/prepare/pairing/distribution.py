"""Best vs the response nearest `mean - k x std` of the group's scores (Xiao et al., ACL 2025,
arXiv 2502.16825).

With many samples per prompt the minimum is an extreme of the tail, and best-vs-worst got worse
as samples grew; a rejected response near mean - 2 std beat the minimum by about 3 points of
length-controlled AlpacaEval win rate. Below `min_samples` rollouts the mean and the spread are
too noisy to aim at (and the minimum of a few samples sits above mean - 2 std anyway), so the
pair falls back to best vs lowest, exactly as `same_prompt` makes it.
"""

from __future__ import annotations

from recipe.prepare.pairing import is_number


def check(options: dict) -> None:
    k, min_samples = options["k"], options["min_samples"]
    if not is_number(k) or k < 0:
        raise ValueError(f"data_prep.k={k!r}: must be a number >= 0")
    if isinstance(min_samples, bool) or not isinstance(min_samples, int) or min_samples < 2:
        raise ValueError(f"data_prep.min_samples={min_samples!r}: must be an integer >= 2")


def select(group, options: dict) -> list[tuple[int, int]]:
    ranked = group.ranked()
    best = ranked[0]
    # lowest first, as same_prompt walks them: on equal distance the lower score wins
    candidates = [i for i in reversed(ranked[1:]) if group.can_pair(best, i, options["min_gap"])]
    if len(group) >= options["min_samples"]:
        target = group.scores.mean() - options["k"] * group.scores.std()
        candidates.sort(key=lambda i: abs(group.scores[i] - target))  # stable: ties stay lowest first
    for worst in candidates:  # the nearest that can be cut
        if group.can_cut(best, worst):
            return [(best, worst)]
    return []
