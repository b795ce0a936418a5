#!/usr/bin/env python3
"""gym-dpo's loop against what a user would run instead, on the same model, tasks, reward and
wall-clock budget, every checkpoint graded by one evaluator.

    python bench/bench_peers.py --out results/peers                       # 60 min a contender
    python bench/bench_peers.py --out /tmp/p --budget-min 4 --every-min 2 --eval-tasks 8 --eval-repeats 2
    python bench/bench_peers.py --out results/peers --variant grpo_lr grpo learning_rate=1e-5
    python bench/bench_peers.py --out results/peers --report-only        # table and plot again

Contenders (`--contenders`, each run alone, one after the other, from the same starting folder,
SmolLM2-135M-Instruct as `python -m recipe.iterate.setup` makes it):
- `loop`: `gym-dpo stage=iterate` with its defaults (configs/iterate/default.yaml), rounds until
  the budget is spent; `loop_fast`: the settings of LOOP_FAST below (smaller, more frequent rounds);
- `grpo`: TRL's `GRPOTrainer`, `online_dpo`: TRL's `OnlineDPOTrainer` (bench/peers_trl.py: TRL's
  defaults, generation on this CPU, the environment's reward computed in process by
  bench/peers_reward.py);
- `--variant NAME BASE OVERRIDE...`: BASE's settings plus overrides (Hydra overrides for a loop,
  TRL config fields for the others), added to the run.
Every contender samples at temperature 1.0 with 128 output tokens on the train tasks file (its
prompts read at run time) and runs on the clock of its own process, start-up included; at every
`--every-min` of that clock (and at the budget) the policy it holds is kept: a TRL contender writes
a checkpoint (the time to write it is not counted), the loop's is the last round exported by
then. The loop's own per-round eval is cut to `--loop-own-eval-tasks` held-out tasks x 1 (its
cost, mostly the servers' start that the next collection reuses, stays on its clock).

After the runs, every kept policy (each once) is graded by the loop's own eval, as round 0 of a
run of its own: `gym-dpo stage=iterate iterate.rounds=0 model=smollm2-135m
policy.model_name=<folder>` (NeMo Gym's math environment on the held-out tasks with the loop's
seeds, sampling and serving): its reward ± SE (tasks as clusters), the accuracy among gradable
replies and the gradable rate, as iterate.json gives them. Paired differences between
contenders' last policies use the same tasks and seeds.

The reward the TRL contenders train on must be the evaluator's: it is checked twice, on
`--self-check-rollouts` before anything runs (the rows must be reproduced exactly under 0.4.0's
rule or the boxed one) and on the evaluator's own rows of the base model afterwards (they must
match the rule chosen here, `--no-boxed` or not); a mismatch fails the bench.

Writes into `--out`: `bench.json` (everything), `table.md`, `peers.png` (held-out reward vs wall
minutes and vs rollouts generated, ± 1 SE), `self_check.json`, `runs/<contender>/`, `eval/`,
`logs/`. A rerun with the same `--out` skips the contenders and evaluations already done.

Full run (the default: 4 contenders x 60 min, then ~25 evaluations of 146 tasks x 4 at ~4-5 min
each on 2 quiet cores): about 6 hours. Nothing else should run on the machine meanwhile.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

import peers_report  # noqa: E402
from peers_reward import self_check  # noqa: E402

PRESET = "smollm2-135m"
TRAIN_TASKS = REPO / "samples/gym/math_train.jsonl"
EVAL_TASKS = REPO / "samples/gym/math_eval.jsonl"
SELF_CHECK = REPO / "tests/data/iterate/math_eval_rollouts.jsonl"
# smaller, more frequent rounds (see docs/benchmarks.md, "The loop against its peers")
LOOP_FAST = ["iterate.collect.tasks=32", "iterate.train.dpo.max_num_epochs=1",
             "iterate.collect.sampling.parallel=16", "serving.parallel=16"]
BUILTIN = {"loop": ("loop", []), "loop_fast": ("loop", LOOP_FAST), "grpo": ("grpo", []),
           "online_dpo": ("online_dpo", [])}
DEFAULT_CONTENDERS = "loop,loop_fast,grpo,online_dpo"
KILL_GRACE_S = 180.0


def gym_dpo() -> list[str]:
    return [sys.executable, "-m", "recipe"]


def stop(process: subprocess.Popen, log) -> None:
    """SIGTERM (gym-dpo stops every server it started, then exits 143), then SIGKILL its group."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(KILL_GRACE_S)
    except subprocess.TimeoutExpired:
        log.write(f"[bench] still running {KILL_GRACE_S:.0f} s after SIGTERM: killing its process group\n")
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


