"""report.html: every plot is drawn from the run folder's data, with the expected axes and values.

The checks read the data on each matplotlib axis (bar heights, scatter offsets, line points) and
decode each embedded PNG; they never compare pixels.
"""

from __future__ import annotations

import base64
import json
import re
import struct
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from train_helpers import make_prepared, preference_pair

from recipe.errors import RecipeError

pytest.importorskip("matplotlib")
from recipe import report_page  # noqa: E402

LIMIT = 64
ROLLOUT_REWARDS = np.array([0, 0, 0, 0.25, 0.5, 1, 1, 1, 1, 1.0])
PAIR_REWARDS = [(1.0, 0.0), (1.0, 0.0), (1.0, 0.25), (0.5, 0.0), (1.0, 0.0), (1.0, 0.5)]
GROUPS = ["a", "a", "b", "c", "c", "c"]
LENGTHS = [20, 30, 31, 40, 70, 90]
METRICS = [{"step": 0, "val:validation-default_loss": 0.69, "val:validation-default_accuracy": 0.0}] + [
    {"step": s, "train:loss": 0.7 - 0.02 * s, "train:accuracy": min(1.0, 0.1 * s)} for s in range(1, 11)] + [
    {"step": 10, "val:validation-default_loss": 0.4, "val:validation-default_accuracy": 0.75}]


def make_run(root: Path, with_training: bool = True) -> tuple[Path, Path]:
    pairs = []
    for i, ((chosen, rejected), group) in enumerate(zip(PAIR_REWARDS, GROUPS)):
        pair = preference_pair(i)
        pair.update(chosen_reward=chosen, rejected_reward=rejected, reward_gap=chosen - rejected, group_id=group)
        pairs.append(pair)
    data = make_prepared(root / "run" / "data", train=pairs[:4], val=pairs[4:])
    report_page.write_rollout_rewards(data, ROLLOUT_REWARDS)
    run = root / "run"
    if with_training:
        (run / "preflight.json").write_text(json.dumps({
            "tokenizer": "tok", "max_input_seq_length": LIMIT, "warnings": ["a warning"],
            "batches": {"steps": 10, "steps_per_epoch": 1},
            "splits": {"train": {"lengths": LENGTHS[:4]}, "val": {"lengths": LENGTHS[4:]}}}))
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in METRICS))
    return run, data


def by_id(run: Path, data: Path) -> dict:
    return {s.id: s for s in report_page.sections(report_page.gather(run, data))}


def labels(figure) -> tuple[str, str]:
    axes = figure.axes[0]
    return axes.get_xlabel(), axes.get_ylabel()


def test_reward_plots_hold_the_rewards(tmp_path):
    sections = by_id(*make_run(tmp_path))
    rewards = sections["reward_distribution"].figure
    assert labels(rewards) == ("reward", "rollouts")
    bars = sorted((p.get_x() + p.get_width() / 2, p.get_height()) for p in rewards.axes[0].patches)
    assert bars == pytest.approx([(0.0, 3), (0.25, 1), (0.5, 1), (1.0, 5)])

    scatter = sections["chosen_vs_rejected"].figure
    assert labels(scatter) == ("rejected reward", "chosen reward")
    points = Counter((r, c) for c, r in PAIR_REWARDS)
    offsets = [tuple(o) for o in scatter.axes[0].collections[0].get_offsets()]
    assert sorted(offsets) == sorted(points)
    sizes = dict(zip(offsets, scatter.axes[0].collections[0].get_sizes()))
    assert sizes[(0.0, 1.0)] > sizes[(0.25, 1.0)]  # three pairs there, one here

    gaps = sections["gap_histogram"].figure
    assert labels(gaps) == ("reward gap (chosen - rejected)", "pairs")
    heights = {round(p.get_x() + p.get_width() / 2, 6): p.get_height() for p in gaps.axes[0].patches}
    assert heights == Counter(round(c - r, 6) for c, r in PAIR_REWARDS)


