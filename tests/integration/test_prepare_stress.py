"""prepare, hundreds of times over, on the inputs whose write phase has little or nothing to do
(a few rows, every group tied, one line, hostile lines), with its worker pools: it never hangs,
never prints a traceback, writes byte for byte what an undisturbed run writes, and a SIGINT,
SIGTERM or SIGHUP at a random moment (sometimes followed by a second one) stops it with the exit
code and one-line outcome the CLI prints, leaving no file and no process behind.

The runs are in-process (the stage's own `run`, the CLI's signal handlers), so 200 of them fit
in CI time; each has a bound (SIGALRM) that turns a hang into a failure naming the run. The CLI
path itself is tests/integration/test_prepare_interrupts.py.
"""

from __future__ import annotations

import hashlib
import json
import random
import signal
import threading
import time
from pathlib import Path

import pytest

from recipe import processes
from recipe.prepare import stage
from tests.conftest import SAMPLE, children_left, compose_config, rollout, write_jsonl

pytestmark = pytest.mark.integration
RUNS = 200
SIGNALLED = 60
BOUND = 60  # seconds a run may take before it counts as hung (a normal one takes well under 1)


class Hung(Exception):
    pass


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("inputs")
    rows = []
    for line in SAMPLE.read_text().splitlines():  # the sample's usable rows (it holds hostile lines too)
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("reward"), (int, float)):
            rows.append(row)
    tied = [row | {"reward": 0.0} for row in rows]
    hostile = ["", "not json", "[1, 2]", "{}", '{"reward": 1e999}', "{" * 5000, '{"reward": "1"}',
               json.dumps(rollout(reward=None)),
               json.dumps(rollout(prompt="\u0000\ud7ff", answer="\u2028", reward=1.0, task=1)),
               json.dumps(rollout(reward=1.0, task=2)) + "  trailing"]
    made = {"tiny": write_jsonl(folder / "tiny.jsonl", rows[:12]),
            "tied": write_jsonl(folder / "tied.jsonl", tied),
            "one_line": write_jsonl(folder / "one.jsonl", rows[:1])}
    made["hostile"] = folder / "hostile.jsonl"
    made["hostile"].write_text("\n".join(hostile) + "\n")
    return made


@pytest.fixture
def cli_signals():
    """The CLI's handlers (SIGINT/SIGTERM raise `Interrupted`) and SIGALRM as the hang bound."""
    saved = {s: signal.getsignal(s) for s in (*processes.SIGNALS, signal.SIGALRM)}

    def hung(signum, frame):
        raise Hung()

    processes.install()
    signal.signal(signal.SIGALRM, hung)
    yield
    signal.alarm(0)
    for signum, handler in saved.items():
        signal.signal(signum, handler)


def prepare(tmp_path: Path, source: Path, index: int):
    out, runs = tmp_path / f"out{index}", tmp_path / f"runs{index}"
    cfg = compose_config(f"data.input={source}", f"data.output_dir={out}", f"output_root={runs}", "data.workers=2",
                         "data.val_fraction=0.5")
    return out, runs, cfg


def leftovers(*folders: Path) -> list[str]:
    return [str(p) for folder in folders if folder.exists() for p in folder.rglob(".gym-dpo*")]


OUTPUT_FILES = ("train.jsonl", "val.jsonl", "rejects.jsonl")


def outputs(out: Path) -> dict[str, str]:
    """sha256 of each pair file, checked against what the manifest beside them says."""
    manifest = json.loads((out / "manifest.json").read_text())
    found = {name: hashlib.sha256((out / name).read_bytes()).hexdigest() for name in OUTPUT_FILES}
    for name, digest in found.items():
        assert manifest["outputs"][name.removesuffix(".jsonl")]["sha256"] == digest, (out, name)
    return found


@pytest.fixture(scope="module")
def expected(inputs, tmp_path_factory) -> dict[str, dict[str, str]]:
    """Each input's outputs from a run nobody disturbs (prepare is deterministic)."""
    folder = tmp_path_factory.mktemp("expected")
    made = {}
    for name, source in inputs.items():
        out, _, cfg = prepare(folder, source, name)
        stage.run(cfg)
        made[name] = outputs(out)
    return made


def no_new_children() -> list[str]:
    """The children this process has (it should have none between runs): their names."""
    return [" ".join(c.cmdline())[:80] for c in children_left(set())]


