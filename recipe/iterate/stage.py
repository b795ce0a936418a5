"""`stage=iterate`: NeMo Gym rollouts of the current policy -> prepare -> train -> evaluate, for
`iterate.rounds` rounds after evaluating the base model (round 0). See recipe.iterate.state for
the steps and resume, recipe.iterate.plan for what is handed to the stages.

Writes `<run_dir>/round_K/` (tasks, rollouts, pairs, training run, served policy, logs),
`<run_dir>/iterate.json` and `<run_dir>/iterate.md` (per round: held-out eval reward mean, its
standard error and n, pass rate for 0/1 rewards, pairs made, mean response length, the gain over
round 0 with its paired standard error).

Servers (the policy's engine, NeMo Gym's servers and Ray) run only while a step needs them: the
eval of round K and the collection of round K+1 share one session (same policy); they are
stopped before prepare and training, and on success, failure, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import time
from contextlib import ExitStack
from pathlib import Path

from recipe import processes, run_lock
from recipe import report as console
from recipe.errors import RecipeError
from recipe.iterate import formats, report, round_checks, servers, serving, setup, state, stats
from recipe.iterate import gym as gym_mod
from recipe.iterate import plan as plan_mod
from recipe.run_files import step_folders

POLICY_ALIAS = "policy-round-{k}"


def whole_hf_folder(path: Path) -> bool:
    """What NeMo RL's converter writes (v0.7.0 nemo_rl/utils/native_checkpoint.py): the weights,
    config.json and the tokenizer."""
    return (path / "config.json").is_file() and (path / "tokenizer_config.json").is_file() and any(
        (path / name).is_file() for name in ("pytorch_model.bin", "model.safetensors", "model.safetensors.index.json"))


class Servers:
    """The served policy and the NeMo Gym session pointed at it, opened only when needed."""

    def __init__(self, plan: plan_mod.Plan):
        self.plan = plan
        self.stack: ExitStack | None = None
        self.artifact: Path | None = None
        self.gym: gym_mod.Gym | None = None

    def open(self, artifact: Path, round_index: int, logs: Path) -> gym_mod.Gym:
        if self.stack is not None and self.artifact == artifact:
            return self.gym
        self.close()
        tools = setup.nemo_gym(self.plan.it.get("nemo_gym_python"))
        stack = ExitStack()
        try:
            name = POLICY_ALIAS.format(k=round_index)
            console.console.print(f"serving {artifact} as {name} ({self.plan.serving.name})", soft_wrap=True)
            base_url = stack.enter_context(serving.serve(self.plan.serving, artifact, name, logs / "serve.log",
                                                         self.plan.sampler, self.plan.place))
            gym = gym_mod.Gym(self.plan.gym, self.plan.serving, self.plan.run_dir / "gym", base_url, name, tools,
                              sampler=self.plan.sampler, others=self.plan.gyms[1:])
            envs = ", ".join(str(g.name) for g in self.plan.gyms)
            console.console.print(f"starting NeMo Gym (ng_run, {envs}); log {logs / 'ng_run.log'}", soft_wrap=True)
            self.gym = stack.enter_context(gym_mod.session(gym, logs / "ng_run.log",
                                                           float(self.plan.it.nemo_gym_startup_timeout)))
        except BaseException:
            stack.close()
            raise
        self.stack, self.artifact = stack, artifact
        return self.gym

    def close(self) -> None:
        if self.stack is not None:
            console.console.print("stopping the policy server and NeMo Gym")
            stack, self.stack, self.artifact, self.gym = self.stack, None, None, None
            stack.close()


def no_pairs_reason(manifest_path: Path) -> str:
    """Why prepare made no pair, in one line, with what would give some (from its manifest)."""
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, json.JSONDecodeError):
        return f"see {manifest_path}"
    counts = manifest.get("counts") or {}
    unpaired = counts.get("unpaired") or {}
    usable = int(((manifest.get("rewards") or {}).get("usable_rollouts") or {}).get("count") or 0)
    rejected = counts.get("rejected") or {}
    if not usable:
        top = ", ".join(f"{n} {reason}" for reason, n in sorted(rejected.items(), key=lambda i: -i[1]) if n)
        return f"no usable rollout ({top or 'the file is empty'}; see rejects.jsonl beside {manifest_path.name})"
    alone = int(unpaired.get("no_comparable_rollout") or 0)
    if alone >= usable:
        return ("no two rollouts of a task started alike (each began from another context: the environment's "
                "reset is not seeded, so they part at the environment's turn, not the model's, and are no "
                "preference); seeded resets would give pairs: a task field the environment's reset reads, as "
                "grl_sokoban's `seed`")
    parted = int(unpaired.get("environment_diverged") or 0)
    if parted and parted >= int(unpaired.get("tie") or 0):
        return (f"the rollouts of a task parted at the environment's turn, not the model's ({parted} rollouts): "
                "what the environment said differed before the model's replies did; seeded environment turns "
                "would give pairs")
    return ("no task's rollouts got two different rewards (every task is too easy or too hard for the policy); "
            "more repeats per task (iterate.collect.repeats), tasks nearer the policy's level, or a graded "
            "reward would give pairs")


class Loop:
    def __init__(self, plan: plan_mod.Plan):
        self.plan = plan
        self.servers = Servers(plan)

    # -- paths ------------------------------------------------------------------------------------
    def rd(self, k: int) -> Path:
        return state.round_dir(self.plan.run_dir, k)

    def policy(self, k: int) -> str:
        """Policy K as a Hugging Face folder (or hub id for a GPU run's base)."""
        if k == 0:
            source = self.plan.base_source
            if source.startswith("offline:"):
                return str(getattr(setup, source.split(":", 1)[1])())
            return self.plan.model_name
        done = state.record(self.plan.run_dir, k, "export")
        if done is None:
            raise RecipeError(f"round {k} has no exported policy yet")
        return done["policy"]

    def artifact(self, k: int) -> Path:
        done = state.record(self.plan.run_dir, k, "export")
        if done is None:
            raise RecipeError(f"round {k} has no served form of its policy yet")
        return Path(done["artifact"])

    # -- steps ------------------------------------------------------------------------------------
    def skipped(self, k: int) -> str | None:
        """Why round K did not train (its prepare made no training pair), or None."""
        done = state.record(self.plan.run_dir, k, "train") if k > 0 else None
        return done.get("skipped") if done else None

    def step_export(self, k: int) -> dict:
        if self.skipped(k):  # the round's policy is the one it started from
            return {"policy": self.policy(k - 1), "artifact": str(self.artifact(k - 1)), "same_as_round": k - 1}
        policy = self.policy(0) if k == 0 else str(self.trained_policy(k))
        engine = serving.load(str(self.plan.serving.name))
        if Path(policy).exists():
            artifact = str(engine.export(Path(policy), self.rd(k) / "serve", self.plan.serving))
        elif engine.serves_hub_names:  # a GPU run's base model by its hub name: the engine fetches it
            artifact = policy
        else:
            raise RecipeError(f"policy {policy!r} is not a folder here and serving.name={self.plan.serving.name} "
                              "serves local files only: give policy.model_name=/path/to/model")
        return {"policy": policy, "artifact": artifact}

    def trained_policy(self, k: int) -> Path:
        """The Hugging Face folder of round K's training: launcher=local_cpu (TRL) writes `model/`;
        every NeMo RL launcher leaves DCP checkpoints (`step_N/policy/weights`), converted with
        NeMo RL's own converter where the launcher runs NeMo RL (recipe.iterate.place).

        The converter raises FileExistsError on an existing output folder and writes it piece by
        piece (weights, config, tokenizer), so it writes into a fresh `.policy.partial/` that is
        renamed to `policy/` only once it exited 0: `policy/` is always whole, and a rerun after an
        interrupted export starts again from nothing."""
        train, out = self.rd(k) / "train", self.plan.policy_folder(k)
        if self.plan.launcher == "local_cpu":
            if not (out / "config.json").is_file():
                raise RecipeError(f"{train} has no model/: training left no policy")
            return out
        if whole_hf_folder(out):
            return out
        if out.exists():  # left by an export that wrote in place (an older gym-dpo): not trusted
            shutil.rmtree(out)
        steps = [(n, p) for n, p in step_folders(train / "checkpoints") if (p / "policy" / "weights").is_dir()]
        if not steps:
            raise RecipeError(f"{train / 'checkpoints'} has no step_N/policy/weights: training left no policy")
        partial = out.with_name(".policy.partial")
        if partial.exists():
            shutil.rmtree(partial)
        log = self.rd(k) / "logs" / "dcp_to_hf.log"
        argv, cwd, extra = self.plan.dcp_to_hf_step(steps[-1][1], partial, k)
        step = self.plan.place.step(f"dcp-to-hf-{k}")
        console.console.print(f"round {k}: NeMo RL's converter on {steps[-1][1].name} ({self.plan.place.describe()}); "
                              f"log {log}", highlight=False, soft_wrap=True)
        try:
            processes.run(argv, log, cwd=cwd, env={**os.environ, **extra}, echo=False,
                          what="NeMo RL's convert_dcp_to_hf.py" + (f" (Slurm step {step})" if step else ""))
            if not whole_hf_folder(partial):
                raise RecipeError(f"NeMo RL's converter exited 0 but {partial} lacks the weights, config.json or "
                                  f"the tokenizer (log: {log})")
            os.replace(partial, out)
        finally:
            if partial.exists():
                shutil.rmtree(partial, ignore_errors=True)
        return out

    def _collect(self, k_served: int, k: int, tasks: Path, name: str, repeats: int, sampling,
                 agent: str | None = None, require: str | None = None) -> dict:
        logs = self.rd(k) / "logs"
        gym = self.servers.open(self.artifact(k_served), k_served, logs)
        out = self.rd(k) / "rollouts" / f"{name}.jsonl"
        console.console.print(f"round {k}: collecting {name} rollouts ({tasks.name} x {repeats}) with "
                              f"policy {k_served}", highlight=False, soft_wrap=True)
        started = time.monotonic()
        finish = None if require is None else functools.partial(formats.require_file, require)
        gym_mod.collect(gym, tasks, out, repeats, sampling, logs / f"collect_{name}.log", agent=agent, finish=finish,
                        watchdog=self.plan.it.watchdog)
        rows = stats.read_rows(out)
        failures_path = out.with_name(f"{out.stem}_failures.jsonl")
        failures = len(stats.read_rows(failures_path)) if failures_path.is_file() else 0
        if not rows:
            raise RecipeError(round_checks.no_rollouts(k, name, failures_path, logs / f"collect_{name}.log"))
        summary = stats.summarize(rows, failures)
        console.console.print(f"round {k}: {len(rows)} {name} rollouts in {time.monotonic() - started:.0f}s, "
                              f"mean reward {summary['mean'] if summary['mean'] is None else round(summary['mean'], 4)}"
                              + (f" ({require} required)" if require else "")
                              + (f", {failures} failed" if failures else ""), highlight=False, soft_wrap=True)
        return {"rollouts": str(out), "stats": summary}

    def _task_file(self, source: Path, out: Path, start: int, count: int | None) -> Path:
        lines = [line for line in source.read_text(encoding="utf-8").splitlines() if line.strip()]
        if count is None or count >= len(lines):
            chosen = lines
        else:  # the next `count` tasks, wrapping around: each round gets prompts it has not seen
            chosen = [lines[(start + i) % len(lines)] for i in range(count)]
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("".join(line + "\n" for line in chosen), encoding="utf-8")
        return out

    def step_collect(self, k: int) -> dict:
        per_round = self.plan.it.collect.tasks
        tasks = self._task_file(self.plan.train_tasks, self.rd(k) / "tasks" / "train.jsonl",
                                (k - 1) * int(per_round or 0), per_round)
        return self._collect(k - 1, k, tasks, "train", int(self.plan.it.collect.repeats),
                             self.plan.collect_sampling(), require=self.plan.require_format)

    def step_eval(self, k: int) -> dict:
        """Every held-out suite of the round, the same tasks and seeds every round. A round that did
        not train keeps round K-1's collections (the same policy) and collects only what that lacks."""
        kept = {}
        if self.skipped(k):
            before = state.record(self.plan.run_dir, k - 1, "eval")
            kept = {"eval": {"rollouts": before["rollouts"], "stats": before["stats"]}, **before.get("suites", {})}
        done = {}
        for suite in self.plan.suites_of(k):
            if suite.name in kept:
                done[suite.name] = kept[suite.name]
                continue
            tasks = self._task_file(suite.tasks, self.rd(k) / "tasks" / f"{suite.name}.jsonl", 0, suite.limit)
            done[suite.name] = self._collect(k, k, tasks, suite.name, suite.repeats, suite.sampling,
                                             agent=str(suite.gym.agent_name), require=suite.require_format)
        main = done.pop("eval")
        return {**main, "suites": done, **({"same_as_round": k - 1} if kept else {})}

    def step_prepare(self, k: int) -> dict:
        rd = self.rd(k)
        rollouts = Path(state.record(self.plan.run_dir, k, "collect")["rollouts"])
        if not stats.read_rows(rollouts):  # recorded by an older gym-dpo: prepare refuses an empty file
            self.clear(k, "collect")
            failures = rollouts.with_name(f"{rollouts.stem}_failures.jsonl")
            raise RecipeError(round_checks.no_rollouts(k, "train", failures, rd / "logs" / "collect_train.log"))
        out = rd / "prepare"
        argv = self.plan.prepare_argv(rollouts, out)
        console.console.print(f"round {k}: {plan_mod.shell(argv[2:])}", markup=False, highlight=False, soft_wrap=True)
        processes.run(argv, rd / "logs" / "prepare.log", prefix="[prepare] ", what="gym-dpo stage=prepare")
        manifest = json.loads((out / "data" / "manifest.json").read_text())
        pairs = {"train": int(manifest["pairs"]["train"]), "val": int(manifest["pairs"]["val"])}
        return {"pairs_dir": str(out / "data"), "pairs": pairs}

    def step_train(self, k: int) -> dict:
        rd = self.rd(k)
        pairs = state.record(self.plan.run_dir, k, "prepare")
        if not pairs["pairs"]["train"]:
            why = f"prepare made no training pair of round {k}'s rollouts: " + no_pairs_reason(
                Path(pairs["pairs_dir"]) / "manifest.json")
            console.console.print(f"round {k}: {why}: round {k} does not train, its policy is policy {k - 1}, "
                                  f"and round {k + 1} collects the next tasks", highlight=False, soft_wrap=True)
            return {"skipped": why}
        why, batch = round_checks.small_round(self.plan, k, int(pairs["pairs"]["train"]))
        if why:
            return {"skipped": why}
        argv = self.plan.train_argv(Path(pairs["pairs_dir"]), rd / "train", self.policy(k - 1))
        if batch:  # a round of fewer pairs than a batch, trained as the user allowed
            argv = round_checks.with_batch(self.plan, argv, batch)
        console.console.print(f"round {k}: {plan_mod.shell(argv[2:])}", markup=False, highlight=False, soft_wrap=True)
        processes.run(argv, rd / "logs" / "train.log", prefix="[train] ", what="gym-dpo stage=train")
        return {"train_dir": str(rd / "train"), "metrics": report.train_metrics(rd / "train"),
                **({"small_round_batch": batch} if batch else {})}

    # -- the loop ---------------------------------------------------------------------------------
    def check_settings(self) -> None:
        """A rerun goes on only with the settings the run folder was started with (plan.json):
        refused, with each difference, when what rounds are compared on or made of differs (NeMo
        Gym's venvs included); what a rerun may change (Plan.accepted) is said, one line each."""
        fingerprint = {**self.plan.fingerprint(), "nemo_gym": self.nemo_gym_venvs()}
        changed = state.check_plan(self.plan.run_dir, fingerprint)
        if changed:
            raise RecipeError(f"{self.plan.run_dir} was started with other settings: its rounds would mix them "
                              "(another eval would not compare, other tasks, pairs or training would not be "
                              "the same loop); use a new run_dir, or the settings it has (plan.json):\n  "
                              + "\n  ".join(changed))
        for note in state.settle_plan(self.plan.run_dir, fingerprint, self.plan.accepted()):
            console.console.print(note, markup=False, highlight=False, soft_wrap=True)

    def clear(self, k: int, step: str) -> None:
        """A step redone after an earlier one was: its old outputs go (and its record)."""
        rd = self.rd(k)
        suites = [suite.name for suite in self.plan.suites]
        owned = {"collect": ["tasks/train.jsonl", "rollouts/train*"], "prepare": ["prepare"],
                 "train": ["train"], "export": ["serve", "policy", ".policy.partial"],
                 "eval": [f"{where}/{name}*" for name in suites for where in ("tasks", "rollouts")]}
        for pattern in owned[step]:
            for path in rd.glob(pattern):
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        (rd / "steps" / f"{step}.json").unlink(missing_ok=True)

    def nemo_gym_venvs(self) -> dict:
        """NeMo Gym's venv and the server venvs of every environment of the run (the trained one
        and the cross-eval ones), built from the lock if missing, and every package and version
        they hold (plan.json's `nemo_gym`)."""
        tools = setup.nemo_gym(self.plan.it.get("nemo_gym_python"))
        used = []
        for gym in self.plan.gyms:
            used += servers.ensure(tools, gym, self.plan.serving, self.plan.run_dir / "gym",
                                   self.plan.run_dir / "logs" / "nemo_gym_venvs.log")
        return servers.record(tools, list(dict.fromkeys(used)))

    def run(self) -> dict:
        plan = self.plan
        plan.run_dir.mkdir(parents=True, exist_ok=True)
        self.check_settings()
        todo = state.pending(plan.run_dir, plan.rounds)
        if not todo:
            console.console.print(f"all {plan.rounds} round(s) of {plan.run_dir} are done")
        elif state.record(plan.run_dir, *todo[0]) is None and any(
                state.record(plan.run_dir, k, s) for k in range(plan.rounds + 1) for s in state.steps(k)):
            console.console.print(f"resuming {plan.run_dir} at round {todo[0][0]}, step {todo[0][1]}")
        runners = {"collect": self.step_collect, "prepare": self.step_prepare, "train": self.step_train,
                   "export": self.step_export, "eval": self.step_eval}
        needs_servers = {"collect", "eval"}
        try:
            for k, step in todo:
                if state.record(plan.run_dir, k, step) is not None:
                    self.clear(k, step)
                if step not in needs_servers:
                    self.servers.close()
                started = time.monotonic()
                outputs = runners[step](k)
                state.mark_done(plan.run_dir, k, step, time.monotonic() - started, **outputs,
                                settings=plan.accepted())
                report.write(plan)
        finally:
            self.servers.close()
        summary = report.write(plan)
        report.show(summary, plan.run_dir)
        return summary


def dry_run(plan: plan_mod.Plan) -> Path:
    """Every round's commands, written to <run_dir>/dry_run.txt and printed; nothing runs."""
    lines = report.dry_run_lines(plan)
    plan.run_dir.mkdir(parents=True, exist_ok=True)
    path = plan.run_dir / "dry_run.txt"
    path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)
    return path


def run(cfg) -> int:
    plan = plan_mod.build(cfg)
    for note in plan.notes:
        console.console.print(note)
    if bool(cfg.iterate.dry_run) or bool(cfg.launcher.get("dry_run", False)):  # either: nothing runs
        dry_run(plan)
        return 0
    try:
        with run_lock.held(plan.run_dir, "gym-dpo stage=iterate"):  # one loop per run folder
            Loop(plan).run()
    except processes.Interrupted as exc:
        exc.outcome = f"{processes.stop_outcome('the loop')}; rerun the same command (run_dir={plan.run_dir}) to resume"
        raise
    return 0
