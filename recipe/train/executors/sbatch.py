"""A Slurm job: submitted with `sbatch --parsable`, then, when the caller waits for it, followed to
its end.

`sbatch --wait` with its output captured said nothing for hours (not even the job id, which was
recorded only once the job had ended) and left the job training when gym-dpo was stopped. Here the
job id and its log folder are printed and recorded (`slurm/submitted.txt`) at submission; while
waiting, the job's state changes are printed (squeue) and its logs followed, to the terminal and to
`<run_dir>/train.log` (the sbatch output file, then `batch.log` and `driver.log` of the job's latest
attempt: a requeued job writes a new folder); Ctrl-C or SIGTERM cancels the job (`scancel`) before
the signal is passed on. The exit code is Slurm's (`scontrol show job`: ExitCode), else the
driver's (`driver.exit` in the attempt's log folder).
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

from recipe import report
from recipe.errors import RecipeError

POLL = 2.0               # seconds between looks at the job
UNREACHABLE = 300.0      # seconds of failing squeue calls before giving up on following the job
CANCEL_WAIT = 60.0       # seconds to wait for a cancelled job to leave the queue


def _slurm(argv: list[str], timeout: float = 60, cwd: Path | None = None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                              cwd=cwd)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return subprocess.CompletedProcess(argv, 255, "", str(exc))


def submit(argv: list[str], cwd: Path, record: Path) -> str:
    """Run sbatch; the job id, appended to `record` at once."""
    result = _slurm(argv, timeout=300, cwd=cwd)
    match = re.match(r"\s*(\d+)", result.stdout) or re.search(r"Submitted batch job (\d+)", result.stdout)
    if result.returncode != 0 or not match:
        said = (result.stderr or result.stdout).strip()
        raise RecipeError(f"sbatch did not submit the job (exit code {result.returncode}): {said}")
    job = match.group(1)
    with open(record, "a") as handle:
        handle.write(f"{job}\n")
    return job


class Follow:
    """Prints (and appends to `log`) the new whole lines of the job's log files."""

    def __init__(self, logs: Path, job: str, log: Path):
        self.logs, self.job, self.log = logs, job, log
        self.offsets: dict[Path, int] = {}

    def attempt(self) -> Path | None:
        """The log folder of the job's latest attempt: <job>, <job>-r1, <job>-r2, ..."""
        found = [p for p in self.logs.glob(f"{self.job}*") if p.is_dir() and re.fullmatch(
            rf"{self.job}(-r\d+)?", p.name)]
        return max(found, key=lambda p: int(p.name.partition("-r")[2] or 0), default=None)

    def files(self) -> list[tuple[Path, str]]:
        files = [(self.logs / f"sbatch-{self.job}.out", "[slurm] ")]
        folder = self.attempt()
        if folder is not None:
            files += [(folder / "batch.log", "[slurm] "), (folder / "driver.log", "")]
        return files

    def poll(self) -> None:
        for path, prefix in self.files():
            try:
                with open(path, "rb") as handle:
                    handle.seek(self.offsets.get(path, 0))
                    data = handle.read()
            except OSError:
                continue
            whole = data[: data.rfind(b"\n") + 1]
            if not whole:
                continue
            self.offsets[path] = self.offsets.get(path, 0) + len(whole)
            text = "".join(f"{prefix}{line}\n" for line in whole.decode("utf-8", "replace").splitlines())
            sys.stdout.write(text)
            sys.stdout.flush()
            with open(self.log, "a") as handle:
                handle.write(text)


def state(job: str) -> tuple[str, str] | None:
    """(state, reason or nodes) while Slurm lists the job as pending or running; None once it has
    left the queue. Raises OSError when squeue itself fails."""
    result = _slurm(["squeue", "-h", "-j", job, "-o", "%T|%R"])
    if result.returncode != 0:
        if "Invalid job id" in result.stderr:
            return None
        raise OSError(result.stderr.strip() or f"squeue exited with code {result.returncode}")
    line = result.stdout.strip()
    if not line:
        return None
    found, _, detail = line.splitlines()[0].partition("|")
    return found, detail


def exit_code(job: str, follow: Follow) -> tuple[int, str]:
    """The ended job's exit code and its final state."""
    shown = _slurm(["scontrol", "show", "job", "-o", job]).stdout
    fields = dict(re.findall(r"(\w+)=(\S*)", shown))
    if "JobState" in fields and ":" in fields.get("ExitCode", ""):
        code, signal = (int(v) for v in fields["ExitCode"].split(":", 1))
        if not code:
            code = 128 + signal if signal else (0 if fields["JobState"] == "COMPLETED" else 1)
        return code, fields["JobState"]
    folder = follow.attempt()
    try:
        return int((folder / "driver.exit").read_text().strip()), "ended"
    except (OSError, TypeError, ValueError):
        raise RecipeError(f"job {job} has ended, but Slurm no longer knows its exit code (scontrol show job) and "
                          f"its driver left none in {folder or follow.logs}/driver.exit") from None


def cancel(job: str) -> None:
    """scancel, then wait (bounded) until the job has left the queue."""
    _slurm(["scancel", job])
    deadline = time.monotonic() + CANCEL_WAIT
    while time.monotonic() < deadline:
        try:
            if state(job) is None:
                return
        except OSError:
            pass
        time.sleep(1.0)


def wait(job: str, logs: Path, log: Path) -> int:
    """Follow `job` to its end; its exit code. A signal cancels it and is raised again, with
    `stopped` saying so."""
    follow = Follow(logs, job, log)
    shown, failing_since = None, None
    try:
        while True:
            try:
                now = state(job)
                failing_since = None
            except OSError as exc:
                failing_since = failing_since or time.monotonic()
                if time.monotonic() - failing_since > UNREACHABLE:
                    raise RecipeError(f"squeue has failed for {UNREACHABLE:.0f}s ({exc}): job {job} may still run "
                                      f"(squeue -j {job}; scancel {job} to stop it)") from None
                time.sleep(POLL)
                continue
            follow.poll()
            if now is None:
                break
            if now != shown:
                report.console.print(f"job {job}: {now[0].lower()} ({now[1]})", highlight=False, soft_wrap=True)
                shown = now
            time.sleep(POLL)
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM through the CLI (processes.Interrupted)
        cancel(job)
        exc.stopped = f"job {job} was cancelled (scancel {job})"
        raise
    follow.poll()
    code, final = exit_code(job, follow)
    report.console.print(f"job {job} ended: {final.lower()}, exit code {code}", highlight=False, soft_wrap=True)
    return code
