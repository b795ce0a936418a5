"""What a round's rollouts say beyond their mean reward: how much of it is the answer's format and
how much the task itself (skill), overall and per task family.

A verifier that grades an answer says what it extracted from the reply, and the reply is
*gradable* when it did. NeMo Gym v0.4.0 servers that do:
- `mcqa` (resources_servers/mcqa/app.py): `extracted_answer` is the option letter it parsed, `null`
  when it found none; `expected_answer` is the gold letter;
- `math_with_judge` (resources_servers/math_with_judge/app.py): `extracted_answer` is what
  math-verify parsed from the reply (`\\boxed{}` or the last expression), `null` when nothing;
- `reasoning_gym` (resources_servers/reasoning_gym/app.py): `extracted_answer` is the text of the
  last `<answer>` tag, else of `\\boxed{}`, else the whole reply. There a reply is *gradable* when
  the verifier found a tag (`gym.gradable: tagged`: the extraction is not the whole reply); the
  rest is graded as a whole, and reasoning-gym's default `score_answer` gives such a reply partial
  credit when it contains the answer (answer length / reply length), so ungradable replies earn
  something there (`reward_ungradable`).
So the reward splits into gradable rate x reward among gradable replies (the accuracy, for 0/1
rewards) + what ungradable replies earn (0 for mcqa and math_with_judge). The format is the first
factor; skill is the second, which a letter prior alone puts at chance (1 / options, when the task
lists them). Beside them, *instruction adherence* is the share of replies that follow the answer
format their prompt states (`gym.answer_format`, recipe.iterate.formats), whatever the verifier
accepts.

Uncertainty is over questions (a task's repeats share its prompt, and the bundled mcqa tasks
ask each question four times with its options rotated: `metadata.question_id`): a rate over
replies is a ratio of per-question sums, and its standard error the delta method's with
questions as clusters; a gain over round 0 is paired (same tasks, same seeds), its standard
error that of the per-question differences of the two ratios' influence terms.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from recipe.iterate import formats, stats

TASK = stats.TASK


@dataclass(frozen=True)
class Reading:
    """How an environment's rows are read (its gym config): where a task names its family, when a
    reply counts as gradable, which answer format its prompts ask for."""
    family_key: str = "metadata.family"   # a dotted path into the task row
    gradable: str = "extracted"            # extracted | tagged | none
    answer_format: str | None = None       # recipe.iterate.formats

    @classmethod
    def of(cls, cfg) -> Reading:
        get = cfg.get if hasattr(cfg, "get") else (lambda key, default=None: getattr(cfg, key, default))
        reading = cls(family_key=str(get("family_key") or "metadata.family"),
                      gradable=str(get("gradable") or "extracted"), answer_format=get("answer_format"))
        if reading.gradable not in GRADABLE:
            raise ValueError(f"gradable={reading.gradable!r}: one of {', '.join(GRADABLE)}")
        formats.check(reading.answer_format)  # a bad name fails here, before any collection
        return reading


GRADABLE = ("extracted", "tagged", "none")
DEFAULT = Reading()


@dataclass
class Reply:
    task: object                 # the cluster: the task's metadata.question_id, else its index
    reward: float
    gradable: bool | None        # None: the verifier says nothing of what it extracted
    extracted: str | None
    expected: str | None
    tokens: int | None
    family: str | None
    options: int | None          # options the task lists (chance = 1 / options)
    follows: float | None = None  # share of its turns that follow the prompt's answer format
    stated_right: bool | None = None  # the answer stated in that format is the expected one


def _text(value) -> str | None:
    return None if value is None else str(value).strip()


def _path(mapping: dict, dotted: str):
    value = mapping
    for part in dotted.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def reply_of(row: dict, task: dict | None, reading: Reading = DEFAULT) -> Reply | None:
    """One scored rollout joined with its task (for the family, the options, the gold answer)."""
    reward = row.get("reward")
    if not isinstance(reward, (int, float)) or isinstance(reward, bool) or TASK not in row:
        return None
    task = task or {}
    gradable, extracted = None, None
    if "extracted_answer" in row and reading.gradable != "none":
        extracted = _text(row["extracted_answer"]) or None
        gradable = extracted is not None
        if gradable and reading.gradable == "tagged":  # the verifier fell back to the whole reply
            gradable = extracted != stats.response_text(row).strip()
    expected = _text(row.get("expected_answer", task.get("expected_answer", task.get("answer"))))
    tokens = ((row.get("response") or {}).get("usage") or {}).get("output_tokens")
    options = task.get("options")
    metadata = task.get("metadata") if isinstance(task.get("metadata"), dict) else {}
    cluster = metadata.get("question_id")
    family = _path(task, reading.family_key)
    follows = row.get(formats.FOLLOWS_KEY) if formats.FOLLOWS_KEY in row and reading.answer_format else None
    if follows is None:
        follows = formats.followed(reading.answer_format, row)
    stated_right = None
    if expected is not None and reading.answer_format in formats.STATED:
        stated_right = formats.same_answer(formats.stated(reading.answer_format, row), expected)
    return Reply(task=int(row[TASK]) if cluster is None else f"q:{cluster}", reward=float(reward),
                 gradable=gradable, extracted=extracted,
                 expected=expected, tokens=tokens if isinstance(tokens, int) else None,
                 family=None if family is None else (family if isinstance(family, str) else str(family)),
                 options=len(options) if isinstance(options, list) and options else None, follows=follows,
                 stated_right=stated_right)


def read_tasks(path: Path) -> list[dict]:
    """The task file a collection ran (`_ng_task_index` is a line's index in it)."""
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def task_of(row: dict, tasks: list[dict]) -> dict | None:
    """The task a row ran (`_ng_task_index` into the collection's task file), if it names one."""
    index = row.get(TASK)
    return tasks[index] if isinstance(index, int) and 0 <= index < len(tasks) else None


def replies(rows: list[dict], tasks: list[dict], reading: Reading = DEFAULT) -> list[Reply]:
    found = (reply_of(row, task_of(row, tasks), reading) for row in rows)
    return [r for r in found if r is not None]


# -- ratios over tasks ----------------------------------------------------------------------------
def _sums(items: list[Reply], numerator, denominator) -> dict[object, tuple[float, float]]:
    sums: dict[object, list[float]] = {}
    for r in items:
        entry = sums.setdefault(r.task, [0.0, 0.0])
        entry[0] += numerator(r)
        entry[1] += denominator(r)
    return {t: (a, b) for t, (a, b) in sums.items()}


def ratio(items: list[Reply], numerator, denominator) -> dict | None:
    """Σ numerator / Σ denominator over replies, its SE with tasks as clusters, and n."""
    sums = _sums(items, numerator, denominator)
    total = sum(b for _, b in sums.values())
    if not total:
        return None
    value = sum(a for a, _ in sums.values()) / total
    k = len(sums)
    se = None
    if k > 1:
        se = math.sqrt(k / (k - 1) * sum((a - value * b) ** 2 for a, b in sums.values())) / total
    return {"value": value, "se": se, "n": int(total), "tasks": k}


def paired_ratio_gain(before: list[Reply], after: list[Reply], numerator, denominator) -> dict | None:
    """after − before of a ratio over the tasks both have, with its paired SE (delta method)."""
    a, b = _sums(before, numerator, denominator), _sums(after, numerator, denominator)
    common = sorted(set(a) & set(b), key=str)
    total_a, total_b = sum(a[t][1] for t in common), sum(b[t][1] for t in common)
    if not common or not total_a or not total_b:
        return None
    value_a = sum(a[t][0] for t in common) / total_a
    value_b = sum(b[t][0] for t in common) / total_b
    terms = [(b[t][0] - value_b * b[t][1]) / total_b - (a[t][0] - value_a * a[t][1]) / total_a for t in common]
    k = len(common)
    se = math.sqrt(k / (k - 1) * sum(x * x for x in terms)) if k > 1 else None
    gain = value_b - value_a
    return {"gain": gain, "se": se, "z": gain / se if se else None, "tasks": k, "before": value_a, "after": value_b}


def _reward(r: Reply) -> float:
    return r.reward


def _one(r: Reply) -> float:
    return 1.0


def _gradable(r: Reply) -> float:
    return 1.0 if r.gradable else 0.0


def _gradable_reward(r: Reply) -> float:
    return r.reward if r.gradable else 0.0


def _ungradable(r: Reply) -> float:
    return 0.0 if r.gradable else 1.0


def _ungradable_reward(r: Reply) -> float:
    return 0.0 if r.gradable else r.reward


def _follows(r: Reply) -> float:
    return r.follows or 0.0


def _has_format(r: Reply) -> float:
    return 0.0 if r.follows is None else 1.0


def _stated_right(r: Reply) -> float:
    return 1.0 if r.stated_right else 0.0


def _states(r: Reply) -> float:
    return 0.0 if r.stated_right is None else 1.0


MEASURES = {  # name -> (numerator, denominator): every one is a ratio over replies
    "reward": (_reward, _one),
    "gradable_rate": (_gradable, _one),
    "accuracy_gradable": (_gradable_reward, _gradable),
    "adherence": (_follows, _has_format),
    "stated_right": (_stated_right, _states),
}


# -- one round's figures ------------------------------------------------------------------------
def decompose(items: list[Reply]) -> dict:
    """The figures of one set of replies (a round's eval or train rollouts, or one family)."""
    out: dict = {"n": len(items), "tasks": len({r.task for r in items})}
    reward = ratio(items, _reward, _one)
    out["reward"], out["reward_se"] = (reward["value"], reward["se"]) if reward else (None, None)
    graded = any(r.gradable is not None for r in items)
    if graded:
        rate, accuracy = ratio(items, _gradable, _one), ratio(items, _gradable_reward, _gradable)
        out["gradable_rate"], out["gradable_rate_se"] = rate["value"], rate["se"]
        out["accuracy_gradable"] = accuracy["value"] if accuracy else None
        out["accuracy_gradable_se"] = accuracy["se"] if accuracy else None
        out["gradable"] = accuracy["n"] if accuracy else 0
        # a letter drawn at random among the options (over the gradable replies, else all)
        with_options = [r for r in items if r.gradable and r.options] or [r for r in items if r.options]
        out["chance"] = (sum(1 / r.options for r in with_options) / len(with_options)) if with_options else None
        if out["chance"] is not None and out["accuracy_gradable"] is not None and out["accuracy_gradable_se"]:
            out["accuracy_vs_chance_z"] = (out["accuracy_gradable"] - out["chance"]) / out["accuracy_gradable_se"]
        earned = ratio(items, _ungradable_reward, _ungradable)
        if earned and earned["value"]:  # a verifier that grades the whole reply (reasoning_gym)
            out["reward_ungradable"], out["reward_ungradable_se"] = earned["value"], earned["se"]
    adherence = ratio(items, _follows, _has_format)
    if adherence:
        out["adherence"], out["adherence_se"] = adherence["value"], adherence["se"]
    right = ratio(items, _stated_right, _states)
    if right:  # the answer stated in the prompt's format is the expected one
        out["stated_right"], out["stated_right_se"] = right["value"], right["se"]
    tokens = [r.tokens for r in items if r.tokens is not None]
    out["mean_response_tokens"] = sum(tokens) / len(tokens) if tokens else None
    return out


def answer_distribution(items: list[Reply], top: int = 12) -> dict:
    """How often each answer was given (among gradable replies) and expected (over all): a
    letter prior shows as one extracted answer far above its expected share."""
    given = Counter(r.extracted for r in items if r.gradable and r.extracted is not None)
    expected = Counter(r.expected for r in items if r.expected is not None)
    return {"extracted": _most_common(given, top), "expected": _most_common(expected, top),
            "distinct_extracted": len(given)}


def _most_common(counts: Counter, top: int) -> dict:
    """The `top` most frequent, ties in the answers' order (the same every round)."""
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:top])


