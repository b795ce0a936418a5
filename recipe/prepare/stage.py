"""`stage=prepare`: rollouts -> train.jsonl, val.jsonl, rejects.jsonl and manifest.json.

Data flows one way: read + validate (scan, in worker processes) -> group -> pair -> split ->
write (pair records built in worker processes from the input lines, by offset). Memory holds
neither the texts of the file nor its records: records are spilled to bucket files by group key
(`buckets.py`) and each bucket is paired on its own.
"""

from __future__ import annotations

import ctypes
import glob
import multiprocessing
import os
import time
from collections import Counter, deque
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import orjson
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

import recipe
from recipe import interrupts, report, report_page
from recipe.background import Background
from recipe.errors import RecipeError
from recipe.prepare import buckets, chat, cut, grouping, manifest, pairing, rollouts, scan, split, writer
from recipe.prepare.lines import LineSource
from recipe.prepare.pairing import report as pairing_report

OUTPUTS = ["train.jsonl", "val.jsonl", "rejects.jsonl"]
# why a usable rollout is in no pair: alone in its group, all rewards equal, not the strategy's
# choice, or every pair the strategy tried with it could not be cut (`cut.REFUSALS`)
UNPAIRED = ("no_comparable_rollout", "tie", "not_selected", *cut.REFUSALS)


@dataclass
class Settings:
    """The prepare stage's view of the composed config."""

    inputs: list[str]
    output_dir: Path
    scan: scan.ScanOptions
    strategy: str
    strategy_options: dict
    seed: int
    val_fraction: float
    val_size: int | None
    on_error: str
    keep_extra_fields: bool
    workers: int
    chunk_bytes: int

    @property
    def length_unit(self) -> str:
        return "tokens" if self.scan.tokenizer else "characters"

    @classmethod
    def from_config(cls, cfg: DictConfig) -> "Settings":
        data, prep = cfg.data, cfg.data_prep
        if data.format not in ("preference", "binary"):
            raise RecipeError(f"data.format={data.format!r}: choose preference or binary")
        if data.on_error not in ("skip", "fail"):
            raise RecipeError(f"data.on_error={data.on_error!r}: choose skip or fail")
        if not 0.0 <= float(data.val_fraction) < 1.0:
            raise RecipeError(f"data.val_fraction={data.val_fraction}: must be in [0, 1)")
        if data.developer_role not in ("system", "developer"):
            raise RecipeError(f"data.developer_role={data.developer_role!r}: system or developer")
        options = OmegaConf.to_container(prep, resolve=True)
        name = options.pop("name")
        try:
            options = pairing.resolve_options(name, options)
            rollouts.rollout_type(data.group_by)
        except ValueError as exc:
            raise RecipeError(str(exc)) from None
        workers = data.workers or min(os.cpu_count() or 1, 8)
        return cls(
            inputs=resolve_inputs(None if OmegaConf.is_missing(data, "input") else data.input),
            output_dir=Path(data.output_dir).absolute(),
            scan=scan.ScanOptions(
                group_by=data.group_by,
                chat=chat.ChatOptions(data.developer_role, bool(data.include_reasoning)),
                binary=data.format == "binary",
                tokenizer=length_tokenizer(data.get("length_tokenizer"))),
            strategy=name, strategy_options=options, seed=int(cfg.seed),
            val_fraction=float(data.val_fraction),
            val_size=None if data.val_size is None else int(data.val_size),
            on_error=data.on_error, keep_extra_fields=bool(data.keep_extra_fields),
            workers=int(workers), chunk_bytes=int(float(data.chunk_mb) * (1 << 20)))


def length_tokenizer(spec: str | None) -> str | None:
    """The tokenizer.json that response lengths are counted with, or None for characters.

    `data.length_tokenizer` names a local Hugging Face tokenizer folder or tokenizer.json; one
    that is not on this machine (a hub name, say) leaves lengths in characters, with a warning.
    """
    if not spec:
        return None
    path = Path(os.path.expanduser(str(spec)))
    if path.is_dir():
        path = path / "tokenizer.json"
    try:
        import tokenizers  # noqa: F401  (the `local` extra)
    except ImportError:
        report.console.print(f"warning: data.length_tokenizer={spec} needs the tokenizers package "
                             "(pip install -e '.[local]'); lengths are in characters", markup=False)
        return None
    if not path.is_file():
        report.console.print(f"warning: data.length_tokenizer={spec}: no tokenizer.json on this "
                             "machine; lengths are in characters", markup=False)
        return None
    return str(path.absolute())


