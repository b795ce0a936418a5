"""`stage=report`: `<run_dir>/report.html`, one self-contained page (PNGs inline, opens offline).

Written at the end of prepare, again after a local training run, and on demand with
`gym-dpo stage=report run_dir=results/<run>`. Each plot appears when its data exists, else the
page says what produces it:
- reward of every usable rollout (`<data>/rollout_rewards.json`, written at the end of prepare:
  pair files keep only the paired rollouts);
- chosen vs rejected reward, reward gap, pairs per prompt (train.jsonl + val.jsonl, from the
  reward fields prepare keeps with `data.keep_extra_fields=true`);
- tokens per pair against the max length (`<run_dir>/preflight.json`: the tokenizer is known
  only once the train stage resolved the model);
- loss and preference accuracy per step (`<run_dir>/metrics.jsonl`, written by the CPU runner).
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import numpy as np
import orjson
from omegaconf import DictConfig

import recipe
from recipe import report
from recipe.errors import RecipeError
from recipe.run_files import write_atomic

FILENAME = "report.html"
REWARDS_FILE = "rollout_rewards.json"
MAX_DISTINCT = 40  # more distinct rewards than this are binned


# -- the rewards of all rollouts (kept by prepare, which alone sees them) --------------------------
def rollout_rewards_record(rewards: np.ndarray) -> dict:
    """Counts per distinct reward, or per bin when there are more than MAX_DISTINCT values."""
    rewards = np.asarray(rewards, dtype=float)
    rewards = rewards[np.isfinite(rewards)]
    distinct, counts = np.unique(rewards, return_counts=True)
    if len(distinct) <= MAX_DISTINCT:
        return {"rollouts": int(len(rewards)), "values": distinct.tolist(), "counts": counts.tolist()}
    # binned on a scale where the range is finite (max - min may overflow: rewards of +-1e308)
    scale = float(np.abs(rewards).max())
    counts, edges = np.histogram(rewards / scale, bins=MAX_DISTINCT)
    return {"rollouts": int(len(rewards)), "bin_edges": (edges * scale).tolist(), "counts": counts.tolist()}


def write_rollout_rewards(data_dir: Path, rewards: np.ndarray | dict) -> Path:
    """`<data>/rollout_rewards.json` (written through a temporary name): the rewards, or their
    `rollout_rewards_record`."""
    record = rewards if isinstance(rewards, dict) else rollout_rewards_record(rewards)
    return write_atomic(Path(data_dir) / REWARDS_FILE, json.dumps(record) + "\n")


# -- what a run folder holds ---------------------------------------------------------------------
@dataclass
class RunData:
    run_dir: Path
    data_dir: Path
    manifest: dict | None = None
    rollout_rewards: dict | None = None
    chosen: list[float] = field(default_factory=list)
    rejected: list[float] = field(default_factory=list)
    gaps: list[float] = field(default_factory=list)
    pairs_per_prompt: list[int] = field(default_factory=list)
    pairs: int = 0
    preflight: dict | None = None
    metrics: list[dict] = field(default_factory=list)


def _json(path: Path):
    try:
        return orjson.loads(path.read_bytes()) if path.is_file() else None
    except orjson.JSONDecodeError:
        return None


class _PairFacts(msgspec.Struct):
    """What the plots need of a written pair; the texts are skipped by the decoder, not parsed."""

    chosen_reward: float | None = None
    rejected_reward: float | None = None
    reward_gap: float | None = None
    group_id: str | None = None
    context: msgspec.Raw = msgspec.Raw(b"null")
    prompt: msgspec.Raw = msgspec.Raw(b"null")


def _prompt_key(pair: _PairFacts) -> str:
    if pair.group_id:
        return pair.group_id
    prompt = pair.context if bytes(pair.context) != b"null" else pair.prompt
    return hashlib.blake2b(bytes(prompt), digest_size=12).hexdigest()


@dataclass
class PairRewards:
    """What the plots need of the pairs, when the caller has it in memory (prepare does)."""

    chosen: np.ndarray
    rejected: np.ndarray
    per_prompt: np.ndarray  # pairs of each prompt group that has any


def gather(run_dir: Path, data_dir: Path, pairs: PairRewards | None = None,
           manifest: dict | None = None, rollout_rewards: dict | None = None) -> RunData:
    data = RunData(Path(run_dir), Path(data_dir))
    data.manifest = manifest if manifest is not None else _json(data.data_dir / "manifest.json")
    data.rollout_rewards = rollout_rewards if rollout_rewards is not None else _json(data.data_dir / REWARDS_FILE)
    if pairs is not None:
        data.chosen, data.rejected = pairs.chosen, pairs.rejected  # arrays: no per-pair objects
        with np.errstate(over="ignore"):  # rewards of +-1e308: an infinite gap, left out of the histogram
            gaps = pairs.chosen - pairs.rejected
        data.gaps = gaps[np.isfinite(gaps)]
        data.pairs, data.pairs_per_prompt = len(pairs.chosen), pairs.per_prompt
    else:
        _read_pairs(data)
    data.preflight = _json(data.run_dir / "preflight.json")
    metrics_path = data.run_dir / "metrics.jsonl"
    if metrics_path.is_file():
        data.metrics = [orjson.loads(line) for line in metrics_path.read_bytes().splitlines() if line.strip()]
    return data


def _read_pairs(data: RunData) -> None:
    per_prompt: Counter = Counter()
    decode = msgspec.json.Decoder(_PairFacts).decode
    for split in ("train", "val"):
        path = data.data_dir / f"{split}.jsonl"
        if not path.is_file():
            continue
        with open(path, "rb") as handle:
            for line in handle:
                if not line.strip():
                    continue
                try:
                    pair = decode(line)
                except msgspec.DecodeError:  # pair files are ours; a hand-edited one still plots
                    continue
                data.pairs += 1
                per_prompt[_prompt_key(pair)] += 1
                if pair.chosen_reward is not None and pair.rejected_reward is not None:
                    data.chosen.append(pair.chosen_reward)
                    data.rejected.append(pair.rejected_reward)
                    gap = pair.chosen_reward - pair.rejected_reward  # reward_gap is null when infinite
                    if math.isfinite(gap):
                        data.gaps.append(gap)
    data.pairs_per_prompt = list(per_prompt.values())


# -- plots ---------------------------------------------------------------------------------------
@dataclass
class Section:
    id: str
    title: str
    figure: object | None      # a matplotlib Figure, or None with `missing` saying why
    missing: str = ""
    png: bytes | None = None   # the figure rendered


def _drawn(section_id: str, title: str, draw) -> Section:
    """The section of the figure `draw()` makes, rendered once here, or a note saying why it
    could not be drawn: the data's values (a range matplotlib cannot lay out, say) never stop
    the report, let alone the stage."""
    from recipe import plots

    try:
        figure = draw()
        rendered = plots.png(figure)  # what fails to render fails here, with the data named
    except Exception as exc:  # noqa: BLE001 (any drawing error: the page says so instead)
        return Section(section_id, title, None, f"not drawn: {type(exc).__name__}: {exc}"[:300])
    return Section(section_id, title, figure, png=rendered)


def _bin_centres(edges) -> tuple[list[float], float]:
    edges = np.asarray(edges)
    return (edges[:-1] / 2 + edges[1:] / 2).tolist(), float(edges[1] / 2 - edges[0] / 2) * 1.9


def sections(data: RunData) -> list[Section]:
    from recipe import plots

    out = []
    rewards = data.rollout_rewards
    if rewards and rewards.get("counts"):
        if "values" in rewards:
            def draw():
                return plots.reward_distribution(rewards["values"], rewards["counts"])
        else:
            def draw():
                centres, width = _bin_centres(rewards["bin_edges"])
                return plots.reward_distribution(centres, rewards["counts"], width=width)
        out.append(_drawn("reward_distribution", "Reward distribution (all usable rollouts)", draw))
    else:
        out.append(Section("reward_distribution", "Reward distribution (all usable rollouts)", None,
                           f"no {REWARDS_FILE} in {data.data_dir}: it is written by stage=prepare"))
    pair_note = ("the pairs carry no rewards: prepare with data.keep_extra_fields=true" if data.pairs
                 else f"no pairs in {data.data_dir}")
    if len(data.chosen):
        out.append(_drawn("chosen_vs_rejected", "Chosen vs rejected reward",
                          lambda: plots.chosen_vs_rejected(data.chosen, data.rejected)))
        out.append(_drawn("gap_histogram", "Reward gap", lambda: plots.gap_histogram(data.gaps)))
    else:
        out.append(Section("chosen_vs_rejected", "Chosen vs rejected reward", None, pair_note))
        out.append(Section("gap_histogram", "Reward gap", None, pair_note))
    if len(data.pairs_per_prompt):
        out.append(_drawn("pairs_per_prompt", "Pairs per prompt",
                          lambda: plots.pairs_per_prompt(data.pairs_per_prompt)))
    else:
        out.append(Section("pairs_per_prompt", "Pairs per prompt", None, f"no pairs in {data.data_dir}"))
    lengths = [v for split in (data.preflight or {}).get("splits", {}).values() for v in split.get("lengths", [])]
    if lengths:
        out.append(_drawn("token_lengths", "Tokens per pair", lambda: plots.token_lengths(
            lengths, int(data.preflight["max_input_seq_length"]))))
    else:
        why = ("the tokenizer was not on this machine when preflight ran" if data.preflight else
               "token lengths come from stage=preflight (also run before every train stage)")
        out.append(Section("token_lengths", "Tokens per pair", None, why))
    if any("train:loss" in row for row in data.metrics):
        out.append(_drawn("loss_curve", "Loss",
                          lambda: plots.training_curves(data.metrics, "loss", "DPO loss", "loss")))
        out.append(_drawn("accuracy_curve", "Preference accuracy", lambda: plots.training_curves(
            data.metrics, "accuracy", "Preference accuracy", "accuracy (chosen reward > rejected)")))
    else:
        for section_id, title in (("loss_curve", "Loss"), ("accuracy_curve", "Preference accuracy")):
            out.append(Section(section_id, title, None,
                               "no metrics.jsonl in the run folder: written by a local run (launcher=local_cpu)"))
    return out


# -- the page ------------------------------------------------------------------------------------
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 72em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: .5em 0; } td, th { border: 1px solid #ccc; padding: .2em .6em; }
td.n { text-align: right; } .grid { display: flex; flex-wrap: wrap; gap: 1em; }
figure { margin: 0; } figure img { max-width: 100%; border: 1px solid #eee; }
.missing { color: #777; font-style: italic; } .warn { color: #8a5300; }
"""


