"""`<run_dir>/iterate.json` and `iterate.md`, rebuilt from the step records after every step, the
terminal table at the end, and the dry run's list of commands."""

from __future__ import annotations

import json
import time
from pathlib import Path

from recipe.iterate import plan as plan_mod
from recipe.iterate import serving, setup, state, stats

EVAL_KEYS = ("n", "tasks", "mean", "se", "pass_rate", "pass_at_k", "mean_response_tokens",
             "mean_response_chars", "failures")


def train_metrics(train_dir: Path) -> dict:
    """The last training step's metrics from the train run folder's metrics.jsonl (NeMo RL names),
    and the number of steps; {} when the launcher leaves no such file (a GPU run logs elsewhere)."""
    path = train_dir / "metrics.jsonl"
    if not path.is_file():
        return {}
    last_train, last_val = {}, {}
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        entry = json.loads(line)
        if "train:loss" in entry:
            last_train = entry
        if any(k.startswith("val:") for k in entry):
            last_val = entry
    keep = {k: v for k, v in {**last_train, **last_val}.items()
            if k in ("step", "train:loss", "train:accuracy", "val:validation-default_loss",
                     "val:validation-default_accuracy")}
    return keep


def summary(plan: plan_mod.Plan) -> dict:
    run_dir = plan.run_dir
    rounds, base_rows = [], None
    for k in range(plan.rounds + 1):
        records = {s: state.record(run_dir, k, s) for s in state.steps(k)}
        entry = {"round": k, "done": all(records.values()),
                 "seconds": round(sum(r["seconds"] for r in records.values() if r), 1),
                 "steps": {s: (r["seconds"] if r else None) for s, r in records.items()}}
        if records.get("export"):
            entry["policy"] = records["export"]["policy"]
        if records.get("collect"):
            entry["train_rollouts"] = {key: records["collect"]["stats"].get(key)
                                       for key in ("n", "tasks", "mean", "failures", "mean_response_tokens")}
        if records.get("prepare"):
            entry["pairs"] = records["prepare"]["pairs"]
        if records.get("train"):
            entry["train"] = records["train"].get("metrics", {})
        if records.get("eval"):
            entry["eval"] = {key: records["eval"]["stats"].get(key) for key in EVAL_KEYS
                             if key in records["eval"]["stats"]}
            rows = stats.read_rows(Path(records["eval"]["rollouts"]))
            if k == 0:
                base_rows = rows
            elif base_rows is not None:
                entry["gain_vs_round_0"] = stats.paired_gain(base_rows, rows)
        rounds.append(entry)
    return {"run_dir": str(run_dir), "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "model": {"preset": plan.model_preset, "name": plan.model_name},
            "environment": plan.gym.name, "serving": plan.serving.name, "launcher": plan.launcher,
            "reference_model": "the round's starting policy (policy K-1), as the train stage makes it",
            "eval": {"tasks_file": str(plan.eval_tasks), "repeats": int(plan.it.eval.repeats),
                     "sampling": dict(plan.it.eval.sampling)},
            "rounds": rounds}


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def table_rows(doc: dict) -> list[list[str]]:
    rows = []
    for entry in doc["rounds"]:
        ev, gain = entry.get("eval", {}), entry.get("gain_vs_round_0")
        pairs = entry.get("pairs")
        rows.append([
            str(entry["round"]), _fmt(ev.get("mean")), _fmt(ev.get("se")), _fmt(ev.get("n")),
            _fmt(ev.get("pass_rate")),
            f"{gain['gain']:+.3f} ± {_fmt(gain['se'])}" if gain else "–",
            f"{pairs['train']} + {pairs['val']}" if pairs else "–",
            _fmt(ev.get("mean_response_tokens"), 1), f"{entry['seconds'] / 60:.1f}",
        ])
    return rows


HEADER = ["round", "eval mean", "SE", "n", "pass rate", "gain vs round 0 (± paired SE)",
          "pairs (train + val)", "mean response tokens", "minutes"]


