"""NeMo RL's loader semantics (recipe.train.nemo_rl_loader), and our written YAML loaded with them
on top of NeMo RL's real dpo.yaml (v0.7.0) in a folder standing in for /opt/nemo-rl."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf
from train_helpers import REQUIRED_KEYS, compose_config, fake_nemo_rl, make_prepared, train_overrides

from recipe.train import nemo_rl_loader as loader
from recipe.train.plan import build_plan


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_relative_and_absolute_defaults_and_child_wins(tmp_path):
    write(tmp_path / "base" / "grand.yaml", "a: 1\nb: {x: 1, y: 1}\n")
    write(tmp_path / "base" / "parent.yaml", "defaults: grand.yaml\nb: {y: 2}\nc: 3\n")
    child = write(tmp_path / "run" / "child.yaml",
                  f"defaults: {tmp_path / 'base' / 'parent.yaml'}\nb: {{x: 9}}\n")
    cfg = loader.load(child)
    assert OmegaConf.to_container(cfg) == {"a": 1, "b": {"x": 9, "y": 2}, "c": 3}
    rel = write(tmp_path / "base" / "rel.yaml", "defaults: parent.yaml\nc: 4\n")
    assert loader.load(rel).c == 4 and loader.load(rel).b.y == 2


def test_a_list_of_parents_merges_in_order(tmp_path):
    write(tmp_path / "p1.yaml", "v: 1\nonly1: true\n")
    write(tmp_path / "p2.yaml", "v: 2\n")
    cfg = loader.load(write(tmp_path / "c.yaml", "defaults: [p1.yaml, p2.yaml]\n"))
    assert cfg.v == 2 and cfg.only1 is True


def test_override_marker_replaces_the_section(tmp_path):
    write(tmp_path / "p.yaml", "data: {train: {dataset_name: HelpSteer3}, validation: {split: validation}}\n")
    cfg = loader.load(write(tmp_path / "c.yaml",
                            "defaults: p.yaml\ndata: {_override_: true, train: {data_path: /x}}\n"))
    assert OmegaConf.to_container(cfg.data) == {"train": {"data_path": "/x"}}
    merged = loader.load(write(tmp_path / "m.yaml", "defaults: p.yaml\ndata: {train: {data_path: /x}}\n"))
    assert merged.data.train.dataset_name == "HelpSteer3"  # without the marker: deep merge


def test_missing_value_in_the_child_keeps_the_parent_value(tmp_path):
    write(tmp_path / "p.yaml", "k: 5\n")
    assert loader.load(write(tmp_path / "c.yaml", "defaults: p.yaml\nk: ???\n")).k == 5


def test_a_bare_name_as_on_the_docs_page_is_not_a_file(tmp_path):
    write(tmp_path / "dpo.yaml", "k: 1\n")
    with pytest.raises(loader.NemoRLConfigError, match="no such config file"):
        loader.load(write(tmp_path / "c.yaml", "defaults: dpo\n"))
    with pytest.raises(loader.NemoRLConfigError, match="not a path"):
        loader.load(write(tmp_path / "h.yaml", "defaults:\n  - policy: x\n"))


def test_override_grammar_in_struct_mode():
    cfg = OmegaConf.create({"a": {"b": 1, "c": [1, 2]}, "d": "x"})
    out = loader.apply_overrides(cfg, ["a.b=2", "+a.new=3", "++a.b=4", "++z.y=5", "~d", "a.c=[3]"])
    assert OmegaConf.to_container(out) == {"a": {"b": 4, "c": [3], "new": 3}, "z": {"y": 5}}
    for bad, match in (["a.nope=1"], "not in the config"), (["+a.b=1"], "already in the config"), \
                      (["~nope"], "cannot delete"), (["~d=y"], "not 'y'"), (["a.b=[1"], "bad override"):
        with pytest.raises(loader.NemoRLConfigError, match=match):
            loader.apply_overrides(cfg, bad)
    assert cfg.a.b == 1  # the input is not modified


@pytest.fixture
def nemo_rl_dir(tmp_path):
    return fake_nemo_rl(tmp_path / "container")


@pytest.mark.parametrize("fmt", ["preference", "binary"])
def test_written_yaml_loads_on_nemo_rl_dpo_yaml_with_every_required_key(tmp_path, nemo_rl_dir, fmt):
    data = make_prepared(tmp_path / "data", fmt=fmt)
    cfg = compose_config(*train_overrides(tmp_path, data, f"container.nemo_rl_dir={nemo_rl_dir}",
                                          "launcher=multi_gpu", "launcher.gpus_per_node=2",
                                          'launcher.overrides=["dpo.max_num_steps=11","+policy.extra=1"]'))
    plan, _ = build_plan(cfg)
    merged = loader.resolved(loader.load_with_overrides(plan.config_path, plan.overrides))
    for key in REQUIRED_KEYS:
        assert OmegaConf.select(OmegaConf.create(merged), key) is not None, key
    # ours on top of upstream; upstream where we are silent; HelpSteer3 gone
    assert merged["policy"]["model_name"] == merged["policy"]["tokenizer"]["name"] == \
        "Qwen/Qwen2.5-1.5B-Instruct"
    assert merged["policy"]["dtensor_cfg"]["enabled"] is True  # from upstream
    assert merged["policy"]["optimizer"]["name"] == "torch.optim.AdamW"  # merged, not replaced
    assert merged["dpo"]["max_num_steps"] == 11 and merged["policy"]["extra"] == 1  # command overrides
    assert merged["cluster"]["gpus_per_node"] == 2
    assert "HelpSteer3" not in str(merged["data"]) and "default" not in merged["data"]
    assert merged["data"]["train"]["split"] == merged["data"]["validation"]["split"] == "train"
    assert merged["data"]["train"]["dataset_name"] == ("PreferenceDataset" if fmt == "preference"
                                                      else "BinaryPreferenceDataset")
    assert merged["data"]["max_input_seq_length"] == merged["policy"]["max_total_sequence_length"]
    assert merged["checkpointing"]["checkpoint_dir"].startswith(str(tmp_path / "run"))
    assert "_override_" not in str(merged)


def test_the_reference_dpo_yaml_itself_loads(nemo_rl_dir):
    merged = loader.resolved(loader.load(nemo_rl_dir / "examples" / "configs" / "dpo.yaml"))
    assert merged["dpo"]["sft_average_log_probs"] is False  # ${.preference_average_log_probs}
