#!/usr/bin/env python3
"""Benchmark `gym-dpo stage=prepare` against what an engineer would run instead, on one file.

    python bench/bench_prepare.py --rollouts 1000000 --docs-script dpo.md --repeat 3
    python bench/bench_prepare.py --rollouts 4000000 --only prepare

Contenders, each on the same input, each a process of its own:
- `docs`: the script on NeMo Gym's DPO docs page (`transform_gym_to_dpo.py`). The page is not
  shipped here (our code copies no one's): `--docs-script` takes the page (a .md file, whose
  first ```python block with a `main()` is the script) or the script itself, for example the
  page from a NeMo Gym checkout at commit 1a2c1a20:
  `git -C Gym show 1a2c1a202:docs/training/integration/nemo-rl/dpo.md > dpo.md`. Its rows are
  the legacy layout (a top-level `output`); a one-line shim around `json.loads` hands it
  `response.output` there, so it runs as written on real rows.
- `duckdb`: a bare best-vs-worst per (input, task): `read_json_objects`, `arg_max`/`arg_min` of
  `response.output` by reward, `COPY ... TO` JSON. No validation, no split, no manifest.
- `polars`: the same query with `json_path_match` (when polars is installed).
- `prepare`: `gym-dpo stage=prepare` with its defaults: full validation of every line and every
  pair, conversion, split, manifest, input sha256 and the report.

Each is timed in runs of its own (best of `--repeat`), and its peak memory measured in others:
the peak of the whole process tree, sampled every 20 ms, each process by its PSS (proportional
set size, so pages a forked worker shares with its parent count once); sampling takes CPU.

Targets: prepare's wall time <= DuckDB's in the same run, >= 10x the docs script's
throughput, peak <= 256 MiB at 1M rollouts, and 4M rollouts at most 2x the 1M peak (compare two
runs' `prepare.peak_mib`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("GYM_DPO_BENCH_DIR", "/var/tmp/gym-dpo-bench"))

# The docs script reads rows of the legacy layout (`output` at the top level); real rows carry
# `response.output`. This shim hands it that, then runs the script as written.
DOCS_SHIM = """
import json, runpy, sys
_loads = json.loads
def _real_layout(s, *a, **k):
    row = _loads(s, *a, **k)
    if isinstance(row, dict) and "output" not in row:
        row["output"] = (row.get("response") or {}).get("output") or []
    return row
json.loads = _real_layout
script = sys.argv.pop(1)
sys.argv[0] = script
runpy.run_path(script, run_name="__main__")
"""

DUCKDB = """
import sys, duckdb
source, target = (p.replace("'", "''") for p in sys.argv[1:3])
duckdb.connect().execute(f'''
COPY (
  WITH r AS (
    SELECT json_extract(json, '$.responses_create_params.input') AS input,
           json_extract_string(json, '$.agent_ref.name') AS agent,
           json_extract(json, '$._ng_task_index') AS task,
           CAST(json_extract(json, '$.reward') AS DOUBLE) AS reward,
           json_extract(json, '$.response.output') AS output
    FROM read_json_objects('{source}', format = 'newline_delimited'))
  SELECT input AS prompt, arg_max(output, reward) AS chosen, arg_min(output, reward) AS rejected,
         max(reward) AS chosen_reward, min(reward) AS rejected_reward
  FROM r GROUP BY input, agent, task HAVING max(reward) > min(reward)
) TO '{target}' (FORMAT JSON)''')
"""

POLARS = """
import sys, polars as pl
source, target = sys.argv[1:3]
line = pl.col("line").str
(pl.scan_csv(source, has_header=False, new_columns=["line"], separator="\\x1f", quote_char=None)
   .select(input=line.json_path_match("$.responses_create_params.input"),
           agent=line.json_path_match("$.agent_ref.name"), task=line.json_path_match("$._ng_task_index"),
           reward=line.json_path_match("$.reward").cast(pl.Float64),
           output=line.json_path_match("$.response.output"))
   .group_by("input", "agent", "task")
   .agg(chosen=pl.col("output").sort_by("reward").last(), rejected=pl.col("output").sort_by("reward").first(),
        chosen_reward=pl.col("reward").max(), rejected_reward=pl.col("reward").min())
   .filter(pl.col("chosen_reward") > pl.col("rejected_reward"))
   .sink_ndjson(target))
