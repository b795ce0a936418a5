"""The prepare stage end to end in-process: grouping, pairing, split, outputs, bad input."""

import contextlib
import json
import multiprocessing
import os
import signal

import jsonschema
import pytest

from recipe.errors import RecipeError
from recipe.prepare import rollouts
from tests.conftest import read_jsonl, rollout, write_jsonl

PAIR = jsonschema.Draft202012Validator(rollouts.schema("pair"))


def scattered_tasks(n_tasks=6, per_task=4):
    """Rollouts of several tasks, interleaved as completion order writes them."""
    rows = []
    for r in range(per_task):
        for t in range(n_tasks):
            rows.append(rollout(prompt=f"question {t}", answer=f"answer {t}.{r}", reward=float(r),
                                task=t, agent="env", _ng_rollout_index=r))
    return rows


def pairs_of(folder):
    return read_jsonl(folder / "train.jsonl") + read_jsonl(folder / "val.jsonl")


def test_scattered_rows_group_by_task_and_best_vs_worst(tmp_path, prepare):
    path = write_jsonl(tmp_path / "r.jsonl", scattered_tasks())
    manifest, out = prepare(path, "data.val_fraction=0")
    pairs = pairs_of(out)
    assert len(pairs) == 6
    for pair in pairs:
        assert pair["chosen_reward"] == 3.0 and pair["rejected_reward"] == 0.0
        question = pair["context"][-1]["content"]
        t = question.split()[-1]
        assert pair["completions"][0] == {"rank": 0, "completion": [{"role": "assistant", "content": f"answer {t}.3"}]}
        assert pair["completions"][1]["completion"][0]["content"] == f"answer {t}.0"
        assert "task_name" not in pair
        assert PAIR.is_valid(pair)
    counts = manifest["counts"]
    assert counts["unpaired"] == {"no_comparable_rollout": 0, "tie": 0, "not_selected": 12, "environment_diverged": 0,
                                  "differs_after_last_turn": 0, "tool_call_in_binary_format": 0}
    assert (counts["lines"], counts["paired"], counts["rejected"]) == (24, 12, {})


def test_two_tasks_with_one_visible_input_never_pair(tmp_path, prepare):
    rows = [rollout(prompt="same", answer="a", reward=1, task=0, agent="env"),
            rollout(prompt="same", answer="b", reward=0, task=1, agent="env")]
    manifest, out = prepare(write_jsonl(tmp_path / "r.jsonl", rows))
    assert pairs_of(out) == []
    assert manifest["counts"]["unpaired"]["no_comparable_rollout"] == 2


def test_full_context_not_only_last_user_turn(tmp_path, prepare):
    rows = [rollout(prompt="q", system="sys A", answer="a", reward=1),
            rollout(prompt="q", system="sys B", answer="b", reward=0)]
    _, out = prepare(write_jsonl(tmp_path / "r.jsonl", rows))
    assert pairs_of(out) == []


def test_rows_without_task_identity_group_by_context(tmp_path, prepare):
    rows = [rollout(prompt="q", answer="a", reward=1), rollout(prompt="q", answer="b", reward=0)]
    _, out = prepare(write_jsonl(tmp_path / "r.jsonl", rows))
    assert len(pairs_of(out)) == 1


def test_task_indices_are_scoped_to_their_file(tmp_path, prepare):
    a = write_jsonl(tmp_path / "a.jsonl", [rollout(prompt="q", answer="a", reward=1, task=0, agent="env")])
    b = write_jsonl(tmp_path / "b.jsonl", [rollout(prompt="q", answer="b", reward=0, task=0, agent="env")])
    _, out = prepare([a, b])
    assert pairs_of(out) == []


def test_group_by_names_another_field(tmp_path, prepare):
    rows = [rollout(prompt="q", answer="a", reward=1, task=0, task_id="x"),
            rollout(prompt="q", answer="b", reward=0, task=1, task_id="x"),
            rollout(prompt="q", answer="c", reward=0.5, task=2, task_id="y")]
    path = write_jsonl(tmp_path / "r.jsonl", rows)
    _, out = prepare(path, "data.group_by=task_id", "data.val_fraction=0")
    pairs = pairs_of(out)
    assert [(p["chosen_reward"], p["rejected_reward"]) for p in pairs] == [(1.0, 0.0)]
    with pytest.raises(RecipeError, match="group_by"):
        prepare(path, "data.group_by=reward")


