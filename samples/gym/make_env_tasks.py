#!/usr/bin/env python3
"""Write the task files of the bundled environments that nobody here wrote, with each
environment's own generator from the NeMo Gym 0.4.0 install (recipe.iterate.setup):

- `reasoning_gym_{train,eval,probe}.jsonl` (`gym=reasoning_gym`): NeMo Gym's
  resources_servers/reasoning_gym/scripts/create_dataset.py, one run per task of REASONING_GYM
  (with its settings) and seed, run by the Python of NeMo Gym's reasoning_gym server venv (it has
  the reasoning-gym library); train and eval from other seeds, rows interleaved task by task so
  that every round's slice has the whole mix. The probe is the eval file with reasoning-gym's own
  default system prompt (`reasoning_gym.utils.SYSTEM_PROMPTS["default"]`, read from the library),
  which asks for the answer inside <answer> tags.
- `sokoban_{train,eval}.jsonl` (`gym=sokoban`): NeMo Gym's resources_servers/grl_sokoban/
  generate_test_examples.py with its own --seed, kept to the levels in SOKOBAN_ROOMS.

    python samples/gym/make_env_tasks.py            # rewrite the files (needs the server venvs: run
                                                    # the loop once with the environment, or ng_run)
    python samples/gym/make_env_tasks.py --check    # exit 1 if the committed files differ
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent

# (name, reasoning-gym task, its create_dataset.py --config): the six whose base reward was highest
# for the default model (SmolLM2-135M-Instruct) in a probe of 19 easy settings x 30 tasks, with
# and without reasoning-gym's system prompt (docs/iterate.md, "reasoning_gym: which tasks"): none
# was ever answered exactly; these earn partial credit (a reply that contains the answer).
ONE_DIGIT = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}
REASONING_GYM = [
    ("spell_backward", "spell_backward", {"min_word_len": 3, "max_word_len": 3}),
    ("letter_counting", "letter_counting", {"min_words": 1, "max_words": 2}),
    ("basic_arithmetic", "basic_arithmetic", {**ONE_DIGIT, "operators": ["+", "-"], "allow_parentheses": False,
                                              "allow_negation": False}),
    ("products", "products", {"min_digits": 1, "max_digits": 1}),
    ("chain_sum", "chain_sum", ONE_DIGIT),
    ("gcd", "gcd", {"max_value": 12}),
]
# per task: (tasks, create_dataset.py --seed); reasoning-gym draws item i from seed + i, so the ranges must not meet
REASONING_GYM_SIZES = {"train": (120, 1000), "eval": (60, 50000)}

SOKOBAN = {"train": (2000, 101), "eval": (400, 202)}  # (levels generated, --seed)
SOKOBAN_ROOMS = {"max_cells": 30, "num_boxes": 1}       # the levels kept: small rooms, one box
SOKOBAN_KEEP = {"train": 600, "eval": 64}


def nemo_gym_paths() -> tuple[Path, Path]:
    """(NeMo Gym's installed package root, its server venvs), from the loop's own setup."""
    sys.path.insert(0, str(HERE.parents[1]))
    from recipe.iterate import setup

    tools = setup.nemo_gym(install=False)
    roots = sorted((tools.venv / "lib").glob("python3*/site-packages"))
    if not roots or not (roots[0] / "resources_servers").is_dir():
        raise SystemExit(f"NeMo Gym is not installed at {tools.venv}: run python -m recipe.iterate.setup")
    return roots[0], tools.server_venvs


def _server_python(venvs: Path, server: str) -> Path:
    python = venvs / "resources_servers" / server / ".venv" / "bin" / "python"
    if not python.is_file():
        raise SystemExit(f"{python} is missing: NeMo Gym builds it the first time it runs the environment "
                         f"(gym-dpo stage=iterate iterate.rounds=0 gym=... once)")
    return python


def reasoning_gym_files(root: Path, venvs: Path) -> dict[str, str]:
    python = _server_python(venvs, "reasoning_gym")
    script = root / "resources_servers" / "reasoning_gym" / "scripts" / "create_dataset.py"
    files = {}
    with tempfile.TemporaryDirectory() as scratch:
        for split, (size, seed) in REASONING_GYM_SIZES.items():
            per_task = []
            for name, task, config in REASONING_GYM:
                out = Path(scratch) / f"{split}-{name}.jsonl"
                subprocess.run([str(python), str(script), "--task", task, "--size", str(size), "--seed", str(seed),
                                "--config", json.dumps(config), "--output", str(out)],
                               check=True, stdout=subprocess.DEVNULL, cwd=scratch)
                per_task.append(out.read_text().splitlines())
            rows = [rows[i] for i in range(size) for rows in per_task if i < len(rows)]  # task by task
            if split == "eval":  # held out: no eval question is asked in train (small tasks repeat across seeds)
                asked = {json.loads(row)["question"] for row in files["reasoning_gym_train.jsonl"].splitlines()}
                kept = []
                for row in rows:  # and each question once
                    question = json.loads(row)["question"]
                    if question not in asked:
                        asked.add(question)
                        kept.append(row)
                rows = kept
            files[f"reasoning_gym_{split}.jsonl"] = "".join(row + "\n" for row in rows)
        prompt = subprocess.run([str(python), "-c", "from reasoning_gym.utils import SYSTEM_PROMPTS; "
                                 "print(SYSTEM_PROMPTS['default'], end='')"],
                                check=True, capture_output=True, text=True).stdout
    probe = []
    for line in files["reasoning_gym_eval.jsonl"].splitlines():
        row = json.loads(line)
        row["responses_create_params"]["input"] = [{"role": "system", "content": prompt},
                                                   *row["responses_create_params"]["input"]]
        probe.append(json.dumps(row) + "\n")
    files["reasoning_gym_probe.jsonl"] = "".join(probe)
    return files


def sokoban_files(root: Path) -> dict[str, str]:
    script = root / "resources_servers" / "grl_sokoban" / "generate_test_examples.py"
    files, seen = {}, set()
    with tempfile.TemporaryDirectory() as scratch:
        for split, (count, seed) in SOKOBAN.items():
            out = Path(scratch) / f"{split}.jsonl"
            subprocess.run([sys.executable, str(script), "--num-examples", str(count), "--seed", str(seed),
                            "--output", str(out)], check=True, stdout=subprocess.DEVNULL, cwd=scratch)
            kept = []
            for line in out.read_text().splitlines():
                row = json.loads(line)
                rows_, cols = row["dim_room"]
                level = (row["seed"], tuple(row["dim_room"]), row["num_boxes"])
                if (rows_ * cols <= SOKOBAN_ROOMS["max_cells"] and row["num_boxes"] == SOKOBAN_ROOMS["num_boxes"]
                        and level not in seen):  # a level is in one file only
                    seen.add(level)
                    kept.append(line + "\n")
            files[f"sokoban_{split}.jsonl"] = "".join(kept[:SOKOBAN_KEEP[split]])
    return files


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the files differ")
    parser.add_argument("--only", choices=["reasoning_gym", "sokoban"], help="one environment's files")
    args = parser.parse_args()
    root, venvs = nemo_gym_paths()
    files = {}
    if args.only in (None, "sokoban"):
        files.update(sokoban_files(root))
    if args.only in (None, "reasoning_gym"):
        files.update(reasoning_gym_files(root, venvs))
    stale = []
    for name, text in files.items():
        path = HERE / name
        if args.check:
            if not path.is_file() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
            print(f"wrote {path} ({text.count(chr(10))} tasks)")
    if stale:
        print(f"out of date: {', '.join(stale)} (run python samples/gym/make_env_tasks.py)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