"""


def tree_pss(root: psutil.Process) -> int:
    total = 0
    for process in [root, *root.children(recursive=True)]:
        try:
            total += process.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def run_measured(command: list[str], sample_memory: bool) -> tuple[float, int]:
    """(seconds, peak tree PSS in bytes or 0) of a command; fails on a non-zero exit."""
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
        raise SystemExit(f"{command[:4]} failed ({process.returncode}):\n"
                         + stderr.decode(errors="replace")[-3000:])
    return seconds, peak


def ensure_input(rollouts: int) -> Path:
    path = CACHE / f"rollouts-{rollouts}.jsonl"
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, str(HERE / "gen_rollouts.py"), str(path), "--rollouts", str(rollouts),
                        "--per-task", "5", "--words", "100", "--seed", "0"], check=True)
    return path


def docs_script(path: Path, folder: Path) -> Path:
    """The script itself: `path`, or the first python block of a markdown page with a main()."""
    if path.suffix != ".md":
        return path
    blocks = re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)
    script = next((b for b in blocks if "def main" in b), None)
    if script is None:
        raise SystemExit(f"{path}: no ```python block with a main() in it")
    target = folder / "transform_gym_to_dpo.py"
    target.write_text(script)
    return target


def contenders(args, source: Path, out: Path) -> dict[str, list[str]]:
    python = sys.executable
    found = {}
    if args.docs_script:
        script = docs_script(args.docs_script, out)
        found["docs"] = [python, "-c", DOCS_SHIM, str(script), "--input", str(source),
                         "--output", str(out / "docs.jsonl")]
    for name, code in (("duckdb", DUCKDB), ("polars", POLARS)):
        try:
            __import__(name)
        except ImportError:
            print(f"({name} is not installed: pip install -e '.[bench]')", file=sys.stderr)
            continue
        found[name] = [python, "-c", code, str(source), str(out / f"{name}.jsonl")]
    found["prepare"] = [python, "-m", "recipe", "stage=prepare", f"data.input={source}",
                        f"data.output_dir={out}/data", f"output_root={out}/runs", *args.overrides]
    return {name: command for name, command in found.items() if not args.only or name in args.only}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", type=Path, help="an existing rollouts file (default: generate one)")
    parser.add_argument("--rollouts", type=int, default=1_000_000)
    parser.add_argument("--docs-script", type=Path, help="NeMo Gym's DPO docs page (.md) or its script")
    parser.add_argument("--only", nargs="+", choices=["docs", "duckdb", "polars", "prepare"])
    parser.add_argument("--repeat", type=int, default=1, help="timed runs of each (best kept); as many "
                        "runs with memory sampling (highest peak kept)")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for prepare")
    args = parser.parse_args()
    source = args.input or ensure_input(args.rollouts)
    with open(source, "rb") as handle:
        lines = sum(chunk.count(b"\n") for chunk in iter(lambda: handle.read(1 << 24), b""))  # also warms the cache
    result = {"input": str(source), "bytes": source.stat().st_size, "lines": lines, "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="gym-dpo-bench-", dir=CACHE if CACHE.is_dir() else None) as out:
        for name, command in contenders(args, source, Path(out)).items():
            times, peaks = [], []
            for _ in range(args.repeat):
                times.append(run_measured(command, sample_memory=False)[0])
                peaks.append(run_measured(command, sample_memory=True)[1])
            result[name] = {"seconds": round(min(times), 2), "all_seconds": [round(t, 2) for t in times],
                            "rollouts_per_s": round(lines / min(times)), "peak_mib": round(max(peaks) / 2**20, 1)}
            print(f"{name}: {result[name]}", file=sys.stderr, flush=True)
            if name == "prepare":
                manifest = json.loads(Path(out, "data", "manifest.json").read_text())
                result[name]["pairs"] = manifest["pairs"]["train"] + manifest["pairs"]["val"]
    checks = {}
    if "prepare" in result and "duckdb" in result:
        checks["prepare_wall_at_most_duckdb"] = result["prepare"]["seconds"] <= result["duckdb"]["seconds"]
    if "prepare" in result and "docs" in result:
        result["speedup_over_docs"] = round(result["docs"]["seconds"] / result["prepare"]["seconds"], 2)
        checks["prepare_at_least_10x_docs"] = result["speedup_over_docs"] >= 10
    if "prepare" in result and lines <= 1_000_000:
        checks["prepare_peak_at_most_256_mib"] = result["prepare"]["peak_mib"] <= 256
    result["targets_met"] = checks
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