def _table(rows: list[tuple[str, object]]) -> str:
    cells = "".join(f"<tr><td>{html.escape(str(k))}</td><td class='n'>{html.escape(str(v))}</td></tr>"
                    for k, v in rows)
    return f"<table>{cells}</table>"


def _pairing(pairing: dict, options: dict) -> str:
    """The manifest's pairing report: what the strategy made of the input, and its length bias."""
    prompts, per_prompt = pairing.get("prompts", {}), pairing.get("pairs_per_prompt", {})
    gap, length = pairing.get("score_gap", {}), pairing.get("length_difference", {})
    unit = pairing.get("length_unit", "characters")
    rows = [("strategy", pairing.get("strategy")),
            ("options", ", ".join(f"{k}={v}" for k, v in options.items() if k != "name")),
            ("prompts with a pair", f"{prompts.get('with_pairs', '?')} / {prompts.get('total', '?')}"),
            ("pairs per paired prompt: mean / max", f"{per_prompt.get('mean_where_paired')} / {per_prompt.get('max')}"),
            ("score gap: min / median / max", f"{gap.get('min')} / {gap.get('median')} / {gap.get('max')}"
             if gap.get("count") else "no pairs"),
            (f"length chosen - rejected ({unit}): mean / median",
             f"{length.get('mean')} / {length.get('median')}" if length.get("count") else "no pairs"),
            ("pairs whose chosen is longer", length.get("chosen_longer_share"))]
    warning = ""
    if (length.get("chosen_longer_share") or 0) > 0.5:
        warning = ("<ul><li class='warn'>chosen is the longer response in most pairs: DPO may learn "
                   "that longer is better; consider data_prep.length_penalty</li></ul>")
    return "<h2>Pairing</h2>" + _table(rows) + warning


