"""The bundled math environment's reward, in process, for the TRL contenders of bench_peers.py.

NeMo Gym 0.4.0's `math_with_judge` with its judge off (resources_servers/math_with_judge/app.py)
joins the reply's `output_text` parts and grades them with math-verify (pinned as its server's
requirements.txt pins it: `math-verify==0.8.0`, in the `bench` extra here): gold = the expected
answer, its outer `$...$` / `\\(...\\)` stripped, inside `\\boxed{...}`, extracted with
`LatexExtractionConfig()`; the prediction extracted with `(ExprExtractionConfig(),
LatexExtractionConfig())`; reward 1.0 when any prediction verifies against a gold, else 0.0; the
extracted answer is the first prediction that verifies, else the first one, else None; any error
or timeout is 0.0 and None. NeMo Gym 0.7.0 adds one rule (its `_extract_last_boxed_answer`): a
reply whose last complete `\\boxed{...}` is missing or blank scores 0.0 (extracted None) without
being graded. `MathReward(boxed=True)` is that rule (the owner's bundled environment is moving to
it); `boxed=False` is 0.4.0's verdict alone.

    python bench/peers_reward.py ROLLOUTS.jsonl        # compare with NeMo Gym's own rewards
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

BOXED = "\\boxed{"


def last_boxed(text: str) -> str | None:
    """What the last `\\boxed{` of `text` holds up to its matching brace; None when there is no
    `\\boxed{` or the last one is never closed."""
    start = text.rfind(BOXED)
    if start < 0:
        return None
    depth = 1
    for index in range(start + len(BOXED), len(text)):
        char = text[index]
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[start + len(BOXED):index]
    return None


def strip_delimiters(answer: str) -> str:
    answer = answer.strip()
    if answer.startswith("\\(") and answer.endswith("\\)"):
        answer = answer[2:-2].strip()
    if len(answer) > 1 and answer.startswith("$") and answer.endswith("$"):
        answer = answer[1:-1].strip()
    return answer


class MathReward:
    """reward(expected, reply) -> (reward, extracted answer), as the environment grades a reply."""

    def __init__(self, boxed: bool = True):
        import logging

        from math_verify.metric import math_metric
        from math_verify.parser import ExprExtractionConfig, LatexExtractionConfig

        logging.getLogger("math_verify").setLevel(logging.CRITICAL)  # as the server does
        self.boxed = boxed
        self._metric = math_metric(gold_extraction_target=(LatexExtractionConfig(),),
                                   pred_extraction_target=(ExprExtractionConfig(), LatexExtractionConfig()))

    def verdict(self, expected: str, reply: str) -> tuple[float, str | None]:
        """0.4.0's grade: math-verify alone."""
        import contextlib
        import io

        from math_verify import grader
        from math_verify.errors import TimeoutException

        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                score, extracted = self._metric([BOXED + strip_delimiters(expected) + "}"], [reply])
            if extracted is None:
                return float(score), None
            golds, predictions = extracted
            chosen = next((p for p in predictions if any(grader.verify(g, p) for g in golds)), None)
            if chosen is None:
                chosen = predictions[0] if predictions else None
            return float(score), chosen
        except (Exception, TimeoutException):
            return 0.0, None

    def __call__(self, expected: str, reply: str) -> tuple[float, str | None]:
        if self.boxed:
            inside = last_boxed(reply)
            if inside is None or not inside.strip():
                return 0.0, None
        return self.verdict(expected, reply)

    def trl(self, completions, expected_answer, **_) -> list[float]:
        """A TRL reward function (GRPOTrainer, OnlineDPOTrainer): `expected_answer` is the
        dataset's column of that name; conversational completions are message lists."""
        texts = [c if isinstance(c, str) else "".join(m.get("content") or "" for m in c) for c in completions]
        self.scored += len(texts)
        return [self(answer, text)[0] for answer, text in zip(expected_answer, texts, strict=True)]

    scored = 0  # completions graded so far (the rollouts a TRL contender generated)


def reply_text(row: dict) -> str:
    """What the server grades: the `output_text` parts of the reply's messages, joined."""
    parts = []
    for item in (row.get("response") or {}).get("output") or []:
        if item.get("type") != "message":
            continue
        parts += [c.get("text", "") for c in item.get("content") or [] if c.get("type") == "output_text"]
    return "".join(parts)


def self_check(rollouts: Path, boxed: bool) -> dict:
    """Grade every row of a NeMo Gym `math_with_judge` rollouts file here and compare with the
    server's `reward` and `extracted_answer`. The rows tell which rule graded them: 0.4.0's
    (no `\\boxed{}` needed) or the boxed one; `matches` says whether the rule chosen here
    (`boxed`) is theirs, row for row."""
    reward = MathReward(boxed=True)
    rows = [json.loads(line) for line in rollouts.read_text(encoding="utf-8").splitlines() if line.strip()]
    graded = {"plain": [], "boxed": []}
    for row in rows:
        text = reply_text(row)
        plain = reward.verdict(str(row["expected_answer"]), text)
        inside = last_boxed(text)
        graded["plain"].append(plain)
        graded["boxed"].append(plain if inside is not None and inside.strip() else (0.0, None))
    theirs = [(float(row["reward"]), row.get("extracted_answer")) for row in rows]
    differ = {rule: [i for i, (mine, gym) in enumerate(zip(values, theirs, strict=True)) if mine != gym]
              for rule, values in graded.items()}
    rows_rule = next((rule for rule in ("boxed", "plain") if not differ[rule]), None)
    chosen = "boxed" if boxed else "plain"
    return {"rollouts": str(rollouts), "rows": len(rows), "rows_graded_by": rows_rule, "rule_here": chosen,
            "matches": not differ[chosen], "differing_rows": {r: d[:20] for r, d in differ.items()},
            "boxed_rule_zeroes": sum(1 for p, b in zip(graded["plain"], graded["boxed"], strict=True)
                                     if p[0] != b[0]),
            "mean_reward_rows": sum(r for r, _ in theirs) / max(1, len(theirs))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="compare this reward with NeMo Gym's rows")
    parser.add_argument("rollouts", type=Path)
    parser.add_argument("--no-boxed", action="store_true", help="0.4.0's rule: no \\boxed{} needed")
    args = parser.parse_args(argv)
    found = self_check(args.rollouts, boxed=not args.no_boxed)
    print(json.dumps(found, indent=2))
    return 0 if found["matches"] else 1


if __name__ == "__main__":
    sys.exit(main())