def test_ties_identical_texts_single_rollouts_and_min_gap(tmp_path, prepare):
    rows = [rollout(prompt="tie", answer="a", reward=1), rollout(prompt="tie", answer="b", reward=1),
            rollout(prompt="dup", answer="same", reward=1), rollout(prompt="dup", answer="same", reward=0),
            rollout(prompt="alone", answer="x", reward=1),
            rollout(prompt="gap", answer="hi", reward=0.5), rollout(prompt="gap", answer="lo", reward=0.3)]
    path = write_jsonl(tmp_path / "r.jsonl", rows)
    manifest, out = prepare(path, "data.val_fraction=0", "data_prep.min_gap=0.2")
    assert [p["context"][0]["content"] for p in pairs_of(out)] == ["gap"]  # gap 0.2 reaches min_gap 0.2
    manifest, out = prepare(path, "data.val_fraction=0", "data_prep.min_gap=0.21", out="o2")
    assert pairs_of(out) == []
    unpaired = {reason: n for reason, n in manifest["counts"]["unpaired"].items() if n}
    assert unpaired == {"no_comparable_rollout": 1, "tie": 2, "not_selected": 4}


def test_binary_format(tmp_path, prepare):
    rows = [rollout(prompt="q", answer="good", reward=1), rollout(prompt="q", answer="bad", reward=0)]
    manifest, out = prepare(write_jsonl(tmp_path / "r.jsonl", rows), "data.format=binary", "data.val_fraction=0",
                            "data.keep_extra_fields=false")
    assert pairs_of(out) == [{"prompt": "q", "chosen": "good", "rejected": "bad"}]
    assert manifest["format"] == "binary"


def test_mask_sample_is_excluded_and_counted(tmp_path, prepare):
    rows = [rollout(prompt="q", answer="a", reward=1, mask_sample=True), rollout(prompt="q", answer="b", reward=0),
            rollout(prompt="q", answer="c", reward=0.5)]
    manifest, out = prepare(write_jsonl(tmp_path / "r.jsonl", rows), "data.val_fraction=0")
    (pair,) = pairs_of(out)
    assert pair["chosen_reward"] == 0.5
    assert manifest["counts"]["rejected"] == {"mask_sample": 1}
    (reject,) = read_jsonl(out / "rejects.jsonl")
    assert reject["line"] == 1 and reject["reason"] == "mask_sample" and reject["file"].endswith("r.jsonl")


def test_split_never_leaks_a_prompt_and_is_deterministic(tmp_path, prepare):
    rows = []
    for t in range(200):
        for task in (0, 1):  # one prompt under two task identities: still one side of the split
            rows += [rollout(prompt=f"p{t}", answer=f"good {task}", reward=1, task=t * 2 + task, agent="e"),
                     rollout(prompt=f"p{t}", answer=f"bad {task}", reward=0, task=t * 2 + task, agent="e")]
    path = write_jsonl(tmp_path / "r.jsonl", rows)
    manifest, out = prepare(path, "data.val_fraction=0.25")
    train = {json.dumps(p["context"]) for p in read_jsonl(out / "train.jsonl")}
    val = {json.dumps(p["context"]) for p in read_jsonl(out / "val.jsonl")}
    assert train and val and not train & val
    assert 30 <= len(val) <= 70  # about a quarter of 200 prompts
    again, out2 = prepare(path, "data.val_fraction=0.25", out="again")
    assert (out / "val.jsonl").read_bytes() == (out2 / "val.jsonl").read_bytes()
    other, out3 = prepare(path, "data.val_fraction=0.25", "seed=7", out="seed7")
    assert (out / "val.jsonl").read_bytes() != (out3 / "val.jsonl").read_bytes()
    sized, out4 = prepare(path, "data.val_size=10", out="sized")
    assert sized["pairs"]["val"] == 10  # 5 prompts of 2 pairs each


