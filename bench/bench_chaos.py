#!/usr/bin/env python3
"""Chaos bench: a stage hit at a random moment, then rerun, and what that left. A benchmark (run
it by hand, as root), never a timed test.

    python bench/bench_chaos.py --trials 20 --only prepare --seed 1
    python bench/bench_chaos.py --trials 200 --json chaos.json        # all three stages

Stages, each as a user runs it (`python -m recipe ...`, a session of its own):
- `prepare`: `stage=prepare` of a generated input (`--rollouts`, bench/gen_rollouts.py);
- `train`: `stage=train` (launcher=local_cpu, model=tiny) of the pairs of samples/rollouts.jsonl,
  a few steps with a checkpoint every 2 (so a rerun resumes one);
- `iterate`: `stage=iterate` of one tiny round (gym=mcqa, a few tasks, short replies, one training
  step; the tools of `python -m recipe.iterate.setup`), with a short watchdog stall limit.

Faults, one per trial, at a moment drawn uniformly over the reference run's duration:
`kill` (SIGKILL of the stage's process: its children must not outlive it), `hup` (SIGHUP to its
process group: a dropped ssh session), `term` (SIGTERM to the process), `int2` (two SIGINTs to the
group, 0.3 s apart: Ctrl-C, then Ctrl-C during the cleanup), `stop` (iterate: SIGSTOP of the
policy server, kept stopped), `stdout` (the reader of its stdout closes the pipe, as `| head -3`
does) and `disk` (its output folders on a small loop-mounted ext4 volume that fills up; the volume
is grown before the rerun).

After the fault the same command is run again, without one. Counted per trial:
- `hang`: the stopped run (or the rerun) still running past its deadline (killed then);
- `input`: an input file's sha256 changed;
- `mixed`: the rerun's outputs differ from an uninterrupted run's: byte for byte for prepare
  (the manifest less its timestamps), the final step and a loss within `--loss-tolerance` for
  train, every round done with the same eval size and a reward within 3 standard errors for
  iterate; or the run folder mixes settings (iterate: a step record with other settings);
- `traceback`: "Traceback (most recent call last)" in either run's output;
- `left`: after the rerun, a process whose command line, working folder or HOME is in the trial's
  folder, a scratch folder (`.gym-dpo-tmp-*`, `.gym-dpo-new-*`, `.partial*`, `*.partial`) in it,
  a new `/tmp/gym-dpo-ray-*` folder no live process uses, a new Docker container or Slurm job;
- `rerun`: the rerun did not exit 0.

It prints one table (stage x fault) and writes every trial (fault, moment, exit codes, findings,
the logs kept for trials with findings) to `--json`. `--fault F --at SECONDS` replays one trial.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PYTHON = [sys.executable, "-m", "recipe"]
FAULTS = {"prepare": ["kill", "hup", "term", "int2", "stdout", "disk"],
          "train": ["kill", "hup", "term", "int2", "stdout", "disk"],
          "iterate": ["kill", "hup", "term", "int2", "stop", "stdout", "disk"]}
CHECKS = ["hang", "input", "mixed", "traceback", "left", "rerun"]
SCRATCH = re.compile(r"^(\.gym-dpo-tmp-|\.gym-dpo-new-|\.partial)|\.partial$")
TINY_ITERATE = ["iterate.rounds=1", "gym=mcqa", "iterate.collect.tasks=8", "iterate.collect.repeats=4",
                "iterate.eval.tasks=4", "iterate.eval.repeats=2", "iterate.collect.sampling.max_output_tokens=24",
                "iterate.eval.sampling.max_output_tokens=24", "iterate.train.policy.train_global_batch_size=2",
                "iterate.train.policy.train_micro_batch_size=2", "iterate.train.dpo.max_num_steps=1",
                "iterate.train_small_rounds=true", "iterate.watchdog.stall_s=120",
                "iterate.watchdog.min_tokens_per_s=0.5"]  # a loaded machine is slow: a stall is the hang
STOPPED = 300 + 120 + 2 * 30 + 90  # iterate: slack_s + stall_s + the probes + stopping what it started


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# -- the stages -----------------------------------------------------------------------------------
class Stage:
    """One stage's command, inputs and outputs, in `work/<name>/`; the trial folder is
    `work/<name>/trial` (the same path every trial, so outputs compare byte for byte)."""

    name = ""

    def __init__(self, work: Path, args):
        self.root, self.args = work / self.name, args
        self.trial = self.root / "trial"
        self.root.mkdir(parents=True, exist_ok=True)

    def argv(self) -> list[str]:
        raise NotImplementedError

    def inputs(self) -> list[Path]:
        return []

    def volume(self) -> Path:
        """The folder that goes on the small volume for the disk fault."""
        return self.trial

    def result(self) -> dict:
        """What the rerun must match an uninterrupted run on."""
        raise NotImplementedError

    def differs(self, reference: dict, got: dict) -> list[str]:
        return [f"{key}: {reference.get(key)!r} uninterrupted, {got.get(key)!r} here"
                for key in sorted(set(reference) | set(got)) if reference.get(key) != got.get(key)]

    def servers(self) -> list[int]:
        return []


class Prepare(Stage):
    name = "prepare"

    def setup(self) -> None:
        self.input = self.root / "rollouts.jsonl"
        if not self.input.is_file():
            subprocess.run([sys.executable, str(REPO / "bench" / "gen_rollouts.py"), str(self.input), "--rollouts",
                            str(self.args.rollouts), "--per-task", "5", "--seed", "3"], check=True,
                           capture_output=True)

    def argv(self) -> list[str]:
        return [*PYTHON, "stage=prepare", f"data.input={self.input}", f"data.output_dir={self.trial / 'out'}",
                f"run_dir={self.trial / 'run'}"]

    def inputs(self) -> list[Path]:
        return [self.input]

    def result(self) -> dict:
        out = self.trial / "out"
        found = {p.name: sha256(p) for p in sorted(out.glob("*")) if p.is_file() and p.name != "manifest.json"}
        if (out / "manifest.json").is_file():
            manifest = json.loads((out / "manifest.json").read_text())
            manifest.pop("timestamps", None)
            found["manifest.json (less its timestamps)"] = hashlib.sha256(
                json.dumps(manifest, sort_keys=True).encode()).hexdigest()
        return found


class Train(Stage):
    name = "train"
    STEPS = 6

    def setup(self) -> None:
        self.pairs = self.root / "pairs"
        if not (self.pairs / "manifest.json").is_file():
            subprocess.run([*PYTHON, "stage=prepare", f"data.input={REPO / 'samples' / 'rollouts.jsonl'}",
                            f"data.output_dir={self.pairs}", f"run_dir={self.root / 'pairs_run'}"], check=True,
                           capture_output=True, cwd=REPO)

    def argv(self) -> list[str]:
        return [*PYTHON, "stage=train", f"data.output_dir={self.pairs}", f"run_dir={self.trial / 'run'}",
                f"dpo.max_num_steps={self.STEPS}", "checkpointing.save_period=2", "dpo.val_period=2"]

    def inputs(self) -> list[Path]:
        return sorted(p for p in self.pairs.glob("*") if p.is_file())

    def result(self) -> dict:
        run = self.trial / "run"
        metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()
                   if line.strip()] if (run / "metrics.jsonl").is_file() else []
        losses = [m for m in metrics if "train:loss" in m]
        provenance = json.loads((run / "provenance.json").read_text()) if (run / "provenance.json").is_file() else {}
        return {"last step": losses[-1]["step"] if losses else None,
                "final loss": round(losses[-1]["train:loss"], 4) if losses else None,
                "model": (run / "model" / "config.json").is_file(),
                "data": json.dumps(provenance.get("data"), sort_keys=True, default=str)}

    def differs(self, reference: dict, got: dict) -> list[str]:
        found = [f"{key}: {reference[key]!r} uninterrupted, {got.get(key)!r} here"
                 for key in ("last step", "model", "data") if reference[key] != got.get(key)]
        if got.get("final loss") is None or abs(got["final loss"] - reference["final loss"]) > self.args.loss_tolerance:
            found.append(f"final loss: {reference['final loss']} uninterrupted, {got.get('final loss')} here")
        return found


class Iterate(Stage):
    name = "iterate"

    def setup(self) -> None:
        pass

    def argv(self) -> list[str]:
        return [*PYTHON, "stage=iterate", f"run_dir={self.trial / 'run'}", *TINY_ITERATE]

    def inputs(self) -> list[Path]:
        return [REPO / "samples" / "gym" / "mcqa_train.jsonl", REPO / "samples" / "gym" / "mcqa_eval.jsonl"]

    def result(self) -> dict:
        run = self.trial / "run"
        doc = json.loads((run / "iterate.json").read_text()) if (run / "iterate.json").is_file() else {"rounds": []}
        records = [json.loads(p.read_text()) for p in sorted(run.glob("round_*/steps/*.json"))]
        settings = {json.dumps(r.get("settings"), sort_keys=True) for r in records}
        plan = json.loads((run / "plan.json").read_text()) if (run / "plan.json").is_file() else {}
        plan.pop("accepted", None)
        return {"done": [r["done"] for r in doc["rounds"]],
                "eval n": [r.get("eval", {}).get("n") for r in doc["rounds"]],
                "eval": [(r.get("eval", {}).get("mean"), r.get("eval", {}).get("se")) for r in doc["rounds"]],
                "settings per step": len(settings), "plan": hashlib.sha256(
                    json.dumps(plan, sort_keys=True).encode()).hexdigest()}

    def differs(self, reference: dict, got: dict) -> list[str]:
        found = [f"{key}: {reference[key]!r} uninterrupted, {got.get(key)!r} here"
                 for key in ("done", "eval n", "settings per step", "plan") if reference[key] != got.get(key)]
        for k, ((mean, se), (their, their_se)) in enumerate(zip(reference["eval"], got["eval"])):
            if None in (mean, their) or abs(mean - their) > 3 * ((se or 0) ** 2 + (their_se or 0) ** 2) ** 0.5 + 1e-9:
                found.append(f"round {k} eval reward {their} here, {mean} ± {se} uninterrupted")
        return found

    def servers(self) -> list[int]:
        """The policy server first, then NeMo Gym's servers (resources, agent, model proxy)."""
        found = trial_processes(self.trial)
        return ([pid for pid, cmdline in found if "llama-server" in cmdline]
                + [pid for pid, cmdline in found if "/app.py" in cmdline or " app.py" in cmdline])


