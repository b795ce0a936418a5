#!/usr/bin/env python3
"""Fast generator of synthetic NeMo Gym rollouts (real layout) for benchmarks.

    python bench/gen_rollouts.py OUT.jsonl --rollouts 1000000 --per-task 5 --words 100 --seed 0

Each line is a rollout as NeMo Gym's rollout collection writes it: `responses_create_params`
(the request: `input` messages, `tools`, `temperature`, `metadata` with a per-rollout seed, ...),
`response` (a Responses API object: `id`, `model`, `status`, `usage`, and the generated turns in
`output`: a `reasoning` item, then, in about 10% of rows, a `function_call` /
`function_call_output` pair, then the assistant `message` with `output_text` parts), a float
`reward`, `_ng_task_index`, `_ng_rollout_index` and `agent_ref`.

All rollouts of one task share the same context (system and user turns) and have different
rewards. They are written in a shuffled "completion order": rows pass through a bounded window
(`--window` rows) from which a random one is emitted, never right after a row of the same task
when another choice exists; memory stays bounded whatever `--rollouts` is.

Texts come from a fixed built-in vocabulary; the output is deterministic for a given seed.
With `--words 100` a row is about 1.6 KB (1M rows is about 1.6 GB).
"""
from __future__ import annotations

import argparse
import random
import sys
import time

try:
    import orjson

    def _dumps(obj) -> bytes:
        return orjson.dumps(obj)

    JSON_LIB = "orjson"
except ImportError:  # pragma: no cover - the fallback is exercised only without orjson
    import json

    _encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))

    def _dumps(obj) -> bytes:
        return _encoder.encode(obj).encode("utf-8")

    JSON_LIB = "json"

VOCAB = """
the a an of to in and or for with on at by from as is are was were be been has have had
it this that these those which what when where how why there here then than so if not no
model answer value result number total sum step first second third next last final check
compute estimate count measure compare divide multiply add subtract round convert scale
table list record field row column index key entry file folder path line word token text
river mountain forest valley island harbour bridge tower market garden station village
city road street square park museum library school office kitchen window door roof wall
red green blue yellow orange purple silver golden dark bright quiet loud small large wide
narrow early late quick slow simple clear careful exact rough average typical rare common
because therefore however although since unless until while during before after between
each every some many few several most least more less half quarter double triple zero one
two three four five six seven eight nine ten hundred thousand million percent degree metre
hour minute second day week month year morning evening night weather rain snow wind cloud
question problem solution reason proof claim idea method approach pattern rule case example
""".split()

AGENTS = (
    # name, share of tasks, has tools, reward style
    ("math_simple_agent", 0.40, False, "binary"),
    ("mcqa_simple_agent", 0.35, False, "graded"),
    ("search_tool_agent", 0.25, True, "graded"),
)
FUNCTION_CALL_SHARE = 0.10  # of all rows; only tool agents call tools
TOOL_CALL_PROB = FUNCTION_CALL_SHARE / sum(s for _, s, t, _ in AGENTS if t)

SEARCH_TOOL = {
    "name": "search",
    "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]},
    "strict": True,
    "type": "function",
    "description": "Search the knowledge base.",
}
SYSTEM_PROMPTS = (
    "Think step by step, then give a short final answer.",
    "Put the final answer inside \\boxed{}.",
    "Use the search tool when a fact is needed.",
)
REASONING_SUMMARY_PROB = 0.3  # real reasoning items often have an empty summary
MODEL = "org/policy-8b"
CREATED_AT_BASE = 1767268800.0


class TextSource:
    """Random word runs from a fixed vocabulary, fast: joins pre-built 8-word phrases."""

    PHRASE = 8

    def __init__(self, rng: random.Random, n_phrases: int = 4096):
        self.rng = rng
        self.phrases = [" ".join(rng.choices(VOCAB, k=self.PHRASE)) for _ in range(n_phrases)]
        self.words = VOCAB

    def text(self, n_words: int) -> str:
        k, rest = divmod(max(1, n_words), self.PHRASE)
        parts = self.rng.choices(self.phrases, k=k)
        if rest:
            parts.append(" ".join(self.rng.choices(self.words, k=rest)))
        s = " ".join(parts)
        return s[0].upper() + s[1:] + "."