def _summary(data: RunData) -> str:
    parts = []
    manifest = data.manifest
    if manifest:
        counts, pairs = manifest.get("counts", {}), manifest.get("pairs", {})
        rows = report.outcome_rows(counts)
        rows += [("train pairs", pairs.get("train", "?")), ("val pairs", pairs.get("val", "?"))]
        parts.append("<h2>Data</h2>" + _table(rows))
        if manifest.get("pairing"):
            parts.append(_pairing(manifest["pairing"], manifest.get("config", {}).get("data_prep", {})))
    if data.preflight:
        batches = data.preflight.get("batches", {})
        rows = [("tokenizer", data.preflight.get("tokenizer")),
                ("max input length", data.preflight.get("max_input_seq_length")),
                ("steps (per epoch)", f"{batches.get('steps', '?')} ({batches.get('steps_per_epoch', '?')})")]
        notes = "".join(f"<li class='warn'>{html.escape(w)}</li>" for w in data.preflight.get("warnings", []))
        parts.append("<h2>Preflight</h2>" + _table(rows) + (f"<ul>{notes}</ul>" if notes else ""))
    train = [r for r in data.metrics if "train:loss" in r]
    if train:
        val = [r for r in data.metrics if "val:validation-default_accuracy" in r]
        rows = [("steps", train[-1]["step"]), ("train loss: first / last",
                                                  f"{train[0]['train:loss']:.4f} / {train[-1]['train:loss']:.4f}")]
        if "train:accuracy" in train[-1]:
            rows.append(("train accuracy: last", f"{train[-1]['train:accuracy']:.3f}"))
        if val:
            rows.append(("val accuracy: last", f"{val[-1]['val:validation-default_accuracy']:.3f}"))
        parts.append("<h2>Training (local run)</h2>" + _table(rows))
    return "".join(parts)


