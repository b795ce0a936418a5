"""Eval statistics of one round's rollouts, and the gain between two rounds.

Rollouts of one task are not independent (same prompt, several repeats), so the uncertainty is
computed over tasks: each task's mean reward is one observation, and the standard error is
std(task means) / sqrt(tasks). The gain of round K over round 0 is paired: the same held-out
tasks with the same seeds, so its standard error is that of the per-task differences (smaller
than either round's alone when the tasks' difficulty is shared).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

TASK = "_ng_task_index"


def read_rows(path: Path) -> list[dict]:
    return [row for _, row in read_numbered(path)]


def read_numbered(path: Path) -> list[tuple[int, dict]]:
    """(1-based line number, row) of every non-blank line; a bad line is named."""
    rows = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if line.strip():
                try:
                    rows.append((number, json.loads(line)))
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{number}: not JSON ({exc})") from None
    return rows


def response_text(row: dict) -> str:
    """The assistant text of a rollout: its `output_text` parts (or string contents) joined."""
    parts = []
    for item in (row.get("response") or {}).get("output") or []:
        if item.get("type", "message") == "message" and item.get("role", "assistant") == "assistant":
            content = item.get("content")
            if isinstance(content, str):
                parts.append(content)
            elif isinstance(content, list):
                parts.extend(p.get("text", "") for p in content if isinstance(p, dict))
    return "".join(parts)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _se(values: list[float]) -> float | None:
    if len(values) < 2:
        return None
    mean = _mean(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1) / len(values))


def task_means(rows: list[dict]) -> dict[int, float]:
    rewards: dict[int, list[float]] = {}
    for row in rows:
        if isinstance(row.get("reward"), (int, float)) and not isinstance(row.get("reward"), bool):
            rewards.setdefault(int(row[TASK]), []).append(float(row["reward"]))
    return {task: _mean(values) for task, values in sorted(rewards.items())}


def summarize(rows: list[dict], failures: int = 0) -> dict:
    """mean, se (over tasks), n (rollouts) and tasks; for 0/1 rewards the pass rate (share of
    rollouts with reward 1) and pass@k (share of tasks solved at least once in k repeats);
    mean response length in tokens (NeMo Gym's `usage`) and characters."""
    scored = [r for r in rows if isinstance(r.get("reward"), (int, float)) and not isinstance(r.get("reward"), bool)]
    if not scored:
        return {"n": 0, "tasks": 0, "mean": None, "se": None, "failures": failures, "unscored": len(rows)}
    rewards = [float(r["reward"]) for r in scored]
    means = task_means(scored)
    stats = {"n": len(scored), "tasks": len(means), "mean": _mean(rewards), "se": _se(list(means.values())),
             "failures": failures, "unscored": len(rows) - len(scored)}
    if all(value in (0.0, 1.0) for value in rewards):
        per_task: dict[int, int] = {}
        for row in scored:
            per_task[int(row[TASK])] = max(per_task.get(int(row[TASK]), 0), int(row["reward"]))
        repeats = {sum(1 for r in scored if int(r[TASK]) == t) for t in per_task}
        stats["pass_rate"] = sum(rewards) / len(rewards)
        stats["pass_at_k"] = {"k": max(repeats), "rate": sum(per_task.values()) / len(per_task)}
    tokens = [((r.get("response") or {}).get("usage") or {}).get("output_tokens") for r in scored]
    if all(isinstance(t, int) for t in tokens):
        stats["mean_response_tokens"] = _mean(tokens)
    stats["mean_response_chars"] = _mean([len(response_text(r)) for r in scored])
    return stats
