"""The pairing report: pairs per prompt, gap distribution, length bias; in the manifest."""

import numpy as np

from recipe.prepare import writer
from recipe.prepare.pairing import report
from tests.conftest import records_of, rollout, write_jsonl


def records(groups: list[list[int]]) -> np.ndarray:
    """Sorted records, one group per list of response lengths (rewards do not matter here)."""
    rows, line = [], 0
    for key, lengths in enumerate(groups, start=1):
        for length in lengths:
            line += 1
            rows.append(dict(key_hi=key, key_lo=key, context=key, response=line, first=line, length=length,
                             nbytes=10, line=line))
    return records_of(rows)


def test_pairs_per_prompt_gaps_and_length_difference_by_hand():
    recs = records([[100, 90, 120], [50, 50], [10, 40], [7]])  # positions 0-2, 3-4, 5-6, 7
    chosen, rejected = np.array([0, 2, 3, 5]), np.array([1, 1, 4, 6])  # group 1 twice, 2 and 3 once
    pairs = writer.pairs_of(recs, chosen, rejected, np.array([1.0, 0.5, 0.75, 0.25]))
    summary = report.summarize("all_pairs", pairs, groups=4)
    assert summary["strategy"] == "all_pairs" and summary["pairs"] == 4
    assert summary["prompts"] == {"total": 4, "with_pairs": 3}
    assert summary["pairs_per_prompt"] == {"histogram": {"0": 1, "1": 2, "2": 1},
                                           "mean_where_paired": round(4 / 3, 6), "max": 2}
    assert summary["score_gap"]["mean"] == 0.625 and summary["score_gap"]["median"] == 0.625
    # chosen - rejected: 100 - 90 = +10, 120 - 90 = +30, 50 - 50 = 0, 10 - 40 = -30
    length = summary["length_difference"]
    assert (length["mean"], length["median"], length["min"], length["max"]) == (2.5, 5.0, -30.0, 30.0)
    assert (length["chosen_longer_share"], length["chosen_shorter_share"]) == (0.5, 0.25)


def test_no_pairs_is_a_report_too():
    empty = np.array([], dtype=np.int64)
    summary = report.summarize("same_prompt", writer.pairs_of(records([[5], [7]]), empty, empty, np.array([])),
                               groups=2)
    assert summary["pairs"] == 0 and summary["prompts"] == {"total": 2, "with_pairs": 0}
    assert summary["pairs_per_prompt"] == {"histogram": {"0": 2}, "mean_where_paired": None, "max": 0}
    assert summary["length_difference"] == {"count": 0, "chosen_longer_share": None, "chosen_shorter_share": None}


def test_the_manifest_carries_the_pairing_report(tmp_path, prepare):
    rows = [rollout(prompt="a", answer="a short one", reward=1.0),
            rollout(prompt="a", answer="a much longer one", reward=0.0),
            rollout(prompt="a", answer="mid length", reward=0.5), rollout(prompt="alone", answer="x", reward=1.0)]
    manifest, _ = prepare(write_jsonl(tmp_path / "r.jsonl", rows), "data_prep=all_pairs", "data.val_fraction=0")
    pairing = manifest["pairing"]
    assert pairing["strategy"] == "all_pairs" and pairing["pairs"] == 3
    assert pairing["prompts"] == {"total": 2, "with_pairs": 1}
    assert pairing["pairs_per_prompt"]["histogram"] == {"0": 1, "3": 1}
    # pairs: (short 11, longer 17) -6, (short 11, mid 10) +1, (mid 10, longer 17) -7
    assert pairing["length_difference"]["median"] == -6.0
    assert pairing["length_difference"]["chosen_longer_share"] == round(1 / 3, 6)
    assert pairing["score_gap"]["mean"] == round((1.0 + 0.5 + 0.5) / 3, 6)
