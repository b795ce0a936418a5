"""A train run folder's checkpoints are resumed only on the pairs they were trained on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from recipe.errors import RecipeError
from recipe.train import stage as train_stage
from tests.unit.test_records import fake_checkpoint
from tests.unit.train_helpers import compose_config, make_prepared, preference_pair, train_overrides


def dry_train(tmp_path: Path, data: Path, *more: str) -> int:
    return train_stage.run(compose_config("stage=train", "launcher.dry_run=true", "preflight.enabled=false",
                                          *train_overrides(tmp_path, data, *more)))


def test_checkpoints_of_other_pairs_are_not_resumed(tmp_path):
    """`stage=train run_dir=RUN data.output_dir=NEW`: RUN's step_N were trained on the old pairs."""
    old = make_prepared(tmp_path / "old")
    new = make_prepared(tmp_path / "new", train=[preference_pair(i, chosen=f"bad {i}", rejected=f"good {i}")
                                                 for i in range(16)])
    dry_train(tmp_path, old)
    run = tmp_path / "run"
    fake_checkpoint(run, 2)
    written = {name: (run / name).read_bytes() for name in ("nemo_rl_dpo.yaml", "provenance.json", "command.json")}
    with pytest.raises(RecipeError, match=r"(?s)checkpoints up to step_2, and they were trained on train sha256 "
                                          rf"\w+….*{old}\); this run's pairs are train sha256 \w+….*{new}\)"
                                          r".*train.fresh_start=true"):
        dry_train(tmp_path, new)
    assert {name: (run / name).read_bytes() for name in written} == written  # nothing rewritten
    assert dry_train(tmp_path, old) == 0  # the same pairs: resumed as before

    dry_train(tmp_path, new, "train.fresh_start=true")
    assert not (run / "checkpoints").exists()
    aside = [p for p in run.iterdir() if p.name.startswith("checkpoints.replaced-")]
    assert len(aside) == 1 and (aside[0] / "step_2" / "training_info.json").is_file()
    assert json.loads((run / "provenance.json").read_text())["data"]["folder"] == str(new)


def test_checkpoints_without_a_record_of_their_pairs_are_not_resumed_silently(tmp_path):
    fake_checkpoint(tmp_path / "run", 3)
    with pytest.raises(RecipeError, match="provenance.json does not say which pairs they were trained on"):
        dry_train(tmp_path, make_prepared(tmp_path / "data"))