def resolve_inputs(spec) -> list[str]:
    """`data.input` as one path, a glob, or a list of them -> existing, non-empty files."""
    if spec is None:
        raise RecipeError("data.input is not set: give data.input=PATH (a .jsonl file, a glob, "
                          "or a list [a.jsonl,b.jsonl])")
    patterns = [spec] if isinstance(spec, str) else list(spec)
    paths: list[str] = []
    for pattern in patterns:
        pattern = os.path.expanduser(str(pattern))
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        if not matches:
            raise RecipeError(f"data.input: no file matches {pattern!r}")
        for path in matches:
            if not os.path.exists(path):
                raise RecipeError(f"data.input: {path} does not exist")
            if not os.path.isfile(path):
                raise RecipeError(f"data.input: {path} is not a file")
            if os.path.getsize(path) == 0:
                raise RecipeError(f"data.input: {path} is empty: no rollouts to prepare")
            if os.path.abspath(path) not in map(os.path.abspath, paths):
                paths.append(path)
    if len(paths) > np.iinfo(grouping.RECORD["file"]).max:
        raise RecipeError(f"data.input: {len(paths)} files is more than one run can take")
    return paths


# -- worker processes ---------------------------------------------------------------------------
_WORKER: dict = {}


def _init_worker(settings: Settings, in_pool: bool = False) -> None:
    if in_pool:
        interrupts.in_child()
    _WORKER["settings"] = settings
    _WORKER["buckets"] = buckets.count_for(input_bytes(settings))
    _WORKER["lines"] = LineSource(settings.inputs, settings.scan)
    _WORKER["builder"] = writer.PairBuilder(_WORKER["lines"], settings.keep_extra_fields)


def _scan(chunk: rollouts.Chunk) -> tuple[scan.ChunkResult, np.ndarray]:
    """A chunk's records (ordered by bucket) and rejects, and where each bucket's records start."""
    result = scan.scan_chunk(chunk, _WORKER["settings"].scan)
    result.records, bounds = buckets.split(result.records, _WORKER["buckets"])
    return result, bounds


def _pair_bucket(task: tuple[Path, Settings]) -> "BucketPairs":
    path, settings = task
    records = buckets.load(path)
    found = pair_records(records, settings, _WORKER["lines"])
    pairs = writer.pairs_of(records, found.chosen, found.rejected, found.score_gap)
    paired = int(len(np.unique(np.concatenate([found.chosen, found.rejected]))))
    rejects = [(int(records["file"][i]), int(records["line"][i]), reason,
                int(records["file"][other]), int(records["line"][other]))
               for i, other, reason in found.refused_rollouts]
    return BucketPairs(pairs, found.unpaired, found.groups, found.groups_with_pairs, paired,
                       found.refused, rejects)


def _build(task: tuple[Path, np.ndarray, np.ndarray]) -> tuple[Path, int, Path, int, Counter]:
    """Write a part of the pairs (train and validation lines, in pair order) to two files beside
    the outputs; returns (train file, its lines, validation file, its lines, the builder's tally
    for them). The lines go
    through files, not back through the pool's pipe, which carries a few hundred MB/s at most."""
    stem, pairs, is_val = task
    train_path, val_path = stem.with_suffix(".train"), stem.with_suffix(".val")
    builder = _WORKER["builder"]
    before = builder.tally.copy()
    counts = [0, 0]
    with open(train_path, "wb") as train, open(val_path, "wb") as val:
        for start in range(0, len(pairs), BUILD_BATCH):
            lines = builder.build_all(pairs[start:start + BUILD_BATCH])
            sides = is_val[start:start + BUILD_BATCH].tolist()
            for side, handle in ((False, train), (True, val)):
                chosen = [line for line, on_val in zip(lines, sides) if on_val is side]
                handle.write(b"".join(chosen))
                counts[side] += len(chosen)
    return train_path, counts[0], val_path, counts[1], builder.tally - before