def markdown(doc: dict) -> str:
    lines = [f"# Iterative DPO: {doc['run_dir']}", "",
             f"Model `{doc['model']['name']}` (model={doc['model']['preset']}), environment `{doc['environment']}`, "
             f"serving `{doc['serving']}`, launcher `{doc['launcher']}`. Eval: `{doc['eval']['tasks_file']}` x "
             f"{doc['eval']['repeats']} repeats, sampling {doc['eval']['sampling']}, the same seeds every round. "
             "SE is over tasks; the gain's SE is that of the per-task differences (paired).", "",
             "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(doc)]
    return "\n".join(lines) + "\n"


def write(plan: plan_mod.Plan) -> dict:
    doc = summary(plan)
    state.write_json(plan.run_dir / "iterate.json", doc)
    (plan.run_dir / "iterate.md").write_text(markdown(doc))
    return doc


def show(doc: dict, run_dir: Path) -> None:
    from rich.table import Table

    from recipe.report import console

    table = Table(title=f"iterate: {run_dir}")
    for name in HEADER:
        table.add_column(name, justify="right")
    for row in table_rows(doc):
        table.add_row(*row)
    console.print(table)
    console.print(f"wrote {run_dir / 'iterate.json'} and {run_dir / 'iterate.md'}", soft_wrap=True)


def dry_run_lines(plan: plan_mod.Plan) -> list[str]:
    """Every command each round would run, with the paths it would use (ports shown as PORT),
    wrapped as the launcher's place runs them (recipe.iterate.place)."""
    from recipe.iterate import gym as gym_mod

    engine = serving.load(str(plan.serving.name))
    tools = setup.nemo_gym(plan.it.get("nemo_gym_python"), install=False)
    where = plan.place
    run_dir = plan.run_dir
    lines = [f"# dry run of stage=iterate: {plan.rounds} round(s) in {run_dir}",
             f"# sampling, every round: {plan.sampling()}"]
    base = plan.model_name if not plan.base_source.startswith("offline:") else \
        f"<{plan.base_source.split(':', 1)[1]}: {setup.cache_root() / 'models'}>"

    def policy(k: int):
        return base if k == 0 else plan.policy_folder(k)

    def serve_and_gym(k: int, what: str) -> list[str]:
        name = f"policy-round-{k}"
        artifact = engine.served(Path(str(policy(k))), state.round_dir(run_dir, k) / "serve", plan.serving)
        server = serving.server_argv(plan.serving, artifact, "PORT", name, plan.sampler, host=where.bind_host,
                                     install=False)
        server, _ = where.wrap(server, None, name=f"serve-{name}", gpus=where.serving_gpus,
                               node_file=state.round_dir(run_dir, k) / "logs" / ".serve.node")
        gym = gym_mod.Gym(plan.gym, plan.serving, run_dir / "gym", "http://HOST:PORT/v1", name, tools,
                          head_port="PORT", sampler=plan.sampler)
        return [f"# {what}: serve policy {k} ({plan.serving.name}, {where.describe()}), NeMo Gym",
                plan_mod.shell(server), plan_mod.shell(gym.run_argv())]

    for k in range(plan.rounds + 1):
        rd = state.round_dir(run_dir, k)
        lines.append(f"\n## round {k}")
        if k:
            gym = gym_mod.Gym(plan.gym, plan.serving, run_dir / "gym", "http://HOST:PORT/v1",
                              f"policy-round-{k - 1}", tools, head_port="PORT", sampler=plan.sampler)
            lines += serve_and_gym(k - 1, "collect")
            lines.append(plan_mod.shell(gym.collect_argv(rd / "tasks" / "train.jsonl", rd / "rollouts" / "train.jsonl",
                                                         int(plan.it.collect.repeats), plan.it.collect.sampling)))
            lines.append("# prepare")
            lines.append(plan_mod.shell(plan.prepare_argv(rd / "rollouts" / "train.jsonl", rd / "prepare")))
            lines.append("# train (reference model: the starting policy)")
            lines.append(plan_mod.shell(plan.train_argv(rd / "prepare" / "data", rd / "train", str(policy(k - 1)))))
            if plan.launcher != "local_cpu":
                lines.append(f"# export: NeMo RL's DCP checkpoint -> Hugging Face folder, in {plan.nemo_rl_dir} "
                             f"({where.describe()}), then renamed to {plan.policy_folder(k)}")
                argv, _ = where.wrap(plan.dcp_to_hf_argv(rd / "train" / "checkpoints" / "step_N", rd / ".policy.partial"),
                                     plan.nemo_rl_dir, name=f"dcp-to-hf-{k}")
                lines.append(plan_mod.shell(argv))
        gym = gym_mod.Gym(plan.gym, plan.serving, run_dir / "gym", "http://HOST:PORT/v1",
                          f"policy-round-{k}", tools, head_port="PORT", sampler=plan.sampler)
        lines += serve_and_gym(k, "eval")
        lines.append(plan_mod.shell(gym.collect_argv(rd / "tasks" / "eval.jsonl", rd / "rollouts" / "eval.jsonl",
                                                     int(plan.it.eval.repeats), plan.it.eval.sampling)))
    return lines
