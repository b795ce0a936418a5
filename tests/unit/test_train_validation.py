"""The checks before any GPU is held: pairs vs batch size, validation pairs, ties, edited files,
periods, divisibility, secrets, the NeMo RL schema. Each failure is one clear RecipeError."""

from __future__ import annotations

import json

import pytest
from train_helpers import compose_config, make_prepared, preference_pair, train_overrides

from recipe.errors import RecipeError
from recipe.train import prepared, validate
from recipe.train.plan import build_plan


def build(tmp_path, data, *overrides):
    return build_plan(compose_config(*train_overrides(tmp_path, data, *overrides)))


def refused(tmp_path, data, *overrides) -> str:
    with pytest.raises(RecipeError) as info:
        build(tmp_path, data, *overrides)
    return str(info.value)


def test_a_valid_folder_passes(tmp_path):
    plan, data = build(tmp_path, make_prepared(tmp_path / "d", train=8, val=2))
    assert (data.train_pairs, data.val_pairs) == (8, 2)


def test_fewer_train_pairs_than_the_global_batch(tmp_path):
    message = refused(tmp_path, make_prepared(tmp_path / "d", train=5), "policy.train_global_batch_size=8")
    assert "5 train pairs, fewer than policy.train_global_batch_size=8" in message
    assert "nothing was launched" in message
    assert (tmp_path / "run" / "nemo_rl_dpo.yaml").is_file()  # kept to be read


def test_no_validation_pairs_while_val_period_is_set(tmp_path):
    message = refused(tmp_path, make_prepared(tmp_path / "d", val=0), "dpo.val_period=5",
                      "checkpointing.save_period=10")
    assert "dpo.val_period=5 but" in message and "no validation pairs" in message
    assert "checkpointing.metric_name=val:validation-default_loss needs validation pairs" in message
    build(tmp_path, make_prepared(tmp_path / "d2", val=0), "dpo.val_period=0",
          "checkpointing.metric_name=null")  # the fix the message names works


@pytest.mark.parametrize("pair, why", [
    (preference_pair(0, ranks=(0, 0)), "both completions have rank 0"),
    (preference_pair(0, chosen="same", rejected="same"), "identical"),
    ({"context": [], "completions": [1]}, "not a PreferenceDataset record"),
])
def test_ties_and_broken_pairs_are_refused_with_their_line(tmp_path, pair, why):
    rows = [preference_pair(i) for i in range(8)]
    rows[3] = pair
    message = refused(tmp_path, make_prepared(tmp_path / "d", train=rows))
    assert "train.jsonl:4: " in message and why in message


def test_binary_tie_is_refused(tmp_path):
    rows = [{"prompt": "p", "chosen": "x", "rejected": "x"}] + \
           [{"prompt": "p", "chosen": f"a{i}", "rejected": f"b{i}"} for i in range(8)]
    assert "same text" in refused(tmp_path, make_prepared(tmp_path / "d", train=rows, fmt="binary"))


def test_a_pair_file_edited_after_prepare(tmp_path):
    data = make_prepared(tmp_path / "d", train=9)
    lines = (data / "train.jsonl").read_text().splitlines(True)
    (data / "train.jsonl").write_text("".join(lines[:8]))
    assert "changed after stage=prepare wrote it" in refused(tmp_path, data)
    plan, loaded = build(tmp_path, data, "train.allow_edited_data=true")
    assert loaded.train_pairs == 8  # counted, not taken from the manifest


def test_a_folder_that_prepare_did_not_write(tmp_path):
    assert "does not exist: data.output_dir must be a folder written by stage=prepare" in \
        refused(tmp_path, tmp_path / "nothing")
    data = make_prepared(tmp_path / "d")
    (data / "manifest.json").write_text(json.dumps({"manifest_version": 99, "format": "preference",
                                                    "pairs": {"train": 1, "val": 0}}))
    assert "manifest_version 99" in refused(tmp_path, data)


def test_save_period_must_be_a_multiple_of_val_period(tmp_path):
    message = refused(tmp_path, make_prepared(tmp_path / "d"), "dpo.val_period=4",
                      "checkpointing.save_period=6")
    assert "save_period=6 is not a multiple of dpo.val_period=4" in message


def test_batch_must_split_over_micro_batches_and_ranks(tmp_path):
    message = refused(tmp_path, make_prepared(tmp_path / "d", train=16), "policy.train_global_batch_size=6",
                      "policy.train_micro_batch_size=4")
    assert "not a multiple of train_micro_batch_size x data-parallel ranks = 4 x 1" in message
    message = refused(tmp_path, make_prepared(tmp_path / "d2", train=16), "launcher=multi_gpu",
                      "launcher.gpus_per_node=3",
                      "+nemo_rl_overrides.policy.dtensor_cfg.tensor_parallel_size=2")
    assert "3 GPUs" in message and "not divisible by the dtensor TP*CP size 2" in message


def test_several_problems_come_in_one_message(tmp_path):
    message = refused(tmp_path, make_prepared(tmp_path / "d", train=2, val=0),
                      "dpo.val_period=4", "checkpointing.save_period=6")
    assert "problems" in message and message.count("\n  - ") >= 3


def test_schema_catches_what_nemo_rl_would_fail_on(tmp_path):
    message = refused(tmp_path, make_prepared(tmp_path / "d"), "container.base_config=dpo",
                      "checkpointing.metric_name=val_loss", "+nemo_rl_overrides.data.default=null",
                      "policy.precision=fp8")
    assert "defaults: 'dpo' does not match" in message
    assert "checkpointing.metric_name" in message
    assert "data.default: None is not of type 'object'" in message
    assert "policy.precision" in message


def test_secrets_are_refused_before_anything_is_written(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_verysecretvalue")
    message = refused(tmp_path, make_prepared(tmp_path / "d"),
                      "+nemo_rl_overrides.logger.wandb.api_key=abcdef123",
                      "logger.wandb.project=hf_verysecretvalue")
    assert "logger.wandb.api_key holds a secret" in message
    assert "the value of $HF_TOKEN appears" in message
    assert "hf_verysecretvalue" not in message
    assert not (tmp_path / "run" / "nemo_rl_dpo.yaml").exists()


def test_dynamic_batching_is_refused(tmp_path):
    message = refused(tmp_path, make_prepared(tmp_path / "d"),
                      "+nemo_rl_overrides.policy.dynamic_batching.enabled=true")
    assert "dynamic_batching" in message


def test_the_sample_rollouts_prepare_and_pass(tmp_path, prepare):
    from train_helpers import SAMPLE

    if not SAMPLE.is_file():
        pytest.skip("samples/rollouts.jsonl is not there")
    manifest, folder = prepare(SAMPLE)
    data = prepared.load(folder)
    assert (data.train_pairs, data.val_pairs) == (manifest["pairs"]["train"], manifest["pairs"]["val"])
    assert data.hashes["train"] == manifest["outputs"]["train"]["sha256"]
    plan, _ = build(tmp_path, folder, "policy.train_global_batch_size=4")
    validate.check(plan.nemo_rl, data, "x")  # the written doc passes on its own too