class Workers:
    """A process pool (or in-process calls when workers=1) whose results come back in order,
    with at most a few tasks in flight so that memory stays bounded."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.pool = None
        self.ahead = 4 * settings.workers
        self.start()

    def start(self) -> None:
        if self.settings.workers > 1:
            context = multiprocessing.get_context("fork" if os.name == "posix" else "spawn")
            self.pool = context.Pool(self.settings.workers, _init_worker, (self.settings, True))
        else:
            _init_worker(self.settings)

    def map(self, function, items: Iterable) -> Iterator:
        if self.pool is None:
            yield from map(function, items)
            return
        pending: deque = deque()
        for item in items:
            pending.append(self.pool.apply_async(function, (item,)))
            if len(pending) >= self.ahead:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()
            self.pool = None


# -- the stage ----------------------------------------------------------------------------------
@dataclass
class Scanned:
    buckets: buckets.Buckets  # usable rollouts, one record each, spilled by group key
    rewards: np.ndarray  # of the usable rollouts, for the manifest's statistics
    rejected: dict[str, int]  # reason -> lines
    lines_per_file: list[int]


def scan_inputs(settings: Settings, workers: Workers, spilled: buckets.Buckets,
                rejects=None) -> Scanned:
    """Read and validate every line into `spilled`; `rejects(reject)` is called for each
    excluded line."""
    total = input_bytes(settings)
    rewards, rejected = [], {}
    lines_per_file = [0] * len(settings.inputs)
    progress = tqdm(total=total, unit="B", unit_scale=True, desc="read+validate", mininterval=1.0)
    lines_seen = 0
    started = time.monotonic()
    with progress:
        chunks = rollouts.chunks(settings.inputs, settings.chunk_bytes)
        for result, bounds in workers.map(_scan, chunks):
            first = lines_per_file[result.chunk.file_index]
            result.records["line"] += first
            for reject in result.rejects:
                reject.line += first
                if settings.on_error == "fail":
                    raise RecipeError(f"{settings.inputs[reject.file]}:{reject.line}: {reject.reason}: "
                                      f"{reject.detail} (data.on_error=fail; use skip to count "
                                      "and write such lines to rejects.jsonl instead)")
                rejected[reject.reason] = rejected.get(reject.reason, 0) + 1
                if rejects is not None:
                    rejects(reject)
            lines_per_file[result.chunk.file_index] += result.lines
            spilled.add(result.records, bounds)
            rewards.append(result.records["reward"].copy())  # not a view: the records go to disk
            lines_seen += result.lines
            progress.update(result.chunk.end - result.chunk.start)
            progress.set_postfix_str(f"{lines_seen / max(time.monotonic() - started, 1e-9):,.0f} lines/s",
                                     refresh=False)
    spilled.seal()
    return Scanned(spilled, np.concatenate(rewards) if rewards else np.empty(0),
                   dict(sorted(rejected.items())), lines_per_file)


@dataclass
class Pairing:
    chosen: np.ndarray  # indices into the sorted records
    rejected: np.ndarray
    score_gap: np.ndarray
    unpaired: dict[str, int]  # why usable rollouts ended in no pair
    groups: int
    groups_with_pairs: int
    refused: dict[str, int]  # candidate pairs that could not be cut, by reason
    refused_rollouts: list[tuple[int, int, str]]  # (rollout, its partner, reason): unpaired by a refusal


def pair_records(records: np.ndarray, settings: Settings, lines: LineSource | None = None) -> Pairing:
    """Pair one bucket's records (sorted by group). Groups of single-turn outputs pair without
    reading a line; a group holding longer outputs pairs under a `cut.Cutter`, which reads the
    lines (from `lines`) of the candidates their records do not settle."""
    options = pairing.resolve_options(settings.strategy, settings.strategy_options)
    starts = grouping.group_starts(records["key_hi"], records["key_lo"])
    all_scores, all_normalized = pairing.scores(records["reward"], records["length"], options, starts=starts)
    responses = records["response"]
    needs_cut = (np.bitwise_or.reduceat(records["shape"], starts) != 0) if len(starts) else np.zeros(0, bool)
    cutter = None
    if needs_cut.any():
        def output(index: int):
            return lines.output(int(records["file"][index]), int(records["offset"][index]),
                                int(records["nbytes"][index]))
        cutter = cut.Cutter(records["first"], records["shape"], output, settings.scan.binary)
    every_group = pairing.select_groups(settings.strategy)
    if every_group is None:  # group by group
        chosen, rejected = _pair_group_by_group(records, starts, np.arange(len(starts)), all_scores,
                                                all_normalized, options, settings, needs_cut, cutter)
    else:  # the strategy's vectorised form for all groups, group by group where a cut is in doubt
        chosen, rejected = every_group(all_scores, responses, starts, options)
        if cutter is not None:
            # its pair stands wherever the records say it can be cut; elsewhere the group is paired
            # again with the cut asked (where it found none, no candidate of the group can pass)
            group_of = grouping.group_ids(starts, len(records))
            first, shape = records["first"], records["shape"]
            doubt = needs_cut[group_of[chosen]] & ~cut.cuttable_by_records(
                first[chosen], shape[chosen], first[rejected], shape[rejected], settings.scan.binary)
            again_chosen, again_rejected = _pair_group_by_group(
                records, starts, group_of[chosen[doubt]], all_scores, all_normalized, options,
                settings, needs_cut, cutter)
            chosen = np.concatenate([chosen[~doubt], again_chosen])
            rejected = np.concatenate([rejected[~doubt], again_rejected])
            order = np.argsort(group_of[chosen], kind="stable")  # back in group order
            chosen, rejected = chosen[order], rejected[order]
    refused = cutter.refused if cutter is not None else {}
    unpaired, groups, with_pairs, refused_rollouts = _outcomes(all_scores, starts, chosen, rejected, refused)
    with np.errstate(over="ignore"):  # rewards of +-1e308: the gap is infinite (reward_gap null)
        gaps = all_scores[chosen] - all_scores[rejected]
    return Pairing(chosen, rejected, gaps, unpaired, groups, with_pairs, dict(Counter(refused.values())),
                   refused_rollouts)


def _pair_group_by_group(records, starts, groups, all_scores, all_normalized, options, settings,
                         needs_cut, cutter):
    select = pairing.strategy(settings.strategy)
    responses = records["response"]
    ends = np.append(starts[1:], len(records))
    chosen, rejected = [], []
    for g in groups.tolist():
        start, end = int(starts[g]), int(ends[g])
        if end - start == 1:
            continue
        seed = (settings.seed << 64) | int(records["key_hi"][start])
        cuttable = None
        if needs_cut[g]:
            cutter.next_group()
            cuttable = (lambda base: lambda c, r: cutter(base + c, base + r))(start)
        group = pairing.Group(all_scores[start:end], responses[start:end], seed,
                              rewards=all_normalized[start:end], cuttable=cuttable)
        for c, r in select(group, options):
            chosen.append(start + c)
            rejected.append(start + r)
    return np.array(chosen, dtype=np.int64), np.array(rejected, dtype=np.int64)


def _outcomes(scores: np.ndarray, starts: np.ndarray, chosen: np.ndarray, rejected: np.ndarray,
              refused: dict[tuple[int, int], str]):
    """(why usable rollouts ended in no pair, groups, groups with pairs, the rollouts left
    unpaired by a refused cut as (rollout, partner, reason)), for every group at once. A
    rollout in no pair counts under the reason of the first refused pair it was in, if any."""
    unpaired = dict.fromkeys(UNPAIRED, 0)
    if len(starts) == 0:
        return unpaired, 0, 0, []
    n = len(scores)
    sizes = grouping.group_sizes(starts, n)
    used = np.zeros(n, dtype=bool)
    used[chosen] = used[rejected] = True
    left = sizes - np.add.reduceat(used, starts)
    flat = np.maximum.reduceat(scores, starts) == np.minimum.reduceat(scores, starts)
    several = sizes > 1
    unpaired["no_comparable_rollout"] = int((~several).sum())
    unpaired["tie"] = int(left[several & flat].sum())
    unpaired["not_selected"] = int(left[several & ~flat].sum())
    refused_rollouts, seen = [], set()
    for (a, b), reason in refused.items():  # only groups with a gap offer candidates: not ties
        for rollout, partner in ((a, b), (b, a)):
            if not used[rollout] and rollout not in seen:
                seen.add(rollout)
                refused_rollouts.append((rollout, partner, reason))
                unpaired["not_selected"] -= 1
                unpaired[reason] += 1
    return unpaired, len(starts), int((left < sizes).sum()), refused_rollouts


@dataclass
class BucketPairs:
    pairs: np.ndarray  # writer.PAIR rows
    unpaired: dict[str, int]
    groups: int
    groups_with_pairs: int
    paired_lines: int
    refused: dict[str, int]  # candidate pairs that could not be cut, by reason
    rejects: list[tuple[int, int, str, int, int]]  # (file, line, reason, partner's file, line)


def input_bytes(settings: Settings) -> int:
    return sum(os.path.getsize(p) for p in settings.inputs)


def pair_buckets(settings: Settings, workers: Workers, scanned: Scanned, rejects=None) -> BucketPairs:
    """Every bucket paired in a worker; the pairs in canonical order (bucket, then group key).
    `rejects(reject)` is called for each rollout left unpaired because its pairs could not be cut.

    Each bucket's pairs go to a file as they come and are read back in one piece: collecting
    them in a list and concatenating would hold every pair twice at the end."""
    total = BucketPairs(np.empty(0, writer.PAIR), dict.fromkeys(UNPAIRED, 0), 0, 0, 0, Counter(), [])
    tasks = ((scanned.buckets.path(b), settings) for b in range(scanned.buckets.count))
    spill = scanned.buckets.folder / "pairs"
    with tqdm(total=scanned.buckets.count, unit="bucket", desc="group+pair", mininterval=1.0) as progress, \
            open(spill, "wb") as pairs:
        for found in workers.map(_pair_bucket, tasks):
            found.pairs.tofile(pairs)
            for reason, n in found.unpaired.items():
                total.unpaired[reason] += n
            total.groups += found.groups
            total.groups_with_pairs += found.groups_with_pairs
            total.paired_lines += found.paired_lines
            total.refused.update(found.refused)
            if rejects is not None:
                for file, line, reason, other_file, other_line in found.rejects:
                    rejects(scan.Reject(file, line, reason, f"paired with {settings.inputs[other_file]}:"
                                        f"{other_line}: {cut.explain(reason)}"))
            progress.update()
    total.pairs = np.fromfile(spill, dtype=writer.PAIR)
    total.refused = dict(sorted(total.refused.items()))
    spill.unlink()
    return total


BUILD_BATCH = 512  # pairs a worker builds in one call
PART_PAIRS = 8192  # pairs per work item of the writing phase


def write_pairs(settings: Settings, pairs: np.ndarray, is_val: np.ndarray, workers: Workers,
                files: writer.AtomicFiles, parts_folder: Path) -> Counter:
    """Write train/val (`is_val`: `split.is_validation` of the pairs); returns the builders'
    tally: pairs whose context holds shared turns, tool calls whose arguments stay as written."""
    tasks = ((parts_folder / f"part-{start // PART_PAIRS:06d}", pairs[start:start + PART_PAIRS],
              is_val[start:start + PART_PAIRS]) for start in range(0, len(pairs), PART_PAIRS))
    tally = Counter()
    with tqdm(total=len(pairs), unit="pair", desc="write pairs", mininterval=1.0) as progress:
        for train, train_lines, val, val_lines, built in workers.map(_build, tasks):
            files.append("train.jsonl", train, train_lines)
            files.append("val.jsonl", val, val_lines)
            tally.update(built)
            progress.update(train_lines + val_lines)
    return tally


def _write_reject(files: writer.AtomicFiles, inputs: list[str]):
    def write(reject: scan.Reject) -> None:
        files.write("rejects.jsonl", orjson.dumps({
            "file": os.path.abspath(inputs[reject.file]), "line": reject.line,
            "reason": reject.reason, "detail": reject.detail}) + b"\n")
    return write


def outcome_counts(scanned: Scanned, paired: BucketPairs) -> dict:
    counts = {"lines": int(sum(scanned.lines_per_file)), "paired": paired.paired_lines,
              "unpaired": paired.unpaired, "rejected": scanned.rejected}
    accounted = paired.paired_lines + sum(paired.unpaired.values()) + sum(scanned.rejected.values())
    assert accounted == counts["lines"], f"{accounted} outcomes for {counts['lines']} lines"
    return counts


def return_large_frees_to_the_system() -> None:
    """glibc raises its mmap threshold each time a large block is freed, after which arrays of
    up to that size come from the heap and stay with the process when freed: the statistics
    at the end of a 4M-rollout run then left ~50 MiB behind. A fixed 1 MiB threshold returns
    every large array's memory when it goes. Set once the reading is done: in the reading
    workers, every 16 MiB chunk would cost its page faults again (~1 s of system time at 1M
    rollouts). A no-op elsewhere than glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(M_MMAP_THRESHOLD, 1 << 20)
    except (OSError, AttributeError):
        pass


