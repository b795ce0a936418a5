"""High-reward vs low-reward rollouts of the same group.

NeMo Gym's docs page pairs rollouts of different prompts and keeps the chosen one's prompt; here
both sides always come from one group. Pairs beyond `max_pairs_per_prompt` are sampled under the
group's seed, so the kept ones are a fair draw rather than always the first in the file.
"""

from __future__ import annotations


def select(group, options: dict) -> list[tuple[int, int]]:
    high = [i for i in range(len(group)) if group.scores[i] >= options["high_threshold"]]
    low = [i for i in range(len(group)) if group.scores[i] <= options["low_threshold"]]
    candidates = [(h, l) for h in high for l in low if group.can_pair(h, l, options["min_gap"])]
    cap = options.get("max_pairs_per_prompt")
    if cap is not None and len(candidates) > cap:
        candidates = sorted(group.rng().sample(candidates, cap))
    return candidates
