"""`stage=compare_strategies`: one scan, every strategy, one table, no files; each row is what
`stage=prepare` with that strategy reports."""

import random

import pytest

from recipe import cli
from recipe.prepare import compare, pairing
from recipe.prepare.settings import Settings
from tests.conftest import compose_config, rollout, write_jsonl


@pytest.fixture
def rollouts(tmp_path):
    """Three prompts: 24 rollouts with spread rewards and one outlier at the bottom (where the
    strategies differ), 6 binary, a tie (answers of different lengths)."""
    rng = random.Random(0)
    rewards = [round(rng.gauss(0.6, 0.2), 3) for _ in range(23)] + [-2.0]
    rows = [rollout(prompt="big", answer="b" * rng.randint(5, 80), reward=reward, task=0, agent="env")
            for reward in rewards]
    rows += [rollout(prompt="small", answer="s" * (10 + r), reward=float(r % 2), task=1, agent="env") for r in range(6)]
    rows += [rollout(prompt="tie", answer="t" * (r + 1), reward=1.0, task=2, agent="env") for r in range(3)]
    return write_jsonl(tmp_path / "r.jsonl", rows)


def run(path, tmp_path, *overrides):
    cfg = compose_config(f"data.input={path}", f"data.output_dir={tmp_path / 'out'}", "data.workers=1",
                         "stage=compare_strategies", *overrides)
    return cfg, {summary["strategy"]: summary for summary in compare.run(cfg)}


def test_every_strategy_reports_what_prepare_would(tmp_path, rollouts, prepare, capsys):
    _, summaries = run(rollouts, tmp_path)
    assert list(summaries) == list(pairing.STRATEGIES)
    assert not (tmp_path / "out").exists(), "compare_strategies wrote files"
    for name in pairing.STRATEGIES:
        manifest, _ = prepare(rollouts, f"data_prep={name}", out=f"prepare_{name}")
        assert summaries[name] == manifest["pairing"], name
    table = capsys.readouterr().out
    for name in pairing.STRATEGIES:
        assert name in table
    assert "prompts covered" in table and "length bias" in table
    # 24 rollouts: distribution aims at mean - 2 std, above the outlier best-vs-worst takes
    assert summaries["distribution"]["score_gap"]["mean"] < summaries["same_prompt"]["score_gap"]["mean"]
    assert summaries["all_pairs"]["pairs"] == 8 + 8  # capped at 8 in both prompts that have a spread


def test_selected_strategy_runs_as_composed_and_shared_options_carry(tmp_path, rollouts):
    _, base = run(rollouts, tmp_path)
    _, tuned = run(rollouts, tmp_path, "data_prep=all_pairs", "data_prep.max_pairs_per_prompt=1")
    assert tuned["all_pairs"]["pairs"] == 2  # the selected strategy's own override applies
    assert tuned["stratified"] == base["stratified"]  # the others keep their own cap
    _, strict = run(rollouts, tmp_path, "data_prep.min_gap=100")
    assert all(summary["pairs"] == 0 for summary in strict.values())
    _, penalised = run(rollouts, tmp_path, "data_prep.length_penalty=1.0")
    # one character outweighs any reward gap here: every chosen response is the shorter one
    for name in ("same_prompt", "all_pairs", "distribution", "best_vs_subset_worst"):
        assert penalised[name]["length_difference"]["chosen_longer_share"] == 0.0, name
    assert penalised["same_prompt"]["prompts"]["with_pairs"] == 3  # even the tie now pairs by length


def test_the_stage_is_registered():
    assert cli.STAGES["compare_strategies"] == ["recipe.prepare.compare"]


def test_every_strategy_has_a_config_that_composes(tmp_path):
    for name in pairing.STRATEGIES:
        settings = Settings.from_config(compose_config(f"data.input={__file__}", f"data_prep={name}"))
        assert settings.strategy == name
        assert set(pairing.SHARED) <= set(settings.strategy_options)
