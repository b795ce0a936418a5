"""The C fast path (`recipe/prepare/_native.c`) against the Python path it stands in for.

The Python path is the definition: on every line the C path accepts, its record (keys, response
identity, reward, length, position) and its converted context and response must be the very
bytes the Python path gives; every line it is unsure of goes back to Python. Inputs: the ten
reference environments, the bundled sample, generated rows, and hand-made edge cases (escapes,
Unicode whitespace, duplicate keys, wrong types, ...).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import numpy as np
import orjson
import pytest
import xxhash

from recipe.prepare import chat, grouping, native, rollouts, scan, writer

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT.parent / "shared" / "reference" / "nemo-gym"
SAMPLE = ROOT / "samples" / "rollouts.jsonl"

if not native.enabled():
    if os.environ.get("GYM_DPO_REQUIRE_ENGINES") == "1":  # CI builds it: its absence is a failure
        pytest.fail("the C fast path recipe.prepare._native was not built", pytrace=False)
    pytest.skip("the C fast path was not built (no C compiler at install time)", allow_module_level=True)

OPTIONS = {
    "default": scan.ScanOptions(),
    "developer_role": scan.ScanOptions(chat=chat.ChatOptions("developer", False)),
    "binary": scan.ScanOptions(binary=True),
}


def python_records(data: bytes, options: scan.ScanOptions) -> tuple[np.ndarray, list[scan.Reject]]:
    reader = scan.LineReader(rollouts.Chunk(0, "mem", 0, len(data)), options)
    view, position, number = memoryview(data), 0, 0
    while position < len(data):
        end = data.find(b"\n", position)
        end = len(data) if end < 0 else end
        number += 1
        reader.read(view[position:end], number, position)
        position = end + 1
    return reader.records(), reader.rejects


def python_parts(line: bytes, options: scan.ScanOptions):
    context, response = scan.convert(*rollouts.Reader().decode(line), options)
    single_user_turn = len(context) == 1 and context[0]["role"] == "user"
    return (orjson.dumps(context), orjson.dumps(response),
            orjson.dumps(context[0]["content"]) if single_user_turn else None)


PAIR_SCHEMA = jsonschema.Draft202012Validator(rollouts.schema("pair"))


def pair_is_valid(parts, options: scan.ScanOptions) -> bool:
    """The pair that pairs this line with itself (both sides: what the writer puts together)."""
    context, response, prompt = parts
    if options.binary:
        line = writer.binary_line(prompt or context, response, response)
    else:
        line = writer.preference_line(context, response, response)
    return PAIR_SCHEMA.is_valid(orjson.loads(line))


def assert_agree(data: bytes, options: scan.ScanOptions) -> tuple[int, int]:
    """(lines the C path accepted, lines it handed back); fails on any disagreement."""
    blob, lines, handed_back = native.scan(data, 0, 0, options)
    fast = np.frombuffer(blob, dtype=grouping.RECORD)
    reference, _ = python_records(data, options)
    assert lines == data.count(b"\n") + (not data.endswith(b"\n"))
    assert len(fast) + len(handed_back) == lines
    by_line = {int(r["line"]): r for r in reference}
    for record in fast:
        line = int(record["line"])
        assert line in by_line, f"line {line}: the C path accepts a line the Python path refuses"
        assert record.tobytes() == by_line[line].tobytes(), f"line {line}: {record} != {by_line[line]}"
        text = data[record["offset"]:record["offset"] + record["nbytes"]]
        parts, expected = native.convert(text, options), python_parts(text, options)
        if parts is None:  # declined to build a pair from it: only when the schema may refuse it
            assert not pair_is_valid(expected, options) or not expected[2] or \
                not orjson.loads(expected[2]).strip(), f"line {line}"
            continue
        assert parts == expected, f"line {line}"
        assert pair_is_valid(parts, options), f"line {line}: the C path built a pair the schema refuses"
    for number, start, end in handed_back:  # handed back: convert() must hand it back too
        assert native.convert(data[start:end], options) is None, f"line {number}"
    return len(fast), len(handed_back)


def rows_of(path: Path) -> bytes:
    return path.read_bytes()


@pytest.mark.parametrize("options", OPTIONS.values(), ids=OPTIONS.keys())
def test_reference_environments_and_sample(options):
    accepted = 0
    for path in [*sorted(REFERENCE.glob("*.jsonl")), SAMPLE]:
        accepted += assert_agree(rows_of(path), options)[0]
    assert accepted > 100  # the C path really is the one reading them


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("gen") / "rows.jsonl"
    subprocess.run([sys.executable, str(ROOT / "bench" / "gen_rollouts.py"), str(path),
                    "--rollouts", "3000", "--seed", "7"], check=True, capture_output=True)
    return path.read_bytes()


@pytest.mark.parametrize("options", OPTIONS.values(), ids=OPTIONS.keys())
def test_generated_rows(generated, options):
    accepted, _ = assert_agree(generated, options)
    assert accepted >= 2500


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
    _row(_ng_task_index=2**64 - 1), _row(_ng_task_index=1.0), _row(_ng_rollout_index="x"),
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
                                            {"role": "assistant", "content": "a1"}, {"role": "assistant", "content": "a2"},
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
    b'  {"responses_create_params":{"input":"q"},"reward":1,"response":{"output":[{"role":"assistant","content":"a"}]}}  ',
    b'{"responses_create_params":{"input":"q"},"reward":1,"response":{"output":[{"role":"assistant","content":"a"}]}} x',
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


@pytest.mark.parametrize("options", OPTIONS.values(), ids=OPTIONS.keys())
def test_edge_cases(options):
    lines = [json.dumps(row, ensure_ascii=ascii).encode() for row in EDGE_ROWS for ascii in (True, False)]
    data = b"\n".join(lines + RAW_LINES)
    accepted, handed_back = assert_agree(data, options)
    assert accepted > 40 and handed_back > 40


def test_chunks_without_trailing_newline_and_offsets():
    data = SAMPLE.read_bytes()
    lines = data.split(b"\n")
    blob, count, _ = native.scan(data.rstrip(b"\n"), 3, 1000, OPTIONS["default"])
    records = np.frombuffer(blob, dtype=grouping.RECORD)
    assert count == data.count(b"\n") and len(records) > 100
    for record in records:
        assert record["file"] == 3
        start = record["offset"] - 1000
        assert data[start:start + record["nbytes"]] == lines[record["line"] - 1]


def test_xxh64_is_xxhash():
    for size in [*range(0, 80), 255, 1000, 4097]:
        data = os.urandom(size)
        for seed in (0, 1, 2**63, 2**64 - 1):
            assert native._native.xxh64(data, seed) == xxhash.xxh64_intdigest(data, seed)


def test_floats_are_written_as_orjson_writes_them():
    """The reward fields of data.keep_extra_fields: shortest digits, orjson's notation (a run of
    1.2 million values, random bit patterns among them, agreed the same way)."""
    import random
    import struct

    rng = random.Random(5)
    values = [0.0, -0.0, 1.0, 0.5, 1e16, 1e15, 1.5e-7, 1e-5, 1e-6, 5e-324, 1.7976931348623157e308,
              100.0, 0.1, 0.30000000000000004, 2.5e-5, 9007199254740992.0, 2.2250738585072014e-308]
    for _ in range(5000):
        values += [struct.unpack("d", struct.pack("Q", rng.getrandbits(64)))[0], rng.uniform(-10, 10),
                   round(rng.uniform(0, 1), rng.randint(0, 6)),
                   rng.randint(-10**6, 10**6) * 10.0 ** rng.randint(-30, 30)]
    finite = [v for v in values if v == v and abs(v) != float("inf")]
    assert [native._native.float_json(v) for v in finite] == [orjson.dumps(v) for v in finite]


def test_whitespace_is_pythons():
    assert [c for c in range(0x110000) if chr(c).isspace() != native._native.is_space(c)] == []


@pytest.mark.parametrize("overrides", [[], ["data.format=binary"], ["data.keep_extra_fields=false"],
                                       ["data.developer_role=developer", "data_prep=all_pairs"]])
def test_prepare_gives_the_same_files_either_way(tmp_path, generated, overrides):
    """The whole stage on the sample plus generated rows: the same bytes with the C path on or off."""
    rows = tmp_path / "rows.jsonl"
    rows.write_bytes(SAMPLE.read_bytes() + generated)
    outputs = {}
    for flag in ("1", "0"):
        out = tmp_path / f"native{flag}"
        subprocess.run([sys.executable, "-m", "recipe", "stage=prepare", f"data.input={rows}",
                        f"data.output_dir={out}", f"hydra.run.dir={tmp_path / ('run' + flag)}", *overrides],
                       check=True, capture_output=True, env={**os.environ, "GYM_DPO_NATIVE": flag})
        outputs[flag] = {name: (out / name).read_bytes() for name in ("train.jsonl", "val.jsonl", "rejects.jsonl")}
        outputs[flag]["counts"] = json.loads((out / "manifest.json").read_text())["counts"]
    assert outputs["1"] == outputs["0"]
    assert outputs["1"]["train.jsonl"].count(b"\n") > 300


MUTATIONS = [b'"', b"\\", b"\\u", b"\\ud83d", b"{", b"}", b"[", b"]", b",", b":", b"null", b"true",
             b"1e999", b"-0", b"\xff", b"\xed\xa0\x80", b"\x00", b" ", b"\\n", b'"role"', b'"type"',
             b'"reward"', b'"assistant"']


def test_mutated_lines_agree_or_go_back():
    """Real lines with bytes deleted, inserted, overwritten or cut: the C path never crashes,
    never accepts what Python refuses, and agrees on what it accepts (a seeded fuzz; a run of
    300,000 mutations passed the same way)."""
    import random

    rng = random.Random(8)
    lines = [line for path in [*sorted(REFERENCE.glob("*.jsonl")), SAMPLE]
             for line in path.read_bytes().split(b"\n") if line]

    def mutate(line: bytes) -> bytes:
        data = bytearray(line)
        for _ in range(rng.randint(1, 4)):
            op, at = rng.random(), rng.randrange(len(data) + 1)
            if op < 0.3:
                del data[at:at + rng.randint(1, 8)]
            elif op < 0.6:
                data[at:at] = rng.choice(MUTATIONS)
            elif op < 0.8 and data:
                data[min(at, len(data) - 1)] = rng.randrange(256)
            else:
                data = data[:at]
        return bytes(data)

    accepted = 0
    for _ in range(20):
        batch = b"\n".join(mutate(rng.choice(lines)) for _ in range(200))
        accepted += sum(assert_agree(batch, options)[0] for options in OPTIONS.values())
    assert accepted > 500
