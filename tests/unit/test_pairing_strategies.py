"""Pairing strategies: hand-computed choices of the new ones, the shared cap and `min_gap` on every
strategy, and the guarantees all of them keep (no ties, no identical texts, deterministic)."""

import random

import numpy as np
import pytest

from recipe.prepare import pairing
from recipe.prepare.pairing import best_vs_subset_worst
from tests.conftest import read_jsonl, rollout, write_jsonl

DEFAULTS = {  # the strategy-specific options of configs/data_prep/*.yaml
    "same_prompt": {},
    "stratified": {"high_threshold": 0.7, "low_threshold": 0.3},
    "all_pairs": {},
    "distribution": {"k": 2.0, "min_samples": 20},
    "best_vs_subset_worst": {"subset_size": 5},
}
ONE_PAIR = ("same_prompt", "distribution", "best_vs_subset_worst")


def group(scores, responses=None, seed=7):
    scores = np.array(scores, dtype=np.float64)
    responses = np.arange(len(scores), dtype=np.uint64) if responses is None else np.array(responses, dtype=np.uint64)
    return pairing.Group(scores, responses, seed)


def pick(name, g, **overrides):
    options = pairing.resolve_options(name, {**DEFAULTS[name], **overrides})
    return pairing.strategy(name)(g, options)


# -- distribution ----------------------------------------------------------------------------------
# scores 8, 6, 4, 4, 2, 0: mean 4, population std sqrt(40 / 6) = 2.582
SPREAD = [8.0, 6.0, 4.0, 4.0, 2.0, 0.0]


@pytest.mark.parametrize("k, rejected", [
    (0.5, 4),  # target 4 - 1.291 = 2.709: 2 is 0.709 away, 4 is 1.291 away
    (1.0, 4),  # target 1.418: 2 is 0.582 away, 0 is 1.418 away
    (2.0, 5),  # target -1.164: 0 is the closest
])
def test_distribution_rejects_the_response_nearest_mean_minus_k_std(k, rejected):
    assert pick("distribution", group(SPREAD), k=k, min_samples=2) == [(0, rejected)]


def test_distribution_falls_back_to_the_lowest_below_min_samples():
    assert pick("distribution", group(SPREAD), k=1.0, min_samples=7) == [(0, 5)]  # 6 rollouts < 7
    assert pick("distribution", group(SPREAD), k=1.0, min_samples=6) == [(0, 4)]  # 6 rollouts reach 6


def test_distribution_on_equal_distance_takes_the_lower_score():
    # k = 0 aims at the mean, 2: the 3 and the 1 are both 1 away
    assert pick("distribution", group([4.0, 3.0, 1.0, 0.0]), k=0.0, min_samples=2) == [(0, 2)]


def test_distribution_skips_a_response_identical_to_the_chosen_one():
    # the nearest to 1.418 (position 4) has the chosen one's text: the next nearest, 0, is taken
    g = group(SPREAD, responses=[9, 1, 2, 3, 9, 5])
    assert pick("distribution", g, k=1.0, min_samples=2) == [(0, 5)]


def test_distribution_honours_min_gap_by_moving_down():
    # k = 0.5 aims at 2.709; the 4s are nearest but their gap, 4, is under min_gap 5: the 2 (gap 6)
    assert pick("distribution", group(SPREAD), k=0.5, min_samples=2, min_gap=5.0) == [(0, 4)]
    assert pick("distribution", group(SPREAD), k=0.5, min_samples=2, min_gap=6.5) == [(0, 5)]
    assert pick("distribution", group(SPREAD), k=0.5, min_samples=2, min_gap=8.5) == []


# -- best_vs_subset_worst ------------------------------------------------------------------------
def test_subset_is_drawn_under_the_group_seed():
    g = group([5.0, 4.0, 3.0, 2.0, 1.0, 0.0], seed=14)
    drawn = best_vs_subset_worst.subset(g, 3)
    assert drawn == {0, 1, 4}  # random.Random(14).sample(range(6), 3), fixed by Python's generator
    assert all(best_vs_subset_worst.subset(group(g.scores, seed=14), 3) == drawn for _ in range(3))
    others = {frozenset(best_vs_subset_worst.subset(group(g.scores, seed=s), 3)) for s in range(20)}
    assert len(others) > 5  # another group key is another seed, hence (mostly) another subset


