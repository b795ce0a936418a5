"""Hostile input lines: every one a counted reject (or a usable rollout), never a crash; every
written file strict JSON; the typed decoder and the JSON Schema agree on every line.

The hand-made rows cover escapes, Unicode whitespace, duplicate keys, wrong types, extreme
numbers and deep nesting; the property test mutates real rollout lines (seeded, bounded).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import jsonschema
import msgspec
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recipe.prepare import rollouts, scan
from tests.conftest import REFERENCE, SAMPLE, read_jsonl, rollout, write_jsonl

ROLLOUT_SCHEMA = jsonschema.Draft202012Validator(rollouts.schema("rollout"))


def _row(**changes) -> dict:
    row = {"responses_create_params": {"input": [{"role": "user", "content": "What is 2+2?"}],
                                       "instructions": None},
           "response": {"output": [{"type": "message", "role": "assistant",
                                    "content": [{"type": "output_text", "text": "4"}]}]},
           "reward": 1.0, "_ng_task_index": 3, "agent_ref": {"name": "math"}}
    row.update(changes)
    return row


def _output(*items) -> dict:
    return {"output": list(items)}


def _say(text, **extra) -> dict:
    return {"type": "message", "role": "assistant", "content": text, **extra}


CALL = {"type": "function_call", "name": "search", "arguments": "{\"q\": \"x\"}", "call_id": "c1"}
RESULT = {"type": "function_call_output", "call_id": "c1", "output": "found"}

EDGE_ROWS = [
    _row(),
    _row(reward=1), _row(reward=-0.0), _row(reward=0.30000000000000004), _row(reward=1e-300),
    _row(reward=12345678901234567890), _row(reward=1e400), _row(reward=None), _row(reward=True),
    _row(reward="1"), _row(mask_sample=True), _row(mask_sample=False), _row(mask_sample=None),
    _row(_ng_task_index=None), _row(_ng_task_index=-5), _row(_ng_task_index=2**63 - 1),
    _row(_ng_task_index=2**64 - 1), _row(_ng_task_index=1.0), _row(_ng_task_index=1.5), _row(_ng_task_index=2**71),
    _row(_ng_task_index=-2**71), _row(_ng_task_index=1e300), _row(_ng_rollout_index="x"),
    _row(reward=1e308), _row(reward=-1e308), _row(reward=10**400), _row(reward=-(10**400)),
    _row(responses_create_params={"input": [{"role": "user", "content": "q"}], "instructions": ""}),
    _row(response=_output(_say("\ufeff"))), _row(response=_output(_say("\ufeff\u00a0x"))),
    _row(agent_ref=None), _row(agent_ref={"name": None}), _row(agent_ref={"name": "a\u00e9\"\\"}),
    _row(agent_ref={"name": 5}),
    _row(response=None), _row(response={}), _row(response={"output": None}),
    _row(response={"output": []}), _row(response=None, output=[_say("legacy")]),
    _row(response={"output": None}, output=[_say("legacy")]),
    _row(response=_output(_say(""))), _row(response=_output(_say(" \t\n"))),
    _row(response=_output(_say("\u3000\u2028\x1c"))), _row(response=_output(_say("\u3000x"))),
    _row(response=_output(_say("\u00e9t\u00e9 \U0001F600"))),
    _row(response=_output(_say("tab\tquote\"back\\slash/ctl\x01\x1f\x7f\u2028end"))),
    _row(response=_output(_say(None))), _row(response=_output(_say([]))),
    _row(response=_output(_say([{"type": "output_text", "text": "a"}, {"type": "output_text", "text": ""},
                                {"text": "b"}, {"type": "text", "text": None}]))),
    _row(response=_output(_say([{"type": "input_image", "image_url": "x"}]))),
    _row(response=_output(_say([{"type": "", "text": "x"}]))),
    _row(response=_output(_say("a"), _say("b"))), _row(response=_output(_say(""), _say("b"))),
    _row(response=_output({"type": "reasoning", "summary": [{"type": "summary_text", "text": "hm"}]},
                          _say("after thought"))),
    _row(response=_output({"type": "reasoning", "summary": None}, _say("x"))),
    _row(response=_output({"type": "reasoning", "summary": "bad"}, _say("x"))),
    _row(response=_output({"type": "reasoning"})),
    _row(response=_output({"role": "assistant", "content": "no type"})),
    _row(response=_output({"type": "", "role": "assistant", "content": "empty type"})),
    _row(response=_output({"type": "message", "role": "Assistant", "content": "x"})),
    _row(response=_output(CALL, RESULT, _say("done"))),
    _row(response=_output(CALL, RESULT)),
    _row(response=_output(CALL)),
    _row(response=_output(_say("let me look"), CALL, RESULT, _say("found it"), _say("really"))),
    _row(response=_output(_say(""), CALL, CALL, RESULT, RESULT, _say("ok"))),
    _row(response=_output({**CALL, "name": None, "call_id": None}, _say("x"))),
    _row(response=_output({"type": "function_call"}, _say("x"))),
    _row(response=_output({**CALL, "name": ""}, RESULT, _say("x"))),
    _row(responses_create_params={"input": [{"role": "user", "content": "q"}, {**CALL, "name": None}]}),
    _row(responses_create_params={"input": "\x1c\x1d"}), _row(responses_create_params={"input": " "}),
    _row(response=_output({"type": "web_search_call", "id": "w"}, _say("x"))),
    _row(response=_output({"type": "message", "role": "user", "content": "env says"}, _say("x"),
                          {"type": "message", "role": "user", "content": "trailing env turn"})),
    _row(response=_output({"type": "message", "role": "developer", "content": "d"}, _say("x"))),
    _row(response=_output({"type": "message", "role": "robot", "content": "x"})),
    _row(response=_output({"type": "mess\u0061ge", "role": "assistant", "content": "escaped type"})),
    _row(responses_create_params={"input": "plain string prompt"}),
    _row(responses_create_params={"input": ""}), _row(responses_create_params={"input": "", "instructions": "sys"}),
    _row(responses_create_params={"input": None, "instructions": ""}),
    _row(responses_create_params={"input": [], "instructions": "only instructions"}),
    _row(responses_create_params={}), _row(responses_create_params=None),
    _row(responses_create_params={"input": 5}),
    _row(responses_create_params={"input": [{"role": "developer", "content": "dev"},
                                            {"role": "user", "content": [{"type": "input_text", "text": "hi"}]}]}),
    _row(responses_create_params={"input": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"},
                                            {"role": "assistant", "content": "a1"},
                                            {"role": "assistant", "content": "a2"},
                                            CALL, RESULT, {"role": "user", "content": "again"}]}),
    _row(responses_create_params={"input": [{"role": "assistant", "content": "prefill"}]}),
    _row(responses_create_params={"input": [{"type": "reasoning", "summary": []}]}),
    _row(responses_create_params={"input": [{"role": "user", "content": [{"type": "input_image"}]}]}),
    _row(responses_create_params={"input": [{"type": "function_call_output", "call_id": "c", "output": [
        {"type": "input_text", "text": "tool said"}]}]}),
    _row(responses_create_params={"input": [{"role": "user", "content": "\u00e9\\\"\n"}],
                                  "instructions": "be \u00e9\tbrief"}),
    _row(task_id={"nested": [1, 2.5, None, True, "s"]}, extra=[{}, [], ""]),
]

RAW_LINES = [
    b"", b"   ", b"\r", b"[]", b"null", b"{", b"{}", b"not json",
    b'{"responses_create_params":{"input":"q"},"reward":1,"response":{"output":[{"role":"assistant","content":"a"}]}}',
    b'{"responses_create_params":{"input":"q"},"reward":1,"response":{"output":[{"role":"assistant","content":"a"}]}}\r',
    b'  {"responses_create_params":{"input":"q"},"reward":1,"response":{"output":[{"role":"assistant","content":"a"}]}}'
    b'  ',
    b'{"responses_create_params":{"input":"q"},"reward":1,"response":{"output":[{"role":"assistant","content":"a"}]}}'
    b' x',
    b'{"responses_create_params":{"input":"q"},"reward":1,"reward":2,"response":{"output":[{"role":"assistant","content":"a"}]}}',
    b'{"responses_create_params":{"input":"q"},"rew\\u0061rd":1,"response":{"output":[{"role":"assistant","content":"a"}]}}',
    b'{"responses_create_params":{"input":"q"},"reward":01,"response":{"output":[{"role":"assistant","content":"a"}]}}',
    b'{"responses_create_params":{"input":"q"},"reward":1.,"response":{"output":[{"role":"assistant","content":"a"}]}}',
    b'{"responses_create_params":{"input":"q"},"reward":NaN,"response":{"output":[{"role":"assistant","content":"a"}]}}',
    b'{"responses_create_params":{"input":"q"},"reward":1,"response":{"output":[{"role":"assistant","content":"a"},]}}',
    b'{"responses_create_params":{"input":"q"},"reward":1,"response":{"output":[{"role":"assistant","content":"a\\ud800"}]}}',
    b'{"responses_create_params":{"input":"q"},"reward":1,"response":{"output":[{"role":"assistant","content":"\\ud83d\\ude00"}]}}',
    b'{"responses_create_params":{"input":"q"},"reward":1,"response":{"output":[{"role":"assistant","content":"a\\x"}]}}',
    b'{"responses_create_params":{"input":"q"},"reward":1,"response":{"output":[{"role":"assistant","content":"a\tb"}]}}',
    b'{"responses_create_params":{"input":"q"},"reward":1,"response":{"output":[{"role":"assistant","content":"\xff"}]}}',
    b'{"responses_create_params":{"input":"q"},"reward":1,"response":{"output":[{"role":"assistant","content":"\xed\xa0\x80"}]}}',
    b'{"responses_create_params":{"input":"q"},"reward":1,"ignored":"\xff","response":{"output":[{"role":"assistant","content":"a"}]}}',
    b'{"responses_create_params":{"input":"q"},"reward":1,"ignored":' + b"[" * 100 + b"]" * 100
    + b',"response":{"output":[{"role":"assistant","content":"a"}]}}',
]


OPTIONS = {
    "default": scan.ScanOptions(),
    "developer_role": scan.ScanOptions(chat=scan.chat.ChatOptions("developer", False)),
    "binary": scan.ScanOptions(binary=True),
    "reasoning": scan.ScanOptions(chat=scan.chat.ChatOptions("system", True)),
}


class _NotADocument(ValueError):
    pass


def _refuse(constant):
    raise _NotADocument(constant)


def strict_document(line: bytes):
    """The line as a JSON document (RFC 8259: UTF-8, no NaN/Infinity, no lone surrogates), or
    raise _NotADocument; RecursionError when it nests deeper than Python parses."""
    try:
        obj = json.loads(line.decode("utf-8"), parse_constant=_refuse)
        json.dumps(obj, ensure_ascii=False).encode("utf-8")  # lone surrogates do not encode
    except (UnicodeError, json.JSONDecodeError) as exc:
        raise _NotADocument(str(exc)) from None
    return obj


def decoder_accepts(line: bytes) -> bool:
    try:
        rollouts.Reader().decode(line)
        return True
    except (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError):
        return False


def agree(line: bytes) -> None:
    """The typed decoder accepts a line exactly when it is a JSON document the schema accepts;
    a line nested deeper than the decoder follows is `too_deep`, whatever the schema says."""
    try:
        accepted = decoder_accepts(line)
    except RecursionError:
        reason, _ = rollouts.explain_invalid(line)
        assert reason == "too_deep" or reason != "schema", line[:200]
        return
    try:
        document = strict_document(line)
    except _NotADocument:
        assert not accepted, line[:300]
        return
    except RecursionError:  # deeper than Python's json parses: then msgspec cannot either
        assert not accepted, line[:300]
        return
    valid = ROLLOUT_SCHEMA.is_valid(document)
    assert accepted == valid, (line[:300], rollouts.explain_invalid(line))
    if not accepted:
        reason, detail = rollouts.explain_invalid(line)
        assert reason != "schema" or not detail.startswith("the typed decoder refused"), line[:300]


def read_lines(data: bytes, options: scan.ScanOptions) -> scan.ChunkResult:
    path = Path("/dev/null")
    reader = scan.LineReader(rollouts.Chunk(0, str(path), 0, len(data)), options)
    lines = data.split(b"\n")
    position = 0
    for number, line in enumerate(lines, 1):
        reader.read(line, number, position)
        position += len(line) + 1
    return reader


EDGE_LINES = [json.dumps(row, ensure_ascii=ascii).encode() for row in EDGE_ROWS for ascii in (True, False)] + RAW_LINES
DEEP = [b'{"responses_create_params":{"input":"q"},"reward":1,"x":' + b"[" * n + b"]" * n + b"}"
        for n in (500, 990, 1000, 1030, 5000)]


@pytest.mark.parametrize("options", OPTIONS.values(), ids=OPTIONS.keys())
def test_edge_lines_are_read_without_a_crash_and_every_line_has_one_outcome(options):
    lines = EDGE_LINES + DEEP
    reader = read_lines(b"\n".join(lines), options)
    assert len(reader.rows) + len(reader.rejects) == len(lines)
    assert {r.reason for r in reader.rejects} <= {
        "blank_line", "not_utf8", "malformed_json", "not_an_object", "schema", "out_of_range", "too_deep",
        "reward_missing", "reward_null", "reward_not_finite", "mask_sample", "empty_context", "non_text_content",
        "unknown_role", "tool_call_without_name", "no_assistant_output", "empty_response", "no_request",
        "not_a_rollout", "episode_no_prompt", "episode_no_conversation", "steps_output"}
    for reject in reader.rejects:
        assert not reject.detail.startswith("the typed decoder refused"), reject


@pytest.mark.parametrize("line", EDGE_LINES + DEEP, ids=range(len(EDGE_LINES) + len(DEEP)))
def test_the_decoder_and_the_schema_agree_on_every_edge_line(line):
    agree(line)


def test_the_named_hostile_cases(tmp_path, prepare):
    deep = b'{"responses_create_params":{"input":"q"},"reward":1,"x":' + b"[" * 1000 + b"]" * 1000 + b"}"
    rows = [rollout(prompt="extreme", answer="high", reward=1e308),
            rollout(prompt="extreme", answer="low", reward=-1e308),
            rollout(prompt="big index", answer="a", reward=1, task=2**71, agent="e"),
            rollout(prompt="big index", answer="b", reward=0, task=2**71, agent="e"),
            rollout(prompt="big index", answer="c", reward=0.5, task=2**71 + 1, agent="e"),
            rollout(prompt="zero", answer="y", reward=1), rollout(prompt="zero", answer="z", reward=123456789)]
    lines = [json.dumps(r).encode() for r in rows]
    lines[-1] = lines[-1].replace(b"123456789", b"-0")  # an integer -0: the reward 0.0
    lines += [deep, json.dumps(rollout(reward=1)).encode().replace(b'"reward": 1', b'"reward": 1' + b"0" * 400)]
    first = rollout(prompt="first", answer="x", reward=1)
    first["responses_create_params"]["instructions"] = ""  # on the first line: nothing to trip over
    lines.insert(0, json.dumps(first).encode())
    path = tmp_path / "hostile.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    manifest, out = prepare(path, "data.val_fraction=0")
    assert manifest["counts"]["rejected"] == {"too_deep": 1, "out_of_range": 1}
    rejects = {r["reason"]: r for r in read_jsonl(out / "rejects.jsonl")}
    assert rejects["out_of_range"]["detail"].startswith("reward:")
    pairs = read_jsonl(out / "train.jsonl")
    by_prompt = {p["context"][-1]["content"]: p for p in pairs}
    extreme = by_prompt["extreme"]
    assert (extreme["chosen_reward"], extreme["rejected_reward"], extreme["reward_gap"]) == (1e308, -1e308, None)
    assert by_prompt["big index"]["rejected_source"].endswith(":5")  # 2**71 groups apart from 2**71 + 1
    assert (by_prompt["zero"]["rejected_reward"] == 0.0
            and b'"rejected_reward":0.0' in (out / "train.jsonl").read_bytes())
    assert manifest["rewards"]["gap"]["not_finite"] == 1
    for name in ("train.jsonl", "val.jsonl", "rejects.jsonl", "manifest.json"):
        text = (out / name).read_bytes()
        for line in text.splitlines() if name.endswith(".jsonl") else [text]:
            orjson.loads(line)  # strict JSON: no NaN, no Infinity
    assert list((tmp_path / "runs").glob("*/report.html"))


def test_binary_format_a_whitespace_only_answer_or_prompt_is_handled_not_fatal(tmp_path, prepare):
    rows = [rollout(prompt="q", answer="\ufeff", reward=1), rollout(prompt="q", answer="fine", reward=0),
            rollout(prompt="q", answer="better", reward=0.5),
            rollout(prompt="\u3000", answer="a", reward=1), rollout(prompt="\u3000", answer="b", reward=0)]
    manifest, out = prepare(write_jsonl(tmp_path / "r.jsonl", rows), "data.format=binary", "data.val_fraction=0",
                            "data.keep_extra_fields=false")
    assert manifest["counts"]["rejected"] == {"empty_response": 1}
    pairs = read_jsonl(out / "train.jsonl")
    assert {"prompt": "q", "chosen": "better", "rejected": "fine"} in pairs
    assert {"prompt": [{"role": "user", "content": "\u3000"}], "chosen": "a", "rejected": "b"} in pairs


def test_a_report_that_cannot_be_drawn_is_a_warning_and_the_pairs_stay(tmp_path, prepare, monkeypatch, capsys):
    from recipe import report_page

    def broken(*args):
        raise ValueError("the plot cannot lay this out")

    monkeypatch.setattr(report_page, "after_prepare", broken)
    rows = [rollout(prompt="q", answer="a", reward=1), rollout(prompt="q", answer="b", reward=0)]
    manifest, out = prepare(write_jsonl(tmp_path / "r.jsonl", rows), "data.val_fraction=0")
    assert len(read_jsonl(out / "train.jsonl")) == 1 and (out / "manifest.json").is_file()
    assert "warning: report.html not written (ValueError: the plot cannot lay this out)" in capsys.readouterr().err


def test_a_plot_the_data_cannot_draw_is_skipped_with_a_note():
    from recipe import report_page

    section = report_page._drawn("x", "X", lambda: 1 / 0)
    assert section.figure is None and section.missing.startswith("not drawn: ZeroDivisionError")


# -- the property test: mutated real rollout lines ----------------------------------------------
BASE_LINES = [line for path in sorted((REFERENCE / "nemo-gym").glob("*.jsonl"))
              for line in path.read_bytes().splitlines()]
BASE_LINES += SAMPLE.read_bytes().splitlines()[:40] + EDGE_LINES[:40]
TOKENS = [b'"', b"\\", b"\\u", b"\\ud83d", b"{", b"}", b"[", b"]", b",", b":", b"null", b"true", b"-0", b"1e308",
          b"1e400", b"NaN", b"-", b".", b"\xff", b"\xef\xbb\xbf", b"\xe3\x80\x80", b" ", b"\t", b"\x00", b"0" * 30]
READ_KEYS = ["reward", "mask_sample", "_ng_task_index", "agent_ref", "output", "response", "responses_create_params"]
TRICKY = [10**400, -(10**400), 2**71, 2**64, -0.0, 1e308, -1e308, 5e-324, 3.0,
          "", " ", "\ufeff", "\u3000", "\x1c", [], {}]
VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
                      | st.text(max_size=8) | st.sampled_from(TRICKY),
                      lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
                          st.sampled_from(["type", "role", "content", "text", "name", "arguments", "output", "x"]),
                          inner, max_size=3), max_leaves=6)


def _paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield from _paths(value, prefix + (key,))
    elif isinstance(obj, list):
        for index, value in enumerate(obj):
            yield from _paths(value, prefix + (index,))


@st.composite
def mutated_lines(draw) -> bytes:
    line = draw(st.sampled_from(BASE_LINES))
    if draw(st.booleans()):  # a byte-level edit: JSON syntax, UTF-8, numbers
        for _ in range(draw(st.integers(1, 3))):
            at = draw(st.integers(0, len(line)))
            cut = draw(st.integers(0, 3))
            line = line[:at] + draw(st.sampled_from(TOKENS)) + line[at + cut:]
        return line
    try:  # a value-level edit: a field of the real row replaced by another JSON value
        obj = json.loads(line)
    except ValueError:
        return line
    paths = [p for p in _paths(obj) if p]
    if not paths or not isinstance(obj, dict):
        return line
    if draw(st.booleans()):  # half the time a key the decoder reads, set or added at the top
        path = (draw(st.sampled_from(READ_KEYS)),)
    else:
        path = draw(st.sampled_from(paths))
    target = obj
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = draw(VALUES)
    return json.dumps(obj, ensure_ascii=draw(st.booleans())).encode()


def test_every_tricky_value_in_every_field_the_decoder_reads_the_two_agree():
    """The systematic part of the property: each read field of real rows set to each tricky value."""
    for line in BASE_LINES[:50:5]:
        row = json.loads(line)
        if not isinstance(row, dict):
            continue
        for key in READ_KEYS:
            for value in TRICKY:
                agree(json.dumps({**row, key: value}).encode())


@settings(max_examples=600, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_lines())
def test_mutated_real_lines_the_decoder_and_schema_agree_and_nothing_crashes(line):
    agree(line)
    for options in OPTIONS.values():
        reader = read_lines(line, options)
        assert len(reader.rows) + len(reader.rejects) == 1


@settings(max_examples=12, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow,
                                                                                  HealthCheck.function_scoped_fixture])
@given(st.lists(mutated_lines(), min_size=5, max_size=25), st.sampled_from(["preference", "binary"]),
       st.sampled_from(["same_prompt", "all_pairs", "stratified"]))
def test_prepare_on_mutated_files_counts_add_up_and_writes_strict_json(tmp_path_factory, lines, data_format, strategy):
    from recipe.prepare import stage
    from tests.conftest import compose_config

    folder = tmp_path_factory.mktemp("fuzz")
    path = folder / "in.jsonl"
    # each line twice with another reward too, so that groups form and pairs are written
    twins = [line.replace(b'"reward": ', b'"reward": 0.5, "was": ', 1) for line in lines]
    path.write_bytes(b"\n".join(lines + twins + BASE_LINES[:10]) + b"\n")
    cfg = compose_config(f"data.input={path}", f"data.output_dir={folder / 'out'}", f"output_root={folder / 'runs'}",
                         "data.workers=1", f"data.format={data_format}", f"data_prep={strategy}",
                         "data.val_fraction=0.3")
    manifest = stage.run(cfg)
    counts = manifest["counts"]
    assert counts["lines"] == len(lines) * 2 + 10
    assert counts["paired"] + sum(counts["unpaired"].values()) + sum(counts["rejected"].values()) == counts["lines"]
    for name in ("train.jsonl", "val.jsonl", "rejects.jsonl"):
        for written in (folder / "out" / name).read_bytes().splitlines():
            value = orjson.loads(written)  # strict: orjson refuses NaN and Infinity
            assert all(not isinstance(v, float) or math.isfinite(v) for v in _leaves(value))
    orjson.loads((folder / "out" / "manifest.json").read_bytes())


def _leaves(value):
    if isinstance(value, dict):
        for v in value.values():
            yield from _leaves(v)
    elif isinstance(value, list):
        for v in value:
            yield from _leaves(v)
    else:
        yield value
