"""The shared pairing path: per-group normalisation, length penalty, option checks, and where
they meet the records in `pair_records`."""

from types import SimpleNamespace

import numpy as np
import pytest

from recipe.errors import RecipeError
from recipe.prepare import pairing
from recipe.prepare.pairing import engine
from recipe.prepare.settings import Settings
from tests.conftest import compose_config, read_jsonl, records_of, rollout, write_jsonl


def options(**overrides):
    return pairing.resolve_options("same_prompt", overrides)


def records(groups: list[list[tuple[float, int]]]) -> np.ndarray:
    """Sorted records: one group per list of (reward, length); responses all differ."""
    rows, line = [], 0
    for key, group in enumerate(groups, start=1):
        for reward, length in group:
            line += 1
            rows.append(dict(key_hi=key, key_lo=key, context=key, response=line, first=line, reward=reward,
                             length=length, nbytes=10, line=line))
    return records_of(rows)


def settings(strategy="same_prompt", seed=42, **strategy_options):
    return SimpleNamespace(strategy=strategy, strategy_options=strategy_options, seed=seed)


def test_zscore_is_in_standard_deviations_from_the_group_mean():
    # mean 2.5, population std sqrt((2.25 + 0.25 + 0.25 + 2.25) / 4) = sqrt(1.25)
    z = pairing.normalize(np.array([1.0, 2.0, 3.0, 4.0]), "zscore")
    np.testing.assert_allclose(z, [-1.5 / 1.25 ** 0.5, -0.5 / 1.25 ** 0.5, 0.5 / 1.25 ** 0.5, 1.5 / 1.25 ** 0.5])


def test_rank_spans_zero_to_one_and_ties_share_their_mean_rank():
    # sorted: 0 (position 0), 10 (1), 30 and 30 (2 and 3: both 2.5); divided by n - 1 = 3
    ranks = pairing.normalize(np.array([10.0, 30.0, 30.0, 0.0]), "rank")
    np.testing.assert_allclose(ranks, [1 / 3, 2.5 / 3, 2.5 / 3, 0.0])


@pytest.mark.parametrize("how", ["zscore", "rank"])
def test_a_group_with_zero_spread_normalises_to_zeros_not_nan(how):
    for rewards in ([0.1, 0.1, 0.1], [7.0]):  # 0.1 x 3 has a float-noise std, not exactly 0
        result = pairing.normalize(np.array(rewards), how)
        assert result.tolist() == [0.0] * len(rewards)


def test_groups_are_normalised_each_on_its_own_in_one_call():
    rewards = np.array([1.0, 3.0, 5.0, 5.0, 2.0, 4.0, 4.0, 9.0])
    starts = [0, 2, 4, 7]  # groups [1, 3], [5, 5], [2, 4, 4], [9]
    np.testing.assert_allclose(pairing.normalize(rewards, "zscore", starts),
                               [-1, 1, 0, 0, -2 / 2 ** 0.5, 1 / 2 ** 0.5, 1 / 2 ** 0.5, 0])
    # [2, 4, 4]: 2 at position 0, the 4s share (1 + 2) / 2 = 1.5; divided by n - 1 = 2
    np.testing.assert_allclose(pairing.normalize(rewards, "rank", starts), [0, 1, 0, 0, 0, 0.75, 0.75, 0])


def test_none_leaves_rewards_as_they_are():
    rewards = np.array([3.0, -100.0, 19.4])
    assert pairing.normalize(rewards, "none") is rewards


def test_scores_subtract_the_length_penalty_from_the_normalised_reward():
    rewards, lengths = np.array([1.0, 0.9, 0.0]), np.array([1000, 100, 50], dtype=np.uint32)
    scores, normalized = pairing.scores(rewards, lengths, options(length_penalty=0.001))
    np.testing.assert_allclose(scores, [0.0, 0.8, -0.05])
    np.testing.assert_allclose(normalized, rewards)
    scores, normalized = pairing.scores(rewards, lengths, options(normalize="rank", length_penalty=0.001))
    np.testing.assert_allclose(normalized, [1.0, 0.5, 0.0])
    np.testing.assert_allclose(scores, [0.0, 0.4, -0.05])


def test_length_penalty_flips_the_chosen_response():
    # rewards 1.0 (1000 chars) and 0.9 (100 chars); with lambda 0.001 the scores are 0.0 and 0.8
    recs = records([[(1.0, 1000), (0.9, 100)]])
    plain = engine.pair_records(recs, settings())
    assert (recs["reward"][plain.chosen].tolist(), recs["reward"][plain.rejected].tolist()) == ([1.0], [0.9])
    penalised = engine.pair_records(recs, settings(length_penalty=0.001))
    assert (recs["reward"][penalised.chosen].tolist(), recs["reward"][penalised.rejected].tolist()) == ([0.9], [1.0])
    np.testing.assert_allclose(penalised.score_gap, [0.8])


