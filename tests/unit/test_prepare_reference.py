"""Every real NeMo Gym rollouts file of the reference files (nemo-gym/): what each must give.

None of them holds two comparable rollouts with different rewards (reference README), so each
must give no pair, and for the reason its README names.
"""

import pytest

from tests.conftest import read_jsonl, reference

EXPECTED = {
    # file: (outcomes by line, reasons no pair)
    "tool_call_multireward.jsonl": {"no_comparable_rollout": 5},   # five tasks
    "blackjack.jsonl": {"no_comparable_rollout": 5},   # one task index, five different deals
    "tau2.jsonl": {"no_comparable_rollout": 5},
    "competitive_coding_challenges.jsonl": {"tie": 5},   # one task, all rewards 0
    "mcqa.jsonl": {"no_comparable_rollout": 5},   # no task index: grouped by context
    "anyswe_agent_claude_code.jsonl": {"rejected:empty_context": 5},
    "math_with_judge.jsonl": {"no_comparable_rollout": 5},
    "aalcr.jsonl": {"tie": 5},   # two tasks, equal rewards inside each
    "genrm_compare.jsonl": {"rejected:reward_missing": 5},
    "grl_sokoban.jsonl": {"no_comparable_rollout": 5},
}


def test_the_reference_rollouts_are_there():
    """The files this module, test_schemas and test_hostile_lines read; a missing folder skips
    (fails in CI) here with one message, where the others would read fewer lines."""
    folder = reference("nemo-gym")
    assert sorted(path.name for path in folder.glob("*.jsonl")) == sorted(EXPECTED)


def outcomes(manifest):
    counts = manifest["counts"]
    found = {k: v for k, v in counts["unpaired"].items() if v}
    found.update({f"rejected:{k}": v for k, v in counts["rejected"].items()})
    if counts["paired"]:
        found["paired"] = counts["paired"]
    return found


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_reference_file(name, prepare):
    manifest, out = prepare(reference(f"nemo-gym/{name}"))
    assert outcomes(manifest) == EXPECTED[name]
    assert manifest["counts"]["lines"] == 5
    assert (out / "train.jsonl").read_bytes() == b"" and (out / "val.jsonl").read_bytes() == b""
    assert len(read_jsonl(out / "rejects.jsonl")) == sum(v for k, v in EXPECTED[name].items()
                                                          if k.startswith("rejected"))


def test_reference_rollouts_convert_to_the_expected_shapes():
    """Multi-turn and tool-use files give trajectories; single-turn files give text."""
    from recipe.prepare import rollouts, scan

    shapes = {}
    for name in ("blackjack.jsonl", "tool_call_multireward.jsonl", "tau2.jsonl", "math_with_judge.jsonl",
                 "grl_sokoban.jsonl", "mcqa.jsonl", "competitive_coding_challenges.jsonl"):
        decoded = rollouts.Reader().decode(reference(f"nemo-gym/{name}").read_bytes().splitlines()[0])
        context, response = scan.convert(*decoded, scan.ScanOptions())
        shapes[name] = (context[0]["role"], "text" if isinstance(response, str) else response[-1]["role"])
    assert shapes["tool_call_multireward.jsonl"] == ("system", "assistant")  # developer -> system
    assert shapes["blackjack.jsonl"] == ("system", "assistant")
    assert shapes["tau2.jsonl"] == ("system", "user")  # the user simulator has the last turn
    assert shapes["competitive_coding_challenges.jsonl"] == ("user", "text")  # input is a plain string
    assert shapes["math_with_judge.jsonl"][1] == "text"


MULTI_TURN = ("tau2.jsonl", "tool_call_multireward.jsonl", "grl_sokoban.jsonl", "blackjack.jsonl")


def siblings(row: dict) -> list[dict]:
    """The real rollout and rollouts of the same request that part from it: at each of its
    assistant turns and tool calls (a different answer, the rest cut off), and at each of the
    environment's turns (a different tool result or user turn, the rest kept)."""
    import copy

    items = row["response"]["output"]
    made = [{**row, "reward": 1.0}]
    for i, item in enumerate(items):
        kind = item.get("type") or "message"
        variant = copy.deepcopy(row)
        if kind == "function_call" or (kind == "message" and item.get("role") == "assistant"):
            variant["response"]["output"] = items[:i] + [
                {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": f"variant {i}"}]}]
            variant["reward"] = -float(i)
        elif kind == "function_call_output" or (kind == "message" and item.get("role") == "user"):
            changed = copy.deepcopy(item)
            changed["output" if kind == "function_call_output" else "content"] = f"the environment said {i}"
            variant["response"]["output"] = items[:i] + [changed] + items[i + 1:]
            variant["reward"] = 0.5 - i / 1000
        else:
            continue
        made.append(variant)
    return made


@pytest.mark.parametrize("name", MULTI_TURN)
def test_real_multi_turn_pairs_are_cut_where_they_part(name, tmp_path, prepare):
    import orjson

    from recipe.prepare import cut, rollouts, scan

    rows = [s for line in read_jsonl(reference(f"nemo-gym/{name}")) for s in siblings(line)]
    path = tmp_path / name
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    manifest, out = prepare(path, "data_prep=all_pairs", "data_prep.max_pairs_per_prompt=null", "data.val_fraction=0")
    pairs = read_jsonl(out / "train.jsonl")
    assert len(pairs) >= 5 and manifest["cut"]["pairs_with_shared_turns"] > 0
    assert manifest["cut"]["refused_candidates"]["environment_diverged"] > 0
    lines = path.read_bytes().splitlines()
    reader = rollouts.Reader()
    for pair in pairs:
        (chosen,), (rejected,) = (c["completion"] for c in pair["completions"])
        assert chosen["role"] == rejected["role"] == "assistant"
        assert cut.message_key(chosen) != cut.message_key(rejected)
        sources = [int(pair[f"{side}_source"].rsplit(":", 1)[1]) for side in ("chosen", "rejected")]
        (context, a), (_, b) = (scan.convert(*reader.decode(lines[n - 1]), scan.ScanOptions()) for n in sources)
        a, b = cut.as_messages(a), cut.as_messages(b)
        shared = len(pair["context"]) - len(context)
        assert pair["context"] == context + a[:shared]  # the request, then the turns both share
        assert [cut.message_key(m) for m in a[:shared]] == [cut.message_key(m) for m in b[:shared]]
        assert (a[shared], b[shared]) == (chosen, rejected)


def test_cut_pairs_load_through_nemo_rls_data_path(tmp_path, prepare):
    """NeMo RL (v0.7.0 `load_dataset_from_path`) reads a local .jsonl with `load_dataset("json")`
    and adds a `task_name` column: tool-call arguments as objects of different keys and types,
    and a string left as written, must come back as they were written."""
    import orjson

    datasets = pytest.importorskip("datasets")
    rows = [s for name in MULTI_TURN for line in read_jsonl(reference(f"nemo-gym/{name}")) for s in siblings(line)]
    path = tmp_path / "all.jsonl"
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    _, out = prepare(path, "data_prep=all_pairs", "data_prep.max_pairs_per_prompt=null", "data.val_fraction=0")
    written = read_jsonl(out / "train.jsonl")
    assert any(isinstance(m.get("tool_calls", [{}])[0].get("function", {}).get("arguments"), dict)
               for pair in written for m in pair["context"])
    loaded = datasets.load_dataset("json", data_files=str(out / "train.jsonl"))["train"]
    loaded = loaded.add_column("task_name", ["reference"] * len(loaded))
    for pair, row in zip(written, loaded, strict=True):
        assert row["context"] == pair["context"] and row["completions"] == pair["completions"]
