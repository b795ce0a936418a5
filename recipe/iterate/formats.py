"""The answer formats a prompt can ask for, whether a reply follows one, and the reward rule that
requires it.

A verifier grades what it can extract, often more leniently than the prompt asks: NeMo Gym
0.4.0's `math_with_judge` takes the last expression of any reply although its prompts ask for the
answer inside `\\boxed{}`, and `reasoning_gym` falls back to the whole reply when there is no
`<answer>` tag. A loop trained on such a verifier can learn to drop the format the prompt asks
for, and nothing in the reward shows it. So the loop measures it (instruction adherence: the share
of replies that follow the format their prompt states), and an environment can make its reward
require it (`gym.reward_requires_format`): NeMo Gym 0.6 and later's `math_with_judge` gives 0 to a
reply without a non-empty last `\\boxed{...}` (0.7.0 resources_servers/math_with_judge/app.py);
the same rule applied to 0.4.0's verdict gives that grading on the NeMo Gym this loop runs.

Formats (`gym.answer_format`):
- `boxed`: the last complete `\\boxed{...}` of the reply is not empty (braces balanced);
- `answer_tag`: an `<answer>...</answer>` with something inside (reasoning-gym's own tag);
- `answer_line`: a line `Answer: X` (the mcqa prompts' last line);
- `action_tag`: `<action>Up|Down|Left|Right|1-4</action>` (grl_sokoban's prompt);
- `regex:<pattern>`: a reply follows when the pattern is found in it (Python `re`, DOTALL).
For a multi-turn reply every assistant turn must follow: its adherence is the share that do.

Where the format carries an answer (all but regex:), the answer a reply states in it is compared
with the task's expected answer (`stated`, `same_answer`): a stricter figure than a lenient
verifier's (example_multi_turn_gymnasium pays any last reply that contains the answer's digits).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

from recipe.errors import RecipeError

GATED_KEY = "gym_dpo_verifier_reward"    # the verifier's own reward of a gated row, kept beside it
FOLLOWS_KEY = "gym_dpo_format_followed"  # the share of the row's assistant turns that follow


def last_boxed(text: str) -> str | None:
    """The contents of the last complete `\\boxed{...}` (nested braces balanced), or None."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, begin = 1, start + len("\\boxed{")
    for index in range(begin, len(text)):
        if text[index] == "{":
            depth += 1
        elif text[index] == "}":
            depth -= 1
            if depth == 0:
                return text[begin:index]
    return None


def _boxed(text: str) -> bool:
    inside = last_boxed(text)
    return inside is not None and bool(inside.strip())


_ANSWER_TAG = re.compile(r"<answer>\s?(.*?)\s?</answer>", re.DOTALL)
_ANSWER_LINE = re.compile(r"^\s*\**\s*Answer\s*[:：]\s*\**\s*\S", re.IGNORECASE | re.MULTILINE)
_ACTION_TAG = re.compile(r"<action>\s*(up|down|left|right|[1-4])\s*</action>", re.IGNORECASE)

def _tag_answer(text: str) -> str | None:
    found = [m.group(1).strip() for m in _ANSWER_TAG.finditer(text)]
    return found[-1] if found else None


def _line_answer(text: str) -> str | None:
    found = re.findall(r"Answer\s*[:：]\s*\**\s*(.+)", text, re.IGNORECASE)
    return found[-1].strip().strip("*").strip() if found else None


def _action_answer(text: str) -> str | None:
    found = _ACTION_TAG.findall(text)
    return found[-1] if found else None


STATED: dict[str, Callable[[str], str | None]] = {  # the answer a reply states in the format
    "boxed": last_boxed,
    "answer_tag": _tag_answer,
    "answer_line": _line_answer,
    "action_tag": _action_answer,
}

CHECKS: dict[str, Callable[[str], bool]] = {
    "boxed": _boxed,
    "answer_tag": lambda text: any(m.group(1).strip() for m in _ANSWER_TAG.finditer(text)),
    "answer_line": lambda text: _ANSWER_LINE.search(text) is not None,
    "action_tag": lambda text: _ACTION_TAG.search(text) is not None,
}


@lru_cache(maxsize=64)
def check(name: str | None) -> Callable[[str], bool] | None:
    """The test of format `name` (None: the prompt states no format)."""
    if name is None or str(name).lower() in ("", "none", "null"):
        return None
    name = str(name)
    if name.startswith("regex:"):
        try:
            pattern = re.compile(name[len("regex:"):], re.DOTALL)
        except re.error as exc:
            raise RecipeError(f"answer_format={name!r}: not a regular expression ({exc})") from None
        return lambda text: pattern.search(text) is not None
    if name not in CHECKS:
        raise RecipeError(f"answer_format={name!r}: not a known format ({', '.join(CHECKS)}, or regex:<pattern>)")
    return CHECKS[name]


def assistant_turns(row: dict) -> list[str]:
    """The text of each assistant message of a rollout (`response.output`), in order."""
    turns = []
    for item in (row.get("response") or {}).get("output") or []:
        if not isinstance(item, dict) or item.get("type", "message") != "message":
            continue
        if item.get("role", "assistant") != "assistant":
            continue
        content = item.get("content")
        if isinstance(content, str):
            turns.append(content)
        elif isinstance(content, list):
            turns.append("".join(p.get("text", "") for p in content if isinstance(p, dict)))
    return turns


def followed(name: str | None, row: dict) -> float | None:
    """The share of the row's assistant turns that follow format `name` (1.0 or 0.0 for a
    single-turn reply; a reply with no assistant turn follows nothing); None for no format."""
    test = check(name)
    if test is None:
        return None
    turns = assistant_turns(row)
    return sum(1.0 for turn in turns if test(turn)) / len(turns) if turns else 0.0


def stated(name: str | None, row: dict) -> str | None:
    """The answer the row's last assistant turn states in format `name` (the contents of its last
    \\boxed{}, <answer> tag, `Answer:` line or action tag), or None: the format carries none, or
    the reply states none."""
    if name is None or str(name) not in STATED:
        return None
    turns = assistant_turns(row)
    found = STATED[str(name)](turns[-1]) if turns else None
    return found.strip() if found and found.strip() else None


def same_answer(said: str | None, expected: str | None) -> bool:
    """A stated answer equal to the expected one: as text (whitespace, a final period and case
    aside), or as numbers."""
    if said is None or expected is None:
        return False
    a, b = said.strip().rstrip(".").strip().lower(), expected.strip().rstrip(".").strip().lower()
    if a == b:
        return True
    try:
        return float(a.replace(",", "")) == float(b.replace(",", ""))
    except ValueError:
        return False


def require(name: str, row: dict) -> dict:
    """The row with the format required of its reward: unchanged when every assistant turn follows
    `name`, else reward 0 and no extracted answer; the verifier's reward is kept in GATED_KEY.
    Applying it twice changes nothing."""
    share = followed(name, row)
    out = dict(row)
    reward = row.get(GATED_KEY, row.get("reward"))
    out[FOLLOWS_KEY] = share
    if not isinstance(reward, (int, float)) or isinstance(reward, bool):
        return out  # unscored rows stay unscored
    out[GATED_KEY] = reward
    if share != 1.0:
        out["reward"] = 0.0 if isinstance(reward, float) else 0
        if "extracted_answer" in out:
            out["extracted_answer"] = None
    else:
        out["reward"] = reward
    return out


def require_file(name: str, path: Path) -> None:
    """`require` on every row of a rollouts file, rewritten in place (atomically)."""
    partial = path.with_name(f".{path.name}.required")
    with open(path, encoding="utf-8") as source, open(partial, "w", encoding="utf-8") as target:
        for line in source:
            if line.strip():
                target.write(json.dumps(require(name, json.loads(line)), ensure_ascii=False) + "\n")
    os.replace(partial, path)
