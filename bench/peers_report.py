"""bench_peers.py's table (markdown), plot (matplotlib) and paired differences, from bench.json."""

from __future__ import annotations

import json
from pathlib import Path


def _pm(value, se, digits: int = 3) -> str:
    if value is None:
        return "–"
    return f"{value:.{digits}f}" + (f" ± {se:.{digits}f}" if se is not None else "")


def points(doc: dict, contender: dict) -> list[dict]:
    """(minutes, rollouts, evaluation) per mark, the shared base first."""
    graded = doc["evaluations"]
    rows = [{"mark_min": 0.0, "minutes": 0.0, "rollouts": 0, "step": 0, "eval": graded["base"]}]
    for point in contender["checkpoints"]:
        late = point["elapsed_s"] > point["mark_s"] + 1.0  # a TRL step that ran past its mark
        minutes = (point["elapsed_s"] if late else point["mark_s"]) / 60
        rows.append({"mark_min": point["mark_s"] / 60, "minutes": minutes,
                     "rollouts": point["rollouts"], "step": point.get("step"), "late": late,
                     "eval": graded[point["eval"]]})
    return rows


def _replies(evaluation: dict):
    from recipe.iterate import evaluation as ev
    from recipe.iterate import stats

    return ev.replies(stats.read_rows(Path(evaluation["rollouts_file"])), ev.read_tasks(Path(evaluation["tasks_file"])))


def paired(doc: dict) -> list[dict]:
    """Every pair of contenders' last policies: the reward difference on the same tasks and seeds,
    with its paired SE (recipe.iterate.evaluation: tasks as clusters)."""
    from recipe.iterate import evaluation as ev

    last = {c["name"]: doc["evaluations"][c["checkpoints"][-1]["eval"]] for c in doc["contenders"] if c["checkpoints"]}
    cache = {name: _replies(found) for name, found in last.items()}
    out = []
    names = list(last)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            gain = ev.paired_ratio_gain(cache[b], cache[a], *ev.MEASURES["reward"])
            if gain:
                out.append({"a": a, "b": b, "a_minus_b": gain["gain"], "se": gain["se"], "z": gain["z"],
                            "tasks": gain["tasks"]})
    return out


def table(doc: dict) -> str:
    lines = [f"Held-out reward (= accuracy, 0/1 rewards) ± SE over tasks; budget {doc['budget_min']:g} min a "
             f"contender; eval: {doc['eval_file']} ({doc['eval_tasks'] or 'all'} tasks x "
             f"{doc['eval_repeats'] or 'the environment’s'} repeats)"
             + (f"; every engine on {doc['threads']} thread(s)" if doc.get("threads") else "") + ".", "",
             "| contender | minutes | rollouts | step / round | held-out reward | accuracy among gradable | "
             "gradable rate | reply tokens |", "|---|---:|---:|---:|---|---|---|---:|"]
    for contender in doc["contenders"]:
        for row in points(doc, contender):
            found = row["eval"]
            minutes = f"{row['minutes']:.1f}" + (" (late)" if row.get("late") else "")
            tokens = found.get("mean_response_tokens")
            lines.append(f"| {contender['name']} | {minutes} | {row['rollouts']} | {row['step']} | "
                         f"{_pm(found['mean'], found['se'])} | "
                         f"{_pm(found.get('accuracy_gradable'), found.get('accuracy_gradable_se'))} | "
                         f"{_pm(found.get('gradable_rate'), found.get('gradable_rate_se'))} | "
                         f"{'–' if tokens is None else f'{tokens:.1f}'} |")
    if doc.get("paired"):
        lines += ["", "Last policies, paired on the same tasks and seeds:", "",
                  "| a | b | reward a − b | z |", "|---|---|---|---:|"]
        for entry in doc["paired"]:
            z = "–" if entry["z"] is None else f"{entry['z']:.1f}"
            lines.append(f"| {entry['a']} | {entry['b']} | {_pm(entry['a_minus_b'], entry['se'])} | {z} |")
    return "\n".join(lines) + "\n"


def plot(doc: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (by_time, by_rollouts) = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for contender in doc["contenders"]:
        rows = points(doc, contender)
        means = [r["eval"]["mean"] for r in rows]
        errors = [r["eval"]["se"] or 0.0 for r in rows]
        for axis, x in ((by_time, [r["minutes"] for r in rows]), (by_rollouts, [r["rollouts"] for r in rows])):
            axis.errorbar(x, means, yerr=errors, marker="o", capsize=3, label=contender["name"])
    by_time.set_xlabel("wall minutes of the contender's own run (2 cores)")
    by_rollouts.set_xlabel("rollouts generated")
    by_time.set_ylabel("held-out reward (± 1 SE)")
    by_time.legend()
    for axis in (by_time, by_rollouts):
        axis.grid(alpha=0.3)
    figure.suptitle("SmolLM2-135M-Instruct on the bundled math tasks: one evaluator for every checkpoint")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write(doc: dict, out: Path) -> None:
    (out / "table.md").write_text(table(doc))
    plot(doc, out / "peers.png")
    print(table(doc), flush=True)
    print(f"[bench] {out / 'table.md'}, {out / 'peers.png'}, {out / 'bench.json'}", flush=True)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="the table and plot of a bench_peers.py --out folder, again")
    parser.add_argument("out", type=Path, help="a bench_peers.py --out folder (its bench.json)")
    folder = parser.parse_args().out
    if not (folder / "bench.json").is_file():
        parser.error(f"{folder / 'bench.json'} does not exist: run bench/bench_peers.py --out {folder} first")
    write(json.loads((folder / "bench.json").read_text()), folder)