def summarize(rows: list[dict], tasks: list[dict], gym_metrics: dict | None = None,
              reading: Reading = DEFAULT) -> dict:
    """A round's decomposition: overall, per task family, the answers given, NeMo Gym's metrics."""
    return summarize_replies(replies(rows, tasks, reading), gym_metrics)


def summarize_replies(items: list[Reply], gym_metrics: dict | None = None) -> dict:
    out = decompose(items)
    out["answer_distribution"] = answer_distribution(items)
    families = sorted({r.family for r in items if r.family is not None})
    if families:
        out["families"] = {f: decompose([r for r in items if r.family == f]) for f in families}
    if gym_metrics is not None:
        out["gym_metrics"] = gym_metrics
    return out


def gains(before: list[Reply], after: list[Reply]) -> dict:
    """Every measure's paired gain over round 0, and the response length's ratio."""
    out = {name: paired_ratio_gain(before, after, *pair) for name, pair in MEASURES.items()}
    if not any(r.gradable is not None for r in after):
        del out["gradable_rate"], out["accuracy_gradable"]
    for name in ("adherence", "stated_right"):
        if out.get(name) is None:
            out.pop(name, None)
    lengths = [sum(x.tokens for x in group if x.tokens is not None) / max(1, sum(x.tokens is not None for x in group))
               for group in (before, after)]
    out["response_tokens_ratio"] = lengths[1] / lengths[0] if lengths[0] else None
    return out


def family_gains(before: list[Reply], after: list[Reply]) -> dict:
    families = sorted({r.family for r in after if r.family is not None})
    return {f: gains([r for r in before if r.family == f], [r for r in after if r.family == f]) for f in families}


def gym_metrics(rollouts: Path) -> dict | None:
    """NeMo Gym's own metrics of a collection (its `<name>_aggregate_metrics.json` sidecar, the
    server's `compute_metrics`: pass@k, majority@k, no_answer, in percent), when it wrote one."""
    path = rollouts.with_name(f"{rollouts.stem}_aggregate_metrics.json")
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
