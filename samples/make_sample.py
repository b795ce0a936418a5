#!/usr/bin/env python3
"""Write samples/rollouts.jsonl and samples/README.md (deterministic, seeded).

The sample is hand-designed content in the real NeMo Gym rollout layout (the one its rollout
collection, `nemo_gym/rollout_collection.py`, writes; docs/prepare.md, "What it reads"):
two environments (math_simple_agent, weather_tool_agent) with `_ng_task_index`,
`_ng_rollout_index` and `agent_ref`, a few hand-made rows without them, and a handful of bad
or excluded lines. Rows are written in a shuffled "completion order": no two neighbouring lines
belong to the same task.

Every count in the README is computed here from the rows written, and printed.

    python samples/make_sample.py            # rewrite both files
    python samples/make_sample.py --check    # exit 1 if the committed files differ
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from collections import OrderedDict
from pathlib import Path

SEED = 20260115
HERE = Path(__file__).resolve().parent
OUT_JSONL = HERE / "rollouts.jsonl"
OUT_README = HERE / "README.md"

MODEL = "sample-org/policy-1b-instruct"
MATH_AGENT = "math_simple_agent"
WEATHER_AGENT = "weather_tool_agent"
ROLLOUTS_PER_TASK = 6
CREATED_AT_BASE = 1767268800  # 2026-01-01T12:00:00Z

rng = random.Random(SEED)


def hexid(n: int = 16) -> str:
    return "".join(rng.choice("0123456789abcdef") for _ in range(n))


# ----------------------------------------------------------------------------------------------
# Responses API building blocks
# ----------------------------------------------------------------------------------------------
def user_msg(text: str, typed: bool = True) -> dict:
    m = {"content": text, "role": "user"}
    if typed:
        m["type"] = "message"
    return m


def system_msg(text: str, role: str = "system", typed: bool = True) -> dict:
    m = {"content": text, "role": role}
    if typed:
        m["type"] = "message"
    return m


def assistant_item(text: str) -> dict:
    return {
        "id": "msg_" + hexid(),
        "content": [{"annotations": [], "text": text, "type": "output_text"}],
        "role": "assistant",
        "status": "completed",
        "type": "message",
    }


def env_user_item(text: str) -> dict:
    # environment / user-simulator turn inside response.output (as in the real game envs)
    return {"content": text, "role": "user", "type": "message"}


def reasoning_item(summary: str | None) -> dict:
    return {
        "id": "rs_" + hexid(),
        "summary": [] if summary is None else [{"text": summary, "type": "summary_text"}],
        "type": "reasoning",
        "encrypted_content": None,
    }


def function_call_items(name: str, args: dict, output: dict) -> list[dict]:
    call_id = "call_" + hexid(16)
    return [
        {
            "arguments": json.dumps(args),
            "call_id": call_id,
            "name": name,
            "type": "function_call",
            "id": "fc_" + hexid(),
            "status": "completed",
        },
        {
            "call_id": call_id,
            "output": json.dumps(output, ensure_ascii=False),
            "type": "function_call_output",
            "id": None,
            "status": None,
        },
    ]


WEATHER_TOOL = {
    "name": "get_weather",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
    "strict": True,
    "type": "function",
    "description": "Get the current weather for a city.",
}


def create_params(inp, *, instructions=None, tools=(), temperature=1.0, seed=None,
                  max_output_tokens=None) -> dict:
    # The request as rollout collection stored it. Real files often carry every Responses API
    # field (mostly null); this sample keeps the ones that matter, to stay small.
    rcp = {"input": inp, "instructions": instructions, "max_output_tokens": max_output_tokens,
           "metadata": None if seed is None else {"seed": str(seed)}, "temperature": temperature}
    if tools:
        rcp.update({"parallel_tool_calls": True, "tool_choice": "auto", "tools": list(tools)})
    return rcp


def ntok(text: str) -> int:
    return max(1, round(len(text.split()) * 1.3))


def response_obj(output: list[dict], *, prompt_tokens) -> dict:
    out_tokens = 0
    reasoning_tokens = 0
    for it in output:
        if it.get("type") == "message" and it.get("role") == "assistant":
            c = it["content"]
            out_tokens += ntok(c if isinstance(c, str) else " ".join(p["text"] for p in c))
        elif it.get("type") == "function_call":
            out_tokens += 12
        elif it.get("type") == "reasoning":
            reasoning_tokens += 40
    out_tokens += reasoning_tokens
    return {
        "id": "resp_" + hexid(24),
        "created_at": 0.0,  # set once the completion order is known
        "model": MODEL,
        "object": "response",
        "output": output,
        "status": "completed",
        "usage": {
            "input_tokens": prompt_tokens,
            "output_tokens": out_tokens,
            "total_tokens": prompt_tokens + out_tokens,
        },
    }


# ----------------------------------------------------------------------------------------------
# Environment 1: math_simple_agent (0/1 correctness, answer must be inside \boxed{})
# ----------------------------------------------------------------------------------------------
BOX_RULE = "Put the final answer (and only the answer) inside \\boxed{}."
MATH_TASKS = [
    # question, answer, short working, a wrong answer, the wrong working
    ("What is 17 + 26?", 43, "17 + 26 = 43.", 33, "17 + 26 is 10 + 20 plus 3, so 33."),
    ("A box holds 12 eggs. How many eggs are in 5 boxes?", 60, "5 × 12 = 60.", 17,
     "We add the boxes and the eggs: 12 + 5 = 17."),
    ("What is 144 divided by 12?", 12, "144 ÷ 12 = 12.", 14, "144 ÷ 12 is a bit more than 13, so 14."),
    ("Tom has 35 marbles and gives away 18. How many does he have left?", 17, "35 − 18 = 17.", 23,
     "35 − 18, take 10 and then 2, gives 23."),
    ("What is 9 squared minus 4?", 77, "9² = 81 and 81 − 4 = 77.", 14, "9 squared is 18, and 18 − 4 = 14."),
    ("A train travels at 60 km per hour for 3 hours. How many kilometres does it travel?", 180,
     "60 × 3 = 180.", 20, "Speed divided by time: 60 ÷ 3 = 20."),
    ("What is the sum of the first 10 positive integers?", 55, "10 × 11 ÷ 2 = 55.", 45,
     "Adding 1 to 9 gives 45."),
    ("A shirt costs $40 and is 25% off. What is the sale price in dollars?", 30,
     "25% of 40 is 10, and 40 − 10 = 30.", 15, "40 minus 25 is 15."),
    ("What is the least common multiple of 4 and 6?", 12, "Multiples of 6: 6, 12; 12 is divisible by 4.",
     24, "4 × 6 = 24."),
    ("If 3x + 5 = 20, what is x?", 5, "3x = 15, so x = 5.", 25, "3x = 20 + 5 = 25."),
    ("How many minutes are there in 2.5 hours?", 150, "2.5 × 60 = 150.", 250, "2.5 hours is 250 minutes."),
    ("What is 7 times 8?", 56, "7 × 8 = 56.", 54, "7 × 8 is about 54."),
    ("A rectangle is 7 cm by 4 cm. What is its area in square centimetres?", 28, "7 × 4 = 28.", 11,
     "Adding the sides: 7 + 4 = 11."),
    ("What is 2 to the power of 6?", 64, "2⁶ = 2 × 2 × 2 × 2 × 2 × 2 = 64.", 12, "2 × 6 = 12."),
]
# how each task shows its prompt (exercises every input form of the contract)
#   str: input is a plain string; user: [user]; sys: [system, user]; dev: [developer, user];
#   instr: `instructions` + [user] (no "type" keys)
MATH_FORMS = ["str", "user", "sys", "str", "dev", "user", "instr", "sys", "user", "str", "dev",
              "user", "instr", "sys"]
MATH_SYSTEM = "You are a careful math tutor. Show one short line of working. " + BOX_RULE
MATH_TIE_TASK = 11          # 7 x 8: every rollout correct -> all rewards equal, no pair
MATH_MULTITURN_TASK = 12    # rectangle: a format checker answers inside response.output
MATH_NULL_TASK = 2          # one rollout with reward null (judge not run)
MATH_HIGH_TASK = 4          # one rollout with reward "high" (not a number)
MATH_EMPTY_TASK = 8         # one rollout whose assistant text is ""

FORMAT_FEEDBACK = "Format check failed: no \\boxed{} answer found. Reply with the final answer in \\boxed{}."


def math_good(w, a, variant):
    if variant == 0:
        return f"{w}\n\n\\boxed{{{a}}}"
    return f"{w} So the answer is \\boxed{{{a}}}."


def math_bad(style, q, a, w, wrong, wwork):
    if style == "hedge":  # wrong value, no box, hedging
        return (f"Hmm, I am not sure about this one. {wwork} I think the answer might be {wrong}, "
                f"but I could be wrong, so please double-check it.")
    if style == "ramble":  # off-topic, no answer format
        return ("Great question! Problems like this come up a lot in everyday life, for example "
                "when shopping or cooking. There are several ways to approach it and each has its "
                "own advantages, so it is worth thinking about what the question really asks. "
                f"In any case the result should be somewhere around {wrong}.")
    if style == "wrongbox":  # wrong value inside a box, unsure
        return f"Let me try. {wwork} So maybe \\boxed{{{wrong}}}? I am not completely confident."
    if style == "nobox":  # right value but breaks the required format
        return f"ANSWER: {a} (I did not use the box format, sorry)"
    raise ValueError(style)


BAD_MATH_STYLES = ["hedge", "ramble", "wrongbox", "nobox"]


def math_prompt(t: int):
    q = MATH_TASKS[t][0]
    form = MATH_FORMS[t]
    if t == MATH_MULTITURN_TASK:
        instr = ("Answer with the final result in \\boxed{}. A format checker replies if it finds "
                 "no boxed answer, and you get one more try.")
        return [user_msg(q, typed=False)], instr
    if form == "str":
        return f"{q} {BOX_RULE}", None
    if form == "user":
        return [user_msg(f"{q}\n\n{BOX_RULE}")], None
    if form == "sys":
        return [system_msg(MATH_SYSTEM), user_msg(q)], None
    if form == "dev":
        return [system_msg(MATH_SYSTEM, role="developer"), user_msg(q)], None
    if form == "instr":
        return [user_msg(q, typed=False)], MATH_SYSTEM
    raise ValueError(form)


def math_rollouts(t: int) -> list[dict]:
    """Return the six rollout specs of math task t: dicts with output, reward, extras."""
    q, a, w, wrong, wwork = MATH_TASKS[t]
    specs = []
    if t == MATH_TIE_TASK:
        plan = [("good", 0), ("good", 1), ("good", 0), ("good", 1), ("good", 0), ("good", 0)]
    elif t == MATH_MULTITURN_TASK:
        plan = [("good", 0), ("mt_fail", None), ("good", 1), ("mt_recover", None), ("good", 0),
                ("bad", "wrongbox")]
    else:
        n_good = rng.randint(2, 4)
        plan = [("good", rng.randint(0, 1)) for _ in range(n_good)]
        plan += [("bad", rng.choice(BAD_MATH_STYLES)) for _ in range(ROLLOUTS_PER_TASK - n_good)]
        rng.shuffle(plan)
    for kind, arg in plan:
        with_reasoning = rng.random() < 0.5
        out = [reasoning_item(None)] if with_reasoning else []
        extracted = None
        if kind == "good":
            out.append(assistant_item(math_good(w, a, arg)))
            reward, extracted = 1.0, str(a)
        elif kind == "bad":
            out.append(assistant_item(math_bad(arg, q, a, w, wrong, wwork)))
            reward = 0.0
            extracted = str(wrong) if arg == "wrongbox" else None
        elif kind == "mt_recover":
            out.append(assistant_item("The area is 7 times 4, which is 28 square centimetres."))
            out.append(env_user_item(FORMAT_FEEDBACK))
            out.append(assistant_item("\\boxed{28}"))
            reward, extracted = 0.5, "28"
        elif kind == "mt_fail":
            out.append(assistant_item("It is about 11, because 7 plus 4 is 11."))
            out.append(env_user_item(FORMAT_FEEDBACK))
            out.append(assistant_item("I still think it is 11 square centimetres, adding the two sides."))
            reward = 0.0
        specs.append({"kind": kind, "output": out, "reward": reward,
                      "extras": {"expected_answer": str(a), "extracted_answer": extracted}})
    return specs


# ----------------------------------------------------------------------------------------------
# Environment 2: weather_tool_agent (partial credit 0 / 0.25 / 0.5 / 1.0)
# ----------------------------------------------------------------------------------------------
# reward = 0.25 * called_tool + 0.25 * right_city + 0.5 * answer_correct
WEATHER_TASKS = [
    # question city, tool city argument, location the environment resolves, temp C, conditions, typo
    ("Paris", "Paris", "Paris", 18, "light rain", "Pari"),
    ("Tokyo", "Tokyo", "Tokyo", 24, "sunny", "Tokio City"),
    ("Cairo", "Cairo", "Cairo", 33, "clear skies", "Kairo"),
    ("Oslo", "Oslo", "Oslo", -3, "snow", "Olso"),
    ("Lima", "Lima", "Lima", 19, "overcast", "Lim"),
    ("Toronto", "Toronto", "Toronto", 7, "windy", "Torronto"),
    ("Mumbai", "Mumbai", "Mumbai", 30, "humid and cloudy", "Mumbay"),
    ("Sydney", "Sydney", "Sydney", 22, "partly cloudy", "Sidney"),
    # two tasks with the SAME visible input: the environment's scenario decides the place
    ("Springfield", "Springfield", "Springfield, IL", 12, "thunderstorms", "Springfeld"),
    ("Springfield", "Springfield", "Springfield, MA", 5, "drizzle", "Springfeld"),
]
WEATHER_DEV = ("You are a weather assistant. Call get_weather, then answer in one line: "
               "'Current weather in CITY: TEMP°C, CONDITIONS.'")
WEATHER_FORMS = ["dev", "dev", "instr_str", "sys", "dev", "instr_str", "dev", "sys", "dev", "dev"]
WEATHER_TIE_TASK = 4        # Lima: every rollout fully correct -> no pair
WEATHER_MASK_TASK = 1       # Tokyo: the best-rewarded rollout carries mask_sample: true
SAME_INPUT_TASKS = (8, 9)


def weather_question(city):
    return f"What's the weather in {city} right now?"


def weather_prompt(t: int):
    city = WEATHER_TASKS[t][0]
    form = WEATHER_FORMS[t]
    q = weather_question(city)
    if form == "dev":
        return [system_msg(WEATHER_DEV, role="developer"), user_msg(q)], None
    if form == "sys":
        return [system_msg(WEATHER_DEV, typed=False), user_msg(q, typed=False)], None
    if form == "instr_str":
        return q, WEATHER_DEV
    raise ValueError(form)


def weather_rollouts(t: int) -> list[dict]:
    qcity, argcity, place, temp, cond, typo = WEATHER_TASKS[t]
    shown = qcity  # how the assistant names the place
    if t == WEATHER_TIE_TASK:
        plan = ["good"] * ROLLOUTS_PER_TASK
    elif t == WEATHER_MASK_TASK:
        plan = ["good_masked", "partial", "guess", "partial", "wrongcity", "guess"]
    else:
        n_good = rng.randint(2, 3)
        plan = ["good"] * n_good + [rng.choice(["partial", "wrongcity", "guess", "guess"])
                                     for _ in range(ROLLOUTS_PER_TASK - n_good)]
        if "guess" not in plan and "wrongcity" not in plan:
            plan[-1] = "guess"
        rng.shuffle(plan)
    specs = []
    for kind in plan:
        ok = {"city": place, "temperature_c": temp, "conditions": cond}
        if kind in ("good", "good_masked"):
            out = [reasoning_item(f"The user wants the current weather in {shown}; call get_weather.")]
            out += function_call_items("get_weather", {"city": argcity}, ok)
            sep = ", " if rng.random() < 0.6 or " and " in cond else " and "
            out.append(assistant_item(f"Current weather in {shown}: {temp}°C{sep}{cond}."))
            comps = (1, 1, 1)
        elif kind == "partial":
            out = [reasoning_item(None)]
            out += function_call_items("get_weather", {"city": argcity}, ok)
            out.append(assistant_item(
                f"It seems the weather in {shown} is okay today. I checked the service but I am not "
                "sure about the exact numbers, so you might want to look at a local forecast too."))
            comps = (1, 1, 0)
        elif kind == "wrongcity":
            out = [reasoning_item(None)]
            out += function_call_items("get_weather", {"city": typo},
                                       {"error": f"unknown city: {typo}"})
            out.append(assistant_item(
                "Sorry, I could not find the weather for that place. Maybe try again later, or "
                "check another website that might have better information about it?"))
            comps = (1, 0, 0)
        elif kind == "guess":
            out = [reasoning_item(None)]
            out.append(assistant_item(
                f"I don't have live data, but {shown} is usually pleasant this time of year, "
                "probably around 20 degrees and sunny. Please check a local forecast to be sure."))
            comps = (0, 0, 0)
        else:
            raise ValueError(kind)
        called, right, correct = comps
        reward = 0.25 * called + 0.25 * right + 0.5 * correct
        extras = {
            "reward_components": {"called_tool": float(called), "right_city": float(right),
                                  "answer_correct": float(correct)},
            "scenario": {"location": place},
            "mask_sample": kind == "good_masked",
        }
        if kind == "good_masked":
            extras["agent_error"] = "token record truncated after tool call"
        specs.append({"kind": kind, "output": out, "reward": reward, "extras": extras})
    return specs


# ----------------------------------------------------------------------------------------------
# Third kind: hand-made rows (no _ng_* indices, no agent_ref): grouped by context only
# ----------------------------------------------------------------------------------------------
HANDMADE = [
    {
        "input": "Which planet is the largest in the Solar System? Answer in one short sentence.",
        "instructions": None,
        "answers": [
            ("Jupiter is the largest planet in the Solar System.", 1),
            ("The largest planet is probably Saturn, because of its big rings, although some "
             "people say Jupiter, so it is hard to be certain.", 0),
            ("Jupiter.", 1),
        ],
        "string_content": False,
    },
    {
        "input": [{"role": "system", "content": "Answer briefly and precisely."},
                  {"role": "user", "content": "What gas do plants take in from the air for photosynthesis?"}],
        "instructions": None,
        "answers": [
            ("Carbon dioxide (CO2).", 1.0),
            ("Plants take in carbon dioxide, and also oxygen and nitrogen and many other gases from "
             "the air around them, depending on the season.", 0.5),
            ("Oxygen, since plants need it to breathe just like we do.", 0.0),
        ],
        "string_content": True,  # assistant content as a plain string (allowed by the contract)
    },
]


# ----------------------------------------------------------------------------------------------
# Assemble
# ----------------------------------------------------------------------------------------------
def build_env_rows(agent, n_tasks, prompt_fn, rollouts_fn, tools):
    rows = []
    for t in range(n_tasks):
        inp, instr = prompt_fn(t)
        prompt_text = inp if isinstance(inp, str) else " ".join(m["content"] for m in inp)
        prompt_tokens = ntok(prompt_text + " " + (instr or "")) + (60 if tools else 0)
        for r, spec in enumerate(rollouts_fn(t)):
            seed = rng.randrange(10**6, 10**7)
            temperature = 1.0
            row = {
                "responses_create_params": create_params(
                    json.loads(json.dumps(inp)), instructions=instr, tools=tools,
                    temperature=temperature, seed=seed, max_output_tokens=1024),
                "response": response_obj(spec["output"], prompt_tokens=prompt_tokens),
                "reward": spec["reward"],
            }
            row.update(spec["extras"])
            row["_ng_task_index"] = t
            row["_ng_rollout_index"] = r
            row["agent_ref"] = {"type": "responses_api_agents", "name": agent}
            rows.append({"row": row, "group": f"{agent}/task {t}", "tag": spec["kind"]})
    return rows


def build_handmade_rows():
    rows = []
    for h, hm in enumerate(HANDMADE):
        for text, reward in hm["answers"]:
            item = assistant_item(text)
            if hm["string_content"]:
                item = {"role": "assistant", "content": text, "type": "message"}
            row = {
                "responses_create_params": {"input": json.loads(json.dumps(hm["input"]))},
                "response": {"id": "resp_" + hexid(32), "output": [item]},
                "reward": reward,
            }
            rows.append({"row": row, "group": f"hand-made/context {h}", "tag": "handmade"})
    return rows


def mutate_specials(rows):
    """Turn chosen rollouts into the excluded-row cases; return {reason: entry}."""
    def find(group, pred):
        for e in rows:
            if e["group"] == group and pred(e):
                return e
        raise LookupError(group)

    specials = {}
    e = find(f"{MATH_AGENT}/task {MATH_NULL_TASK}", lambda e: e["tag"] == "good")
    e["row"]["reward"] = None
    e["row"]["judge_error"] = "judge request timed out"
    specials["reward_null"] = e
    e = find(f"{MATH_AGENT}/task {MATH_HIGH_TASK}", lambda e: e["tag"] == "good")
    e["row"]["reward"] = "high"
    specials["reward_not_number"] = e
    e = find(f"{MATH_AGENT}/task {MATH_EMPTY_TASK}", lambda e: e["tag"] != "good")
    for it in e["row"]["response"]["output"]:
        if it.get("type") == "message":
            it["content"][0]["text"] = ""
    e["row"]["response"]["usage"]["output_tokens"] = 0
    e["row"]["extracted_answer"] = None
    e["tag"] = "empty"
    specials["empty_assistant_text"] = e
    specials["mask_sample"] = find(f"{WEATHER_AGENT}/task {WEATHER_MASK_TASK}",
                                   lambda e: e["tag"] == "good_masked")
    return specials


def dumps(obj) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def completion_order(entries):
    """Seeded shuffle, retried until no two neighbouring lines share a group."""
    order = list(entries)
    for _ in range(10_000):
        rng.shuffle(order)
        if all(a["group"] != b["group"] for a, b in zip(order, order[1:])):
            return order
    raise RuntimeError("no shuffle without neighbours found")


# ----------------------------------------------------------------------------------------------
# Counting (independent of the recipe package: reads the lines back)
# ----------------------------------------------------------------------------------------------
def final_assistant_text(row):
    out = (row.get("response") or {}).get("output") or []
    for it in reversed(out):
        if it.get("type", "message") == "message" and it.get("role") == "assistant":
            c = it.get("content")
            if isinstance(c, str):
                return c
            return "".join(p.get("text", "") for p in c or [] if isinstance(p, dict))
    return None


def context_key(row):
    rcp = row.get("responses_create_params") or {}
    inp = rcp.get("input")
    if isinstance(inp, str):
        inp = [{"role": "user", "content": inp}]
    norm = [{"role": m.get("role"), "content": m.get("content")} for m in inp or []]
    return json.dumps([rcp.get("instructions"), norm], sort_keys=True, ensure_ascii=False)


def count(lines):
    stats = OrderedDict(lines=len(lines), malformed_json=[], not_an_object=[], reward_not_number=[],
                        reward_null=[], mask_sample=[], empty_assistant_text=[])
    groups = OrderedDict()
    ctx_of_group = {}
    by_context = {}
    for n, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            stats["malformed_json"].append(n)
            continue
        if not isinstance(row, dict):
            stats["not_an_object"].append(n)
            continue
        rew = row.get("reward")
        if rew is None:
            stats["reward_null"].append(n)
            continue
        if isinstance(rew, bool) or not isinstance(rew, (int, float)):
            stats["reward_not_number"].append(n)
            continue
        if row.get("mask_sample") is True:
            stats["mask_sample"].append(n)
            continue
        if not (final_assistant_text(row) or "").strip():
            stats["empty_assistant_text"].append(n)
            continue
        agent = (row.get("agent_ref") or {}).get("name")
        task = row.get("_ng_task_index")
        if agent is not None and task is not None:
            g = f"{agent}/task {task}"
        else:
            g = "context " + context_key(row)
        groups.setdefault(g, []).append((n, float(rew), final_assistant_text(row)))
        ctx_of_group[g] = context_key(row)
        by_context.setdefault(context_key(row), []).append(float(rew))
    stats["pair_groups_if_grouped_by_context_only"] = sum(
        1 for rs in by_context.values() if len(rs) >= 2 and max(rs) > min(rs))
    return stats, groups, ctx_of_group


# ----------------------------------------------------------------------------------------------
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="do not write; fail if files differ")
    args = ap.parse_args(argv)

    math_rows = build_env_rows(MATH_AGENT, len(MATH_TASKS), math_prompt, math_rollouts, [])
    weather_rows = build_env_rows(WEATHER_AGENT, len(WEATHER_TASKS), weather_prompt,
                                  weather_rollouts, [WEATHER_TOOL])
    hand_rows = build_handmade_rows()
    entries = math_rows + weather_rows + hand_rows
    mutate_specials(entries)

    for e in entries:
        e["line"] = dumps(e["row"])

    # bad line 1: a row cut off mid-write (an extra copy of a weather rollout, never complete)
    src = next(e for e in weather_rows if e["group"] == f"{WEATHER_AGENT}/task 3")
    extra = json.loads(src["line"])
    extra["_ng_rollout_index"] = ROLLOUTS_PER_TASK
    truncated = dumps(extra)[:411]
    entries.append({"line": truncated, "group": "bad/truncated", "tag": "malformed_json"})
    # bad line 2: a JSON array holding a row instead of a row
    arr = [{"responses_create_params": {"input": "ping"}, "response": {"output": []}, "reward": 0}]
    entries.append({"line": dumps(arr), "group": "bad/array", "tag": "not_an_object"})

    ordered = completion_order(entries)
    t = CREATED_AT_BASE
    for e in ordered:
        t += rng.randint(1, 9)
        if "row" in e and "created_at" in e["row"]["response"]:
            e["row"]["response"]["created_at"] = float(t)
            e["line"] = dumps(e["row"])
    text = "".join(e["line"] + "\n" for e in ordered)
    lines = text.splitlines()

    stats, groups, ctx_of_group = count(lines)
    readme = render_readme(stats, groups, ctx_of_group, ordered, len(text.encode()))

    if args.check:
        ok = OUT_JSONL.read_text(encoding="utf-8") == text and OUT_README.read_text(encoding="utf-8") == readme
        print("up to date" if ok else "OUT OF DATE: run python samples/make_sample.py")
        return 0 if ok else 1
    OUT_JSONL.write_text(text, encoding="utf-8")
    OUT_README.write_text(readme, encoding="utf-8")
    print(SUMMARY)
    return 0


SUMMARY = ""


def render_readme(stats, groups, ctx_of_group, ordered, nbytes):
    global SUMMARY
    bad_lines = len(stats["malformed_json"]) + len(stats["not_an_object"])
    rows_parsed = stats["lines"] - bad_lines
    excluded = sum(len(stats[k]) for k in ("reward_not_number", "reward_null", "mask_sample",
                                            "empty_assistant_text"))
    valid = rows_parsed - excluded
    env_tasks = {e["group"] for e in ordered if e["group"].startswith((MATH_AGENT, WEATHER_AGENT))}
    n_math = sum(1 for g in env_tasks if g.startswith(MATH_AGENT))
    n_weather = sum(1 for g in env_tasks if g.startswith(WEATHER_AGENT))
    n_env_rows = sum(1 for e in ordered if e["group"].startswith((MATH_AGENT, WEATHER_AGENT)))
    n_hand_rows = sum(1 for e in ordered if e["group"].startswith("hand-made"))
    n_hand_ctx = len({e["group"] for e in ordered if e["group"].startswith("hand-made")})
    tool_rows = sum(1 for e in ordered if "row" in e and any(
        it.get("type") == "function_call" for it in e["row"]["response"].get("output", [])))
    mt_rows = sum(1 for e in ordered if "row" in e and any(
        it.get("role") == "user" for it in e["row"]["response"].get("output", [])))
    str_input_rows = sum(1 for e in ordered if "row" in e and isinstance(
        e["row"]["responses_create_params"].get("input"), str))
    instr_rows = sum(1 for e in ordered if "row" in e and
                     e["row"]["responses_create_params"].get("instructions"))

    pair_groups = [g for g, rs in groups.items()
                   if len(rs) >= 2 and max(r for _, r, _ in rs) > min(r for _, r, _ in rs)]
    tie_groups = [g for g, rs in groups.items()
                  if len(rs) >= 2 and max(r for _, r, _ in rs) == min(r for _, r, _ in rs)]
    all_pairs = 0
    for _g, rs in groups.items():
        for i in range(len(rs)):
            for j in range(i + 1, len(rs)):
                if rs[i][1] != rs[j][1]:
                    all_pairs += 1

    def lines_of(tag):
        return [n for n, e in enumerate(ordered, 1) if e.get("tag") == tag]

    same_input = [f"{WEATHER_AGENT}/task {t}" for t in SAME_INPUT_TASKS]
    same_ctx = ctx_of_group[same_input[0]] == ctx_of_group[same_input[1]]
    assert same_ctx, "the two Springfield tasks must show the same context"
    gaps = {g: max(r for _, r, _ in rs) - min(r for _, r, _ in rs) for g, rs in groups.items()}
    by_gap = OrderedDict()
    for mg in (0.25, 0.5, 1.0):
        by_gap[mg] = sum(1 for g in pair_groups if gaps[g] >= mg - 1e-9)

    # group table
    hand_names = {}
    for e in ordered:
        if e["group"].startswith("hand-made") and "row" in e:
            hand_names["context " + context_key(e["row"])] = e["group"]
    table = ["| group | lines | valid rows | rewards of valid rows (sorted) | best − worst | pair? |",
             "|---|---|---|---|---|---|"]
    all_group_names = [f"{MATH_AGENT}/task {t}" for t in range(len(MATH_TASKS))] + \
                      [f"{WEATHER_AGENT}/task {t}" for t in range(len(WEATHER_TASKS))]
    name_to_key = {g: g for g in all_group_names}
    for k, v in hand_names.items():
        name_to_key[v] = k
    for name in all_group_names + sorted(set(hand_names.values())):
        key = name_to_key[name]
        rs = groups.get(key, [])
        all_lines = [n for n, e in enumerate(ordered, 1) if e["group"] == name]
        rewards = sorted((r for _, r, _ in rs), reverse=True)
        gap = gaps.get(key, 0.0)
        table.append(f"| {name} | {', '.join(map(str, all_lines))} | {len(rs)} | "
                     f"{', '.join(f'{r:g}' for r in rewards)} | {gap:g} | "
                     f"{'yes' if key in pair_groups else 'no'} |")

    summary = OrderedDict([
        ("lines", stats["lines"]),
        ("bad lines (not a row)", bad_lines),
        ("rows parsed", rows_parsed),
        ("rows excluded", excluded),
        ("valid rows", valid),
        ("env tasks", len(env_tasks)),
        ("groups with >=2 valid rows", sum(1 for rs in groups.values() if len(rs) >= 2)),
        ("groups yielding a best-vs-worst pair (min_gap 0)", len(pair_groups)),
        ("all-tied groups (no pair)", len(tie_groups)),
        ("all distinct-reward pairs over all groups", all_pairs),
    ])
    SUMMARY = "\n".join(f"{k}: {v}" for k, v in summary.items()) + "\n" + "\n".join(
        f"  {k}: lines {stats[k]}" for k in ("malformed_json", "not_an_object", "reward_not_number",
                                             "reward_null", "mask_sample", "empty_assistant_text"))
    SUMMARY += f"\nfile size: {nbytes} bytes"

    def ln(xs):
        return ", ".join(str(x) for x in xs)

    return f"""# Sample rollouts

