#!/usr/bin/env python3
"""Write the bundled NeMo Gym task files for the iterate loop's embedded default (`gym=mcqa`).

Four-option multiple-choice questions in the input layout of NeMo Gym's `mcqa` resource server
(`responses_create_params`, `options`, `expected_answer`, `template_metadata.output_regex`):
the server grades the letter after the last `Answer:` (reward 1 or 0), no judge needed. The
questions are generated here from small word lists and arithmetic, so that a 135M instruct model
knows many answers and what it mostly has to learn is to end with the answer line.

Two files, with no question in both (the eval file is never trained on):

    python samples/gym/make_tasks.py            # rewrite mcqa_train.jsonl, mcqa_eval.jsonl
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
SPLITS = {"mcqa_train.jsonl": (0.0, 0.85), "mcqa_eval.jsonl": (0.85, 1.0)}  # share of each family
LETTERS = "ABCD"
INSTRUCTION = ("Answer the following multiple choice question. End your reply with a line of the "
               "form 'Answer: X', where X is the letter of the correct option.")
# the last `Answer: X` of the reply (the server takes the rightmost match, case-insensitive)
OUTPUT_REGEX = r"Answer\s*[:：]\s*\**\s*\(?([A-D])\)?(?![A-Za-z0-9])"

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


FAMILIES = {arithmetic: 600, largest: 300, category: 300, opposite: 300, count_letters: 300}  # at most


def task(rng: random.Random, question: str, answer: str, wrong: list[str], family: str) -> dict:
    options = [answer] + wrong
    rng.shuffle(options)
    letter = LETTERS[options.index(answer)]
    lines = [INSTRUCTION, "", question] + [f"{LETTERS[i]}: {text}" for i, text in enumerate(options)]
    return {
        "responses_create_params": {"input": [{"role": "user", "content": "\n".join(lines)}]},
        "options": [{LETTERS[i]: text} for i, text in enumerate(options)],
        "expected_answer": letter,
        "template_metadata": {"output_regex": OUTPUT_REGEX},
        "metadata": {"family": family, "question": question},
    }


def build() -> dict[str, str]:
    """File name -> content. Each family's distinct questions are drawn once, then split between
    the files by family, so both files have the same mix and no question is in both (held out
    means unseen; for `largest` the question is its set of numbers)."""
    rng = random.Random(SEED)
    pools = []
    for family, quota in FAMILIES.items():
        seen, rows, misses = set(), [], 0
        while len(rows) < quota and misses < 500:  # a small family stops when it runs out
            question, answer, wrong = family(rng)
            key = (question, answer, tuple(sorted(wrong)) if family is largest else ())
            if key in seen:
                misses += 1
                continue
            seen.add(key)
            rows.append(task(rng, question, answer, wrong, family.__name__))
        pools.append(rows)
    contents = {}
    for name, (start, stop) in SPLITS.items():
        rows = [row for pool in pools for row in pool[int(start * len(pool)):int(stop * len(pool))]]
        rng.shuffle(rows)
        contents[name] = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    return contents


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the files differ")
    args = parser.parse_args()
    stale = []
    for name, text in build().items():
        path = HERE / name
        if args.check:
            if not path.is_file() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
            print(f"wrote {path} ({text.count(chr(10))} tasks)")
    if stale:
        print(f"out of date: {', '.join(stale)} (run python samples/gym/make_tasks.py)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