def test_best_vs_subset_worst_rejects_the_worst_of_the_subset():
    # subset {0, 1, 4}. It holds the best (0): the worst of the others in it is 4 (score 1)
    g = group([5.0, 4.0, 3.0, 2.0, 1.0, 0.0], seed=14)
    assert pick("best_vs_subset_worst", g, subset_size=3) == [(0, 4)]
    g = group([0.0, 1.0, 2.0, 3.0, 4.0, 5.0], seed=14)  # same subset; the best, 5, is outside it
    assert pick("best_vs_subset_worst", g, subset_size=3) == [(5, 0)]


def test_best_vs_subset_worst_subset_ignores_the_scores():
    # same seed and size, other scores (another normalisation or length penalty): same subset
    assert best_vs_subset_worst.subset(group([1.0] * 6, seed=14), 3) == {0, 1, 4}


def test_best_vs_subset_worst_is_best_vs_worst_when_the_subset_holds_everyone():
    g = group([0.5, 1.0, 0.0, 0.25])
    assert pick("best_vs_subset_worst", g, subset_size=4) == pick("same_prompt", g) == [(1, 2)]


def test_subsets_differ_between_groups_and_seeds_and_repeat_in_a_rerun(tmp_path, prepare):
    """Six groups with the same rewards in the same order: one seed per group key and run seed."""
    rows = []
    for task in range(6):
        rows += [rollout(prompt="q", answer=f"t{task} r{r}", reward=float(r), task=task, agent="env")
                 for r in range(8)]
    path = write_jsonl(tmp_path / "r.jsonl", rows)

    def rejected_by_group(*overrides, out):
        _, folder = prepare(path, "data_prep=best_vs_subset_worst", "data_prep.subset_size=2",
                            "data.val_fraction=0", *overrides, out=out)
        pairs = read_jsonl(folder / "train.jsonl")
        assert [p["chosen_reward"] for p in pairs] == [7.0] * 6
        return {p["completions"][1]["completion"][0]["content"].split()[0]: p["rejected_reward"] for p in pairs}

    first = rejected_by_group(out="first")
    assert rejected_by_group(out="again") == first
    assert len(set(first.values())) > 1, "every group drew the same subset"
    assert rejected_by_group("seed=5", out="other") != first


# -- max_pairs_per_prompt and min_gap on every strategy -----------------------------------------
# rewards 1, 1, 0.5, 0, 0 (texts all differ)
FIVE = [1.0, 1.0, 0.5, 0.0, 0.0]


@pytest.mark.parametrize("name, uncapped, capped", [
    ("all_pairs", 8, [(0, 3), (0, 4)]),  # the largest gaps (1.0) first, then input order
    ("stratified", 4, None),  # a sample drawn under the seed: checked below
])
def test_cap_on_multi_pair_strategies(name, uncapped, capped):
    g = group(FIVE)
    assert len(pick(name, g)) == uncapped
    two = pick(name, g, max_pairs_per_prompt=2)
    assert len(two) == 2 and set(two) <= set(pick(name, g))
    if capped is not None:
        assert two == capped
    else:  # stratified: (0,3) (0,4) (1,3) (1,4) -> a seeded sample, sorted
        assert two == sorted(random.Random(7).sample([(0, 3), (0, 4), (1, 3), (1, 4)], 2))
        assert pick(name, group(FIVE, seed=8), max_pairs_per_prompt=2) != two


@pytest.mark.parametrize("name", ONE_PAIR)
def test_cap_on_one_pair_strategies(name):
    assert pick(name, group(FIVE), max_pairs_per_prompt=1) == pick(name, group(FIVE)) == [(0, 4)]


@pytest.mark.parametrize("name, at_half", [
    ("same_prompt", [(0, 4)]),
    ("stratified", [(0, 3), (0, 4), (1, 3), (1, 4)]),
    ("all_pairs", [(0, 3), (0, 4), (1, 3), (1, 4), (0, 2), (1, 2), (2, 3), (2, 4)]),
    ("distribution", [(0, 4)]),
    ("best_vs_subset_worst", [(0, 4)]),
])
def test_min_gap_on_every_strategy(name, at_half):
    g = group(FIVE)
    assert pick(name, g, min_gap=0.5) == at_half  # a gap of exactly min_gap is enough
    above = [p for p in at_half if g.scores[p[0]] - g.scores[p[1]] >= 0.75]
    assert pick(name, g, min_gap=0.75) == above
    assert pick(name, g, min_gap=1.01) == []


