"""Best vs worst of each group (what NeMo Gym's DPO docs page does), one pair per group."""

from __future__ import annotations


def select(group, options: dict) -> list[tuple[int, int]]:
    ranked = group.ranked()
    best = ranked[0]
    for worst in reversed(ranked[1:]):
        if group.responses[worst] != group.responses[best]:
            return [(best, worst)] if group.can_pair(best, worst, options["min_gap"]) else []
    return []