def test_continuous_chosen_vs_rejected_rewards_are_binned():
    from recipe import plots

    rng = np.random.default_rng(0)
    rejected = rng.uniform(0, 1, 5000).tolist()
    chosen = [r + g for r, g in zip(rejected, rng.uniform(0.1, 1, 5000))]
    figure = plots.chosen_vs_rejected(chosen, rejected)
    assert labels(figure) == ("rejected reward", "chosen reward")
    bins = figure.axes[0].collections[0]
    assert bins.get_array().sum() == 5000  # every pair counted in some bin
    assert figure.axes[1].get_ylabel() == "pairs"  # the colour bar


def test_pairs_per_prompt_counts_prompts_by_their_number_of_pairs(tmp_path):
    figure = by_id(*make_run(tmp_path))["pairs_per_prompt"].figure
    assert labels(figure) == ("pairs from one prompt", "prompts")
    bars = {round(p.get_x() + p.get_width() / 2): p.get_height() for p in figure.axes[0].patches}
    assert bars == {1: 1, 2: 1, 3: 1}  # groups b (1 pair), a (2), c (3)


def test_token_lengths_have_the_max_length_line(tmp_path):
    figure = by_id(*make_run(tmp_path))["token_lengths"].figure
    axes = figure.axes[0]
    assert labels(figure) == ("tokens (context + longer answer)", "pairs")
    assert sum(p.get_height() for p in axes.patches) == len(LENGTHS)
    line = axes.lines[0]
    assert list(line.get_xdata()) == [LIMIT, LIMIT]
    assert line.get_label() == f"max length {LIMIT} (2 over)"


def test_training_curves_plot_train_lines_and_validation_points(tmp_path):
    sections = by_id(*make_run(tmp_path))
    loss = sections["loss_curve"].figure.axes[0]
    assert (loss.get_xlabel(), loss.get_ylabel()) == ("step", "loss")
    train, val = loss.lines
    assert list(train.get_xdata()) == list(range(1, 11))
    assert list(train.get_ydata()) == pytest.approx([0.7 - 0.02 * s for s in range(1, 11)])
    assert list(val.get_xdata()) == [0, 10] and list(val.get_ydata()) == pytest.approx([0.69, 0.4])
    accuracy = sections["accuracy_curve"].figure.axes[0]
    assert accuracy.get_xlabel() == "step" and accuracy.lines[1].get_label() == "val:validation-default_accuracy"
    assert list(accuracy.lines[0].get_ydata())[-1] == pytest.approx(1.0)


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_the_page_embeds_one_png_per_plot_and_opens_offline(tmp_path):
    run, data = make_run(tmp_path)
    page = report_page.write(run, data).read_text()
    images = dict(re.findall(r"<figure id='plot-([a-z_]+)'><h3>[^<]*</h3><img alt='[^']*' "
                             r"src='data:image/png;base64,([^']+)'>", page))
    assert set(images) == {"reward_distribution", "chosen_vs_rejected", "gap_histogram", "pairs_per_prompt",
                           "token_lengths", "loss_curve", "accuracy_curve"}
    for encoded in images.values():
        width, height = png_size(base64.b64decode(encoded))
        assert width > 100 and height > 100
    assert "http://" not in page and "https://" not in page  # nothing to fetch
    assert "a warning" in page and "train loss: first / last" in page


def test_missing_data_is_named_not_drawn(tmp_path):
    run, data = make_run(tmp_path, with_training=False)
    sections = by_id(run, data)
    assert sections["token_lengths"].figure is None and "stage=preflight" in sections["token_lengths"].missing
    assert sections["loss_curve"].figure is None and "local_cpu" in sections["loss_curve"].missing
    page = report_page.write(run, data).read_text()
    assert page.count("class='missing'") == 3 and page.count("data:image/png") == 4


def test_continuous_rewards_are_binned(tmp_path):
    record = report_page.rollout_rewards_record(np.linspace(-100, 19.4, 500))
    assert "bin_edges" in record and sum(record["counts"]) == 500 and len(record["counts"]) == report_page.MAX_DISTINCT


def test_stage_report_needs_a_run_folder(tmp_path):
    cfg = OmegaConf.create({"run_dir": str(tmp_path / "nothing"),
                            "data": {"output_dir": str(tmp_path / "nothing" / "data")}})
    with pytest.raises(RecipeError, match="nothing to report"):
        report_page.run(cfg)
    run, data = make_run(tmp_path)
    assert report_page.run(OmegaConf.create({"run_dir": str(run), "data": {"output_dir": str(data)}})) == 0
    assert (run / "report.html").is_file()


