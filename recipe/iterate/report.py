"""`<run_dir>/iterate.json` and `iterate.md`, rebuilt from the step records after every step, the
terminal table at the end, and the dry run's list of commands."""

from __future__ import annotations

import json
import time
from pathlib import Path

from recipe.iterate import evaluation, page, serving, setup, state, stats
from recipe.iterate import plan as plan_mod

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


DUPLICATES = ("reward", "reward_se", "n", "tasks", "mean_response_tokens")  # stats already has them


def _collection(name: str, record: dict, reading: evaluation.Reading) -> tuple[dict, dict[int, evaluation.Reply]]:
    """A collection's decomposition (recipe.iterate.evaluation) from its rollouts and task file,
    and its replies by line number (what pairs name as their sources)."""
    rollouts = Path(record["rollouts"])
    tasks_path = rollouts.parent.parent / "tasks" / f"{name}.jsonl"  # round_K/rollouts/ -> round_K/tasks/
    tasks = evaluation.read_tasks(tasks_path) if tasks_path.is_file() else []
    by_line = {number: reply for number, row in stats.read_numbered(rollouts)
               if (reply := evaluation.reply_of(row, evaluation.task_of(row, tasks), reading)) is not None}
    found = evaluation.summarize_replies(list(by_line.values()), evaluation.gym_metrics(rollouts))
    return {key: value for key, value in found.items() if key not in DUPLICATES}, by_line


def pair_kinds(pairs_dir: Path, rollouts: Path, items_by_line: dict[int, evaluation.Reply]) -> dict | None:
    """What the round's pairs could teach: `skill` pairs have a gradable answer on both sides (a
    right one against a wrong one), `format` pairs a gradable chosen against an ungradable
    rejected, `other` the rest; None when the verifier says nothing of what it extracted."""
    if not items_by_line or all(r.gradable is None for r in items_by_line.values()):
        return None
    kinds = dict.fromkeys(("skill", "format", "other"), 0)
    for name in ("train.jsonl", "val.jsonl"):
        path = pairs_dir / name
        if not path.is_file():
            continue
        for line in path.read_text(encoding="utf-8").splitlines():
            pair = json.loads(line)
            sides = []
            for key in ("chosen_source", "rejected_source"):
                source, _, number = str(pair.get(key, "")).rpartition(":")
                sides.append(items_by_line.get(int(number)) if number.isdigit() and Path(source) == rollouts else None)
            chosen, rejected = sides
            if chosen is None or rejected is None:
                kinds["other"] += 1
            elif chosen.gradable and rejected.gradable:
                kinds["skill"] += 1
            elif chosen.gradable and not rejected.gradable:
                kinds["format"] += 1
            else:
                kinds["other"] += 1
    return kinds


def _suite_entry(suite, record: dict, base: list | None) -> tuple[dict, list]:
    """One held-out suite's figures of a round, with its gains over round 0's same suite."""
    entry = {key: record["stats"].get(key) for key in EVAL_KEYS if key in record["stats"]}
    decomposition, by_line = _collection(suite.name, record, suite.reading)
    entry.update(decomposition)
    items = list(by_line.values())
    if base is not None:
        entry["gain_vs_round_0"] = evaluation.gains(base, items)
        families = evaluation.family_gains(base, items)
        if families:
            entry["gain_vs_round_0"]["families"] = families
    return entry, items