def test_length_penalty_flips_the_chosen_text_end_to_end(tmp_path, prepare):
    rows = [rollout(prompt="q", answer="x" * 1000, reward=1.0), rollout(prompt="q", answer="short", reward=0.9)]
    path = write_jsonl(tmp_path / "r.jsonl", rows)
    _, out = prepare(path, "data.val_fraction=0", "data_prep.length_penalty=0.001", "data.keep_extra_fields=false")
    (pair,) = read_jsonl(out / "train.jsonl")
    assert pair["completions"][0]["completion"][0]["content"] == "short"
    assert pair["completions"][1]["completion"][0]["content"] == "x" * 1000


def test_normalisation_makes_min_gap_mean_the_same_across_reward_scales():
    recs = records([[(1.0, 5), (0.0, 5)], [(100.0, 5), (0.0, 5)]])  # two environments, two scales
    raw = engine.pair_records(recs, settings(min_gap=2.0))
    assert recs["reward"][raw.chosen].tolist() == [100.0]  # only the large scale reaches 2.0
    z = engine.pair_records(recs, settings(min_gap=2.0, normalize="zscore"))  # both are +1 vs -1
    assert sorted(recs["reward"][z.chosen].tolist()) == [1.0, 100.0]
    np.testing.assert_allclose(z.score_gap, [2.0, 2.0])
    rank = engine.pair_records(recs, settings(min_gap=1.0, normalize="rank"))
    np.testing.assert_allclose(rank.score_gap, [1.0, 1.0])


def test_a_zero_spread_group_is_counted_as_a_tie_under_every_normalisation():
    recs = records([[(0.5, 5), (0.5, 6), (0.5, 7)]])
    for how in ("none", "zscore", "rank"):
        result = engine.pair_records(recs, settings(normalize=how))
        assert len(result.chosen) == 0 and result.unpaired["tie"] == 3


def test_stratified_thresholds_see_normalised_rewards_without_the_length_term():
    recs = records([[(50.0, 500), (40.0, 10), (-3.0, 10)]])
    thresholds = {"high_threshold": 0.9, "low_threshold": 0.1}
    raw = engine.pair_records(recs, settings("stratified", **thresholds))
    assert sorted(recs["reward"][raw.chosen].tolist()) == [40.0, 50.0]  # both raw rewards >= 0.9
    # rank-normalised rewards are 1.0, 0.5, 0.0: only the top is high. Its score, 1.0 - 0.001 x 500
    # = 0.5, is under the threshold: the thresholds must not see the length term.
    ranked = engine.pair_records(recs, settings("stratified", normalize="rank", length_penalty=0.001, **thresholds))
    assert (recs["reward"][ranked.chosen].tolist(), recs["reward"][ranked.rejected].tolist()) == ([50.0], [-3.0])
    np.testing.assert_allclose(ranked.score_gap, [0.5 - (-0.01)])


@pytest.mark.parametrize("override, message", [
    ({"normalize": "minmax"}, "normalize"),
    ({"min_gap": -0.1}, "min_gap"),
    ({"length_penalty": float("nan")}, "length_penalty"),
    ({"length_penalty": "0.1"}, "length_penalty"),
    ({"max_pairs_per_prompt": 0}, "max_pairs_per_prompt"),
    ({"max_pairs_per_prompt": 2.5}, "max_pairs_per_prompt"),
])
def test_bad_shared_options_are_refused(override, message):
    with pytest.raises(ValueError, match=message):
        options(**override)


@pytest.mark.parametrize("strategy, override, message", [
    ("distribution", "data_prep.k=-1", "data_prep.k"),
    ("distribution", "data_prep.min_samples=1", "min_samples"),
    ("best_vs_subset_worst", "data_prep.subset_size=0", "subset_size"),
    ("all_pairs", "data_prep.normalize=z", "normalize"),
])
def test_bad_options_stop_the_run_before_reading(strategy, override, message):
    cfg = compose_config("data.input=/nonexistent.jsonl", f"data_prep={strategy}", override)
    with pytest.raises(RecipeError, match=message):
        Settings.from_config(cfg)


def test_shared_defaults_fill_options_missing_from_an_older_config():
    assert pairing.resolve_options("all_pairs", {"min_gap": 0.1}) == {
        "min_gap": 0.1, "max_pairs_per_prompt": None, "normalize": "none", "length_penalty": 0.0}
