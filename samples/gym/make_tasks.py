#!/usr/bin/env python3
"""Write the bundled NeMo Gym task files of the iterate loop (`gym=math`, the default, and `gym=mcqa`).

`math_*.jsonl`: short arithmetic questions in the input layout of NeMo Gym's `math_with_judge`
server with its judge off (its own `math_with_judge.yaml`): `responses_create_params` (one worked
example, then the question, each asking for the answer inside `\\boxed{}`), `question`,
`expected_answer`; the server grades with math-verify, which extracts the final expression of
the reply and compares it with the answer (reward 1 or 0, no judge), and the loop requires the
`\\boxed{}` the prompt asks for (configs/gym/math.yaml). No eval question is in train up to
commutation ("3 x 7" and "7 x 3" are one question). `math_probe.jsonl` asks the eval questions in
other words, with no format line: is a gain the arithmetic or the prompt?

`mcqa_*.jsonl`: four-option multiple-choice questions in the layout of NeMo Gym's `mcqa` server
(`options`, `expected_answer`, `template_metadata.output_regex`: the letter after the last
`Answer:`). Every question is there four times, its options rotated so that the right one is
A, B, C and D once each (`metadata.question_id` names the question): a letter prior alone scores
exactly chance, so the eval measures the question, not its layout.

Each family's questions are drawn once and split between train and eval files, so both have
the same mix and no question is in both (the eval files are never trained on):

    python samples/gym/make_tasks.py            # rewrite the files
    python samples/gym/make_tasks.py --check    # exit 1 if the committed files differ
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

SEED = 20261201
HERE = Path(__file__).resolve().parent
TRAIN_SHARE = 0.85                      # of each family's questions; the rest are held out
LETTERS = "ABCD"
INSTRUCTION = ("Answer the following multiple choice question. End your reply with a line of the "
               "form 'Answer: X', where X is the letter of the correct option.")
# the last `Answer: X` of the reply (the server takes the rightmost match, case-insensitive)
OUTPUT_REGEX = r"Answer\s*[:：]\s*\**\s*\(?([A-D])\)?(?![A-Za-z0-9])"
# The math prompt: one worked example (a question outside every family's range, its answer no
# task's, so copying it never pays), then the question, each asking for the answer inside
# \\boxed{}, which the reward requires (configs/gym/math.yaml). SmolLM2-135M-Instruct boxed 84% of
# its replies this way in a probe, 0% with math_with_judge's own one-line instruction ("Make sure
# to put the answer (and only answer) inside \\boxed{}"), 32% with an inline "for example
# \\boxed{7}" (copying the 7): docs/iterate.md.
BOXED = "Put the final answer inside \\boxed{}."
EXAMPLE = ("What is 120 + 35?", "120 + 35 = 155, so the answer is \\boxed{155}.")


def MATH_PROMPT(question: str) -> list[dict]:  # noqa: N802 (a constant's role: the prompt every math task has)
    return [{"role": "user", "content": f"{EXAMPLE[0]} {BOXED}"}, {"role": "assistant", "content": EXAMPLE[1]},
            {"role": "user", "content": f"{question} {BOXED}"}]


CATEGORIES = {
    "an animal": ["dog", "cat", "horse", "lion", "tiger", "rabbit", "elephant", "sheep", "mouse",
                  "bear", "wolf", "monkey", "cow", "goat", "zebra", "camel"],
    "a fruit": ["apple", "banana", "orange", "grape", "pear", "cherry", "mango", "peach", "lemon",
                "plum", "strawberry", "pineapple", "watermelon", "kiwi"],
    "a color": ["red", "blue", "green", "yellow", "purple", "black", "white", "pink", "brown",
                "gray", "orange"],
    "a vehicle": ["car", "bus", "truck", "bicycle", "train", "airplane", "boat", "motorcycle",
                  "ship", "taxi", "tram"],
    "a musical instrument": ["piano", "guitar", "violin", "drum", "flute", "trumpet", "harp",
                             "cello", "saxophone", "clarinet"],
    "a piece of furniture": ["chair", "table", "sofa", "bed", "desk", "shelf", "stool", "wardrobe",
                             "bench", "cupboard"],
    "a body part": ["hand", "foot", "nose", "ear", "eye", "knee", "elbow", "finger", "shoulder",
                    "mouth"],
    "a drink": ["water", "milk", "tea", "coffee", "juice", "lemonade", "cocoa", "soda"],
}
OPPOSITES = [("hot", "cold"), ("big", "small"), ("up", "down"), ("fast", "slow"), ("day", "night"),
             ("happy", "sad"), ("open", "closed"), ("old", "young"), ("light", "dark"),
             ("tall", "short"), ("wet", "dry"), ("early", "late"), ("full", "empty"),
             ("hard", "soft"), ("loud", "quiet"), ("rich", "poor"), ("strong", "weak"),
             ("first", "last"), ("win", "lose"), ("push", "pull"), ("inside", "outside"),
             ("begin", "end"), ("clean", "dirty"), ("thick", "thin"), ("heavy", "light"),
             ("buy", "sell"), ("left", "right"), ("north", "south"), ("cheap", "expensive"),
             ("easy", "difficult")]


def _numbers_near(rng: random.Random, answer: int, low: int = 0) -> list[int]:
    wrong = set()
    while len(wrong) < 3:
        candidate = answer + rng.choice([-10, -3, -2, -1, 1, 2, 3, 10])
        if candidate >= low and candidate != answer:
            wrong.add(candidate)
    return sorted(wrong)


def arithmetic(rng: random.Random) -> tuple[str, str, list[str]]:
    kind = rng.choice(["+", "-", "x"])
    if kind == "+":
        a, b = rng.randint(1, 40), rng.randint(1, 40)
        answer = a + b
    elif kind == "-":
        a = rng.randint(5, 60)
        b = rng.randint(1, a)
        answer = a - b
    else:
        a, b = rng.randint(2, 9), rng.randint(2, 9)
        answer = a * b
    return f"What is {a} {kind} {b}?", str(answer), [str(n) for n in _numbers_near(rng, answer)]


def category(rng: random.Random) -> tuple[str, str, list[str]]:
    target = rng.choice(sorted(CATEGORIES))
    answer = rng.choice(CATEGORIES[target])
    others = [w for name, words in CATEGORIES.items() if name != target for w in words
              if w not in CATEGORIES[target]]
    return f"Which of these is {target}?", answer, rng.sample(sorted(set(others)), 3)


def largest(rng: random.Random) -> tuple[str, str, list[str]]:
    numbers = rng.sample(range(1, 100), 4)
    smaller = sorted(numbers)[:3]
    word = rng.choice(["largest", "smallest"])
    if word == "smallest":
        numbers.sort()
        return "Which number is the smallest?", str(numbers[0]), [str(n) for n in numbers[1:]]
    return "Which number is the largest?", str(max(numbers)), [str(n) for n in smaller]


def opposite(rng: random.Random) -> tuple[str, str, list[str]]:
    pair = rng.choice(OPPOSITES)
    word, answer = pair if rng.random() < 0.5 else pair[::-1]
    pool = sorted({w for p in OPPOSITES for w in p} - set(pair))
    return f"What is the opposite of '{word}'?", answer, rng.sample(pool, 3)


def count_letters(rng: random.Random) -> tuple[str, str, list[str]]:
    words = sorted({w for words in CATEGORIES.values() for w in words})
    word = rng.choice(words)
    answer = len(word)
    return (f"How many letters are in the word '{word}'?", str(answer),
            [str(n) for n in _numbers_near(rng, answer, low=1)])


MCQA_FAMILIES = {arithmetic: 600, largest: 300, category: 300, opposite: 300, count_letters: 300}  # at most


def add_digits(rng: random.Random) -> tuple[str, str, tuple]:
    a, b = rng.randint(1, 9), rng.randint(1, 9)
    return f"What is {a} + {b}?", str(a + b), ("+", a, b)


def add_tens(rng: random.Random) -> tuple[str, str, tuple]:
    a, b = rng.randint(10, 49), rng.randint(1, 9)
    return f"What is {a} + {b}?", str(a + b), ("+", a, b)


def subtract(rng: random.Random) -> tuple[str, str, tuple]:
    a = rng.randint(5, 20)
    b = rng.randint(1, a)
    return f"What is {a} - {b}?", str(a - b), ("-", a, b)


def multiply(rng: random.Random) -> tuple[str, str, tuple]:
    a, b = rng.randint(2, 9), rng.randint(2, 9)
    return f"What is {a} x {b}?", str(a * b), ("x", a, b)


def larger(rng: random.Random) -> tuple[str, str, tuple]:
    a, b = rng.sample(range(1, 100), 2)
    return f"Which number is larger: {a} or {b}?", str(max(a, b)), ("max", a, b)


MATH_FAMILIES = {add_digits: 45, add_tens: 360, subtract: 200, multiply: 36, larger: 300}  # at most (distinct)
COMMUTATIVE = {"+", "x", "max"}


def same_question(item: tuple) -> tuple:
    """A math question up to commutation: "3 x 7" and "7 x 3" are one question, never split
    between the train and the eval file."""
    operation, a, b = item[2]
    return (operation, min(a, b), max(a, b)) if operation in COMMUTATIVE else (operation, a, b)


# The probe in other words: the held-out questions asked as a person might, with no format line
# (the probe's reward is the verifier's own, which grades the last expression of any reply).
PROBE_TEMPLATES = {
    "+": ["Add {a} and {b}. What do you get?", "What is the sum of {a} and {b}?",
          "I have {a} apples and get {b} more. How many apples do I have now?"],
    "-": ["Take {b} away from {a}. What is left?", "What is the difference between {a} and {b}?",
          "There are {a} birds on a tree and {b} fly away. How many birds are left?"],
    "x": ["What is the product of {a} and {b}?", "Multiply {a} by {b}.",
          "There are {a} boxes with {b} pens in each. How many pens are there?"],
    "max": ["Of {a} and {b}, which number is bigger?", "Tell me the greater of these two numbers: {a}, {b}.",
            "Tom is {a} years old and Ann is {b}. How old is the older one?"],
}


def probe_task(task: dict, index: int) -> dict:
    operation, a, b = task["metadata"]["operands"]
    templates = PROBE_TEMPLATES[operation]
    question = templates[index % len(templates)].format(a=a, b=b)
    return {"responses_create_params": {"input": [{"role": "user", "content": question}]},
            "question": question, "expected_answer": task["expected_answer"],
            "metadata": {**task["metadata"], "template": index % len(templates)}}


def math_task(question: str, answer: str, family: str, operands: tuple) -> dict:
    return {"responses_create_params": {"input": MATH_PROMPT(question)},
            "question": question, "expected_answer": answer,
            "metadata": {"family": family, "operands": list(operands)}}


def mcqa_rows(question: str, answer: str, wrong: list[str], family: str, question_id: str,
              rng: random.Random) -> list[dict]:
    """The question four times, the right option at A, B, C and D in turn (the wrong ones keep
    their shuffled order around it)."""
    rng.shuffle(wrong)
    rows = []
    for position in range(len(LETTERS)):
        options = wrong[:position] + [answer] + wrong[position:]
        lines = [INSTRUCTION, "", question] + [f"{LETTERS[i]}: {text}" for i, text in enumerate(options)]
        rows.append({
            "responses_create_params": {"input": [{"role": "user", "content": "\n".join(lines)}]},
            "options": [{LETTERS[i]: text} for i, text in enumerate(options)],
            "expected_answer": LETTERS[position],
            "template_metadata": {"output_regex": OUTPUT_REGEX},
            "metadata": {"family": family, "question": question, "question_id": question_id},
        })
    return rows


def _distinct(rng: random.Random, family, quota: int, key) -> list[tuple]:
    """Up to `quota` distinct draws of `family` (a small family stops when it runs out)."""
    seen, drawn, misses = set(), [], 0
    while len(drawn) < quota and misses < 500:
        item = family(rng)
        if key(item) in seen:
            misses += 1
            continue
        seen.add(key(item))
        drawn.append(item)
    return drawn


def _split(pools: list[list[list[dict]]], rng: random.Random) -> tuple[str, str]:
    """(train, eval) file contents: each family's questions split by TRAIN_SHARE, the rows of
    each file shuffled (a question's rotations end up apart: `metadata.question_id` ties them)."""
    contents = []
    for start, stop in ((0.0, TRAIN_SHARE), (TRAIN_SHARE, 1.0)):
        rows = [row for pool in pools for question in pool[int(start * len(pool)):int(stop * len(pool))]
                for row in question]
        rng.shuffle(rows)
        contents.append("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    return contents[0], contents[1]


def build() -> dict[str, str]:
    """File name -> content."""
    rng = random.Random(SEED)
    pools = []
    for family, quota in MCQA_FAMILIES.items():
        drawn = _distinct(rng, family, quota,
                          lambda item, f=family: (item[0], item[1], tuple(sorted(item[2])) if f is largest else ()))
        pools.append([mcqa_rows(q, a, list(w), family.__name__, f"{family.__name__}-{i}", rng)
                      for i, (q, a, w) in enumerate(drawn)])
    mcqa_train, mcqa_eval = _split(pools, rng)
    pools = [[[math_task(q, a, family.__name__, operands)]
              for q, a, operands in _distinct(rng, family, quota, same_question)]
             for family, quota in MATH_FAMILIES.items()]
    math_train, math_eval = _split(pools, rng)
    eval_tasks = [json.loads(line) for line in math_eval.splitlines()]
    math_probe = "".join(json.dumps(probe_task(task, i), ensure_ascii=False) + "\n"
                         for i, task in enumerate(eval_tasks))
    return {"mcqa_train.jsonl": mcqa_train, "mcqa_eval.jsonl": mcqa_eval,
            "math_train.jsonl": math_train, "math_eval.jsonl": math_eval, "math_probe.jsonl": math_probe}


def write_or_check(files: dict[str, str], check: bool, script: str) -> int:
    """Write each task file beside this script, or with `check` only say which differ (exit 1);
    the task scripts of samples/gym/ share it."""
    stale = []
    for name, text in files.items():
        path = HERE / name
        if check:
            if not path.is_file() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
            print(f"wrote {path} ({text.count(chr(10))} tasks)")
    if stale:
        print(f"out of date: {', '.join(stale)} (run python samples/gym/{script})", file=sys.stderr)
        return 1
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the files differ")
    args = parser.parse_args()
    return write_or_check(build(), args.check, "make_tasks.py")


if __name__ == "__main__":
    sys.exit(main())
