"""`stage=prepare`: rollouts -> train.jsonl, val.jsonl, rejects.jsonl and manifest.json.

Data flows one way: read + validate (scan, in worker processes) -> group -> pair -> split ->
write (pair records built in worker processes from the input lines, by offset). Memory holds
neither the texts of the file nor its records: records are spilled to bucket files by group key
(`buckets.py`) and each bucket is paired on its own.
"""

from __future__ import annotations

import ctypes
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import orjson
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

import recipe
from recipe import processes, report, report_page, run_lock, scratch
from recipe.errors import RecipeError
from recipe.prepare import buckets, cut, manifest, rollouts, scan, split, workers, writer
from recipe.prepare.pairing import report as pairing_report
from recipe.prepare.pairing.engine import UNPAIRED, BucketPairs
from recipe.prepare.settings import OUTPUTS, Settings, input_bytes
from recipe.processes import Background, Interrupted, Pool
from recipe.scratch import Scratch


# -- the stage ----------------------------------------------------------------------------------
@dataclass
class Scanned:
    buckets: buckets.Buckets  # usable rollouts, one record each, spilled by group key
    rewards: np.ndarray  # of the usable rollouts, for the manifest's statistics
    rejected: dict[str, int]  # reason -> lines
    lines_per_file: list[int]