`rollouts.jsonl` is a small, hand-designed set of NeMo Gym rollouts in the **real** rollout layout
(one row per line: `responses_create_params`, `response` with the generated turns in
`response.output`, `reward`, `_ng_task_index`, `_ng_rollout_index`, `agent_ref`, plus
environment-specific keys; see [What it reads](../docs/prepare.md#what-it-reads)). It is the
input of the README's first command (prepare, then train a tiny DPO model on CPU) and a fixture
for tests.

It is generated, not edited by hand: `python samples/make_sample.py` rewrites both this README and
`rollouts.jsonl` (seeded, deterministic; `--check` tells whether the committed files are up to
date). Every number below is computed by that script from the lines it wrote.

## Counts

| what | count |
|---|---|
| lines in the file | {stats['lines']} ({nbytes} bytes) |
| bad lines that are not a row | {bad_lines} |
| rows that parse as a JSON object | {rows_parsed} |
| rows to exclude (reasons below) | {excluded} |
| **valid rows** | **{valid}** |
| environment tasks (`agent_ref.name` + `_ng_task_index`) | {len(env_tasks)} ({n_math} math + {n_weather} weather), \
{ROLLOUTS_PER_TASK} rollouts each = {n_env_rows} lines |
| hand-made rows (no `_ng_*` indices, no `agent_ref`) | {n_hand_rows} rows in {n_hand_ctx} contexts |
| comparison groups with at least one valid row | {len(groups)} \
({len(env_tasks)} tasks + {n_hand_ctx} hand-made contexts) |
| **groups that yield a best-vs-worst pair, `min_gap` 0** | **{len(pair_groups)}** (one pair each) |
| groups where every valid reward is equal (no pair) | {len(tie_groups)}: {', '.join(tie_groups)} |
| groups that yield a pair with gap ≥ 0.25 / ≥ 0.5 / ≥ 1.0 | {by_gap[0.25]} / {by_gap[0.5]} / {by_gap[1.0]} |
| all pairs with different rewards (every chosen/rejected combination inside each group) | \
{all_pairs} |

A group yields a pair when it has two valid rows with different rewards (equal ranks cannot be
written: NeMo RL refuses them). Grouping is by `agent_ref.name` + `_ng_task_index` where present,
by the full context (instructions, system/developer and user turns) otherwise.

### Lines that are not rows ({bad_lines})

| line | reason |
|---|---|
| {ln(stats['malformed_json'])} | malformed JSON: a row cut off mid-write \
(an extra copy of `{WEATHER_AGENT}` task 3, `_ng_rollout_index` {ROLLOUTS_PER_TASK}) |
| {ln(stats['not_an_object'])} | valid JSON but an array (`[{{...}}]`), not an object |

### Rows to exclude ({excluded}), each inside a task that still yields a pair

| line | reason | where |
|---|---|---|
| {ln(stats['reward_not_number'])} | `reward` is `"high"` (not a number) | `{MATH_AGENT}` task {MATH_HIGH_TASK} |
| {ln(stats['reward_null'])} | `reward` is `null` (judge not run; the row has `judge_error`) | \
`{MATH_AGENT}` task {MATH_NULL_TASK} |
| {ln(stats['mask_sample'])} | `mask_sample: true` (its reward, 1.0, is the task's highest: \
it must not become the chosen answer) | `{WEATHER_AGENT}` task {WEATHER_MASK_TASK} |
| {ln(stats['empty_assistant_text'])} | the assistant message's text is `""` (reward 0.0) | \
`{MATH_AGENT}` task {MATH_EMPTY_TASK} |

All other weather rows carry `mask_sample: false` (must be kept).

## What is in it

- **`{MATH_AGENT}`** ({n_math} tasks): short arithmetic questions, reward 1.0 / 0.0 (correct
  answer inside `\\boxed{{}}`), `expected_answer` / `extracted_answer` beside it. Good answers
  are one line of working ending in `\\boxed{{N}}`; bad ones hedge, ramble, box a wrong number or
  skip the box, so chosen and rejected differ in form. Input forms: plain string, `[user]`,
  `[system, user]`, `[developer, user]`, and `instructions` + `[user]` (messages without `type`).
  Task {MATH_TIE_TASK}: every rollout correct (tie, no pair). Task {MATH_MULTITURN_TASK}: a format
  checker answers inside `response.output` (user turns between assistant turns) in
  {mt_rows} rollouts (reward 0.5 when the retry is boxed, 0.0 otherwise).
- **`{WEATHER_AGENT}`** ({n_weather} tasks): `get_weather` tool, output `reasoning` →
  `function_call` → `function_call_output` → `message`; partial credit
  `reward = 0.25·called_tool + 0.25·right_city + 0.5·answer_correct` (1.0 / 0.5 / 0.25 / 0.0,
  with `reward_components`). Good answers are one line `Current weather in CITY: T°C, conditions.`;
  bad ones guess without the tool, misspell the city, or stay vague. Task {WEATHER_TIE_TASK}: every
  rollout correct (tie, no pair). **Tasks {SAME_INPUT_TASKS[0]} and {SAME_INPUT_TASKS[1]} show the
  same input** ("{weather_question('Springfield')}", same developer message) but are different
  tasks (the environment's `scenario` is Springfield, IL vs Springfield, MA, with different
  correct answers): they must not be paired with each other. Grouping by context alone would merge
  them and find {stats['pair_groups_if_grouped_by_context_only']} pair groups instead of {len(pair_groups)}.
- **hand-made** ({n_hand_rows} rows, {n_hand_ctx} contexts): no `_ng_task_index`, no `agent_ref`,
  minimal `responses_create_params` (`input` only) and `response` (`id`, `output`). One context
  has a plain-string input and integer rewards (1, 0, 1: a tie at the top); the other has
  `[system, user]` input, float rewards and assistant `content` as a plain string. Context 0:
  "{HANDMADE[0]['input']}"; context 1: "{HANDMADE[1]['input'][1]['content']}".
- Task indices restart at 0 in each environment (math task 0 and weather task 0 both exist).
- Every environment row has a different per-rollout `metadata.seed` in `responses_create_params`
  (do not hash the whole request to group).
- {tool_rows} rows contain a `function_call`; {mt_rows} rows have user turns inside
  `response.output`; {str_input_rows} rows have `input` as a plain string; {instr_rows} rows set
  `instructions`.
- Lines are in a seeded "completion order": no two neighbouring lines belong to the same group.

## Groups

`lines` lists every line of the group (1-based), excluded rows included; rewards are those of the
valid rows.

{chr(10).join(table)}
"""


if __name__ == "__main__":
    sys.exit(main())