# -- the contenders ---------------------------------------------------------------------------------
def loop_argv(args, run_dir: Path, overrides: list[str]) -> list[str]:
    return [*gym_dpo(), "stage=iterate", f"run_dir={run_dir}", "iterate.rounds=1000", f"model={PRESET}",
            f"policy.model_name={args.model}", f"gym.train_tasks={args.train_tasks}",
            f"gym.eval_tasks={args.eval_file}", f"iterate.eval.tasks={args.loop_own_eval_tasks}",
            "iterate.eval.repeats=1", *threads(args), *overrides]


def threads(args) -> list[str]:
    """--threads: llama-server's threads (the CPU trainers' come from OMP_NUM_THREADS, env())."""
    return [f"serving.threads={args.threads}"] if args.threads else []


def env(args) -> dict[str, str]:
    return {**os.environ, **({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {})}


def loop_checkpoints(run_dir: Path, t0: float, marks: list[float]) -> list[dict]:
    """The policy the loop held at each mark: the last round whose export was done by then."""
    exports, rollouts, k = [], 0, 0
    while (record := run_dir / f"round_{k}" / "steps" / "export.json").is_file():
        collect = run_dir / f"round_{k}" / "steps" / "collect.json"
        if collect.is_file():
            rollouts += int(json.loads(collect.read_text())["stats"]["n"])
        done = json.loads(record.read_text())
        exports.append({"round": k, "elapsed_s": round(record.stat().st_mtime - t0, 1), "rollouts": rollouts,
                        "path": None if k == 0 else done["policy"]})
        k += 1
    kept = []
    for mark in marks:
        held = [e for e in exports if e["elapsed_s"] <= mark]
        if held:
            kept.append({**held[-1], "mark_s": mark, "step": held[-1]["round"]})
    return kept


def trl_argv(args, kind: str, out: Path, overrides: list[str], marks: list[float], t0: float) -> list[str]:
    return [sys.executable, str(HERE / "peers_trl.py"), kind, "--model", str(args.model), "--tasks",
            str(args.train_tasks), "--out", str(out), "--budget-s", str(args.budget_min * 60), "--marks-s",
            ",".join(str(m) for m in marks), "--t0", repr(t0), "--max-tokens", "128", "--temperature", "1.0",
            *(["--no-boxed"] if args.no_boxed else []), *[f"--set={o}" for o in overrides]]


def trl_checkpoints(out: Path) -> list[dict]:
    path = out / "checkpoints.json"
    entries = json.loads(path.read_text()) if path.is_file() else []
    return [{**{k: v for k, v in e.items() if k != "marks_s"}, "mark_s": m} for e in entries for m in e["marks_s"]]


def run_contender(args, name: str, kind: str, overrides: list[str]) -> dict:
    folder = args.out / "runs" / name
    done = folder / "contender.json"
    if done.is_file():
        return json.loads(done.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    budget = args.budget_min * 60
    marks = [m * 60.0 for m in frange(args.every_min, args.budget_min)]
    log_path = args.out / "logs" / f"{name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    argv = loop_argv(args, folder / "run", overrides) if kind == "loop" else trl_argv(
        args, kind, folder / "run", overrides, marks, t0)
    print(f"[bench] {name}: {budget / 60:.0f} min; log {log_path}", flush=True)
    with open(log_path, "a") as log:
        log.write(f"[bench] {' '.join(argv)}\n")
        log.flush()
        process = subprocess.Popen(argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                   env=env(args))
        try:
            hard = budget if kind == "loop" else budget + 600.0  # a TRL contender stops itself at its budget
            while process.poll() is None and time.time() - t0 < hard:
                time.sleep(2.0)
        finally:
            stop(process, log)
    wall = time.time() - t0
    points = loop_checkpoints(folder / "run", t0, marks) if kind == "loop" else trl_checkpoints(folder / "run")
    result = {"name": name, "kind": kind, "overrides": overrides, "argv": argv, "budget_s": budget,
              "wall_s": round(wall, 1), "exit": process.returncode, "checkpoints": points}
    done.write_text(json.dumps(result, indent=2) + "\n")
    return result


def frange(step: float, stop_at: float) -> list[float]:
    values, value = [], step
    while value < stop_at - 1e-9:
        values.append(round(value, 6))
        value += step
    return [*values, stop_at]


# -- the one evaluator -------------------------------------------------------------------------------
def evaluate(args, key: str, policy: Path) -> dict:
    """The loop's eval of `policy`, as round 0 of a run of its own."""
    run_dir = args.out / "eval" / key
    summary_path = run_dir / "iterate.json"
    if not (summary_path.is_file() and json.loads(summary_path.read_text())["rounds"][0].get("eval")):
        argv = [*gym_dpo(), "stage=iterate", "iterate.rounds=0", f"run_dir={run_dir}", f"model={PRESET}",
                f"policy.model_name={policy}", f"gym.eval_tasks={args.eval_file}",
                *([f"iterate.eval.tasks={args.eval_tasks}"] if args.eval_tasks else []),
                *([f"iterate.eval.repeats={args.eval_repeats}"] if args.eval_repeats else []), *threads(args)]
        log_path = args.out / "logs" / f"eval_{key.replace('/', '_')}.log"
        print(f"[bench] evaluating {key} ({policy}); log {log_path}", flush=True)
        started = time.monotonic()
        with open(log_path, "a") as log:
            code = subprocess.call(argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env(args))
        if code:
            raise SystemExit(f"[bench] the evaluation of {key} failed (exit {code}); see {log_path}")
        print(f"[bench] {key} evaluated in {time.monotonic() - started:.0f} s", flush=True)
    round0 = json.loads(summary_path.read_text())["rounds"][0]
    found = round0["eval"]
    keep = ("mean", "se", "n", "tasks", "gradable_rate", "gradable_rate_se", "accuracy_gradable",
            "accuracy_gradable_se", "mean_response_tokens")
    return {"key": key, "policy": str(policy), "rollouts_file": str(run_dir / "round_0" / "rollouts" / "eval.jsonl"),
            "tasks_file": str(run_dir / "round_0" / "tasks" / "eval.jsonl"),
            "eval_seconds": round0["steps"].get("eval"), **{k: found.get(k) for k in keep}}


def evaluate_all(args, contenders: list[dict]) -> dict:
    graded = {"base": evaluate(args, "base", args.model)}
    for contender in contenders:
        for point in contender["checkpoints"]:
            if point.get("path") is None:
                point["eval"] = "base"
                continue
            held = f"round_{point['round']}" if contender["kind"] == "loop" else Path(point["path"]).name
            key = f"{contender['name']}/{held}"
            if key not in graded:
                graded[key] = evaluate(args, key, Path(point["path"]))
            point["eval"] = key
    return graded


# -- the command ------------------------------------------------------------------------------------
def parse(argv: list[str] | None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--budget-min", type=float, default=60.0, help="wall-clock budget of each contender")
    parser.add_argument("--every-min", type=float, default=10.0, help="checkpoint marks, minutes of its own run")
    parser.add_argument("--contenders", default=DEFAULT_CONTENDERS, help=f"comma-separated, of {', '.join(BUILTIN)}")
    parser.add_argument("--variant", nargs="+", action="append", default=[], metavar="NAME BASE OVERRIDE",
                        help="a contender of its own: BASE's settings plus overrides")
    parser.add_argument("--model", type=Path, default=None, help="the starting policy (default: setup's SmolLM2)")
    parser.add_argument("--train-tasks", type=Path, default=TRAIN_TASKS)
    parser.add_argument("--eval-file", type=Path, default=EVAL_TASKS)
    parser.add_argument("--eval-tasks", type=int, default=None, help="the first N held-out tasks (default all)")
    parser.add_argument("--eval-repeats", type=int, default=None, help="default: the environment's (4)")
    parser.add_argument("--loop-own-eval-tasks", type=int, default=1)
    parser.add_argument("--no-boxed", action="store_true",
                        help="the TRL reward without the last-\\boxed{} rule (NeMo Gym 0.4.0's environment)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads of every engine (llama-server, torch); default theirs (2 here). 1 on a "
                             "loaded machine, where 2 threads wait on each other; the results then say so")
    parser.add_argument("--self-check-rollouts", type=Path, default=SELF_CHECK)
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args(argv)
    args.out = args.out.absolute()
    contenders = {name: BUILTIN[name] for name in args.contenders.split(",") if name}
    unknown = [n for n in args.contenders.split(",") if n and n not in BUILTIN]
    if unknown:
        parser.error(f"--contenders: unknown {unknown}; known: {', '.join(BUILTIN)} (or define one: --variant)")
    for name, base, *overrides in args.variant:
        if base not in BUILTIN:
            parser.error(f"--variant {name} {base}: BASE is one of {', '.join(BUILTIN)}")
        contenders[name] = (BUILTIN[base][0], [*BUILTIN[base][1], *overrides])
    args.plan = contenders
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    doc_path = args.out / "bench.json"
    if args.report_only:
        doc = json.loads(doc_path.read_text())
        peers_report.write(doc, args.out)
        return 0
    if args.model is None:
        from recipe.iterate import setup

        args.model = setup.smollm2_base()
    args.model = args.model.absolute()
    checks = {"before": self_check(args.self_check_rollouts, boxed=not args.no_boxed)}
    if checks["before"]["rows_graded_by"] is None:
        print(json.dumps(checks["before"], indent=2))
        raise SystemExit(f"[bench] the reward here does not reproduce {args.self_check_rollouts}'s rewards under "
                         "either rule: the TRL contenders would train on another reward than NeMo Gym's")
    contenders = [run_contender(args, name, kind, overrides) for name, (kind, overrides) in args.plan.items()]
    graded = evaluate_all(args, contenders)
    checks["evaluator"] = self_check(Path(graded["base"]["rollouts_file"]), boxed=not args.no_boxed)
    (args.out / "self_check.json").write_text(json.dumps(checks, indent=2) + "\n")
    doc = {"budget_min": args.budget_min, "every_min": args.every_min, "model": str(args.model),
           "train_tasks": str(args.train_tasks), "eval_file": str(args.eval_file), "eval_tasks": args.eval_tasks,
           "eval_repeats": args.eval_repeats, "boxed_rule": not args.no_boxed, "threads": args.threads,
           "self_check": checks,
           "contenders": contenders, "evaluations": graded, "argv": sys.argv}
    doc["paired"] = peers_report.paired(doc)
    doc_path.write_text(json.dumps(doc, indent=2) + "\n")
    peers_report.write(doc, args.out)
    if not checks["evaluator"]["matches"]:
        print(f"[bench] the TRL reward ({checks['evaluator']['rule_here']} rule) differs from the evaluator's on "
              f"its own rows (graded by: {checks['evaluator']['rows_graded_by']}); see self_check.json",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
