"""Round bookkeeping: which steps a round has, which are done, where a rerun resumes.

Round 0 is the base model: `export` (the served form of the policy) and `eval`. Every later
round K trains policy K from policy K-1:

    collect   train rollouts of policy K-1 on this round's tasks (NeMo Gym)
    prepare   gym-dpo stage=prepare on them -> pairs
    train     gym-dpo stage=train on the pairs, from policy K-1 (it resumes its own checkpoints)
    export    policy K as a Hugging Face folder (NeMo RL: DCP -> HF), then in the served form
    eval      held-out rollouts of policy K (NeMo Gym), same tasks and seeds as every round

A step is done when `round_K/steps/<step>.json` exists: it is written (atomically) only after the
step's outputs are in place, so a rerun with the same run_dir starts at the first step without
one, in the first round that has such a step. `plan.json` holds what makes rounds comparable
(eval tasks and their hash, repeats, sampling, model, serving) and what each round is made of
(the train task file, tasks and repeats per round, the pairing and training settings): a rerun
that changes any of it is refused rather than mixed into the same run. What a rerun may change
(how fast, how long to wait, where it trains) is said when it does, and recorded per step.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from recipe.run_files import read_json, write_atomic

ROUND0_STEPS = ("export", "eval")
ROUND_STEPS = ("collect", "prepare", "train", "export", "eval")
PLAN = "plan.json"
ACCEPTED = "accepted"  # plan.json's settings a rerun may change (recipe.iterate.plan.Plan.accepted)


def steps(round_index: int) -> tuple[str, ...]:
    return ROUND0_STEPS if round_index == 0 else ROUND_STEPS


def round_dir(run_dir: Path, round_index: int) -> Path:
    return run_dir / f"round_{round_index}"


def _record_path(run_dir: Path, round_index: int, step: str) -> Path:
    return round_dir(run_dir, round_index) / "steps" / f"{step}.json"


def write_json(path: Path, value) -> None:
    """Whole and on disk before the step counts as done (`run_files.write_atomic`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(value, indent=2, sort_keys=False, default=str) + "\n")


def record(run_dir: Path, round_index: int, step: str) -> dict | None:
    path = _record_path(run_dir, round_index, step)
    if not path.is_file():
        return None
    return read_json(path, f"delete it to run round {round_index}'s {step} step again")


def mark_done(run_dir: Path, round_index: int, step: str, seconds: float, **outputs) -> dict:
    entry = {"round": round_index, "step": step, "seconds": round(seconds, 1),
             "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **outputs}
    write_json(_record_path(run_dir, round_index, step), entry)
    return entry


def pending(run_dir: Path, rounds: int) -> list[tuple[int, str]]:
    """Every (round, step) still to run for rounds 0..rounds, in order. A round counts as done
    only when all its steps are; the first unfinished step of the first unfinished round comes
    first (later steps of that round are redone even if a stale record exists)."""
    todo = []
    for index in range(rounds + 1):
        names = steps(index)
        done = [record(run_dir, index, name) is not None for name in names]
        if all(done) and not todo:
            continue
        first = done.index(False) if not all(done) else len(names)
        start = first if not todo else 0
        todo.extend((index, name) for name in names[start:])
    return todo


def differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """`key.sub: old then, new now`, one line per setting that differs (nested dicts by key)."""
    lines = []
    for key in sorted(set(old) | set(new), key=str):
        then, now = old.get(key), new.get(key)
        if isinstance(then, dict) and isinstance(now, dict):
            lines += differences(then, now, f"{prefix}{key}.")
        elif then != now:
            lines.append(f"{prefix}{key}: {then!r} then, {now!r} now")
    return lines


def check_plan(run_dir: Path, plan: dict) -> list[str]:
    """Differences between `plan` and the one the run folder was started with (written if new);
    keys that plan.json does not have (an older gym-dpo wrote it) are settle_plan's."""
    path = run_dir / PLAN
    if not path.is_file():
        write_json(path, plan)
        return []
    old = read_json(path, "it records the settings the run folder was started with; restore it, or use a new run_dir")
    return differences({k: v for k, v in old.items() if k in plan}, {k: v for k, v in plan.items() if k in old})


def settle_plan(run_dir: Path, plan: dict, accepted: dict) -> list[str]:
    """Once check_plan refused nothing: what this run takes as it is now, said in lines (keys
    plan.json lacks, settings a rerun may change that did), and plan.json rewritten with them."""
    path = run_dir / PLAN
    old = json.loads(path.read_text())
    notes = []
    missing = [key for key in plan if key not in old]
    if missing:
        notes.append(f"{path} did not record {', '.join(missing)} (an older gym-dpo started this run): "
                     "recorded as they are now; a rerun that changes them is refused")
    if ACCEPTED in old:
        notes += [f"{line} (a rerun may change this; each step records what it ran with, "
                  "iterate.json per round)" for line in differences(old[ACCEPTED], accepted)]
    write_json(path, {**old, **{key: plan[key] for key in missing}, ACCEPTED: accepted})
    return notes
