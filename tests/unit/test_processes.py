"""recipe.processes: what a worker's death, a signal at any line, a second signal, the parent's
kill -9, a closed stdout and a full disk do to the workers, commands and stops it runs."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import psutil
import pytest

from recipe import processes
from recipe.errors import RecipeError, full_disk
from recipe.processes import Background, Pool, commands, forks
from tests.conftest import REPO, children_left


def square(x):
    return x * x


def die_on(x):
    if x == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    return x


@pytest.fixture
def cli_handlers():
    """The CLI's handlers for the test, the previous ones after."""
    saved = {s: signal.getsignal(s) for s in processes.SIGNALS}
    processes.install()
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


# -- workers ------------------------------------------------------------------------------------
def test_a_worker_that_dies_while_busy_is_an_error_naming_it():
    with pytest.raises(RecipeError, match=r"gym-dpo-worker-\d died \(signal SIGKILL\)"):
        with Pool(2) as pool:
            list(pool.map(die_on, range(8)))


def test_a_worker_that_died_while_idle_is_an_error_naming_it_not_a_broken_pipe():
    with Pool(2) as pool:
        victim = pool._workers[0][0]
        os.kill(victim.pid, signal.SIGKILL)
        victim.join(10)
        with pytest.raises(RecipeError, match=r"gym-dpo-worker-1 died \(signal SIGKILL\)"):
            list(pool.map(square, range(8)))


def test_reaping_stops_a_worker_forked_but_never_handed_to_its_owner():
    """A signal between `Pool(...)` returning and its `with` (or `Background(...)` and the
    assignment) leaves workers nobody holds: the block that forked them stops them."""
    with pytest.raises(KeyboardInterrupt):
        with forks.reaping():
            Pool(2)  # dropped, as a signal after the constructor would drop it
            Background(time.sleep, 60)
            raise KeyboardInterrupt
    assert not children_left(set(), wait=0)
    assert not forks.forked()


def test_a_signal_while_a_pool_forks_leaves_no_worker(cli_handlers):
    """SIGTERM at every moment of a pool's making and use, by a timer in a thread as a terminal
    would, with the pool made inside `reaping()` as the stages make theirs: no worker is left,
    wherever the signal came (in the fork, between two forks, between the constructor and the
    `with`)."""
    main = threading.main_thread().ident
    for delay in [i * 0.002 for i in range(40)]:
        processes.install()
        timer = threading.Timer(delay, signal.pthread_kill, (main, signal.SIGTERM))
        try:
            try:
                timer.start()
                with processes.reaping(), Pool(3) as pool:
                    assert list(pool.map(square, range(6))) == [0, 1, 4, 9, 16, 25]
            finally:
                timer.join()
                time.sleep(0.01)
        except processes.Interrupted:
            pass
        assert not children_left(set(), wait=5), delay


def test_a_worker_dies_with_its_parent_however_the_parent_dies(tmp_path):
    """kill -9 of the stage: its workers (the nice-19 hashing process included) get SIGKILL."""
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(REPO)!r})
        from recipe.processes import Background
        work = Background(time.sleep, 120, nice=19)
        print(work._process.pid, flush=True)
        time.sleep(120)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    child = psutil.Process(int(parent.stdout.readline()))
    parent.kill()
    parent.wait()
    gone, alive = psutil.wait_procs([child], timeout=10)
    assert not alive, "the worker outlived its killed parent"


# -- signals ------------------------------------------------------------------------------------
def test_the_first_signal_raises_and_later_ones_do_not_cut_the_cleanup_short(cli_handlers):
    cleaned = []
    with pytest.raises(processes.Interrupted) as caught:
        try:
            os.kill(os.getpid(), signal.SIGHUP)
            time.sleep(5)
        finally:
            os.kill(os.getpid(), signal.SIGINT)  # a second Ctrl-C while cleaning up
            time.sleep(0.05)
            cleaned.append(True)
    assert caught.value.exit_code == 129 and cleaned == [True]
    assert processes.ignored() == [signal.SIGINT]


def test_a_signal_inside_a_deferred_section_comes_at_its_end(cli_handlers):
    done = []
    with pytest.raises(processes.Interrupted) as caught:
        with processes.deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
            done.append("all of it")
    assert done == ["all of it"] and caught.value.exit_code == 143


# -- commands -----------------------------------------------------------------------------------
LOUD = [sys.executable, "-c", "import sys\nfor i in range(200000): sys.stdout.write(f'line {i}\\n')"]


def test_a_command_runs_to_its_end_when_our_stdout_is_closed(tmp_path):
    """`gym-dpo ... | head -3`: the tee stops echoing, keeps draining the child (which would
    block on a full pipe), and the run goes on to the end with the whole log."""
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(REPO)!r})
        from pathlib import Path
        from recipe import processes
        code = processes.run({LOUD!r}, Path({str(tmp_path / 'loud.log')!r}))
        sys.stderr.write(f"finished {{code}}\\n")
    """)
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.readline()
    process.stdout.close()  # what head does after its lines
    try:
        _, err = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail("the command blocked once our stdout was closed")
    assert "finished 0" in err.decode(), err.decode()[-2000:]
    assert (tmp_path / "loud.log").read_text().count("\n") == 200000


def test_a_log_that_cannot_be_written_fails_the_step_with_its_path_and_reason():
    """A full disk (/dev/full): the child is drained and stopped, and the error says where and why."""
    outcome = {}

    def run():
        try:
            processes.run(LOUD, Path("/dev/full"), echo=False, what="the loud step")
        except RecipeError as exc:
            outcome["error"] = str(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(120)
    assert not thread.is_alive(), "the step blocked when its log could not be written"
    assert "the loud step: could not write its log /dev/full (No space left on device)" in outcome["error"]


def test_a_stop_that_leaves_a_process_says_so(monkeypatch):
    """When even SIGKILL does not end a member (here: the kills are lost), the stop names it
    instead of claiming everything stopped."""
    process = subprocess.Popen(["sleep", "60"], start_new_session=True)
    monkeypatch.setattr(commands.os, "kill", lambda pid, sig: None)
    monkeypatch.setattr(commands, "JOIN_TIMEOUT", 0.3)
    monkeypatch.setattr(commands, "_LEFT", [])
    try:
        left = processes.stop_session(process, grace=0.3)
        assert left == [process.pid]
        assert f"{process.pid} (sleep 60)" in processes.stop_outcome("the loop")
    finally:
        monkeypatch.undo()
        process.kill()
        process.wait()
    assert processes.stop_outcome("x") == "every process x started was stopped"


def _write_to_a_full_disk(path: str) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)


def test_a_worker_that_finds_the_disk_full_is_an_error_to_act_on_not_a_traceback():
    """prepare's writers run in workers: ENOSPC there is said as what to do (free space, rerun), as
    the CLI says it for the main process, not as a worker's traceback."""
    with Pool(2) as pool, pytest.raises(RecipeError) as raised:
        list(pool.map(_write_to_a_full_disk, ["/data/out/train.jsonl"]))
    assert str(raised.value) == ("no space left on the device writing /data/out/train.jsonl: free some space (or set "
                                 "another output folder), then rerun the same command; nothing half-written was kept")
    assert raised.value.exit_code == 1
    assert full_disk(OSError(errno.EACCES, "Permission denied")) is None and full_disk(ValueError()) is None
