#!/usr/bin/env python3
"""Where a NeMo Gym collection of the loop spends its time: CPU seconds per process role and
rollouts per second, against llama-server answering the same requests alone.

    python bench/bench_gym_path.py --out /tmp/gp --tasks 32 --repeats 4              # profile + direct
    python bench/bench_gym_path.py --out /tmp/gp --tasks 32 --repeats 4 --pairs 3 \\
        --a "" --b "iterate.eval.sampling.parallel=16 serving.parallel=16"           # A/B, alternated

A collection is the loop's own: `gym-dpo stage=iterate iterate.rounds=0` on the first `--tasks`
held-out tasks x `--repeats` (the round-0 eval of `--policy`, default the base SmolLM2): the same
llama-server, `ng_run` (its servers and Ray) and `ng_collect_rollouts` as every round's collect and
eval. While it collects (from its partial output folder's appearance to its step record), every
process under it is sampled each 0.5 s and its CPU seconds (user + system, with those of its
reaped children: the verifier's forked math-verify processes) are summed by role: llama-server,
the agent (`simple_agent`), the model server (`vllm_model`), the resources server
(`math_with_judge`, verification), `ng_collect_rollouts`, `ng_run`, Ray, gym-dpo. `--direct`
(on by default without `--pairs`) then sends the same prompts with the same sampling and seeds
straight to llama-server (`--direct-parallel` at once) and times that: what serving alone costs.

On a shared machine wall times move with the load; CPU seconds per rollout and ratios of A/B
runs taken in turn (A B A B ..., the median of the pair ratios) are what to compare.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ROLES = ("llama-server", "agent", "model server", "resources server", "ng_collect_rollouts", "ng_run", "ray",
         "gym-dpo", "other")


def role(proc) -> str:
    try:
        cmd = " ".join(proc.cmdline())
        if "llama-server" in cmd:
            return "llama-server"
        if "ng_collect_rollouts" in cmd:
            return "ng_collect_rollouts"
        if "ng_run" in cmd:
            return "ng_run"
        if "app.py" in cmd:
            where = proc.cwd()
            return ("agent" if "simple_agent" in where else "model server" if "vllm_model" in where
                    else "resources server")
        if "ray" in cmd or "gcs_server" in cmd or "raylet" in cmd:
            return "ray"  # its processes apart: Sampler.detail
        if "recipe" in cmd:
            return "gym-dpo"
    except Exception:  # a process that ended while read
        pass
    return "other"


def short(proc) -> str:
    """A process's own name: Ray's `ray::IDLE`, `raylet`, the dashboard's modules, a server's folder."""
    try:
        cmd = proc.cmdline()
        if cmd and cmd[0].startswith("ray::"):
            return cmd[0]
        for part in cmd:
            name = Path(part).name
            if name.endswith(".py") and name != "app.py" or name in ("raylet", "gcs_server", "llama-server"):
                return name
        return Path(proc.cwd()).name if "app.py" in cmd[-1:] else Path(cmd[0]).name
    except Exception:
        return "?"


class Sampler:
    """CPU seconds of every process under `root`, by pid, every `period` seconds."""

    def __init__(self, root: int, period: float = 0.5):
        self.root, self.period, self.stop = root, period, threading.Event()
        self.seen: dict[int, tuple[str, float]] = {}
        self.names: dict[int, tuple[str, str]] = {}  # pid -> (role, process name)
        self.marks: list[tuple[float, dict[int, tuple[str, float]]]] = []
        self.thread = threading.Thread(target=self.run, daemon=True)

    def sample(self) -> None:
        import psutil

        try:
            procs = [psutil.Process(self.root), *psutil.Process(self.root).children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        for proc in procs:
            try:
                times = proc.cpu_times()
                total = times.user + times.system + times.children_user + times.children_system
                if proc.pid not in self.names:
                    self.names[proc.pid] = (role(proc), short(proc))
                self.seen[proc.pid] = (self.names[proc.pid][0], total)
            except Exception:
                continue

    def run(self) -> None:
        while not self.stop.is_set():
            self.sample()
            self.stop.wait(self.period)

    def mark(self) -> None:
        self.sample()
        self.marks.append((time.monotonic(), dict(self.seen)))


def by_role(before: dict, after: dict) -> dict[str, float]:
    out = dict.fromkeys(ROLES, 0.0)
    for pid, (name, total) in after.items():
        out[name] += total - (before.get(pid, (name, 0.0))[1])
    return {k: round(v, 2) for k, v in out.items()}


def collection(args, label: str, overrides: list[str]) -> dict:
    """One collection through NeMo Gym, profiled while it collects."""
    run_dir = args.out / label
    argv = [sys.executable, "-m", "recipe", "stage=iterate", "iterate.rounds=0", f"run_dir={run_dir}",
            f"iterate.eval.tasks={args.tasks}", f"iterate.eval.repeats={args.repeats}",
            *(["model=smollm2-135m", f"policy.model_name={args.policy}"] if args.policy else []), *overrides]
    log = open(args.out / f"{label}.log", "w")
    process = subprocess.Popen(argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    sampler = Sampler(process.pid)
    sampler.thread.start()
    partial = run_dir / "round_0" / "rollouts" / ".partial-eval"
    record = run_dir / "round_0" / "steps" / "eval.json"
    while process.poll() is None and not partial.exists():
        time.sleep(0.2)
    sampler.mark()
    while process.poll() is None and not record.exists():
        time.sleep(0.2)
    sampler.mark()
    sampler.stop.set()
    process.wait()
    log.close()
    if process.returncode or len(sampler.marks) < 2:
        raise SystemExit(f"{shlex.join(argv)} failed (exit {process.returncode}); see {args.out / f'{label}.log'}")
    (t0, before), (t1, after) = sampler.marks
    done = json.loads(record.read_text())
    rows = [json.loads(line) for line in (run_dir / "round_0" / "rollouts" / "eval.jsonl").read_text().splitlines()]
    tokens = sum(r["response"]["usage"]["output_tokens"] for r in rows)
    cpu = by_role(before, after)
    detail: dict[str, float] = {}
    for pid, (name, total) in after.items():
        key = f"{name}: {sampler.names.get(pid, (name, '?'))[1]}"
        detail[key] = round(detail.get(key, 0.0) + total - before.get(pid, (name, 0.0))[1], 2)
    return {"label": label, "overrides": overrides, "rollouts": len(rows), "output_tokens": tokens,
            "collect_s": round(t1 - t0, 1), "step_s": done["seconds"],
            "rollouts_per_s": round(len(rows) / (t1 - t0), 3),
            "cpu_s": cpu, "cpu_s_total": round(sum(cpu.values()), 1),
            "cpu_s_by_process": dict(sorted(detail.items(), key=lambda item: -item[1])[:15]),
            "cpu_ms_per_rollout": {k: round(1000 * v / len(rows), 1) for k, v in cpu.items()},
            "gguf": str(run_dir / "round_0" / "serve"), "tasks_file": str(run_dir / "round_0" / "tasks" / "eval.jsonl")}


def direct(args, measured: dict) -> dict:
    """The same prompts, sampling and seeds straight to llama-server: serving alone."""
    import concurrent.futures
    import urllib.request

    import psutil

    gguf = next(Path(measured["gguf"]).glob("*.gguf"))
    tasks = [json.loads(line) for line in Path(measured["tasks_file"]).read_text().splitlines() if line.strip()]
    from recipe.iterate import setup

    port = 47000 + (int(time.time()) % 2000)
    server = [str(setup.llama_cpp(install=False).server), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port),
              "-np", str(args.direct_parallel), "-c", str(1024 * args.direct_parallel), "-t", str(args.threads),
              "--no-webui", "--top-k", "0", "--top-p", "1.0", "--min-p", "0.0", "--repeat-penalty", "1.0"]
    log = open(args.out / "direct_server.log", "w")
    process = subprocess.Popen(server, stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(300):
            try:
                if urllib.request.urlopen(url + "/health", timeout=2).status == 200:
                    break
            except OSError:
                time.sleep(0.5)

        def one(item):
            task, seed = item
            messages = [{"role": m["role"], "content": m["content"]} for m in task["responses_create_params"]["input"]]
            body = {"messages": messages, "temperature": 1.0, "max_tokens": 128, "seed": seed, "top_p": 1.0,
                    "top_k": 0, "min_p": 0.0}
            request = urllib.request.Request(url + "/v1/chat/completions", data=json.dumps(body).encode(),
                                             headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=600) as response:
                return json.loads(response.read())["usage"]["completion_tokens"]

        items = [(task, seed) for task in tasks for seed in range(args.repeats)]
        cpu_before = sum(psutil.Process(process.pid).cpu_times()[:2])
        started = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(args.direct_parallel) as pool:
            tokens = sum(pool.map(one, items))
        wall = time.monotonic() - started
        cpu = sum(psutil.Process(process.pid).cpu_times()[:2]) - cpu_before
    finally:
        process.terminate()
        process.wait(30)
        log.close()
    return {"rollouts": len(items), "output_tokens": tokens, "wall_s": round(wall, 1),
            "rollouts_per_s": round(len(items) / wall, 3), "llama_server_cpu_s": round(cpu, 1),
            "cpu_ms_per_rollout": round(1000 * cpu / len(items), 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--tasks", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--policy", type=Path, default=None, help="a Hugging Face folder (default: the base)")
    parser.add_argument("--pairs", type=int, default=0, help="A/B: this many A B pairs, in turn")
    parser.add_argument("--a", default="", help="overrides of A (one string, split as a shell does)")
    parser.add_argument("--b", default="", help="overrides of B, or `direct`: llama-server alone on A's requests")
    parser.add_argument("--direct", action="store_true", help="also llama-server alone (default without --pairs)")
    parser.add_argument("--direct-parallel", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    args.out = args.out.absolute()
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict = {"runs": []}
    if not args.pairs:
        results["runs"].append(collection(args, "gym", shlex.split(args.a)))
        args.direct = True
    for index in range(args.pairs):
        for name, text in (("A", args.a), ("B", args.b)):
            if text == "direct":  # llama-server alone on what A just collected
                found = {"label": f"B{index}", **direct(args, results["runs"][-1])}
                results["runs"].append({**found, "collect_s": found["wall_s"]})
            else:
                results["runs"].append(collection(args, f"{name}{index}", shlex.split(text)))
            print(json.dumps(results["runs"][-1]), flush=True)
    if args.pairs:
        a = [r for r in results["runs"] if r["label"].startswith("A")]
        b = [r for r in results["runs"] if r["label"].startswith("B")]
        ratios = [rb["collect_s"] / ra["collect_s"] for ra, rb in zip(a, b, strict=True)]
        results["b_over_a_collect_s"] = {"pairs": [round(r, 3) for r in ratios],
                                         "median": round(statistics.median(ratios), 3)}
    if args.direct:
        results["direct"] = direct(args, results["runs"][0])
    (args.out / "gym_path.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