def summary(plan: plan_mod.Plan) -> dict:
    run_dir = plan.run_dir
    rounds, bases = [], {}
    reading = plan.suites[0].reading if plan.suites else evaluation.DEFAULT
    for k in range(plan.rounds + 1):
        records = {s: state.record(run_dir, k, s) for s in state.steps(k)}
        entry = {"round": k, "done": all(records.values()),
                 "seconds": round(sum(r["seconds"] for r in records.values() if r), 1),
                 "steps": {s: (r["seconds"] if r else None) for s, r in records.items()}}
        ran_with = {s: r["settings"] for s, r in records.items() if r and "settings" in r}
        if ran_with:  # what a rerun may change (plan.Plan.accepted), as each step ran with it
            values = list(ran_with.values())
            entry["settings"] = values[0] if all(v == values[0] for v in values) else ran_with
        if records.get("export"):
            entry["policy"] = records["export"]["policy"]
        if records.get("collect"):
            entry["train_rollouts"] = {key: records["collect"]["stats"].get(key)
                                       for key in ("n", "tasks", "mean", "failures", "mean_response_tokens")}
            decomposition, train_by_line = _collection("train", records["collect"], reading)
            entry["train_rollouts"].update(decomposition)
        if records.get("prepare"):
            entry["pairs"] = dict(records["prepare"]["pairs"])
            if records.get("collect"):
                kinds = pair_kinds(Path(records["prepare"]["pairs_dir"]), Path(records["collect"]["rollouts"]),
                                   train_by_line)
                if kinds is not None:
                    entry["pairs"]["kinds"] = kinds
        if records.get("train"):
            entry["train"] = records["train"].get("metrics", {})
            if records["train"].get("skipped"):
                entry["skipped"] = records["train"]["skipped"]
        if records.get("eval"):
            found = {"eval": records["eval"], **(records["eval"].get("suites") or {})}
            for suite in plan.suites:
                if suite.name not in found:
                    continue
                figures, items = _suite_entry(suite, found[suite.name], bases.get(suite.name) if k else None)
                if k == 0:
                    bases[suite.name] = items
                if suite.name == "eval":
                    gain = figures.pop("gain_vs_round_0", None)
                    entry["eval"] = figures
                    if gain is not None:
                        entry["gain_vs_round_0"] = gain
                else:
                    entry.setdefault("suites", {})[suite.name] = figures
        rounds.append(entry)
    return {"run_dir": str(run_dir), "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "model": {"preset": plan.model_preset, "name": plan.model_name},
            "environment": plan.gym.name, "serving": plan.serving.name, "launcher": plan.launcher,
            "reference_model": "the round's starting policy (policy K-1), as the train stage makes it",
            "reward_requires_format": plan.require_format,
            "eval": {"tasks_file": str(plan.eval_tasks), "repeats": int(plan.it.eval.repeats),
                     "sampling": dict(plan.it.eval.sampling)},
            "suites": [suite.describe() for suite in plan.suites],
            "cross_eval": cross_eval(rounds, plan.suites),
            "rounds": rounds}


def cross_eval(rounds: list[dict], suites: list) -> dict:
    """Per held-out suite (where it trained, its probe, every other environment) and round: the
    paired gains over round 0 of reward and instruction adherence (the heat-map's cells)."""
    out = {}
    for suite in suites:
        per_round = {}
        for entry in rounds:
            found = entry if suite.name == "eval" else (entry.get("suites") or {}).get(suite.name)
            gains = (found or {}).get("gain_vs_round_0") or {}
            if gains:
                per_round[str(entry["round"])] = {m: gains.get(m) for m in ("reward", "stated_right", "adherence",
                                                                            "accuracy_gradable")
                                                  if gains.get(m) is not None}
        out[suite.name] = {"environment": str(suite.gym.name), "kind": suite.kind, "rounds": per_round}
    return out


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _pm(value, se, digits: int = 3, signed: bool = False) -> str:
    if value is None:
        return "–"
    text = f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"
    return text + (f" ± {se:.{digits}f}" if se is not None else "")


def _gain(gain: dict | None) -> str:
    return _pm(gain["gain"], gain["se"], signed=True) if gain else "–"


def table_rows(doc: dict) -> list[list[str]]:
    rows = []
    for entry in doc["rounds"]:
        ev, gains = entry.get("eval", {}), entry.get("gain_vs_round_0") or {}
        pairs = entry.get("pairs")
        kinds = (pairs or {}).get("kinds")
        rows.append([
            str(entry["round"]), _pm(ev.get("mean"), ev.get("se")), _gain(gains.get("reward")),
            _pm(ev.get("stated_right"), ev.get("stated_right_se")), _gain(gains.get("stated_right")),
            _pm(ev.get("adherence"), ev.get("adherence_se")),
            _pm(ev.get("gradable_rate"), ev.get("gradable_rate_se")),
            _pm(ev.get("accuracy_gradable"), ev.get("accuracy_gradable_se"))
            + (f" ({ev['chance']:.2f})" if ev.get("chance") is not None else ""),
            _gain(gains.get("accuracy_gradable")),
            (f"{pairs['train']} + {pairs['val']}" + (f" ({kinds['skill']} skill)" if kinds else "")) if pairs
            else (entry.get("skipped") and "none" or "–"),
            _fmt(ev.get("mean_response_tokens"), 1), _fmt(ev.get("failures")), f"{entry['seconds'] / 60:.1f}",
        ])
    return rows


HEADER = ["round", "eval reward ± SE", "gain vs round 0", "stated answer right", "its gain", "instruction adherence",
          "gradable rate",
          "accuracy among gradable (chance)",
          "accuracy gain vs round 0", "pairs (train + val)", "mean response tokens", "failed", "minutes"]