STAGES = {"prepare": Prepare, "train": Train, "iterate": Iterate}


# -- what a trial leaves ----------------------------------------------------------------------------
def trial_processes(folder: Path) -> list[tuple[int, str]]:
    """Live processes of a trial: its folder in their command line, working folder or HOME."""
    found, needle = [], str(folder)
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            if stat.rsplit(")", 1)[1].split()[0] == "Z":
                continue
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(f"/proc/{entry}/cwd")
            environ = Path(f"/proc/{entry}/environ").read_bytes()
        except OSError:
            continue
        if needle in cmdline or cwd.startswith(needle) or f"HOME={needle}".encode() in environ:
            found.append((int(entry), cmdline[:160]))
    return found


RAY = re.compile(rb"RAY_TMPDIR=([^\0]+)")


def ray_folders(folder: Path) -> set[str]:
    """The Ray temp folders (/tmp/gym-dpo-ray-*) the trial's live processes use."""
    found = set()
    for pid, _ in trial_processes(folder):
        try:
            found.update(m.decode() for m in RAY.findall(Path(f"/proc/{pid}/environ").read_bytes()))
        except OSError:
            continue
    return found


def lines_of(argv: list[str]) -> list[str]:
    """A command's output lines (Docker containers, Slurm jobs); [] without the tool."""
    if shutil.which(argv[0]) is None:
        return []
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return result.stdout.splitlines() if result.returncode == 0 else []