# -- guarantees of every strategy ----------------------------------------------------------------
def random_groups(count=300, seed=0):
    rng = random.Random(seed)
    for _ in range(count):
        n = rng.randint(2, 30)
        scores = [rng.choice([0.0, 0.25, 0.5, 1.0, rng.random()]) for _ in range(n)]
        responses = [rng.randrange(max(2, n // 2)) for _ in range(n)]  # some identical texts
        yield group(scores, responses, seed=rng.getrandbits(64))


@pytest.mark.parametrize("name", pairing.STRATEGIES)
@pytest.mark.parametrize("overrides", [{}, {"min_gap": 0.3, "max_pairs_per_prompt": 3},
                                       {"min_samples": 2, "subset_size": 2, "k": 1.0}])
def test_guarantees_of_every_strategy(name, overrides):
    known = {k: v for k, v in overrides.items() if k in pairing.SHARED or k in DEFAULTS[name]}
    options = pairing.resolve_options(name, {**DEFAULTS[name], **known})
    select = pairing.strategy(name)
    paired_groups = 0
    for g in random_groups():
        pairs = select(g, options)
        paired_groups += bool(pairs)
        assert pairs == select(pairing.Group(g.scores.copy(), g.responses.copy(), g.seed), options)
        assert len(set(pairs)) == len(pairs)
        if options["max_pairs_per_prompt"] is not None:
            assert len(pairs) <= options["max_pairs_per_prompt"]
        if name in ONE_PAIR:
            assert len(pairs) <= 1
        for chosen, rejected in pairs:
            gap = g.scores[chosen] - g.scores[rejected]
            assert gap > 0 and gap >= options["min_gap"], "a tie or a gap under min_gap"
            assert g.responses[chosen] != g.responses[rejected], "two identical texts"
            if name != "stratified":  # stratified's chosen is any high one, not only the best
                assert name == "all_pairs" or g.scores[chosen] == g.scores.max()
    assert paired_groups > 100  # the checks above ran on real pairs


@pytest.mark.parametrize("name", pairing.STRATEGIES)
def test_every_strategy_pairs_the_same_whatever_order_the_groups_come_in(tmp_path, prepare, name):
    """Groups interleaved two ways (a group's own rollouts keep their order: among equal scores
    the first in the input wins)."""
    rng = random.Random(3)
    tasks = [[rollout(prompt=f"q{t}", answer=f"a{t}.{r}", reward=rng.choice([0.0, 0.25, 0.5, 1.0]), task=t,
                      agent="env") for r in range(rng.randint(2, 25))] for t in range(6)]
    rows = [row for task in tasks for row in task]
    queues = [list(task) for task in tasks]
    shuffled = []
    while any(queues):
        shuffled.append(rng.choice([q for q in queues if q]).pop(0))
    assert shuffled != rows

    def pairs(path, out):
        _, folder = prepare(path, f"data_prep={name}", "data.val_fraction=0", out=out)
        return sorted((p["completions"][0]["completion"][0]["content"], p["completions"][1]["completion"][0]["content"])
                      for p in read_jsonl(folder / "train.jsonl"))

    first = pairs(write_jsonl(tmp_path / "a.jsonl", rows), "a")
    assert first and first == pairs(write_jsonl(tmp_path / "b.jsonl", shuffled), "b")


# -- vectorised forms ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", [n for n in pairing.STRATEGIES if pairing.select_groups(n)])
@pytest.mark.parametrize("min_gap", [0.0, 0.5, 2.0])
def test_vectorised_form_picks_what_the_group_by_group_form_picks(name, min_gap):
    """Many random groups with ties and repeated responses: the same pairs, in the same order."""
    rng = np.random.default_rng(11)
    sizes = rng.integers(1, 8, size=3000)
    starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    scores = rng.integers(0, 6, size=sizes.sum()).astype(np.float64) * 0.5
    responses = rng.integers(0, 3, size=sizes.sum()).astype(np.uint64)
    options = pairing.resolve_options(name, {**DEFAULTS[name], "min_gap": min_gap})
    expected = [(start + c, start + r) for start, size in zip(starts, sizes)
                for c, r in pairing.strategy(name)(
                    pairing.Group(scores[start:start + size], responses[start:start + size], 0), options)]
    chosen, rejected = pairing.select_groups(name)(scores, responses, starts, options)
    assert list(zip(chosen.tolist(), rejected.tolist())) == expected
    assert len(expected) > 100