def test_hundreds_of_short_runs_never_hang_and_print_no_traceback(tmp_path, inputs, expected, cli_signals, capfd):
    names = sorted(inputs)
    for index in range(RUNS):
        name = names[index % len(names)]
        out, runs, cfg = prepare(tmp_path, inputs[name], index)
        signal.alarm(BOUND)
        try:
            result = stage.run(cfg)
        except Hung:
            pytest.fail(f"run {index} ({name}) did not end within {BOUND}s")
        finally:
            signal.alarm(0)
        assert outputs(out) == expected[name], (index, name)  # byte-identical to the undisturbed run
        assert (result["pairs"]["train"] + result["pairs"]["val"] > 0) == (name == "tiny"), (index, name)
        assert not leftovers(out, runs), (index, name)
        assert not no_new_children(), (index, name)
        if index % 40 == 39:
            err = capfd.readouterr().err
            assert "Traceback" not in err, err[-3000:]
    assert "Traceback" not in capfd.readouterr().err


def test_a_signal_at_a_random_moment_stops_it_cleanly(tmp_path, inputs, expected, cli_signals, capfd):
    """SIGINT, SIGTERM or SIGHUP at a random moment of a run, and in a quarter of the runs a
    second signal soon after the first (a second Ctrl-C during the cleanup): the run stops with
    the first signal's exit code and says what it left, which is exactly that (nothing, or the
    outputs an undisturbed run writes, byte for byte), and no process or scratch folder is left."""
    rng = random.Random(20261203)
    names = sorted(inputs)
    started = time.monotonic()
    prepare_seconds = []
    for index in range(6):  # how long a run takes here, to send signals inside that window
        out, runs, cfg = prepare(tmp_path, inputs[names[index % len(names)]], 1000 + index)
        began = time.monotonic()
        stage.run(cfg)
        prepare_seconds.append(time.monotonic() - began)
    window = max(prepare_seconds)
    outcomes = {"interrupted": 0, "finished": 0, "second signal": 0}
    main = threading.main_thread().ident
    for index in range(SIGNALLED):
        name = names[index % len(names)]
        signum = rng.choice(processes.SIGNALS)
        at = rng.uniform(0, window)
        second = rng.random() < 0.25
        out, runs, cfg = prepare(tmp_path, inputs[name], index)
        processes.install()  # a stopped stage ignores further signals (`hold`): the CLI exits then
        # to the main thread, as the CLI arranges it (every other thread blocks these signals): a
        # signal os.kill()ed from this timer thread would be taken by the timer thread itself
        timers = [threading.Timer(at, signal.pthread_kill, (main, signum))]
        if second:
            timers.append(threading.Timer(at + rng.uniform(0, 0.05), signal.pthread_kill, (main, signal.SIGINT)))
        signal.alarm(BOUND)
        caught, returned = None, False
        try:
            try:
                for timer in timers:
                    timer.start()
                stage.run(cfg)
                returned = True
            finally:
                for timer in timers:
                    timer.join()  # a signal that comes after the run is caught here, like one during it
                time.sleep(0.06)
        except processes.Interrupted as exc:
            caught = exc
        except Hung:
            pytest.fail(f"run {index} ({name}, {signal.Signals(signum).name}) did not end within {BOUND}s")
        finally:
            signal.alarm(0)
        what = (index, name, signal.Signals(signum).name, second)
        if caught is not None and not returned:  # stopped inside the stage
            outcomes["interrupted"] += 1
            outcomes["second signal"] += second
            # the first signal's; two that both wait for the main thread are taken in signal-number
            # order (the kernel's and Python's), so then either may be the first
            assert caught.exit_code in ({128 + signum, 128 + signal.SIGINT} if second else {128 + signum}), what
            if caught.outcome.startswith("the pairs and manifest.json are in"):
                assert caught.outcome == f"the pairs and manifest.json are in {out}", what
                assert outputs(out) == expected[name], what
            else:  # in the middle, or before its first file (Settings, the hashing process)
                assert caught.outcome == f"nothing was written to {out}", (what, caught.outcome)
                assert not out.exists(), (what, list(out.iterdir()))
        else:  # it ran to the end (a signal after it is the caller's)
            outcomes["finished"] += 1
            assert outputs(out) == expected[name], what
        assert not leftovers(out, runs), what
        assert not no_new_children(), what
    err = capfd.readouterr().err
    assert "Traceback" not in err, err[-3000:]
    assert outcomes["interrupted"] >= SIGNALLED // 4, (outcomes, window, time.monotonic() - started)
