"""recipe.iterate.evaluation: reward = format (gradable rate) x skill (accuracy among gradable
replies), their standard errors over questions, paired gains, families, letter bias; on
constructed rows (exact values) and on real NeMo Gym rows (tests/data/iterate: the mcqa and
math_with_judge servers' own verify responses, with the bundled tasks they ran)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from recipe.iterate import evaluation

DATA = Path(__file__).resolve().parents[1] / "data" / "iterate"


def row(task: int, reward: float, extracted, text: str = "Answer: A", tokens: int = 5, expected="A") -> dict:
    out = {"_ng_task_index": task, "reward": reward, "expected_answer": expected,
           "response": {"output": [{"type": "message", "role": "assistant",
                                    "content": [{"type": "output_text", "text": text}]}],
                        "usage": {"output_tokens": tokens}}}
    if extracted is not ...:
        out["extracted_answer"] = extracted
    return out


def task(family: str = "f", options: int | None = 4, question_id: str | None = None) -> dict:
    meta = {"family": family} | ({"question_id": question_id} if question_id else {})
    return {"metadata": meta} | ({"options": [{"ABCD"[i]: str(i)} for i in range(options)]} if options else {})


# -- what counts as gradable --------------------------------------------------------------------
def test_gradable_is_what_the_verifier_extracted():
    tasks = [task()]
    assert evaluation.reply_of(row(0, 1.0, "A"), tasks[0]).gradable is True
    assert evaluation.reply_of(row(0, 0.0, None), tasks[0]).gradable is False       # mcqa: no letter found
    assert evaluation.reply_of(row(0, 0.0, "  "), tasks[0]).gradable is False       # nothing extracted
    bare = row(0, 1.0, "A", text="A")                                                # the bare answer counts
    assert evaluation.reply_of(bare, tasks[0]).gradable is True
    assert evaluation.reply_of(row(0, 1.0, ...), tasks[0]).gradable is None         # the server says nothing
    assert evaluation.reply_of({"reward": None, "_ng_task_index": 0}, tasks[0]) is None
    assert evaluation.reply_of({"reward": True, "_ng_task_index": 0}, tasks[0]) is None


def test_rotations_of_one_question_are_one_cluster():
    tasks = [task(question_id="q1"), task(question_id="q1"), task()]
    items = evaluation.replies([row(0, 1.0, "A"), row(1, 0.0, "B"), row(2, 1.0, "A")], tasks)
    assert [r.task for r in items] == ["q:q1", "q:q1", 2]
    assert evaluation.decompose(items)["tasks"] == 2


# -- one round's figures ------------------------------------------------------------------------
def test_reward_is_gradable_rate_times_accuracy_with_cluster_standard_errors():
    tasks = [task(), task(), task()]
    rows = [row(0, 1.0, "A"), row(0, 0.0, None),       # task 0: one right, one unformatted
            row(1, 0.0, "B"), row(1, 1.0, "A"),        # task 1: one wrong, one right
            row(2, 0.0, None), row(2, 0.0, None)]      # task 2: nothing gradable
    out = evaluation.decompose(evaluation.replies(rows, tasks))
    assert out["reward"] == pytest.approx(2 / 6)
    assert out["gradable_rate"] == pytest.approx(3 / 6) and out["gradable"] == 3
    assert out["accuracy_gradable"] == pytest.approx(2 / 3)
    assert out["reward"] == pytest.approx(out["gradable_rate"] * out["accuracy_gradable"])
    # ratio of per-task sums (a_t / b_t): delta-method SE with tasks as clusters
    sums, value = [(1, 1), (1, 2), (0, 0)], 2 / 3
    se = math.sqrt(3 / 2 * sum((a - value * b) ** 2 for a, b in sums)) / 3
    assert out["accuracy_gradable_se"] == pytest.approx(se)
    assert out["chance"] == pytest.approx(0.25)
    assert out["accuracy_vs_chance_z"] == pytest.approx((value - 0.25) / se)
    assert out["mean_response_tokens"] == 5


def test_a_letter_prior_shows_in_the_answer_distribution():
    tasks = [task() for _ in range(4)]
    rows = [row(t, float(t == 2), "C", expected="ABCD"[t]) for t in range(4)] + [row(0, 0.0, None)]
    dist = evaluation.answer_distribution(evaluation.replies(rows, tasks))
    assert dist["extracted"] == {"C": 4} and dist["distinct_extracted"] == 1
    assert dist["expected"] == {"A": 2, "B": 1, "C": 1, "D": 1}


def test_summary_per_family_and_nemo_gyms_own_metrics(tmp_path):
    tasks = [task("add"), task("add"), task("mul")]
    rows = [row(0, 1.0, "A"), row(1, 0.0, "B"), row(2, 1.0, "A"), row(2, 1.0, "A")]
    out = evaluation.summarize(rows, tasks, {"pass@1": 75.0})
    assert out["families"]["add"]["accuracy_gradable"] == pytest.approx(0.5)
    assert out["families"]["mul"]["accuracy_gradable"] == pytest.approx(1.0)
    assert out["gym_metrics"] == {"pass@1": 75.0}
    rollouts = tmp_path / "eval.jsonl"
    (tmp_path / "eval_aggregate_metrics.json").write_text(json.dumps({"pass@4": 50.0}))
    assert evaluation.gym_metrics(rollouts) == {"pass@4": 50.0}
    assert evaluation.gym_metrics(tmp_path / "train.jsonl") is None


# -- gains over round 0 -------------------------------------------------------------------------
def test_paired_gain_of_the_reward_is_the_mean_per_task_difference():
    tasks = [task() for _ in range(4)]
    rest = [row(t, 1.0, "A") for t in range(2)] + [row(t, 0.0, "B") for t in (2, 3)]
    before = [row(t, 0.0, "B") for t in range(4)] + rest
    after = [row(t, 1.0, "A") for t in range(4)] + [dict(r) for r in rest]
    gain = evaluation.gains(evaluation.replies(before, tasks), evaluation.replies(after, tasks))["reward"]
    diffs = [0.5, 0.5, 0.5, 0.5]
    assert gain["gain"] == pytest.approx(0.5) and gain["se"] == pytest.approx(0.0) and gain["tasks"] == 4
    after[0]["reward"] = 0.0
    gain = evaluation.gains(evaluation.replies(before, tasks), evaluation.replies(after, tasks))["reward"]
    diffs = [0.0, 0.5, 0.5, 0.5]
    mean = sum(diffs) / 4
    assert gain["gain"] == pytest.approx(mean)
    assert gain["se"] == pytest.approx(math.sqrt(sum((d - mean) ** 2 for d in diffs) / 3 / 4))
    assert gain["z"] == pytest.approx(mean / gain["se"])
    nothing = evaluation.paired_ratio_gain(evaluation.replies(before, tasks), [], lambda r: r.reward, lambda r: 1.0)
    assert nothing is None


def test_gains_split_format_from_skill_and_track_length():
    tasks = [task() for _ in range(4)]
    # round 0: half unformatted, the formatted ones at chance-ish; after: all formatted, same accuracy
    before = [row(t, 0.0, None, tokens=10) for t in range(4)] + [row(t, float(t < 2), "A", tokens=10) for t in range(4)]
    after = [row(t, float(t < 2), "A", tokens=30) for t in range(4)] * 2
    out = evaluation.gains(evaluation.replies(before, tasks), evaluation.replies(after, tasks))
    assert out["reward"]["gain"] == pytest.approx(0.25)
    assert out["gradable_rate"]["gain"] == pytest.approx(0.5)
    assert out["accuracy_gradable"]["gain"] == pytest.approx(0.0)  # a format gain, no skill gained
    assert out["response_tokens_ratio"] == pytest.approx(3.0)
    families = evaluation.family_gains(evaluation.replies(before, tasks), evaluation.replies(after, tasks))
    assert set(families) == {"f"} and families["f"]["reward"]["gain"] == pytest.approx(0.25)


def test_without_extraction_only_the_reward_is_decomposed():
    tasks = [task(options=None)]
    items = evaluation.replies([row(0, 1.0, ...), row(0, 0.0, ...)], tasks)
    out = evaluation.decompose(items)
    assert "gradable_rate" not in out and out["reward"] == pytest.approx(0.5)
    assert set(evaluation.gains(items, items)) == {"reward", "response_tokens_ratio"}


# -- real NeMo Gym rows -------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["mcqa", "math"])
def test_real_rows_of_each_bundled_environment(name):
    rows = [json.loads(line) for line in (DATA / f"{name}_eval_rollouts.jsonl").read_text().splitlines()]
    tasks = evaluation.read_tasks(DATA / f"{name}_eval_tasks.jsonl")
    items = evaluation.replies(rows, tasks)
    assert len(items) == len(rows)
    out = evaluation.summarize(rows, tasks)
    for one, reply in zip(rows, items):  # gradable exactly where the server extracted something
        assert reply.gradable == bool(one["extracted_answer"] and str(one["extracted_answer"]).strip())
        assert reply.reward == one["reward"] and reply.family == tasks[one["_ng_task_index"]]["metadata"]["family"]
        assert reply.reward == 0.0 or reply.gradable  # a right answer is a gradable one
    n = len(rows)
    assert out["gradable"] == sum(r.gradable for r in items)
    assert out["gradable_rate"] == pytest.approx(out["gradable"] / n)
    assert out["reward"] == pytest.approx(sum(r.reward for r in items) / n)
    assert out["reward"] == pytest.approx(out["gradable_rate"] * out["accuracy_gradable"])
    assert 0 < out["gradable_rate_se"] < 0.5 and 0 <= out["accuracy_gradable_se"] < 0.5
    assert set(out["families"]) == {tasks[r["_ng_task_index"]]["metadata"]["family"] for r in rows}
    assert sum(f["n"] for f in out["families"].values()) == n
    dist = out["answer_distribution"]
    assert sum(dist["expected"].values()) == n or len(dist["expected"]) == 12
    if name == "mcqa":  # four options: chance 1/4, rotations of a question are one cluster
        assert out["chance"] == pytest.approx(0.25) and set(dist["extracted"]) <= set("ABCD")
        assert out["tasks"] == len({tasks[r["_ng_task_index"]]["metadata"]["question_id"] for r in rows})
    else:
        assert out["chance"] is None


# -- environments read by their own rules, and instruction adherence ---------------------------------
def test_tagged_gradable_tells_a_tag_from_the_whole_reply_fallback():
    reading = evaluation.Reading(gradable="tagged")
    tagged = row(0, 1.0, "7", text="so <answer>7</answer>")
    fallback = row(0, 0.1, "The answer is 7.", text="The answer is 7.")  # reasoning_gym: the whole reply
    items = evaluation.replies([tagged, fallback], [task()], reading)
    assert [r.gradable for r in items] == [True, False]
    out = evaluation.decompose(items)
    assert out["gradable_rate"] == 0.5 and out["accuracy_gradable"] == 1.0
    assert out["reward_ungradable"] == pytest.approx(0.1)  # partial credit outside the tag
    assert evaluation.replies([tagged], [task()], evaluation.Reading(gradable="none"))[0].gradable is None


def test_the_family_comes_from_the_environments_own_field():
    rg = {"metadata": {"source_dataset": "leg_counting"}}
    sokoban = {"num_boxes": 1}
    assert evaluation.reply_of(row(0, 1.0, "A"), rg, evaluation.Reading("metadata.source_dataset")).family == \
        "leg_counting"
    assert evaluation.reply_of(row(0, 1.0, "A"), sokoban, evaluation.Reading("num_boxes")).family == "1"
    assert evaluation.reply_of(row(0, 1.0, "A"), sokoban).family is None


def test_adherence_is_the_share_of_replies_in_the_prompts_format_with_a_paired_gain():
    reading = evaluation.Reading(answer_format="boxed")
    before = [row(t, 1.0, "7", text="7") for t in range(4)]
    after = [row(t, 1.0, "7", text="\\boxed{7}" if t < 3 else "7") for t in range(4)]
    b, a = evaluation.replies(before, [task()] * 4, reading), evaluation.replies(after, [task()] * 4, reading)
    assert evaluation.decompose(b)["adherence"] == 0.0 and evaluation.decompose(a)["adherence"] == 0.75
    gain = evaluation.gains(b, a)["adherence"]
    assert gain["gain"] == 0.75 and gain["tasks"] == 4 and gain["se"] > 0
    assert "adherence" not in evaluation.decompose(evaluation.replies(before, [task()] * 4))  # no format stated


def test_an_environment_with_unknown_rules_is_refused():
    with pytest.raises(ValueError, match="gradable="):
        evaluation.Reading.of({"gradable": "sometimes"})


def test_the_stated_answer_is_judged_apart_from_a_lenient_reward():
    """example_multi_turn_gymnasium pays a last reply that contains the answer's digits: the
    answer stated in the prompt's format tells a right sum from 156 for 5."""
    reading = evaluation.Reading(gradable="none", answer_format="boxed")
    rows = [row(0, 1.0, ..., text="so \\boxed{5}", expected="5"), row(1, 1.0, ..., text="\\boxed{156}", expected="5")]
    out = evaluation.decompose(evaluation.replies(rows, [task()] * 2, reading))
    assert out["reward"] == 1.0 and out["stated_right"] == 0.5
    assert "stated_right" not in evaluation.decompose(evaluation.replies(rows, [task()] * 2))  # no format: none