def ours_outside(folder: Path) -> list[str]:
    """Docker containers that mount the trial's folder, Slurm jobs that run in it (the machine is
    shared: other containers and jobs are not the trial's)."""
    found = []
    for container in lines_of(["docker", "ps", "-aq"]):
        mounts = " ".join(lines_of(["docker", "inspect", "--format", "{{range .Mounts}}{{.Source}} {{end}}",
                                    container]))
        if str(folder) in mounts:
            found.append(f"container {container}")
    found += [f"slurm job {line.split()[0]}" for line in lines_of(["squeue", "-h", "-o", "%i %Z"])
              if str(folder) in line]
    return found


def leftovers(stage: Stage, ray: set[str]) -> list[str]:
    time.sleep(1.0)  # a child's SIGTERM from its dead parent takes a moment
    found = [f"process {pid}: {cmdline}" for pid, cmdline in trial_processes(stage.trial)]
    found += [f"scratch {p}" for p in stage.trial.rglob("*") if SCRATCH.search(p.name)]
    found += [f"ray temp folder {f}" for f in sorted(ray) if Path(f).exists()]
    return found + ours_outside(stage.trial)


# -- a small volume -----------------------------------------------------------------------------
class Volume:
    """A loop-mounted ext4 volume at `folder` (root only), grown in place."""

    def __init__(self, folder: Path, image: Path, mib: int):
        self.folder, self.image = folder, image
        subprocess.run(["truncate", "-s", f"{mib}M", str(image)], check=True)
        subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", "-O", "^has_journal", str(image)], check=True,
                       capture_output=True)
        folder.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-o", "loop", str(image), str(folder)], check=True)

    def grow(self, mib: int) -> None:
        """Offline (an online resize of a volume this small cannot grow it that much): what the
        stopped run left stays, the rerun finds it on a volume with room."""
        subprocess.run(["umount", str(self.folder)], check=True)
        subprocess.run(["truncate", "-s", f"{mib}M", str(self.image)], check=True)
        subprocess.run(["e2fsck", "-f", "-y", str(self.image)], capture_output=True)
        subprocess.run(["resize2fs", str(self.image)], check=True, capture_output=True)
        subprocess.run(["mount", "-o", "loop", str(self.image), str(self.folder)], check=True)

    def remove(self) -> None:
        subprocess.run(["umount", "-l", str(self.folder)], capture_output=True)
        self.image.unlink(missing_ok=True)


