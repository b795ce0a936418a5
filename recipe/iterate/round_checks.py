"""Rounds that could never finish, turned into what to do: a round with fewer training pairs than
a batch (the train stage refuses it, so every rerun failed at the same step) and a collection
without a single rollout (prepare refuses an empty file, likewise)."""

from __future__ import annotations

import collections
from pathlib import Path

from recipe import report as console
from recipe.iterate import plan as plan_mod
from recipe.iterate import stats


def small_round(plan: plan_mod.Plan, k: int, pairs: int) -> tuple[str | None, int | None]:
    """A round with fewer training pairs than a batch (the train stage refuses it: it would not
    make one step, and every rerun would fail there): (why it does not train, None), said in a
    line and recorded like a round without pairs; or, with iterate.train_small_rounds=true,
    (None, the largest batch its pairs fill that splits over the data-parallel ranks). (None,
    None) for a round of a batch or more."""
    batch, allowed = plan.batch, bool(plan.it.train_small_rounds)
    if pairs >= batch["global"]:
        return None, None
    unit = (batch["ranks"] or 1) * (batch["micro"] or 1)
    fits = pairs // unit * unit
    if allowed and fits:
        console.console.print(f"round {k}: {pairs} training pairs, fewer than a batch of {batch['global']}: "
                              f"trained on a batch of {fits} (iterate.train_small_rounds=true)",
                              highlight=False, soft_wrap=True)
        return None, fits
    why = (f"prepare made {pairs} training pair(s) of round {k}'s rollouts, fewer than a batch "
           f"({plan_mod.BATCH}={batch['global']}), so training would not make one step")
    what = (f"with iterate.train_small_rounds=true too: a batch must be a multiple of {unit} (data-parallel "
            "ranks x micro batch)" if allowed else "iterate.train_small_rounds=true trains such a round on a "
            "smaller batch; more iterate.collect.repeats or tasks make more pairs")
    console.console.print(f"round {k}: {why}: round {k} does not train, its policy is policy {k - 1} ({what})",
                          highlight=False, soft_wrap=True)
    return f"{why} ({what})", None


def with_batch(plan: plan_mod.Plan, argv: list[str], batch: int) -> list[str]:
    """A round's train command with a smaller global batch (and the micro batch it splits into,
    when the loop derived it)."""
    micro = plan.batch["micro"] or batch // (plan.batch["ranks"] or 1)
    kept = [a for a in argv if plan_mod.override_key(a) not in (plan_mod.BATCH, plan_mod.MICRO)]
    return [*kept, f"{plan_mod.BATCH}={batch}", f"{plan_mod.MICRO}={micro}"]


def no_rollouts(k: int, name: str, failures_path: Path, log: Path) -> str:
    """Why a collection without a single rollout is not a step done (prepare would refuse it on
    every rerun), with NeMo Gym's failure classes, and what to do."""
    rows = stats.read_rows(failures_path) if failures_path.is_file() else []
    classes = collections.Counter(str(row.get("_ng_failure_class")) for row in rows)
    found = ", ".join(f"{n} {cls}" for cls, n in classes.most_common()) or "none recorded"
    return (f"round {k}: NeMo Gym made no {name} rollout ({len(rows)} failed: "
            f"{found}; {failures_path}, log {log}): the step is not done; find the cause there (the policy "
            f"server's log is {log.with_name('serve.log')}), then rerun the same command to collect again")
