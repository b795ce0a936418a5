"""Pairing one bucket of records: the strategy over every group, the cut where it is in doubt,
and the outcome of every usable rollout (in a pair, or why not).

Groups of single-turn outputs pair without reading a line; a group holding longer outputs pairs
under a `cut.Cutter`, which reads the lines of the candidates their records do not settle.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from recipe.prepare import cut, grouping, pairing, writer
from recipe.prepare.lines import LineSource

# why a usable rollout is in no pair: alone in its group, all rewards equal, not the strategy's
# choice, or every pair the strategy tried with it could not be cut (`cut.REFUSALS`)
UNPAIRED = ("no_comparable_rollout", "tie", "not_selected", *cut.REFUSALS)


@dataclass
class Pairing:
    chosen: np.ndarray  # indices into the sorted records
    rejected: np.ndarray
    score_gap: np.ndarray
    unpaired: dict[str, int]  # why usable rollouts ended in no pair
    groups: int
    groups_with_pairs: int
    refused: dict[str, int]  # candidate pairs that could not be cut, by reason
    refused_rollouts: list[tuple[int, int, str]]  # (rollout, its partner, reason): unpaired by a refusal


def pair_records(records: np.ndarray, settings, lines: LineSource | None = None) -> Pairing:
    """Pair one bucket's records (sorted by group). Groups of single-turn outputs pair without
    reading a line; a group holding longer outputs pairs under a `cut.Cutter`, which reads the
    lines (from `lines`) of the candidates their records do not settle."""
    options = pairing.resolve_options(settings.strategy, settings.strategy_options)
    starts = grouping.group_starts(records["key_hi"], records["key_lo"])
    all_scores, all_normalized = pairing.scores(records["reward"], records["length"], options, starts=starts)
    responses = records["response"]
    needs_cut = (np.bitwise_or.reduceat(records["shape"], starts) != 0) if len(starts) else np.zeros(0, bool)
    cutter = None
    if needs_cut.any():
        def output(index: int):
            return lines.output(int(records["file"][index]), int(records["offset"][index]),
                                int(records["nbytes"][index]))
        cutter = cut.Cutter(records["first"], records["shape"], output, settings.scan.binary)
    every_group = pairing.select_groups(settings.strategy)
    if every_group is None:  # group by group
        chosen, rejected = _pair_group_by_group(records, starts, np.arange(len(starts)), all_scores,
                                                all_normalized, options, settings, needs_cut, cutter)
    else:  # the strategy's vectorised form for all groups, group by group where a cut is in doubt
        chosen, rejected = every_group(all_scores, responses, starts, options)
        if cutter is not None:
            # its pair stands wherever the records say it can be cut; elsewhere the group is paired
            # again with the cut asked (where it found none, no candidate of the group can pass)
            group_of = grouping.group_ids(starts, len(records))
            first, shape = records["first"], records["shape"]
            doubt = needs_cut[group_of[chosen]] & ~cut.cuttable_by_records(
                first[chosen], shape[chosen], first[rejected], shape[rejected], settings.scan.binary)
            again_chosen, again_rejected = _pair_group_by_group(
                records, starts, group_of[chosen[doubt]], all_scores, all_normalized, options,
                settings, needs_cut, cutter)
            chosen = np.concatenate([chosen[~doubt], again_chosen])
            rejected = np.concatenate([rejected[~doubt], again_rejected])
            order = np.argsort(group_of[chosen], kind="stable")  # back in group order
            chosen, rejected = chosen[order], rejected[order]
    refused = cutter.refused if cutter is not None else {}
    unpaired, groups, with_pairs, refused_rollouts = _outcomes(all_scores, starts, chosen, rejected, refused)
    with np.errstate(over="ignore"):  # rewards of +-1e308: the gap is infinite (reward_gap null)
        gaps = all_scores[chosen] - all_scores[rejected]
    return Pairing(chosen, rejected, gaps, unpaired, groups, with_pairs, dict(Counter(refused.values())),
                   refused_rollouts)


def _pair_group_by_group(records, starts, groups, all_scores, all_normalized, options, settings,
                         needs_cut, cutter):
    select = pairing.strategy(settings.strategy)
    responses = records["response"]
    ends = np.append(starts[1:], len(records))
    chosen, rejected = [], []
    for g in groups.tolist():
        start, end = int(starts[g]), int(ends[g])
        if end - start == 1:
            continue
        seed = (settings.seed << 64) | int(records["key_hi"][start])
        cuttable = None
        if needs_cut[g]:
            cutter.next_group()
            cuttable = (lambda base: lambda c, r: cutter(base + c, base + r))(start)
        group = pairing.Group(all_scores[start:end], responses[start:end], seed,
                              rewards=all_normalized[start:end], cuttable=cuttable)
        for c, r in select(group, options):
            chosen.append(start + c)
            rejected.append(start + r)
    return np.array(chosen, dtype=np.int64), np.array(rejected, dtype=np.int64)


def _outcomes(scores: np.ndarray, starts: np.ndarray, chosen: np.ndarray, rejected: np.ndarray,
              refused: dict[tuple[int, int], str]):
    """(why usable rollouts ended in no pair, groups, groups with pairs, the rollouts left
    unpaired by a refused cut as (rollout, partner, reason)), for every group at once. A
    rollout in no pair counts under the reason of the first refused pair it was in, if any."""
    unpaired = dict.fromkeys(UNPAIRED, 0)
    if len(starts) == 0:
        return unpaired, 0, 0, []
    n = len(scores)
    sizes = grouping.group_sizes(starts, n)
    used = np.zeros(n, dtype=bool)
    used[chosen] = used[rejected] = True
    left = sizes - np.add.reduceat(used, starts)
    flat = np.maximum.reduceat(scores, starts) == np.minimum.reduceat(scores, starts)
    several = sizes > 1
    unpaired["no_comparable_rollout"] = int((~several).sum())
    unpaired["tie"] = int(left[several & flat].sum())
    unpaired["not_selected"] = int(left[several & ~flat].sum())
    refused_rollouts, seen = [], set()
    for (a, b), reason in refused.items():  # only groups with a gap offer candidates: not ties
        for rollout, partner in ((a, b), (b, a)):
            if not used[rollout] and rollout not in seen:
                seen.add(rollout)
                refused_rollouts.append((rollout, partner, reason))
                unpaired["not_selected"] -= 1
                unpaired[reason] += 1
    return unpaired, len(starts), int((left < sizes).sum()), refused_rollouts


@dataclass
class BucketPairs:
    pairs: np.ndarray  # writer.PAIR rows
    unpaired: dict[str, int]
    groups: int
    groups_with_pairs: int
    paired_lines: int
    refused: dict[str, int]  # candidate pairs that could not be cut, by reason
    rejects: list[tuple[int, int, str, int, int]]  # (file, line, reason, partner's file, line)


def pair_bucket(records: np.ndarray, settings, lines: LineSource | None = None) -> BucketPairs:
    """One bucket's pairs as `writer.PAIR` rows, with the outcome counts of its rollouts."""
    found = pair_records(records, settings, lines)
    pairs = writer.pairs_of(records, found.chosen, found.rejected, found.score_gap)
    paired = int(len(np.unique(np.concatenate([found.chosen, found.rejected]))))
    rejects = [(int(records["file"][i]), int(records["line"][i]), reason,
                int(records["file"][other]), int(records["line"][other]))
               for i, other, reason in found.refused_rollouts]
    return BucketPairs(pairs, found.unpaired, found.groups, found.groups_with_pairs, paired,
                       found.refused, rejects)
