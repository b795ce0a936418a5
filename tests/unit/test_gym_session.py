"""ng_run's start: a Ray node that missed Ray's fixed 30 s startup wait (a loaded machine) is
started again; any other failure is not."""

from __future__ import annotations

import pytest

from recipe import report
from recipe.errors import RecipeError
from recipe.iterate import gym as gym_mod

SLOW = ("ng_run exited with code 1 before it was ready (log: x)\n  Exception: The current node timed out during "
        "startup. This could happen because some of the raylet failed to startup or the GCS has become overloaded.")


class FakeGym:
    work = "."

    def __init__(self):
        self.cleanups = 0

    def write_config(self):
        pass

    def run_argv(self):
        return ["ng_run"]

    def environment(self):
        return {}

    def cleanup(self):
        self.cleanups += 1


def services(failures: list[str], entered: list[int]):
    class Service:
        def __init__(self, *args, **kwargs):
            pass

        def __enter__(self):
            entered.append(1)
            if failures:
                raise RecipeError(failures.pop(0))
            return self

        def __exit__(self, *exc):
            return False

    return Service


def test_a_ray_node_too_slow_to_register_is_started_again(monkeypatch, tmp_path):
    entered = []
    monkeypatch.setattr(gym_mod.processes, "Service", services([SLOW, SLOW], entered))
    gym = FakeGym()
    with report.console.capture() as captured, gym_mod.session(gym, tmp_path / "ng_run.log") as inside:
        assert inside is gym and len(entered) == 3
    said = captured.get()
    assert "starting it again (2/3)" in said and "starting it again (3/3)" in said
    assert gym.cleanups == 3  # each failed start's Ray temp dir, then the session's


def test_it_gives_up_after_three_starts_and_other_failures_at_once(monkeypatch, tmp_path):
    entered = []
    monkeypatch.setattr(gym_mod.processes, "Service", services([SLOW] * 3, entered))
    with pytest.raises(RecipeError, match="timed out during startup"), gym_mod.session(FakeGym(), tmp_path / "l"):
        pass
    assert len(entered) == 3
    entered.clear()
    monkeypatch.setattr(gym_mod.processes, "Service", services(["ng_run exited with code 2: bad config"], entered))
    with pytest.raises(RecipeError, match="bad config"), gym_mod.session(FakeGym(), tmp_path / "l"):
        pass
    assert len(entered) == 1