def family_rows(doc: dict) -> list[list[str]]:
    """Per task family and round: reward, gradable rate, accuracy among gradable (± SE)."""
    rows = []
    for entry in doc["rounds"]:
        for family, ev in sorted((entry.get("eval", {}).get("families") or {}).items()):
            gain = ((entry.get("gain_vs_round_0") or {}).get("families") or {}).get(family) or {}
            rows.append([family, str(entry["round"]), _pm(ev.get("reward"), ev.get("reward_se")),
                         _pm(ev.get("gradable_rate"), ev.get("gradable_rate_se")),
                         _pm(ev.get("accuracy_gradable"), ev.get("accuracy_gradable_se")),
                         _gain(gain.get("accuracy_gradable")), _fmt(ev.get("n"))])
    return sorted(rows, key=lambda row: (row[0], int(row[1])))


def suite_rows(doc: dict) -> list[list[str]]:
    """Per held-out suite other than the environment's eval (its probe, other environments) and
    round: reward, its gain, adherence and its gain, gradable rate, accuracy among gradable."""
    rows = []
    for suite in doc.get("suites") or []:
        if suite["name"] == "eval":
            continue
        for entry in doc["rounds"]:
            ev = (entry.get("suites") or {}).get(suite["name"])
            if ev is None:
                continue
            gains = ev.get("gain_vs_round_0") or {}
            rows.append([suite["name"], str(entry["round"]), _pm(ev.get("mean"), ev.get("se")),
                         _gain(gains.get("reward")), _pm(ev.get("stated_right"), ev.get("stated_right_se")),
                         _gain(gains.get("stated_right")), _pm(ev.get("adherence"), ev.get("adherence_se")),
                         _gain(gains.get("adherence")), _pm(ev.get("gradable_rate"), ev.get("gradable_rate_se")),
                         _pm(ev.get("accuracy_gradable"), ev.get("accuracy_gradable_se")), _fmt(ev.get("n"))])
    return rows


SUITE_HEADER = ["suite", "round", "reward ± SE", "gain vs round 0", "stated answer right", "its gain",
                "instruction adherence", "adherence gain",
                "gradable rate", "accuracy among gradable", "replies"]


FAMILY_HEADER = ["family", "round", "reward ± SE", "gradable rate", "accuracy among gradable",
                 "accuracy gain vs round 0", "replies"]


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def markdown(doc: dict) -> str:
    lines = [f"# Iterative DPO: {doc['run_dir']}", "",
             f"Model `{doc['model']['name']}` (model={doc['model']['preset']}), environment `{doc['environment']}`, "
             f"serving `{doc['serving']}`, launcher `{doc['launcher']}`. Eval: `{doc['eval']['tasks_file']}` x "
             f"{doc['eval']['repeats']} repeats, sampling {doc['eval']['sampling']}, the same seeds every round. "
             "Reward = gradable rate x accuracy among gradable replies (for 0/1 rewards): the first is the "
             "answer's format, the second the task itself (chance: a letter prior alone). Stated answer right: the "
             "answer a reply states in the format its prompt asks for is the expected one (stricter than a lenient "
             "verifier); instruction adherence: the share of replies in that format. SE is over questions "
             "(a task, or all rotations of an mcqa question); a gain's SE is paired (same tasks, same seeds).", ""]
    lines += _table(HEADER, table_rows(doc))
    others = suite_rows(doc)
    if others:
        lines += ["", "## Beyond the trained verifier: the probe in other words and the other environments", "",
                  "The same policy of each round on held-out tasks it was not trained on the like of: `probe` asks "
                  "the environment's questions in other words, `cross-<env>` are other environments' eval tasks. "
                  "Gains are paired with round 0 on the same tasks and seeds."]
        for suite in doc.get("suites") or []:
            if suite["name"] != "eval":
                which = f"first {suite['limit']} tasks" if suite["limit"] else "all tasks"
                lines.append(f"- `{suite['name']}`: `{suite['tasks_file']}` ({which}) x "
                             f"{suite['repeats']}, answer format {suite['answer_format'] or 'none stated'}"
                             + (", reward requires it" if suite.get("reward_requires_format") else ""))
        lines += [""] + _table(SUITE_HEADER, others)
    families = family_rows(doc)
    if families:
        lines += ["", "## Per task family", ""] + _table(FAMILY_HEADER, families)
    for entry in doc["rounds"]:
        dist = entry.get("eval", {}).get("answer_distribution")
        if dist and dist.get("extracted"):
            lines.append("")
            given = ", ".join(f"{a} {n}" for a, n in dist["extracted"].items())
            lines.append(f"Round {entry['round']} answers given: {given}"
                         + "; expected: " + ", ".join(f"{a} {n}" for a, n in dist["expected"].items()))
    return "\n".join(lines) + "\n"