M_MMAP_THRESHOLD = -3  # glibc's malloc.h


def run(cfg: DictConfig) -> dict:
    """Run the prepare stage; returns the manifest it wrote."""
    started = datetime.now(timezone.utc)
    settings = Settings.from_config(cfg)
    # the inputs' sha256 (a core-second per 1.6 GB) at the lowest priority, in the time the
    # workers leave idle; forked before the pool starts its threads
    hashing = Background(manifest.sha256_of_each, settings.inputs, nice=19)
    try:
        return _run(cfg, settings, started, hashing)
    finally:
        hashing.cancel()  # a no-op once its result is in


def _run(cfg: DictConfig, settings: Settings, started: datetime, hashing: Background) -> dict:
    """Read and pair; then, while the report draws, write the pairs; then put the outputs, the
    rewards file, the report and the manifest in place together."""
    files = writer.AtomicFiles(settings.output_dir, OUTPUTS)
    report_draft = Path(str(cfg.run_dir)).absolute() / f".{report_page.FILENAME}.partial-{os.getpid()}"
    drawing = None
    committed = False
    try:
        spilled = buckets.Buckets(settings.output_dir, input_bytes(settings))
        workers = None
        try:
            workers = Workers(settings)
            write_reject = _write_reject(files, settings.inputs)
            scanned = scan_inputs(settings, workers, spilled, write_reject)
            paired = pair_buckets(settings, workers, scanned, write_reject)
            # fresh workers for the writing (a reading worker's heap is not given back), and the
            # report's process forked in between, never beside a pool's threads
            workers.close()
            return_large_frees_to_the_system()  # in this process and the ones forked from now on
            is_val = split.is_validation(paired.pairs["context"], settings.seed, settings.val_fraction,
                                         settings.val_size)
            result, report_pairs = _results(cfg, settings, scanned, paired, is_val)
            rewards = report_page.rollout_rewards_record(scanned.rewards)
            # the report draws (matplotlib: a core-second) while the pairs are written
            drawing = Background(report_page.after_prepare, cfg, rewards, report_pairs, dict(result), report_draft)
            del report_pairs
            workers.start()
            tally = write_pairs(settings, paired.pairs, is_val, workers, files, spilled.folder)
        except writer.PairSchemaError as exc:
            raise RecipeError(f"internal error, please report: {exc}") from None
        finally:
            if workers is not None:
                workers.close()
            spilled.remove()
        del scanned, paired, is_val
        result["cut"].update(pairs_with_shared_turns=int(tally["with_shared_turns"]),
                             tool_call_arguments_as_written=int(tally["arguments_as_written"]))
        files.sync()  # the outputs reach the disk while the inputs' hashes finish
        result["outputs"] = {name.removesuffix(".jsonl"): files.digest(name) for name in OUTPUTS}
        result["inputs"] = [manifest.input_entry(p, h) for p, h in zip(settings.inputs, hashing.result())]
        report_line = _report(drawing)
        finished = datetime.now(timezone.utc)
        result["timestamps"] = {"started": started.isoformat(), "finished": finished.isoformat(),
                                "seconds": round((finished - started).total_seconds(), 3)}
        with interrupts.deferred():  # the outputs, the report and the manifest land together, or none
            files.commit()
            committed = True
            report_page.write_rollout_rewards(settings.output_dir, rewards)
            if report_draft.is_file():
                report_draft.replace(report_draft.with_name(report_page.FILENAME))
            manifest.write(settings.output_dir / "manifest.json", result)
        report.console.print(report.prepare_summary(result))
        report.console.print(f"wrote {settings.output_dir}/{{train,val,rejects}}.jsonl and manifest.json",
                             soft_wrap=True)
        report.console.print(report_line, markup=False, soft_wrap=True)
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            interrupts.hold()  # a second Ctrl-C must not cut the cleanup short
        if not committed:
            files.abort()
        if isinstance(exc, interrupts.Interrupted):
            exc.outcome = (f"the pairs and manifest.json are in {settings.output_dir}" if committed
                           else f"nothing was written to {settings.output_dir}")
        raise
    finally:
        if drawing is not None:
            drawing.cancel()
        report_draft.unlink(missing_ok=True)
    return result


