"""The CPU runner's mapping of NeMo RL's DPO config onto TRL, its checkpoints, metrics and batching.

Everything here runs without training: the config mapping and checkpoint rules are plain Python;
the sampler and scheduler need torch (skipped without the local extra).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from train_helpers import make_prepared, reference_dpo

from recipe.errors import RecipeError
from recipe.train.local import checkpoints, metrics, settings


def child(tmp_path: Path, parent: str | None, train: int | list = 16, **sections) -> Path:
    """A nemo_rl_dpo.yaml like the train stage writes, with `parent` as its defaults."""
    data = make_prepared(tmp_path / "data", train=train, val=4)
    doc = {} if parent is None else {"defaults": parent}
    doc.update({
        "policy": {"model_name": "gym-dpo/tiny", "tokenizer": {"name": "gym-dpo/tiny"},
                   "train_global_batch_size": 8, "train_micro_batch_size": 2,
                   "max_total_sequence_length": 256},
        "dpo": {"max_num_steps": 30, "max_num_epochs": 100, "reference_policy_kl_penalty": 0.1},
        "checkpointing": {"checkpoint_dir": str(tmp_path / "ckpt")},
        "data": {"_override_": True, "max_input_seq_length": "${policy.max_total_sequence_length}",
                 "shuffle": True, "num_workers": 1,
                 "train": {"dataset_name": "PreferenceDataset", "data_path": str(data / "train.jsonl"),
                           "split": "train"},
                 "validation": {"dataset_name": "PreferenceDataset", "data_path": str(data / "val.jsonl"),
                                "split": "train"}},
    })
    for name, values in sections.items():
        doc.setdefault(name, {}).update(values)
    path = tmp_path / "run" / "nemo_rl_dpo.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc))
    return path


def load(path: Path, *overrides: str) -> settings.Settings:
    config, notes = settings.load(path, list(overrides))
    return settings.from_config(config, path, notes)


def reference() -> dict:
    return yaml.safe_load(reference_dpo().read_text())


@pytest.fixture
def parent(tmp_path) -> str:
    target = tmp_path / "nemo-rl" / "dpo.yaml"
    target.parent.mkdir()
    shutil.copyfile(reference_dpo(), target)
    return str(target)


def test_keys_map_onto_trl_and_the_parent_fills_the_rest(tmp_path, parent):
    s = load(child(tmp_path, parent))
    assert s.beta == 0.1 and s.trl_loss() == (["sigmoid"], [1.0])
    assert (s.train_global_batch_size, s.train_micro_batch_size, s.gradient_accumulation_steps) == (8, 2, 4)
    assert s.optimizer_name == "torch.optim.AdamW" and s.optimizer_kwargs["lr"] == 5.0e-6  # from the parent
    assert s.max_total_sequence_length == 256 and s.val_period == 25 and s.save_period == 50
    assert s.checkpoint_dir == tmp_path / "ckpt" and s.run_dir == tmp_path / "run"
    assert s.validation is not None and s.validation.path.name == "val.jsonl"
    assert s.notes == []  # the parent was there


def test_length_normalization_picks_trl_s_preference_loss_and_the_sft_term_is_the_trainer_s(tmp_path, parent):
    s = load(child(tmp_path, parent), "dpo.sft_loss_weight=0.2", "dpo.preference_average_log_probs=true",
             "dpo.preference_loss_weight=0.5")
    assert s.trl_loss() == (["sigmoid_norm"], [0.5])  # TRL's `sft` is not NeMo RL's: recipe.train.local.loss
    assert s.sft_average_log_probs and s.sft_loss_weight == 0.2  # upstream links it to preference_average_log_probs
    assert not s.notes
    summed = load(child(tmp_path, parent), "dpo.sft_loss_weight=0.2", "dpo.sft_average_log_probs=false")
    assert not summed.sft_average_log_probs and not summed.notes  # summed as NeMo RL sums it


def test_overrides_follow_nemo_rl_grammar(tmp_path, parent):
    path = child(tmp_path, parent)
    assert load(path, "++dpo.max_num_steps=7").max_num_steps == 7
    with pytest.raises(RecipeError, match="not in the config"):
        load(path, "dpo.no_such_key=1")


def test_a_missing_parent_is_left_out_only_when_the_file_has_every_key(tmp_path):
    path = child(tmp_path, "/nowhere/examples/configs/dpo.yaml")
    with pytest.raises(RecipeError) as info:
        load(path)
    message = str(info.value)
    assert "policy.optimizer.name" in message and "policy.scheduler" in message
    assert "container.base_config" in message  # says how to fix it
    full = reference()
    complete = child(tmp_path, "/nowhere/examples/configs/dpo.yaml",
                     policy={k: full["policy"][k] for k in ("optimizer", "scheduler", "max_grad_norm")},
                     dpo=full["dpo"] | {"max_num_steps": 30, "max_num_epochs": 100},
                     checkpointing=full["checkpointing"] | {"checkpoint_dir": str(tmp_path / "ckpt")})
    s = load(complete)
    assert any("/nowhere/examples/configs/dpo.yaml" in note and "not on this machine" in note for note in s.notes)


def test_ignored_keys_are_listed_with_a_reason(tmp_path, parent):
    ignored = load(child(tmp_path, parent)).ignored
    flat = {key: reason for reason, keys in ignored.items() for key in keys}
    assert flat["cluster.gpus_per_node"] == settings.IGNORED["cluster"]
    assert flat["policy.dtensor_cfg.enabled"] == settings.IGNORED["policy.dtensor_cfg"]
    assert flat["policy.precision"] == settings.IGNORED["policy.precision"]
    assert "dpo.max_num_steps" not in flat and "policy.optimizer.kwargs.lr" not in flat


@pytest.mark.parametrize("override, match", [
    ("policy.train_micro_batch_size=3", "not a multiple"),
    ("data.train.dataset_name=HelpSteer3", "local PreferenceDataset or BinaryPreferenceDataset"),
    ("checkpointing.metric_name=loss", "must start with val: or train:"),
    ("policy.optimizer.name=apex.FusedAdam", "torch.optim"),
    ("dpo.max_num_steps=0", "dpo.max_num_steps=0"),
])
def test_bad_values_are_one_clear_error(tmp_path, parent, override, match):
    with pytest.raises(RecipeError, match=match):
        load(child(tmp_path, parent), override)


# -- checkpoints --------------------------------------------------------------------------------
def fake_checkpoint(folder: Path, step: int, **info) -> Path:
    path = folder / f"step_{step}"
    path.mkdir(parents=True)
    (path / "trainer_state.json").write_text("{}")
    (path / checkpoints.INFO).write_text(json.dumps({"step": step, **info}))
    return path


def test_retention_keeps_the_latest_and_the_best_k_by_metric(tmp_path):
    metric = "val:validation-default_loss"
    for step, loss in ((10, 0.5), (20, 0.2), (30, 0.4), (35, 0.9)):
        fake_checkpoint(tmp_path, step, **{metric: loss})
    deleted = checkpoints.retain(tmp_path, save_period=10, keep_top_k=1, metric_name=metric, higher_is_better=False)
    assert sorted(p.name for p in deleted) == ["step_10", "step_30"]
    assert [s for s, _ in checkpoints.steps(tmp_path)] == [20, 35]  # best periodic + the latest


def test_retention_without_metric_keeps_the_most_recent_and_null_k_keeps_all(tmp_path):
    for step in (10, 20, 30):
        fake_checkpoint(tmp_path, step)
    assert checkpoints.retain(tmp_path, 10, None, None, False) == []
    checkpoints.retain(tmp_path, 10, 2, None, False)
    assert [s for s, _ in checkpoints.steps(tmp_path)] == [20, 30]


def test_only_complete_checkpoints_are_resumed_from(tmp_path):
    fake_checkpoint(tmp_path, 10)
    (tmp_path / "step_20").mkdir()                     # no training_info.json: never finalized
    (tmp_path / "checkpoint-30").mkdir()               # the Trainer's half-written save
    assert checkpoints.latest(tmp_path).name == "step_10"
    assert checkpoints.clear_partial(tmp_path) == [tmp_path / "checkpoint-30"]


def test_finalize_adds_nemo_rl_files_and_replaces_the_same_step(tmp_path):
    for attempt in (1, 2):
        folder = tmp_path / "checkpoint-10"
        folder.mkdir()
        (folder / "attempt").write_text(str(attempt))
        target = checkpoints.finalize(folder, 10, {"step": 10}, {"dpo": {"max_num_steps": 30}})
    assert (target / "attempt").read_text() == "2" and not folder.exists()
    assert json.loads((target / "training_info.json").read_text()) == {"step": 10}
    assert yaml.safe_load((target / "config.yaml").read_text()) == {"dpo": {"max_num_steps": 30}}


# -- metrics ------------------------------------------------------------------------------------
def test_trl_log_keys_become_nemo_rl_metric_names():
    kind, train = metrics.nemo_names({"loss": 0.5, "rewards/accuracies": 0.75, "rewards/chosen": 0.1,
                                      "rewards/rejected": -0.2, "grad_norm": 1.5, "learning_rate": 1e-3,
                                      "entropy": 3.0, "epoch": 1.0}, preference_only_weight=1.0)
    assert kind == "train" and train == {
        "train:loss": 0.5, "train:accuracy": 0.75, "train:rewards_chosen_mean": 0.1,
        "train:rewards_rejected_mean": -0.2, "train:grad_norm": 1.5, "train:lr": 1e-3,
        "train:preference_loss": 0.5}
    kind, val = metrics.nemo_names({"eval_loss": 0.4, "eval_rewards/accuracies": 1.0}, preference_only_weight=None)
    assert kind == "val" and val == {"val:validation-default_loss": 0.4, "val:validation-default_accuracy": 1.0}


def test_metrics_log_drops_rows_after_the_resumed_step(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "train:loss": 1.0 / s}) + "\n" for s in range(1, 16)))
    log = metrics.MetricsLog(path, resume_step=10)
    assert [r["step"] for r in metrics.read(path)] == list(range(1, 11))
    log.write({"step": 11, "train:loss": 0.1})
    assert log.at_step(11) == {"train:loss": 0.1}
    metrics.MetricsLog(path, resume_step=None)  # a fresh start begins a fresh file
    assert path.read_text() == ""


# -- batching and schedule (torch) --------------------------------------------------------------
def test_epochs_are_whole_global_batches_in_a_seeded_order():
    pytest.importorskip("trl")
    from recipe.train.local.trainer import WholeBatchSampler

    sampler = WholeBatchSampler(21, 8, shuffle=True, seed=3)
    first = list(sampler)
    assert len(sampler) == len(first) == 16 and len(set(first)) == 16
    assert list(sampler) == first                     # the same epoch again (a resume) sees the same order
    sampler.set_epoch(1)
    assert list(sampler) != first
    assert list(WholeBatchSampler(21, 8, shuffle=False, seed=3)) == list(range(16))


def test_the_scheduler_follows_nemo_rl_spec():
    torch = pytest.importorskip("torch")
    pytest.importorskip("trl")
    from recipe.train.local.trainer import build_scheduler

    spec = reference()["policy"]["scheduler"]
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = build_scheduler(optimizer, spec)
    seen = []
    for _ in range(25):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen[0] == pytest.approx(0.1) and seen[10] == pytest.approx(0.55) and seen[24] == pytest.approx(1.0)
    with pytest.raises(RecipeError, match="milestones"):
        build_scheduler(optimizer, spec[:2])


def test_models_come_from_this_machine_only(tmp_path, parent, monkeypatch):
    pytest.importorskip("huggingface_hub")
    from recipe.train.local import runner

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    s = load(child(tmp_path, parent))
    with pytest.raises(RecipeError, match="never downloads"):
        runner.local_model("some-org/some-model", "policy.model_name", s)
    folder = tmp_path / "my-model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    assert runner.local_model(str(folder), "policy.model_name", s) == str(folder)