def write(plan: plan_mod.Plan) -> dict:
    doc = summary(plan)
    state.write_json(plan.run_dir / "iterate.json", doc)
    tables = markdown(doc)
    (plan.run_dir / "iterate.md").write_text(tables)
    page.write(plan.run_dir, doc, tables)
    return doc


def show(doc: dict, run_dir: Path) -> None:
    from recipe.report import console

    # the markdown table as it is in iterate.md: ten columns stay readable in a log or a narrow
    # terminal, where a boxed table would wrap every cell
    console.print(f"iterate: {run_dir}", soft_wrap=True, highlight=False)
    for line in _table(HEADER, table_rows(doc)):
        console.print(line, soft_wrap=True, markup=False, highlight=False)
    console.print(f"wrote {run_dir / 'iterate.json'}, {run_dir / 'iterate.md'} and {run_dir / page.FILENAME}",
                  soft_wrap=True)


def dry_run_lines(plan: plan_mod.Plan) -> list[str]:
    """Every command each round would run, with the paths it would use (ports shown as PORT),
    wrapped as the launcher's place runs them (recipe.iterate.place)."""
    from recipe.iterate import gym as gym_mod
    from recipe.iterate import place

    engine = serving.load(str(plan.serving.name))
    tools = setup.nemo_gym(plan.it.get("nemo_gym_python"), install=False)
    where = plan.place
    run_dir = plan.run_dir
    lines = [f"# dry run of stage=iterate: {plan.rounds} round(s) in {run_dir}",
             f"# sampling, every round: {plan.sampling()}", *(f"# {note}" for note in plan.notes)]
    base = plan.model_name if not plan.base_source.startswith("offline:") else \
        f"<{plan.base_source.split(':', 1)[1]}: {setup.cache_root() / 'models'}>"

    def policy(k: int):
        return base if k == 0 else plan.policy_folder(k)

    def serve_and_gym(k: int, what: str) -> list[str]:
        name = f"policy-round-{k}"
        artifact = engine.served(Path(str(policy(k))), state.round_dir(run_dir, k) / "serve", plan.serving)
        server = serving.server_argv(plan.serving, artifact, "PORT", name, plan.sampler, host=where.bind_host,
                                     install=False)
        server, _ = where.wrap(server, None, name=f"serve-{name}", size=place.server_size(plan.serving),
                               node_file=state.round_dir(run_dir, k) / "logs" / ".serve.node")
        gym = gym_mod.Gym(plan.gym, plan.serving, run_dir / "gym", "http://HOST:PORT/v1", name, tools,
                          head_port="PORT", sampler=plan.sampler, others=plan.gyms[1:])
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
                                                         int(plan.it.collect.repeats), plan.collect_sampling())))
            if plan.require_format:
                lines.append(f"# the reward requires the answer format {plan.require_format!r}")
            lines.append("# prepare")
            lines.append(plan_mod.shell(plan.prepare_argv(rd / "rollouts" / "train.jsonl", rd / "prepare")))
            lines.append("# train (reference model: the starting policy)")
            lines.append(plan_mod.shell(plan.train_argv(rd / "prepare" / "data", rd / "train", str(policy(k - 1)))))
            if plan.launcher != "local_cpu":
                lines.append(f"# export: NeMo RL's DCP checkpoint -> Hugging Face folder, in {plan.nemo_rl_dir} "
                             f"({where.describe()}), then renamed to {plan.policy_folder(k)}")
                argv, _, _ = plan.dcp_to_hf_step(rd / "train" / "checkpoints" / "step_N", rd / ".policy.partial", k)
                lines.append(plan_mod.shell(argv))
        gym = gym_mod.Gym(plan.gym, plan.serving, run_dir / "gym", "http://HOST:PORT/v1",
                          f"policy-round-{k}", tools, head_port="PORT", sampler=plan.sampler)
        lines += serve_and_gym(k, "eval")
        for suite in plan.suites_of(k):
            lines.append(f"# held-out suite {suite.name}: {suite.tasks} (first {suite.limit or 'all'} tasks)"
                         + (f", the reward requires {suite.require_format!r}" if suite.require_format else ""))
            lines.append(plan_mod.shell(gym.collect_argv(rd / "tasks" / f"{suite.name}.jsonl",
                                                         rd / "rollouts" / f"{suite.name}.jsonl", suite.repeats,
                                                         suite.sampling, agent=str(suite.gym.agent_name))))
    return lines