def scan_inputs(settings: Settings, pool: Pool, spilled: buckets.Buckets,
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
        for result, bounds in pool.map(workers.scan_chunk, chunks):
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


def pair_buckets(settings: Settings, pool: Pool, scanned: Scanned, rejects=None) -> BucketPairs:
    """Every bucket paired in a worker of the reading pool; the pairs in canonical order (bucket, then group key).
    `rejects(reject)` is called for each rollout left unpaired because its pairs could not be cut.

    Each bucket's pairs go to a file as they come and are read back in one piece: collecting
    them in a list and concatenating would hold every pair twice at the end."""
    total = BucketPairs(np.empty(0, writer.PAIR), dict.fromkeys(UNPAIRED, 0), 0, 0, 0, Counter(), [])
    tasks = ((scanned.buckets.path(b), settings) for b in range(scanned.buckets.count))
    spill = scanned.buckets.folder / "pairs"
    with tqdm(total=scanned.buckets.count, unit="bucket", desc="group+pair", mininterval=1.0) as progress, \
            open(spill, "wb") as pairs:
        for found in pool.map(workers.pair_bucket, tasks):
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


def write_pairs(count: int, pool: Pool, files: writer.AtomicFiles, parts_folder: Path) -> Counter:
    """Write the `count` pairs of the writing pool (`workers.writing`) into train/val; returns
    the builders' tally: pairs whose context holds shared turns, tool calls whose arguments stay
    as written."""
    tally = Counter()
    with tqdm(total=count, unit="pair", desc="write pairs", mininterval=1.0) as progress:
        for train, train_lines, val, val_lines, built in pool.map(workers.build_part,
                                                                  workers.parts(count, parts_folder)):
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


@contextmanager
def read_once(settings: Settings, folder: Path) -> Iterator[tuple[Scanned, Callable[[Settings], BucketPairs]]]:
    """The inputs read and validated once, into record buckets in `folder` (removed at the end),
    with the reading workers up: yields (scanned, pair), `pair(settings)` pairing those buckets
    under `settings` (another strategy, say) as often as asked."""
    spilled = buckets.Buckets(folder, input_bytes(settings))
    try:
        with workers.reading(settings) as pool:
            scanned = scan_inputs(settings, pool, spilled)
            yield scanned, lambda other: pair_buckets(other, pool, scanned)
    finally:
        spilled.remove()


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
    started = datetime.now(UTC)
    hashing = None
    # no worker outlives the stage, whatever line an error or a signal cut (one forked but not yet
    # handed to its owner included)
    with processes.reaping():
        try:
            settings = Settings.from_config(cfg)
        except processes.Interrupted as exc:
            exc.outcome = f"nothing was written to {cfg.data.output_dir}"
            raise
        try:
            with run_lock.held(settings.output_dir, "gym-dpo stage=prepare"):
                # the inputs' sha256 (a core-second per 1.6 GB) at the lowest priority, in the time the
                # workers leave idle
                hashing = Background(manifest.sha256_of_each, settings.inputs, nice=19)
                return _run(cfg, settings, started, hashing)
        except processes.Interrupted as exc:
            if exc.outcome == Interrupted.outcome:  # before _run said what it left, or after it returned
                exc.outcome = (f"the pairs and manifest.json are in {settings.output_dir}" if _landed(settings, started)
                               else f"nothing was written to {settings.output_dir}")
            raise
        finally:
            if hashing is not None:
                hashing.cancel()  # a no-op once its result is in


def _read_and_pair(settings: Settings, spilled: buckets.Buckets, write_reject) -> tuple[Scanned, BucketPairs]:
    with workers.reading(settings) as pool:
        scanned = scan_inputs(settings, pool, spilled, write_reject)
        return scanned, pair_buckets(settings, pool, scanned, write_reject)


def _landed(settings: Settings, started: datetime) -> bool:
    """Whether this run's manifest (its start time in it) is in the output folder: a signal that
    comes once `_run` has returned (the run lock released, the hashing process reaped) stops a run
    whose outputs are all there."""
    try:
        return manifest.read(settings.output_dir / "manifest.json")["timestamps"]["started"] == started.isoformat()
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _run(cfg: DictConfig, settings: Settings, started: datetime, hashing: Background) -> dict:
    """Read and pair; then, while the report draws, write the pairs; then put the outputs, the
    rewards file, the report and the manifest in place together."""
    files = drafts = drawing = None
    committed = False
    # what killed runs left in their own folders (each run has one: results/<timestamp>/)
    scratch.sweep_tree(Path(str(cfg.output_root)).absolute())
    try:
        with processes.deferred():  # made whole, or not at all
            files = writer.AtomicFiles(settings.output_dir, OUTPUTS)
            drafts = Scratch(Path(str(cfg.run_dir)).absolute(), "report")
        report_draft = drafts.path / report_page.FILENAME
        spilled = buckets.Buckets(files.scratch.path, input_bytes(settings))
        try:
            write_reject = _write_reject(files, settings.inputs)
            scanned, paired = _read_and_pair(settings, spilled, write_reject)
            return_large_frees_to_the_system()  # in this process and the ones forked from now on
            is_val = split.is_validation(paired.pairs["context"], settings.seed, settings.val_fraction,
                                         settings.val_size)
            result, report_pairs = _results(cfg, settings, scanned, paired, is_val)
            rewards = report_page.rollout_rewards_record(scanned.rewards)
            # the report draws (matplotlib: a core-second) while the pairs are written by fresh
            # workers (a reading worker's heap is not given back)
            drawing = Background(report_page.after_prepare, cfg, rewards, report_pairs, dict(result), report_draft)
            del report_pairs
            with workers.writing(settings, paired.pairs, is_val) as pool:
                tally = write_pairs(len(paired.pairs), pool, files, spilled.folder)
        except writer.PairSchemaError as exc:
            raise RecipeError(f"internal error, please report: {exc}") from None
        finally:
            spilled.remove()
        del scanned, paired, is_val
        result["cut"].update(pairs_with_shared_turns=int(tally["with_shared_turns"]),
                             tool_call_arguments_as_written=int(tally["arguments_as_written"]))
        files.sync()  # the outputs reach the disk while the inputs' hashes finish
        result["outputs"] = {name.removesuffix(".jsonl"): files.digest(name) for name in OUTPUTS}
        result["inputs"] = [manifest.input_entry(p, h) for p, h in zip(settings.inputs, hashing.result())]
        report_path = Path(str(cfg.run_dir)).absolute() / report_page.FILENAME
        report_line = _report(drawing, report_path)
        finished = datetime.now(UTC)
        result["timestamps"] = {"started": started.isoformat(), "finished": finished.isoformat(),
                                "seconds": round((finished - started).total_seconds(), 3)}
        with processes.deferred():  # the outputs, the report and the manifest land together, or none
            files.commit()
            committed = True
            report_page.write_rollout_rewards(settings.output_dir, rewards)
            if report_draft.is_file():
                report_draft.replace(report_path)
            manifest.write(settings.output_dir / "manifest.json", result)  # last: it vouches for the rest
        files.close()
        report.console.print(report.prepare_summary(result))
        report.console.print(f"wrote {settings.output_dir}/{{train,val,rejects}}.jsonl and manifest.json",
                             soft_wrap=True)
        report.console.print(report_line, markup=False, soft_wrap=True)
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            processes.hold()  # a second Ctrl-C must not cut the cleanup short
        if files is not None:
            files.close()
        if isinstance(exc, processes.Interrupted):
            exc.outcome = (f"the pairs and manifest.json are in {settings.output_dir}" if committed
                           else f"nothing was written to {settings.output_dir}")
        raise
    finally:
        if drawing is not None:
            drawing.cancel()
        if drafts is not None:
            drafts.remove()
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


def _report(drawing: Background, final: Path) -> str:
    """The line that says where the report is (`final`, where it is moved with the outputs), or
    why there is none: the report is a view of the outputs, not one of them, and its failure
    never fails the stage."""
    try:
        drawn = drawing.result()
    except Exception as exc:  # noqa: BLE001
        # a failure in the report's process comes as its traceback: its last line says what
        why = (str(exc).strip().splitlines() or [""])[-1] if type(exc) is RuntimeError else \
            f"{type(exc).__name__}: {exc}"
        return f"warning: report.html not written ({why[:300]}); the pairs and the manifest are written"
    return f"wrote {final}" if isinstance(drawn, Path) else drawn
