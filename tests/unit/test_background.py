"""`recipe.processes.Background`: work in a child process, its result or its error back."""

import gc
import multiprocessing
import os
import time

import pytest

from recipe.errors import RecipeError
from recipe.processes import Background


def niceness_and_sum(a, b):
    return os.nice(0), a + b


def frozen_objects():
    return gc.get_freeze_count()


def bad_input():
    raise RecipeError("data.input: x.jsonl does not exist")


def bug():
    return {}["missing"]


def dies():
    os._exit(3)


def test_the_result_comes_back_from_a_child_at_the_priority_asked():
    work = Background(niceness_and_sum, 2, 3, nice=5)
    niceness, total = work.result()
    assert total == 5
    assert niceness == min(os.nice(0) + 5, 19)


def test_the_child_leaves_the_parent_objects_to_the_parent():
    """Frozen in the child (its collections do not touch, so do not copy, the pages it shares
    with the parent); not in the parent, whose collections go on as before."""
    assert Background(frozen_objects).result() > 0
    assert gc.get_freeze_count() == 0


def test_bad_input_is_raised_as_the_recipe_error_it_was():
    with pytest.raises(RecipeError, match="x.jsonl does not exist"):
        Background(bad_input).result()


def test_a_bug_is_raised_with_the_child_traceback():
    with pytest.raises(RuntimeError, match=r"(?s)bug failed in a background process.*KeyError: 'missing'"):
        Background(bug).result()


def test_a_child_that_dies_is_an_error_not_a_hang():
    with pytest.raises(RuntimeError, match="died.*exit code 3"):
        Background(dies).result()


def test_cancel_stops_a_running_child_at_once():
    work = Background(time.sleep, 60)
    started = time.monotonic()
    work.cancel()
    assert time.monotonic() - started < 5
    assert not multiprocessing.active_children()
    work.cancel()  # twice, or after a result: nothing left to do
