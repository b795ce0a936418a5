"""What a strategy made of the input, for the manifest's `pairing` key and `compare_strategies`.

The numbers a user should see before training: how the pairs spread over prompts (Tulu 3 found
more distinct prompts help and more pairs per prompt do not), the gaps the strategy compared,
and the length bias: if chosen responses are mostly the longer ones, DPO learns "longer is
better" whatever the reward meant.
"""

from __future__ import annotations

import numpy as np

from recipe.prepare import grouping, manifest


def pairs_per_group(pairs: np.ndarray) -> np.ndarray:
    """How many pairs each group that has any holds (writer.PAIR rows, each group's pairs
    together, as pairing makes them: no sort needed)."""
    starts = grouping.group_starts(pairs["key_hi"], pairs["key_lo"])
    return grouping.group_sizes(starts, len(pairs))


def summarize(strategy: str, pairs: np.ndarray, groups: int, length_unit: str = "characters",
              covered: np.ndarray | None = None) -> dict:
    """Pairs per prompt group, gap distribution and length difference (chosen - rejected, in
    `length_unit` of the response) of `pairs` (writer.PAIR rows, with their gaps in the
    strategy's score), out of `groups` groups of comparable rollouts. `covered`: the caller's
    `pairs_per_group(pairs)`, when it has it already."""
    covered = pairs_per_group(pairs) if covered is None else covered
    per_group = np.concatenate([covered, np.zeros(groups - len(covered), dtype=np.int64)])
    sizes, counts = np.unique(per_group, return_counts=True)
    difference = pairs["chosen_length"].astype(np.int64) - pairs["rejected_length"].astype(np.int64)
    share = (lambda mask: round(float(mask.mean()), 6)) if len(difference) else (lambda mask: None)
    return {
        "strategy": strategy,
        "pairs": int(len(pairs)),
        "prompts": {"total": int(groups), "with_pairs": int(len(covered))},
        "pairs_per_prompt": {
            "histogram": {str(int(size)): int(count) for size, count in zip(sizes, counts)},
            "mean_where_paired": round(float(covered.mean()), 6) if len(covered) else None,
            "max": int(per_group.max()) if len(per_group) else 0,
        },
        "score_gap": manifest.stats(pairs["score_gap"]),
        "length_unit": length_unit,
        "length_difference": {
            **manifest.stats(difference),
            "chosen_longer_share": share(difference > 0),
            "chosen_shorter_share": share(difference < 0),
        },
    }
