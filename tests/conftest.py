"""Shared test helpers: rollouts in the real NeMo Gym layout, and the prepare stage in-process."""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from pathlib import Path

import psutil
import pytest
from hydra import compose, initialize_config_module

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "samples" / "rollouts.jsonl"
# Upstream files some tests read, all from one folder: NeMo RL v0.7.0's examples/configs/dpo.yaml
# as nemo-rl-v0.7.0/dpo.yaml, and real NeMo Gym rollouts files as nemo-gym/*.jsonl (its README
# says where each comes from). They are not in the repository: GYM_DPO_REFERENCE names the folder.
REFERENCE = Path(os.environ.get("GYM_DPO_REFERENCE") or REPO.parent / "shared" / "reference")
# tests/run.sh as root (CI) brings every engine up and sets this: a test that finds an engine or
# the reference files missing fails instead of skipping, so nothing is skipped in CI by accident.
REQUIRED = os.environ.get("GYM_DPO_REQUIRE_ENGINES") == "1"


def unavailable(reason: str):
    """Skip (locally) or fail (CI: GYM_DPO_REQUIRE_ENGINES=1) with a one-line reason."""
    reason = " ".join(reason.split())[:300]
    if REQUIRED:
        pytest.fail(f"GYM_DPO_REQUIRE_ENGINES=1 but {reason}", pytrace=False)
    pytest.skip(reason)


def reference(relative: str) -> Path:
    """REFERENCE / relative; skips, or fails in CI, with one message when it is not there.

    A skip rather than an error: a developer without the upstream files still runs every other
    test; CI, which has them, fails instead (`unavailable`)."""
    path = REFERENCE / relative
    if not path.exists():
        unavailable(f"no {path}: the upstream reference files (NeMo RL v0.7.0's dpo.yaml, NeMo Gym "
                    f"rollouts) are read from GYM_DPO_REFERENCE (now {REFERENCE})")
    return path


def message(role: str, text: str, typed: bool = True, parts: bool = False) -> dict:
    content = [{"type": "output_text" if role == "assistant" else "input_text", "text": text}] if parts else text
    item = {"role": role, "content": content}
    if typed:
        item["type"] = "message"
    return item


def rollout(prompt="What is 2+2?", answer="4", reward=1.0, task=None, agent=None, output=None,
            system=None, **extra) -> dict:
    """A rollout as NeMo Gym writes it: the generated turns under response.output."""
    inputs = ([message("system", system)] if system else []) + [message("user", prompt)]
    row = {
        "responses_create_params": {"input": inputs, "temperature": 1.0, "metadata": {"seed": 7}},
        "response": {"id": "resp_1", "model": "m", "status": "completed",
                     "output": output if output is not None else [
                         {"type": "reasoning", "summary": [{"type": "summary_text", "text": "hmm"}]},
                         {"type": "message", "role": "assistant", "id": "msg_1", "status": "completed",
                          "content": [{"type": "output_text", "text": answer, "annotations": []}]}]},
        "reward": reward,
    }
    if task is not None:
        row["_ng_task_index"] = task
    if agent is not None:
        row["agent_ref"] = {"name": agent}
    row.update(extra)
    return row


def write_jsonl(path: Path, rows: list) -> Path:
    with open(path, "w") as handle:
        for row in rows:
            handle.write(row if isinstance(row, str) else json.dumps(row))
            handle.write("\n")
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def records_of(rows: list[dict]):
    """Scan records (`grouping.RECORD`) from dicts of their fields, the rest zero, in canonical
    group order."""
    import numpy as np

    from recipe.prepare import grouping

    records = np.zeros(len(rows), dtype=grouping.RECORD)
    for name in grouping.RECORD.names:
        records[name] = [row.get(name, 0) for row in rows]
    return grouping.sort_records(records)


def compose_config(*overrides: str):
    with initialize_config_module("recipe.configs", version_base="1.3"):
        return compose("recipe", overrides=list(overrides))


@pytest.fixture
def prepare(tmp_path):
    """Run the prepare stage in-process; returns (manifest, output folder)."""
    from recipe.prepare import stage

    def run(inputs, *overrides: str, out: str = "out"):
        spec = "[" + ",".join(map(str, inputs)) + "]" if isinstance(inputs, (list, tuple)) else str(inputs)
        cfg = compose_config(f"data.input={spec}", f"data.output_dir={tmp_path / out}",
                             f"output_root={tmp_path / 'runs'}", "data.workers=1", *overrides)
        return stage.run(cfg), tmp_path / out

    return run


def as_user(uid: int, code: str, env: dict) -> str:
    """What `code` prints when run as user `uid` (a forked child of this process: another user
    may not read this interpreter's folders), or the error it raised."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: become the user, run, report, exit
        os.close(read)
        try:
            os.environ.update(env)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            import contextlib
            import io

            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                exec(code, {})
            os.write(write, out.getvalue().encode())
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            os.write(write, f"{type(exc).__name__} {exc}".encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        said = pipe.read()
    os.waitpid(pid, 0)
    return said.strip()


def live_children(me: psutil.Process | None = None) -> list[psutil.Process]:
    """This process's descendants that still run (zombies, which only wait to be reaped, left out)."""
    alive = []
    for child in (me or psutil.Process()).children(recursive=True):
        try:
            if child.status() != psutil.STATUS_ZOMBIE:
                alive.append(child)
        except psutil.NoSuchProcess:
            pass
    return alive


def children_left(before: set[int], wait: float = 10.0) -> list[psutil.Process]:
    """Descendants not in `before` still running after up to `wait` seconds (a stopped one may
    take a moment to exit)."""
    deadline = time.monotonic() + wait
    while (left := [c for c in live_children() if c.pid not in before]) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


@pytest.fixture(autouse=True)
def no_process_left_behind():
    """A test that leaves a child process running fails, at its own teardown, naming it, and the
    child is killed: a leak fails the test that caused it, never the tests after it (which
    assert that nothing runs)."""
    before = {c.pid for c in live_children()}
    yield
    left = children_left(before)
    if not left:
        return
    names = {p.pid: p.name for p in multiprocessing.active_children()}
    described = []
    for child in left:
        try:
            described.append(f"{child.pid} {names.get(child.pid) or ' '.join(child.cmdline())[:100]}")
            child.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(left, timeout=10)
    multiprocessing.active_children()  # reaps the killed workers
    pytest.fail(f"the test left {len(left)} process(es) running (killed now): {'; '.join(described)}",
                pytrace=False)