class Budget:
    """How --words (mean words of text in a row, system prompt aside) is split among the texts."""

    def __init__(self, words: int):
        self.user = max(4, words // 10)          # + the 4 words of QUESTION_TAIL
        self.summary = max(1, words // 5)        # when the reasoning item has a summary
        self.tool_output = max(4, words // 5)    # when there is a function call (+5 query words)
        other = (self.user + 4 + REASONING_SUMMARY_PROB * self.summary
                 + FUNCTION_CALL_SHARE * (self.tool_output + 5))
        self.answer = max(1, round(words - other))  # mean words of the assistant answer


QUESTION_TAIL = " What is the result?"


def build_task(task: int, rng: random.Random, ts: TextSource, b: Budget):
    r = rng.random()
    acc = 0.0
    for agent in AGENTS:
        acc += agent[1]
        if r < acc:
            break
    name, _share, tools, style = agent
    user = ts.text(b.user) + QUESTION_TAIL
    messages = [{"role": "user", "content": user, "type": "message"}]
    if tools or rng.random() < 0.5:  # half of the plain tasks have a system prompt
        sys_prompt = SYSTEM_PROMPTS[2] if tools else SYSTEM_PROMPTS[rng.randrange(2)]
        messages.insert(0, {"role": "system", "content": sys_prompt, "type": "message"})
    return {
        "agent_ref": {"type": "responses_api_agents", "name": name},
        "input": messages,
        "tools": [SEARCH_TOOL] if tools else [],
        "style": style,
        "prompt_tokens": 20 + (b.user + 4) * 4 // 3 + (40 if tools else 0),
    }


def build_row(task_idx: int, rollout_idx: int, t: dict, rng: random.Random, ts: TextSource,
              b: Budget, created_at: float) -> dict:
    rnd = rng.random
    hexid = rng.getrandbits
    n_words = max(1, int(b.answer * (0.6 + 0.8 * rnd()) + 0.5))  # mean == b.answer
    answer = ts.text(n_words)
    summary_words = b.summary if rnd() < REASONING_SUMMARY_PROB else 0
    output = [{
        "id": f"rs_{hexid(64):016x}",
        "summary": [{"type": "summary_text", "text": ts.text(summary_words)}] if summary_words else [],
        "type": "reasoning",
        "encrypted_content": None,
    }]
    if t["tools"] and rnd() < TOOL_CALL_PROB:
        call_id = f"call_{hexid(64):016x}"
        output.append({
            "arguments": '{"query": "' + ts.text(5)[:-1] + '"}',
            "call_id": call_id,
            "name": "search",
            "type": "function_call",
            "id": f"fc_{hexid(64):016x}",
            "status": "completed",
        })
        output.append({
            "call_id": call_id,
            "output": ts.text(b.tool_output),
            "type": "function_call_output",
            "id": None,
            "status": None,
        })
    output.append({
        "id": f"msg_{hexid(64):016x}",
        "content": [{"annotations": [], "text": answer, "type": "output_text"}],
        "role": "assistant",
        "status": "completed",
        "type": "message",
    })
    if t["style"] == "binary":
        reward = 1.0 if rnd() < 0.5 else 0.0
    else:
        reward = round(rnd(), 4)
    reasoning_tokens = 30 + summary_words * 4
    out_tokens = n_words * 4 // 3 + reasoning_tokens
    rcp = {
        "input": t["input"],
        "instructions": None,
        "max_output_tokens": 4096,
        "metadata": {"seed": str(hexid(31))},
        "temperature": 1.0,
        "tools": t["tools"],
    }
    if t["tools"]:
        rcp["tool_choice"] = "auto"
        rcp["parallel_tool_calls"] = True
    return {
        "responses_create_params": rcp,
        "response": {
            "id": f"resp_{hexid(96):024x}",
            "created_at": created_at,
            "error": None,
            "model": MODEL,
            "object": "response",
            "output": output,
            "status": "completed",
            "temperature": 1.0,
            "usage": {
                "input_tokens": t["prompt_tokens"],
                "output_tokens": out_tokens,
                "output_tokens_details": {"reasoning_tokens": reasoning_tokens},
                "total_tokens": t["prompt_tokens"] + out_tokens,
            },
        },
        "reward": reward,
        "_ng_task_index": task_idx,
        "_ng_rollout_index": rollout_idx,
        "agent_ref": t["agent_ref"],
    }


def generate(path: str, rollouts: int, per_task: int, words: int, seed: int, window: int) -> tuple[int, int]:
    rng = random.Random(seed)
    b = Budget(words)
    ts = TextSource(random.Random(seed ^ 0x5EED))
    randrange = rng.randrange
    buf: list[tuple[int, bytes]] = []
    out_chunk: list[bytes] = []
    last_task = -1
    n_written = 0
    n_bytes = 0
    made = 0
    task = 0

    with open(path, "wb", buffering=1 << 20) as f:

        def emit_one() -> None:
            nonlocal last_task, n_written, n_bytes
            n = len(buf)
            i = randrange(n)
            if buf[i][0] == last_task:  # avoid two neighbouring rows of one task when possible
                for _ in range(8):
                    i = randrange(n)
                    if buf[i][0] != last_task:
                        break
            item = buf[i]
            buf[i] = buf[-1]
            buf.pop()
            last_task = item[0]
            out_chunk.append(item[1])
            n_written += 1
            n_bytes += len(item[1])
            if len(out_chunk) >= 2048:
                f.write(b"".join(out_chunk))
                out_chunk.clear()

        while made < rollouts:
            t = build_task(task, rng, ts, b)
            for r in range(min(per_task, rollouts - made)):
                row = build_row(task, r, t, rng, ts, b, float(CREATED_AT_BASE + made // 50))
                buf.append((task, _dumps(row) + b"\n"))
                made += 1
                if len(buf) >= window:
                    emit_one()
            task += 1
        while buf:
            emit_one()
        if out_chunk:
            f.write(b"".join(out_chunk))
    return n_written, n_bytes


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", help="output .jsonl path")
    ap.add_argument("--rollouts", type=int, default=1_000_000, help="rows to write (default 1000000)")
    ap.add_argument("--per-task", type=int, default=5, help="rollouts per task (default 5)")
    ap.add_argument("--words", type=int, default=100,
                    help="mean words of text per row: user turn, reasoning summary, tool output and "
                         "answer together (default 100)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--window", type=int, default=4096,
                    help="rows held for the shuffled completion order (bounds memory; default 4096)")
    a = ap.parse_args(argv)
    if a.rollouts < 0 or a.per_task < 1 or a.words < 1 or a.window < 1:
        ap.error("--rollouts >= 0, --per-task >= 1, --words >= 1 and --window >= 1 are required")
    t0 = time.perf_counter()
    n, nbytes = generate(a.out, a.rollouts, a.per_task, a.words, a.seed, a.window)
    dt = time.perf_counter() - t0
    print(f"rows written: {n}  bytes: {nbytes} ({nbytes / max(n, 1):.0f} B/row)  "
          f"seconds: {dt:.2f}  ({n / dt if dt else 0:.0f} rows/s, {JSON_LIB})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