# -- one trial ----------------------------------------------------------------------------------
def start(argv: list[str], log: Path, pipe: bool = False) -> subprocess.Popen:
    out = subprocess.PIPE if pipe else open(log, "wb")
    return subprocess.Popen(argv, cwd=REPO, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
                            if not pipe else open(log.with_suffix(".stderr"), "wb"), start_new_session=True)


def wait(process: subprocess.Popen, seconds: float, watch=lambda: None) -> bool:
    """Whether it exited within `seconds` (`watch()` every second meanwhile); if not, its group
    is killed."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        watch()
        try:
            process.wait(timeout=1.0)
            return True
        except subprocess.TimeoutExpired:
            pass
    if process.poll() is not None:
        return True
    for sig in (signal.SIGCONT, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            pass
    process.wait()
    return False


def inject(stage: Stage, process: subprocess.Popen, fault: str, at: float, rng: random.Random, watch) -> str:
    """Apply `fault` `at` seconds after the start (the stop fault: once a server is up; the disk
    fault is the volume itself)."""
    if fault == "disk":
        return ""
    deadline, watched = time.monotonic() + at, 0.0
    while time.monotonic() < deadline and process.poll() is None:
        if time.monotonic() - watched > 1.0:
            watch()
            watched = time.monotonic()
        if fault == "stdout" and select.select([process.stdout], [], [], 0.05)[0]:
            process.stdout.read1(1 << 16)  # a reader that reads, then goes away
        else:
            time.sleep(0.05)
    if process.poll() is not None:
        return "ended before the fault"
    if fault == "kill":
        process.send_signal(signal.SIGKILL)
    elif fault == "term":
        process.send_signal(signal.SIGTERM)
    elif fault == "hup":
        os.killpg(process.pid, signal.SIGHUP)
    elif fault == "int2":
        os.killpg(process.pid, signal.SIGINT)
        time.sleep(0.3)
        try:
            os.killpg(process.pid, signal.SIGINT)
        except ProcessLookupError:
            pass
    elif fault == "stdout":
        process.stdout.close()
    elif fault == "stop":
        while not stage.servers() and process.poll() is None:
            time.sleep(0.5)
        servers = stage.servers()
        if not servers:
            return "no server came up"
        pid = servers[0] if rng.random() < 0.7 else rng.choice(servers)  # mostly the policy server
        os.kill(pid, signal.SIGSTOP)
        return f"stopped {Path(f'/proc/{pid}/cmdline').read_bytes().split(bytes(1))[0].decode()} ({pid})"
    return ""


def trial(stage: Stage, fault: str, at: float, deadline: float, logs: Path, index: int, rng: random.Random) -> dict:
    if stage.trial.exists():
        shutil.rmtree(stage.trial)
    stage.trial.mkdir(parents=True)
    inputs = {str(p): sha256(p) for p in stage.inputs()}
    ray: set[str] = set()
    watch = lambda: ray.update(ray_folders(stage.trial))  # noqa: E731
    disk_mib = max(1, round(stage.size_mib * rng.uniform(0.1, 0.9)))  # fills up somewhere in the run
    volume = Volume(stage.volume(), stage.root / "volume.img", disk_mib) if fault == "disk" else None
    found = {check: [] for check in CHECKS}
    record = {"stage": stage.name, "trial": index, "fault": fault, "at": round(at, 2),
              **({"disk_mib": disk_mib} if volume else {})}
    log = logs / f"{stage.name}-{index}-{fault}.log"
    try:
        process = start(stage.argv(), log, pipe=fault == "stdout")
        record["note"] = inject(stage, process, fault, at, rng, watch)
        if not wait(process, deadline, watch):
            found["hang"].append(f"still running {deadline:.0f}s after the fault: killed")
        for pid in stage.servers() if fault == "stop" else []:
            os.kill(pid, signal.SIGCONT)  # a stopped server the run left (counted below)
        record["exit"] = process.returncode
        if process.stdout is not None and not process.stdout.closed:
            process.stdout.close()
        if volume is not None:
            volume.grow(4096)  # sparse: what the rerun needs
        rerun_log = logs / f"{stage.name}-{index}-{fault}-rerun.log"
        again = start(stage.argv(), rerun_log)
        if not wait(again, stage.args.grace + 3 * stage.seconds, watch):
            found["hang"].append("the rerun did not finish: killed")
        record["rerun_exit"] = again.returncode
        if again.returncode != 0:
            found["rerun"].append(f"exit {again.returncode}")
        said = "".join(p.read_text(errors="replace") for p in (log, log.with_suffix(".stderr"), rerun_log)
                       if p.is_file())
        if "Traceback (most recent call last)" in said:
            found["traceback"].append(said[said.index("Traceback"):][:600])
        found["input"] = [f"{path} changed" for path, digest in inputs.items() if sha256(Path(path)) != digest]
        if again.returncode == 0:
            found["mixed"] = stage.differs(stage.reference, stage.result())
        found["left"] = leftovers(stage, ray)
        record["findings"] = {check: items for check, items in found.items() if items}
        if record["findings"]:  # the evidence, while the volume is there
            shutil.copytree(stage.trial, logs / f"{stage.name}-{index}-{fault}-folder", symlinks=True,
                            ignore_dangling_symlinks=True, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("*.gguf", "*.safetensors", "*.bin", "*.pt", "*.pth"))
    finally:
        if volume is not None:
            for pid, _ in trial_processes(stage.trial):
                os.kill(pid, signal.SIGKILL)
            volume.remove()
    if record.get("findings"):
        record["logs"] = [str(p) for p in sorted(logs.glob(f"{stage.name}-{index}-{fault}*"))]
    return record


def reference(stage: Stage, logs: Path) -> None:
    """An uninterrupted run: its duration (the faults' moments) and its result."""
    for attempt in (1, 2):  # a shared machine can fail a run of its own (Ray timing out at start)
        if stage.trial.exists():
            shutil.rmtree(stage.trial)
        started = time.monotonic()
        process = start(stage.argv(), logs / f"{stage.name}-reference-{attempt}.log")
        if process.wait() == 0:
            break
        print(f"the uninterrupted {stage.name} failed: {logs / f'{stage.name}-reference-{attempt}.log'}", flush=True)
    else:
        sys.exit(1)
    stage.seconds = time.monotonic() - started
    stage.reference = stage.result()
    stage.size_mib = sum(p.stat().st_size for p in stage.trial.rglob("*") if p.is_file()) / 2**20 + 1
    left = trial_processes(stage.trial)
    if left:
        sys.exit(f"the uninterrupted {stage.name} left processes: {left}")


# -- the report -----------------------------------------------------------------------------------
def table(records: list[dict]) -> str:
    rows = [["stage", "fault", "trials", *CHECKS]]
    keys = sorted({(r["stage"], r["fault"]) for r in records}, key=lambda k: (list(STAGES).index(k[0]), k[1]))
    for name, fault in keys:
        mine = [r for r in records if (r["stage"], r["fault"]) == (name, fault)]
        rows.append([name, fault, str(len(mine)), *[str(sum(1 for r in mine if c in r["findings"])) for c in CHECKS]])
    rows.append(["all", "", str(len(records)), *[str(sum(1 for r in records if c in r["findings"])) for c in CHECKS]])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=20, help="trials per stage")
    parser.add_argument("--only", choices=list(STAGES), action="append", help="this stage only (repeatable)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fault", help="this fault only (with --at: replay one trial)")
    parser.add_argument("--at", type=float, help="seconds after the start (else drawn)")
    parser.add_argument("--work", type=Path, default=Path("/var/tmp/gym-dpo-chaos"))
    parser.add_argument("--json", type=Path, default=None, help="default: WORK/chaos.json")
    parser.add_argument("--rollouts", type=int, default=10000, help="prepare's generated input")
    parser.add_argument("--loss-tolerance", type=float, default=0.05, help="train: final loss vs uninterrupted")
    parser.add_argument("--grace", type=float, default=120.0, help="seconds a stopped run gets to exit")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_chaos.py mounts small volumes (the disk fault): run it as root")
    rng = random.Random(args.seed)
    logs = args.work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    records = []
    for name in args.only or list(STAGES):
        stage = STAGES[name](args.work, args)
        stage.setup()
        reference(stage, logs)
        print(f"{name}: uninterrupted in {stage.seconds:.0f}s; {args.trials} trials", flush=True)
        faults = FAULTS[name] if not args.fault else [args.fault]
        order = []
        for index in range(args.trials):
            if index % len(faults) == 0:
                order = rng.sample(faults, len(faults))
            fault = order[index % len(faults)]
            at = args.at if args.at is not None else rng.uniform(0.5, 0.8 * stage.seconds)  # runs vary
            deadline = args.grace + (STOPPED if fault == "stop" else 0)
            record = trial(stage, fault, at, deadline, logs, index, rng)
            records.append(record)
            print(f"  {index:3d} {fault:6s} at {at:6.1f}s exit {record.get('exit')} rerun {record.get('rerun_exit')}"
                  + (f"  {sorted(record['findings'])}" if record["findings"] else "")
                  + (f"  ({record['note']})" if record.get("note") else ""), flush=True)
    print(table(records))
    path = args.json or args.work / "chaos.json"
    path.write_text(json.dumps({"seed": args.seed, "trials": records, "table": table(records)}, indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