def test_rerun_is_byte_identical_in_any_chunking_and_worker_count(tmp_path, prepare):
    path = write_jsonl(tmp_path / "r.jsonl", scattered_tasks(40, 5) + ["not json"])
    first, a = prepare(path, out="a")
    second, b = prepare(path, "data.workers=2", "data.chunk_mb=0.002", out="b")
    for name in ("train.jsonl", "val.jsonl", "rejects.jsonl"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    for manifest in (first, second):
        manifest.pop("timestamps")
        manifest["config"]["data"].pop("workers"), manifest["config"]["data"].pop("chunk_mb")
        manifest["config"]["data"].pop("output_dir")
        for output in manifest["outputs"].values():
            output.pop("path")
    assert first == second


BAD_LINES = [
    ("{not json", "malformed_json"),
    ("[1, 2, 3]", "not_an_object"),
    ('"just a string"', "not_an_object"),
    (json.dumps({"reward": 1}), "no_request"),  # neither layout: named, not a schema error
    (json.dumps(rollout(reward="high")), "schema"),
    (json.dumps(rollout(reward=None)), "reward_null"),
    (json.dumps({k: v for k, v in rollout().items() if k != "reward"}), "reward_missing"),
    (json.dumps(rollout()).replace('"reward": 1.0', '"reward": NaN'), "reward_not_finite"),
    (json.dumps(rollout()).replace('"reward": 1.0', '"reward": Infinity'), "reward_not_finite"),
    (json.dumps(rollout()).replace('"reward": 1.0', '"reward": 1e999'), "reward_not_finite"),
    (json.dumps(rollout(answer="")), "empty_response"),
    (json.dumps(rollout(output=[{"type": "function_call", "arguments": "{}", "call_id": "c"},
                                {"type": "message", "role": "assistant", "content": "done"}])),
     "tool_call_without_name"),  # it would fail the pair schema (and a chat template) if paired
    ("", "blank_line"),
]


def test_every_bad_line_is_a_counted_reject_with_file_line_and_reason(tmp_path, prepare):
    good = [json.dumps(rollout(prompt="q", answer=a, reward=r)) for a, r in (("yes", 1), ("no", 0))]
    lines = good + [line for line, _ in BAD_LINES]
    path = tmp_path / "r.jsonl"
    path.write_bytes("\n".join(lines).encode() + b"\n" + json.dumps(rollout(answer="caf\u00e9")).encode()
                     .replace(b"caf\\u00e9", b"caf\xe9") + b"\n")
    manifest, out = prepare(path, "data.val_fraction=0")
    rejects = read_jsonl(out / "rejects.jsonl")
    expected = [reason for _, reason in BAD_LINES] + ["not_utf8"]
    assert [r["reason"] for r in rejects] == expected
    assert [r["line"] for r in rejects] == list(range(3, 3 + len(expected)))
    assert all(r["file"] == str(path) and r["detail"] for r in rejects)
    counts = manifest["counts"]
    assert counts["lines"] == len(lines) + 1
    assert counts["paired"] + sum(counts["unpaired"].values()) + sum(counts["rejected"].values()) == counts["lines"]
    assert len(pairs_of(out)) == 1


def test_on_error_fail_stops_at_the_first_bad_line_and_writes_nothing(tmp_path, prepare):
    path = write_jsonl(tmp_path / "r.jsonl", [rollout(), "{broken"])
    with pytest.raises(RecipeError, match=r"r\.jsonl:2: malformed_json"):
        prepare(path, "data.on_error=fail")
    assert not (tmp_path / "out").exists() or not os.listdir(tmp_path / "out")
    assert not multiprocessing.active_children()  # the input hashing stopped with the stage


@pytest.mark.parametrize("setup, message_part", [
    (lambda p: None, "does not exist"),
    (lambda p: p.write_text(""), "is empty"),
])
def test_missing_or_empty_input_is_a_clear_error(tmp_path, prepare, setup, message_part):
    path = tmp_path / "r.jsonl"
    setup(path)
    with pytest.raises(RecipeError, match=message_part):
        prepare(path)


def test_glob_and_list_inputs(tmp_path, prepare):
    write_jsonl(tmp_path / "a.jsonl", [rollout(prompt="q", answer="x", reward=1)])
    write_jsonl(tmp_path / "b.jsonl", [rollout(prompt="q", answer="y", reward=0)])
    manifest, _ = prepare(str(tmp_path / "*.jsonl"))
    assert [os.path.basename(i["path"]) for i in manifest["inputs"]] == ["a.jsonl", "b.jsonl"]
    assert all(len(i["sha256"]) == 64 for i in manifest["inputs"])
    with pytest.raises(RecipeError, match="no file matches"):
        prepare(str(tmp_path / "*.nothing"))


def test_a_failure_while_writing_leaves_no_partial_files(tmp_path, prepare, monkeypatch):
    from recipe.prepare import writer

    path = write_jsonl(tmp_path / "r.jsonl", scattered_tasks())
    monkeypatch.setattr(writer.PairBuilder, "build_all", lambda self, pairs: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        prepare(path)
    assert not (tmp_path / "out").exists()  # nor the folder the run made
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mine.txt").write_text("a user's file")
    with pytest.raises(ZeroDivisionError):
        prepare(path)
    assert os.listdir(tmp_path / "out") == ["mine.txt"]  # a folder that was there stays, with what it held
    assert not multiprocessing.active_children()


def test_manifest_statistics_and_output_hashes(tmp_path, prepare):
    import hashlib

    path = write_jsonl(tmp_path / "r.jsonl", scattered_tasks())
    manifest, out = prepare(path, "data.val_fraction=0")
    assert manifest["inputs"] == [{"path": str(path), "bytes": path.stat().st_size,
                                   "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}]
    assert manifest["rewards"]["gap"]["count"] == 6 and manifest["rewards"]["gap"]["mean"] == 3.0
    assert manifest["rewards"]["usable_rollouts"]["count"] == 24
    assert manifest["outputs"]["train"]["sha256"] == hashlib.sha256((out / "train.jsonl").read_bytes()).hexdigest()
    assert manifest["package"]["name"] == "gym-dpo"
    assert set(manifest["timestamps"]) == {"started", "finished", "seconds"}


def test_split_positions_are_the_same_on_every_machine():
    """Pinned values: a change here moves prompts between train and val for every user."""
    import numpy as np

    from recipe.prepare import split

    assert split.rank(np.array([1, 2, 3], dtype=np.uint64), 42) == pytest.approx(
        [0.95043809, 0.44658787, 0.97777679])
    positions = split.rank(np.arange(1, 100_001, dtype=np.uint64), 0)
    assert 0 <= positions.min() and positions.max() < 1 and abs((positions < 0.25).mean() - 0.25) < 0.01


def test_length_penalty_counts_tokens_with_a_local_tokenizer(tmp_path, prepare, capsys):
    tokenizers = pytest.importorskip("tokenizers", reason="the tokenizers package (the local extra)")
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    tokenizer = tokenizers.Tokenizer(WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = Whitespace()
    folder = tmp_path / "tok"
    folder.mkdir()
    tokenizer.save(str(folder / "tokenizer.json"))
    one_long_word, five_short_words = "a" * 30, "b b b b b"  # 30 chars, 1 token / 9 chars, 5 tokens
    rows = [rollout(prompt="q", answer=one_long_word, reward=1.0),
            rollout(prompt="q", answer=five_short_words, reward=1.0)]
    path = write_jsonl(tmp_path / "r.jsonl", rows)
    penalty = ("data_prep.length_penalty=0.01", "data.val_fraction=0")

    manifest, out = prepare(path, *penalty, f"data.length_tokenizer={folder}", out="tokens")
    (pair,) = pairs_of(out)
    assert pair["completions"][0]["completion"][0]["content"] == one_long_word  # 1 token < 5 tokens
    assert manifest["pairing"]["length_unit"] == "tokens"
    assert manifest["pairing"]["length_difference"]["mean"] == -4

    manifest, out = prepare(path, *penalty, out="characters")
    (pair,) = pairs_of(out)
    assert pair["completions"][0]["completion"][0]["content"] == five_short_words  # 9 chars < 30 chars
    assert manifest["pairing"]["length_unit"] == "characters"

    manifest, _ = prepare(path, *penalty, f"data.length_tokenizer={tmp_path / 'absent'}", out="absent")
    assert manifest["pairing"]["length_unit"] == "characters"
    assert "no tokenizer.json on this machine" in capsys.readouterr().err


def test_a_signal_once_the_outputs_landed_says_they_are_there(tmp_path, prepare, monkeypatch):
    """A Ctrl-C as the run lock is released (after the outputs and manifest landed): the stop
    says where they are, not 'nothing was written' (bench: 1 of 120 signalled runs, CI 2026-12-05)."""
    from recipe import processes, run_lock
    from recipe.prepare import stage

    held = run_lock.held

    @contextlib.contextmanager
    def interrupted_on_release(*args, **kwargs):
        with held(*args, **kwargs):
            yield
        raise processes.Interrupted(signal.SIGINT)

    monkeypatch.setattr(stage.run_lock, "held", interrupted_on_release)
    path = write_jsonl(tmp_path / "r.jsonl", scattered_tasks())
    with pytest.raises(processes.Interrupted) as caught:
        prepare(path)
    assert caught.value.outcome == f"the pairs and manifest.json are in {tmp_path / 'out'}"
    assert (tmp_path / "out" / "manifest.json").is_file()