def _results(cfg: DictConfig, settings: Settings, scanned: Scanned, paired: BucketPairs,
             is_val: np.ndarray) -> tuple[dict, report_page.PairRewards]:
    """The manifest (but for outputs, inputs, timestamps and what writing the pairs counts),
    and what the report draws of the pairs."""
    pairs = paired.pairs
    per_group = pairing_report.pairs_per_group(pairs)  # for the manifest and the report
    with np.errstate(over="ignore"):  # rewards of +-1e308: an infinite gap, counted as not finite
        gaps = pairs["chosen_reward"] - pairs["rejected_reward"]
    result = {
        "manifest_version": manifest.MANIFEST_VERSION,
        "package": {"name": "gym-dpo", "version": recipe.__version__},
        "config": {"seed": settings.seed,
                   "data": OmegaConf.to_container(cfg.data, resolve=True),
                   "data_prep": OmegaConf.to_container(cfg.data_prep, resolve=True)},
        "format": "binary" if settings.scan.binary else "preference",
        "counts": outcome_counts(scanned, paired),
        "groups": {"total": paired.groups, "with_pairs": paired.groups_with_pairs},
        "pairs": {
            "train": int((~is_val).sum()), "val": int(is_val.sum()),
            "prompts_train": int(len(np.unique(pairs["context"][~is_val]))),
            "prompts_val": int(len(np.unique(pairs["context"][is_val]))),
        },
        # pairs cut at the first divergence of their trajectories (cut.py)
        "cut": {"refused_candidates": paired.refused},  # pairs a strategy tried that could not be cut
        "rewards": {"usable_rollouts": manifest.stats(scanned.rewards),
                    "chosen": manifest.stats(pairs["chosen_reward"]),
                    "rejected": manifest.stats(pairs["rejected_reward"]),
                    "gap": manifest.stats(gaps)},
        "pairing": pairing_report.summarize(settings.strategy, pairs, paired.groups,
                                            settings.length_unit, per_group),
    }
    return result, report_page.PairRewards(pairs["chosen_reward"].copy(), pairs["rejected_reward"].copy(),
                                           per_group)


def _report(drawing: Background) -> str:
    """The line that says where the report is, or why there is none: the report is a view of
    the outputs, not one of them, and its failure never fails the stage."""
    try:
        drawn = drawing.result()
    except Exception as exc:  # noqa: BLE001
        # a failure in the report's process comes as its traceback: its last line says what
        why = (str(exc).strip().splitlines() or [""])[-1] if type(exc) is RuntimeError else \
            f"{type(exc).__name__}: {exc}"
        return f"warning: report.html not written ({why[:300]}); the pairs and the manifest are written"
    return f"wrote {Path(drawn).with_name(report_page.FILENAME)}" if isinstance(drawn, Path) else drawn
