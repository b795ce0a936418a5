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

    python samples/gym/make_env_tasks.py            # rewrite the files (NeMo Gym and the server venv
                                                    # it needs are built from the lock when missing)
    python samples/gym/make_env_tasks.py --check    # exit 1 if the committed files differ
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from make_tasks import write_or_check  # beside this script

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
SOKOBAN_ROOMS = {"min_side": 5, "max_cells": 36, "num_boxes": 1}  # the levels kept: small rooms, one box
SOKOBAN_KEEP = {"train": 600, "eval": 64}


def nemo_gym_paths():
    """(NeMo Gym's installed package root, its install), from the loop's own setup (installed
    from the lock when missing)."""
    sys.path.insert(0, str(HERE.parents[1]))
    from recipe.iterate import servers, setup

    tools = setup.nemo_gym()
    return servers.site_packages(tools.venv), tools


def _server_python(tools, server: str) -> Path:
    """The Python of NeMo Gym's venv for `server`, built from the lock as the loop builds it."""
    from omegaconf import OmegaConf

    from recipe.iterate import servers, suites

    gym = suites.gym_config(server)
    serving = OmegaConf.create({"nemo_gym_model": {}})
    for name in servers.ensure(tools, gym, serving, Path(tempfile.mkdtemp(prefix="gym-dpo-tasks-")),
                               Path(tempfile.gettempdir()) / "gym-dpo-make-env-tasks.log"):
        if name.startswith("resources_servers/"):
            return servers.venv_of(tools, name) / "bin" / "python"
    raise SystemExit(f"gym={server} starts no resource server")


def reasoning_gym_files(root: Path, tools) -> dict[str, str]:
    python = _server_python(tools, "reasoning_gym")
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


# A level whose first generation fails is generated again by grl_sokoban's reset from a seed made
# with Python's salted str hash (another level in every server process; rooms of 4 x N fail often
# and can recurse until RecursionError, which fails NeMo Gym's whole collection): kept are levels
# that the environment's own reset builds at the first try.
LEVEL_CHECK = """
import json, sys
from resources_servers.grl_sokoban import app
from resources_servers.grl_sokoban.sokoban_env import sokoban_env as env_module
made = []
original = env_module.generate_room
env_module.generate_room = lambda *a, **k: made.append(1) or original(*a, **k)
for line in sys.stdin:
    row = json.loads(line)
    defaults = app.GrlSokobanResourcesServerConfig.model_fields["env_config"].default_factory()
    config = dict(defaults, dim_room=tuple(row["dim_room"]), num_boxes=row["num_boxes"])
    try:
        env = env_module.SokobanEnv(config)  # gym-sokoban makes a first room in its constructor
        made[:] = []
        env.reset(seed=row["seed"])
        print(len(made) == 1)
    except (RuntimeError, RecursionError):
        print(False)
"""


def sokoban_files(root: Path, tools) -> dict[str, str]:
    script = root / "resources_servers" / "grl_sokoban" / "generate_test_examples.py"
    python = _server_python(tools, "sokoban")
    files, seen = {}, set()
    with tempfile.TemporaryDirectory() as scratch:
        for split, (count, seed) in SOKOBAN.items():
            out = Path(scratch) / f"{split}.jsonl"
            subprocess.run([sys.executable, str(script), "--num-examples", str(count), "--seed", str(seed),
                            "--output", str(out)], check=True, stdout=subprocess.DEVNULL, cwd=scratch)
            rows = [json.loads(line) for line in out.read_text().splitlines()]
            rows = [r for r in rows if r["num_boxes"] == SOKOBAN_ROOMS["num_boxes"]
                    and min(r["dim_room"]) >= SOKOBAN_ROOMS["min_side"]
                    and r["dim_room"][0] * r["dim_room"][1] <= SOKOBAN_ROOMS["max_cells"]
                    and (r["seed"], tuple(r["dim_room"])) not in seen]  # a level is in one file only
            built = subprocess.run([str(python), "-c", LEVEL_CHECK], input="".join(json.dumps(r) + "\n" for r in rows),
                                   capture_output=True, text=True, check=True, cwd=root).stdout.split()
            kept = [r for r, ok in zip(rows, built) if ok == "True"][:SOKOBAN_KEEP[split]]
            seen.update((r["seed"], tuple(r["dim_room"])) for r in kept)
            files[f"sokoban_{split}.jsonl"] = "".join(json.dumps(r) + "\n" for r in kept)
    return files


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the files differ")
    parser.add_argument("--only", choices=["reasoning_gym", "sokoban"], help="one environment's files")
    args = parser.parse_args()
    root, tools = nemo_gym_paths()
    files = {}
    if args.only in (None, "sokoban"):
        files.update(sokoban_files(root, tools))
    if args.only in (None, "reasoning_gym"):
        files.update(reasoning_gym_files(root, tools))
    return write_or_check(files, args.check, "make_env_tasks.py")


if __name__ == "__main__":
    sys.exit(main())