def render(data: RunData, parts: list[Section]) -> str:
    from recipe import plots

    figures = []
    for part in parts:
        if part.figure is None:
            body = f"<p class='missing'>{html.escape(part.missing)}</p>"
        else:
            encoded = base64.b64encode(part.png or plots.png(part.figure)).decode("ascii")
            body = f"<img alt='{html.escape(part.title)}' src='data:image/png;base64,{encoded}'>"
        figures.append(f"<figure id='plot-{part.id}'><h3>{html.escape(part.title)}</h3>{body}</figure>")
    written = datetime.now(UTC).isoformat(timespec="seconds")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>gym-dpo report</title>"
            f"<style>{STYLE}</style></head><body><h1>gym-dpo report</h1>"
            f"<p>Run folder <code>{html.escape(str(data.run_dir))}</code>, data <code>"
            f"{html.escape(str(data.data_dir))}</code>; gym-dpo {recipe.__version__}, written {written}.</p>"
            f"{_summary(data)}<h2>Plots</h2><div class='grid'>{''.join(figures)}</div></body></html>\n")


def write(run_dir: Path, data_dir: Path, pairs: PairRewards | None = None,
          manifest: dict | None = None, rollout_rewards: dict | None = None, target: Path | None = None) -> Path:
    """Gather, plot and write `<run_dir>/report.html` (or `target`); returns its path. `pairs`,
    `manifest` and `rollout_rewards`, when given, stand for what would be read from the data
    folder."""
    data = gather(run_dir, data_dir, pairs, manifest, rollout_rewards)
    page = render(data, sections(data))
    path = Path(target) if target is not None else Path(run_dir) / FILENAME
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    temp.write_text(page, encoding="utf-8")
    temp.replace(path)
    return path


def _matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def after_prepare(cfg: DictConfig, rollout_rewards: dict, pairs: PairRewards, manifest: dict,
                  target: Path) -> Path | str:
    """The report of a prepare run, drawn into `target` (prepare renames it into place with the
    outputs it shows); returns that path, or a line saying why there is none. Prints nothing:
    prepare runs it in a `Background` process while its workers write the pairs."""
    if not _matplotlib():
        return "report.html needs matplotlib (pip install -e '.[local]'); skipped"
    return write(Path(str(cfg.run_dir)).absolute(), Path(str(cfg.data.output_dir)).absolute(), pairs, manifest,
                 rollout_rewards, target)


def run(cfg: DictConfig) -> int:
    """`stage=report`: (re)write the report of `run_dir` (data from `data.output_dir`)."""
    if not _matplotlib():
        raise RecipeError("stage=report draws with matplotlib: pip install -e '.[local]'")
    run_dir = Path(str(cfg.run_dir)).absolute()
    data_dir = Path(str(cfg.data.output_dir)).absolute()
    if not (data_dir / "manifest.json").is_file() and not (run_dir / "metrics.jsonl").is_file():
        raise RecipeError(f"nothing to report: {data_dir} has no manifest.json and {run_dir} no "
                          "metrics.jsonl; point at a run: gym-dpo stage=report run_dir=results/<run>")
    path = write(run_dir, data_dir)
    report.console.print(f"wrote {path}", soft_wrap=True)
    return 0
