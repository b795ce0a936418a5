"""A collection never waits for ever (`iterate.watchdog`): NeMo Gym's HTTP client has no
timeout, so a policy server that stops answering (SIGSTOP, a wedged GPU server) held
`ng_collect_rollouts`, and the loop with it, with no message. recipe.iterate.gym.collect counts
the rows (successes and failures) every second; no new row for too long, or a collection past its
deadline (both derived from its work), is stuck: it is stopped and fails naming the server it
waits for, the policy server when that does not answer, else NeMo Gym, with its log's end.
"""

from __future__ import annotations

import json
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from recipe import processes
from recipe.errors import RecipeError


class Stuck(RecipeError):
    """A collection that stopped making rows (iterate.watchdog): NeMo Gym's HTTP client has no
    timeout, so a server that stops answering would hold the collection for ever."""


@dataclass(frozen=True)
class Limits:
    """How long a collection may go without a new row, and in all, derived from its work."""
    deadline: float   # seconds for the whole collection
    stall: float      # seconds without a new row (after the first)
    first: float      # seconds until the first row (NeMo Gym's start, then a stall)

    @classmethod
    def of(cls, watchdog: DictConfig, rows: int, sampling: DictConfig) -> Limits:
        """The deadline: slack_s + rows x max_output_tokens at the floor throughput (all requests
        together). No new row for stall_s, or for as long as `parallel` replies of
        max_output_tokens take at that floor if that is longer."""
        floor, tokens = float(watchdog.min_tokens_per_s), int(sampling.max_output_tokens)
        stall = max(float(watchdog.stall_s), int(sampling.parallel) * tokens / floor)
        return cls(deadline=float(watchdog.slack_s) + rows * tokens / floor, stall=stall,
                   first=float(watchdog.slack_s) + stall)


class Progress:
    """Rows so far, and why the collection is stuck (None while it is not)."""

    def __init__(self, limits: Limits, clock=time.monotonic):
        self.limits, self.clock = limits, clock
        self.started = self.changed = clock()
        self.rows = 0

    def update(self, rows: int) -> str | None:
        now = self.clock()
        if rows != self.rows:
            self.rows, self.changed = rows, now
        if now - self.started > self.limits.deadline:
            return (f"passed its deadline of {self.limits.deadline:.0f}s (iterate.watchdog: slack_s + rows x "
                    "max_output_tokens / min_tokens_per_s; a lower min_tokens_per_s if this machine is that slow)")
        window = self.limits.stall if self.rows else self.limits.first
        if now - self.changed > window:
            return (f"made no new row for {now - self.changed:.0f}s (iterate.watchdog.stall_s: {window:.0f}s"
                    + ("" if self.rows else ", with slack_s for the first row")
                    + "; a larger stall_s if a reply can take that long)")
        return None

    def check(self, rows: int, of: str, gym, collect_log: Path) -> None:
        """Raise Stuck, naming the server the collection waits for, once it is."""
        why = self.update(rows)
        if why:
            raise Stuck(f"ng_collect_rollouts {why}, at {rows} of {of}: {stuck_server(gym, collect_log)}\n"
                        "the collection was stopped and its rows discarded; rerun the same command to resume "
                        "at this step")


PROBE_TIMEOUT = 30.0  # seconds the policy server gets to answer its health path, then a one-token reply


def _generates(gym) -> bool:
    body = json.dumps({"model": gym.model_name, "max_tokens": 1,
                       "messages": [{"role": "user", "content": "Hi"}]}).encode()
    request = urllib.request.Request(f"{gym.base_url}/chat/completions", data=body,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=PROBE_TIMEOUT) as response:
            return response.status == 200
    except (OSError, ValueError):
        return False


def _stopped(service) -> list[int]:
    """The processes of a service that are stopped (SIGSTOP, a debugger): they answer nothing."""
    found = []
    for pid in processes.session_members(service.process.pid) if service and service.process else []:
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("T", "t"):
                found.append(pid)
        except OSError:
            continue
    return found


def stuck_server(gym, collect_log: Path) -> str:
    """Which server a stuck collection (of a recipe.iterate.gym.Gym) waits for, with the end of
    its log: the policy server when it does not answer its health path or a one-token request,
    else NeMo Gym."""
    from recipe.iterate import serving

    services = {s.name.split(":")[0]: s for s in processes.live_services()}
    ready = serving.load(str(gym.serving.name)).ready_path
    root = gym.base_url.removesuffix("/v1")
    policy = f"the policy server ({gym.model_name}, serving={gym.serving.name})"
    if not serving.answers(root + ready, timeout=PROBE_TIMEOUT):
        problem = f"{policy} does not answer {root}{ready}"
    elif not _generates(gym):
        problem = f"{policy} answers {ready} but makes no one-token reply in {PROBE_TIMEOUT:.0f}s"
    else:
        ng_run = services.get("ng_run")
        tail = "\n".join(collect_log.read_text(errors="replace").splitlines()[-25:]) if collect_log.is_file() else ""
        return (f"NeMo Gym does not finish rollouts, though the policy server answers (logs: {collect_log}"
                + (f", {ng_run.log_path}" if ng_run else "") + f")\n{tail}")
    server = services.get("serve")
    stopped = _stopped(server)
    if stopped:
        problem += (f": its process {', '.join(map(str, stopped))} is stopped (SIGSTOP or a debugger; SIGCONT "
                    "resumes it)")
    return problem + (f" (log: {server.log_path})\n{server.tee.tail()}" if server else "")


def lines(path: Path) -> int:
    if not path.is_file():
        return 0
    with open(path, "rb") as handle:
        return sum(block.count(b"\n") for block in iter(lambda: handle.read(1 << 20), b""))
