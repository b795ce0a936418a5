"""High-reward vs low-reward rollouts of the same group.

NeMo Gym's docs page pairs rollouts of different prompts and keeps the chosen one's prompt; here
both sides always come from one group. The thresholds compare the group's rewards after
normalisation (raw rewards with `normalize: none`, 0..1 with `rank`, standard deviations with
`zscore`) and without the length term, which can only veto a pair (the chosen must still score
higher). Pairs beyond `max_pairs_per_prompt` are sampled under the group's seed, so the kept ones
are a fair draw rather than always the first in the file.
"""

from __future__ import annotations

KEEP = "seeded_sample"


def select(group, options: dict) -> list[tuple[int, int]]:
    high = [i for i in range(len(group)) if group.rewards[i] >= options["high_threshold"]]
    low = [i for i in range(len(group)) if group.rewards[i] <= options["low_threshold"]]
    return [(h, lo) for h in high for lo in low if group.can_pair(h, lo, options["min_gap"])]
