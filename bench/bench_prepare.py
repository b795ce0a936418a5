#!/usr/bin/env python3
"""Benchmark `gym-dpo stage=prepare` against the floor of parsing every line with orjson.

    python bench/bench_prepare.py --rollouts 1000000            # generates the file once, cached
    python bench/bench_prepare.py --input big.jsonl --repeat 3

Reports, for the same file: prepare's wall time, rollouts/s and peak memory, and the time one
process takes merely to parse every line with orjson. Peak memory is the peak of the whole
process tree sampled every 20 ms, each process counted by its PSS (proportional set size), so
pages shared between the parent and its forked workers count once, not once per worker. The
sampling takes CPU, so prepare is timed in runs of its own, without it.

Targets (issue 8): wall time <= 0.6 x the orjson parse-all time, peak memory <= 256 MiB, and a
4x larger file raises the peak by at most 2x.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import orjson
import psutil

HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("GYM_DPO_BENCH_DIR", "/var/tmp/gym-dpo-bench"))


def tree_pss(root: psutil.Process) -> int:
    total = 0
    for process in [root, *root.children(recursive=True)]:
        try:
            total += process.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def run_measured(command: list[str], sample_memory: bool) -> tuple[float, int, int]:
    """(seconds, peak tree PSS in bytes or 0, exit code) of a command. Sampling the memory reads
    every process's smaps 50 times a second, CPU a 2-core machine then lacks: time and memory
    are measured in separate runs."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    root = psutil.Process(process.pid)
    peak = 0
    done = threading.Event()

    def sample():
        nonlocal peak
        while not done.is_set():
            try:
                peak = max(peak, tree_pss(root))
            except psutil.NoSuchProcess:
                return
            done.wait(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    if sample_memory:
        sampler.start()
    _, stderr = process.communicate()
    seconds = time.perf_counter() - started
    done.set()
    if sample_memory:
        sampler.join()
    if process.returncode:
        sys.stderr.write(stderr.decode(errors="replace")[-3000:])
    return seconds, peak, process.returncode


def orjson_parse_all(path: Path) -> tuple[float, int]:
    started = time.perf_counter()
    lines = 0
    with open(path, "rb") as handle:
        for line in handle:
            orjson.loads(line)
            lines += 1
    return time.perf_counter() - started, lines


def ensure_input(rollouts: int) -> Path:
    path = CACHE / f"rollouts-{rollouts}.jsonl"
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, str(HERE / "gen_rollouts.py"), str(path), "--rollouts", str(rollouts),
                        "--per-task", "5", "--words", "100", "--seed", "0"], check=True)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", type=Path, help="an existing rollouts file (default: generate one)")
    parser.add_argument("--rollouts", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs of each (orjson parse-all, prepare timed, prepare with its "
                             "memory sampled): the best time and the highest peak are reported")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for prepare")
    args = parser.parse_args()
    path = args.input or ensure_input(args.rollouts)
    size = path.stat().st_size
    orjson_seconds, lines = min(orjson_parse_all(path) for _ in range(args.repeat))  # warms the cache
    times, peaks = [], []
    with tempfile.TemporaryDirectory(prefix="gym-dpo-bench-") as out:
        command = [sys.executable, "-m", "recipe", "stage=prepare", f"data.input={path}",
                   f"data.output_dir={out}/data", f"output_root={out}/runs", *args.overrides]
        for _ in range(args.repeat):
            for sample_memory, kept in ((False, times), (True, peaks)):
                seconds, peak, code = run_measured(command, sample_memory)
                if code:
                    raise SystemExit(f"prepare failed with exit code {code}")
                kept.append(peak if sample_memory else seconds)
        manifest = json.loads(Path(out, "data", "manifest.json").read_text())
    seconds, peak = min(times), max(peaks)
    result = {
        "input": str(path), "bytes": size, "lines": lines, "cpus": os.cpu_count(),
        "orjson_parse_all_s": round(orjson_seconds, 2),
        "prepare_s": round(seconds, 2),
        "prepare_rollouts_per_s": round(lines / seconds),
        "ratio_to_orjson": round(seconds / orjson_seconds, 3),
        "peak_tree_pss_mib": round(peak / 2**20, 1),
        "pairs": manifest["pairs"]["train"] + manifest["pairs"]["val"],
        "all_runs_s": [round(s, 2) for s in times],
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
