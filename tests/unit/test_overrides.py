"""The paths gym-dpo puts on its child stages' command lines (iterate's prepare and train) as Hydra
override values."""

from __future__ import annotations

import pytest

from recipe.overrides import override
from tests.conftest import compose_config


@pytest.mark.parametrize("name", ["lr1e-5,b0.1", "a[1]", "it's", "${x}", "sp ace", "back\\slash"])
def test_a_path_on_a_child_stage_command_line_reads_back_as_that_path(tmp_path, name):
    """Child stages get their paths as Hydra override values (iterate's prepare and train): a
    run_dir with a comma was a list to Hydra ("Ambiguous value"), a [ a list element."""
    folder = tmp_path / name
    cfg = compose_config(override("run_dir", folder), override("data.input", folder / "r.jsonl"))
    assert (cfg.run_dir, cfg.data.input, cfg.data.output_dir) == (str(folder), str(folder / "r.jsonl"),
                                                                  f"{folder}/data")


def test_iterates_child_stages_take_a_run_dir_with_a_comma(tmp_path):
    """`stage=iterate run_dir=runs/lr1e-5,b0.1`: every child stage failed "Ambiguous value"."""
    from tests.unit.test_iterate import build_plan

    run_dir = tmp_path / "runs" / "lr1e-5,b0.1"
    p = build_plan(override("run_dir", run_dir))
    rd = run_dir / "round_1"
    rollouts, policy = rd / "rollouts[0].jsonl", str(run_dir / "round_0" / "policy")
    prepare = compose_config(*p.prepare_argv(rollouts, rd / "prepare")[3:])
    assert (prepare.data.input, prepare.data.output_dir) == (str(rollouts), str(rd / "prepare" / "data"))
    train = compose_config(*p.train_argv(rd / "prepare" / "data", rd / "train", policy)[3:])
    assert (train.run_dir, train.policy.model_name) == (str(rd / "train"), policy)
