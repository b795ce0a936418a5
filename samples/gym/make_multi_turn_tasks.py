#!/usr/bin/env python3
"""Write the task files of `gym=multi_turn`: NeMo Gym's `example_multi_turn_gymnasium` environment
(resources_servers/example_multi_turn_gymnasium: a scripted user sends the task's `follow_ups`
one after each reply, then rewards 1 when the last reply contains `expected_answer`). It ships
five example rows and no generator, so these rows are written here, in its layout: a two-step
sum (the question, then one follow-up on its result), so the policy answers twice per episode.

Every turn asks for the answer inside \\boxed{}, with one worked two-turn example first (as the
math prompts do; its numbers are no task's), and the loop's reward requires it on every turn
(configs/gym/multi_turn.yaml): the environment's own check is a substring test of the last reply.
No eval task is in train (up to commutation of the first sum); `multi_turn_probe.jsonl` asks the
eval tasks in other words with no format line.

    python samples/gym/make_multi_turn_tasks.py            # rewrite the files
    python samples/gym/make_multi_turn_tasks.py --check    # exit 1 if the committed files differ
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

from make_tasks import BOXED, write_or_check  # beside this script

HERE = Path(__file__).resolve().parent
SEED = 20261204
TRAIN_SHARE = 0.85
EXAMPLE = [("What is 120 + 35?", "120 + 35 = 155, so the answer is \\boxed{155}."),
           ("Now add 5 to that.", "155 + 5 = 160, so the answer is \\boxed{160}.")]

# family -> (first question, follow-up, probe question, probe follow-up, answer)
FAMILIES = {
    "add_then_add": ("What is {a} + {b}?", "Now add {c} to that.",
                     "Add {a} and {b}.", "Then add {c} more. What is the total?", lambda a, b, c: a + b + c),
    "add_then_subtract": ("What is {a} + {b}?", "Now subtract {c} from that.", "Add {a} and {b}.",
                          "Take {c} away from the result. What is left?", lambda a, b, c: a + b - c),
    "add_then_double": ("What is {a} + {b}?", "Now double that.",
                        "Add {a} and {b}.", "What is twice the result?", lambda a, b, c: 2 * (a + b)),
    "multiply_then_add": ("What is {a} x {b}?", "Now add {c} to that.",
                          "Multiply {a} by {b}.", "Then add {c}. What do you get?", lambda a, b, c: a * b + c),
}
QUOTA = 220  # distinct tasks per family, at most


def draw(rng: random.Random, family: str) -> tuple[int, int, int]:
    if family == "multiply_then_add":
        return rng.randint(2, 6), rng.randint(2, 6), rng.randint(1, 9)
    a, b = rng.randint(1, 9), rng.randint(1, 9)
    if family == "add_then_double":
        return a, b, 0
    return a, b, rng.randint(1, a + b) if family == "add_then_subtract" else rng.randint(1, 9)


def row(family: str, a: int, b: int, c: int, probe: bool = False) -> dict:
    first, follow, probe_first, probe_follow, answer = FAMILIES[family]
    if probe:  # other words, no format line, no worked example
        opening, follow_up = [{"role": "user", "content": probe_first.format(a=a, b=b)}], probe_follow.format(c=c)
    else:
        opening = [message for question, reply in EXAMPLE
                   for message in ({"role": "user", "content": f"{question} {BOXED}"},
                                   {"role": "assistant", "content": reply})]
        opening.append({"role": "user", "content": f"{first.format(a=a, b=b)} {BOXED}"})
        follow_up = f"{follow.format(c=c)} {BOXED}"
    return {"responses_create_params": {"input": opening}, "follow_ups": [follow_up],
            "expected_answer": str(answer(a, b, c)), "metadata": {"family": family, "operands": [a, b, c]}}


def build() -> dict[str, str]:
    rng = random.Random(SEED)
    train, held_out = [], []
    for family in FAMILIES:
        seen, drawn, misses = set(), [], 0
        while len(drawn) < QUOTA and misses < 500:
            a, b, c = draw(rng, family)
            key = (min(a, b), max(a, b), c)  # "3 + 4, then ..." and "4 + 3, then ..." are one task
            if key in seen:
                misses += 1
                continue
            seen.add(key)
            drawn.append((a, b, c))
        cut = int(TRAIN_SHARE * len(drawn))
        train += [(family, *t) for t in drawn[:cut]]
        held_out += [(family, *t) for t in drawn[cut:]]
    rng.shuffle(train)
    rng.shuffle(held_out)
    write = lambda rows: "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)  # noqa: E731
    return {"multi_turn_train.jsonl": write(row(*t) for t in train),
            "multi_turn_eval.jsonl": write(row(*t) for t in held_out),
            "multi_turn_probe.jsonl": write(row(*t, probe=True) for t in held_out)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the files differ")
    args = parser.parse_args()
    return write_or_check(build(), args.check, "make_multi_turn_tasks.py")


if __name__ == "__main__":
    sys.exit(main())