def test_prepare_hands_the_report_what_the_pair_files_hold(tmp_path, prepare, monkeypatch):
    """The report at the end of prepare plots from memory, in a process of its own; it must
    match the written files."""
    import pickle

    from tests.conftest import rollout, write_jsonl

    handed = tmp_path / "handed.pickle"  # what the report process was given

    def keep(run_dir, data_dir, pairs=None, manifest=None, rollout_rewards=None, target=None):
        handed.write_bytes(pickle.dumps((run_dir, data_dir, pairs, manifest, rollout_rewards)))
        return handed

    monkeypatch.setattr(report_page, "write", keep)
    rows = [rollout(prompt=f"p{t}", answer=f"a{r}", reward=float(r * t), task=t, agent="e")
            for t in range(1, 6) for r in range(3)]
    prepare(write_jsonl(tmp_path / "r.jsonl", rows), "data_prep=all_pairs", "data.val_fraction=0.4")
    run_dir, data_dir, pairs, manifest, rollout_rewards = pickle.loads(handed.read_bytes())
    from_memory = report_page.gather(run_dir, data_dir, pairs, manifest, rollout_rewards)
    from_files = report_page.gather(run_dir, data_dir)
    assert from_memory.pairs == from_files.pairs == 15
    assert from_memory.rollout_rewards == from_files.rollout_rewards
    # the manifest in memory lacks only what is known once the pairs are written (the report
    # draws while they are): the hashes, the times, and what writing them counted
    written, later = from_files.manifest, ("inputs", "outputs", "timestamps", "cut")
    assert {k: v for k, v in from_memory.manifest.items() if k not in later} == \
        {k: v for k, v in written.items() if k not in later}
    assert from_memory.manifest["cut"] == {"refused_candidates": written["cut"]["refused_candidates"]}
    assert sorted(zip(from_memory.chosen, from_memory.rejected)) == sorted(zip(from_files.chosen, from_files.rejected))
    assert sorted(from_memory.gaps) == pytest.approx(sorted(from_files.gaps))
    assert sorted(from_memory.pairs_per_prompt) == sorted(from_files.pairs_per_prompt) == [3] * 5


def test_the_page_shows_the_pairing_report_and_warns_on_length_bias(tmp_path, prepare):
    from tests.conftest import rollout, write_jsonl

    rows = [rollout(prompt=f"p{t}", answer="long answer " * (3 - r), reward=float(2 - r), task=t, agent="e")
            for t in range(4) for r in range(3)]  # the best answer is always the longest
    _, data = prepare(write_jsonl(tmp_path / "r.jsonl", rows), "data.val_fraction=0")
    page = report_page.write(tmp_path / "run", data).read_text()
    pairing = page[page.index("<h2>Pairing</h2>"):]
    assert "same_prompt" in pairing and "4 / 4" in pairing  # prompts with a pair
    assert "length chosen - rejected (characters)" in pairing and "24.0 / 24.0" in pairing
    assert "longer is better" in pairing


def test_the_page_lists_where_the_input_lines_went_as_the_terminal_does(tmp_path, prepare):
    from recipe import report
    from tests.conftest import rollout, write_jsonl

    rows = [rollout(prompt=f"p{t}", answer=f"a{r}", reward=float(r), task=t, agent="e")
            for t in range(3) for r in range(3)] + ["{broken"]
    manifest, data = prepare(write_jsonl(tmp_path / "r.jsonl", rows), "data.val_fraction=0")
    page = report_page.write(tmp_path / "run", data).read_text()
    table = page[page.index("<h2>Data</h2>"):page.index("<h2>Pairing</h2>")]
    cells = re.findall(r"<tr><td>(.*?)</td><td class='n'>(.*?)</td></tr>", table)
    assert cells == [("input lines", "10"), ("in a pair", "6"), ("no pair: not_selected", "3"),
                     ("rejected: malformed_json", "1"), ("train pairs", "3"), ("val pairs", "0")]
    assert cells[:4] == [(outcome, str(n)) for outcome, n in report.outcome_rows(manifest["counts"])]
