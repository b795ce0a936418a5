#!/usr/bin/env python3
"""Where a round of `gym-dpo stage=iterate` spends its time, step by step, from a run folder.

    python bench/bench_iterate.py results/iterate                 # a finished (or running) run
    python bench/bench_iterate.py results/iterate --run -- iterate.rounds=1   # run it first

Per round: the seconds of each step (collect, prepare, train, export, eval: the loop's own
records, `round_K/steps/<step>.json`, which time the step from start to its outputs in place,
servers' start-up included), the rollouts collected and their rate, the training steps and the
seconds per step, and the round's total. Target: a round of the embedded default at most 20
minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

STEPS = ("collect", "prepare", "train", "export", "eval")
TARGET_MINUTES = 20.0


def record(run_dir: Path, k: int, step: str) -> dict | None:
    path = run_dir / f"round_{k}" / "steps" / f"{step}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def breakdown(run_dir: Path) -> list[dict]:
    rounds = []
    k = 0
    while (run_dir / f"round_{k}").is_dir():
        row = {"round": k}
        for step in STEPS:
            done = record(run_dir, k, step)
            row[step] = None if done is None else float(done["seconds"])
        collect, evaluated = record(run_dir, k, "collect"), record(run_dir, k, "eval")
        if collect:
            row["train_rollouts"] = collect["stats"]["n"]
        if evaluated:
            row["eval_rollouts"] = evaluated["stats"]["n"]
        trained = record(run_dir, k, "train")
        if trained and not trained.get("skipped"):
            row["train_steps"] = (trained.get("metrics") or {}).get("step")
        row["total"] = sum(v for s in STEPS if (v := row[s]) is not None)
        rounds.append(row)
        k += 1
    return rounds


def _cell(value, digits=0) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def table(rows: list[dict]) -> str:
    header = ["round", *(f"{s} s" for s in STEPS), "rollouts/s (collect, eval)", "s / train step", "minutes"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        rates = []
        for count, step in (("train_rollouts", "collect"), ("eval_rollouts", "eval")):
            seconds = row.get(step)
            rates.append(f"{row[count] / seconds:.2f}" if row.get(count) and seconds else "–")
        per_step = row["train"] / row["train_steps"] if row.get("train_steps") and row.get("train") else None
        lines.append("| " + " | ".join([str(row["round"]), *(_cell(row[s]) for s in STEPS), ", ".join(rates),
                                        _cell(per_step, 1), _cell(row["total"] / 60, 1)]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--run", action="store_true", help="run gym-dpo stage=iterate on run_dir first")
    parser.add_argument("overrides", nargs="*", help="after --: more overrides for the run")
    args = parser.parse_args(argv)
    if args.run:
        code = subprocess.call([sys.executable, "-m", "recipe", "stage=iterate", f"run_dir={args.run_dir}",
                                *args.overrides])
        if code:
            return code
    rows = breakdown(args.run_dir)
    if not rows:
        print(f"{args.run_dir} has no round_K folders", file=sys.stderr)
        return 1
    print(table(rows))
    later = [r["total"] / 60 for r in rows if r["round"] > 0 and all(r[s] is not None for s in STEPS)]
    if later:
        print(f"rounds 1+: {min(later):.1f}-{max(later):.1f} min each (target <= {TARGET_MINUTES:.0f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
