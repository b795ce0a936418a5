"""Model presets hold model facts; training values come from dpo/<model>.

Before, `model=tiny` (the default) also set the tiny model's training values (lr 1e-3, batch 8,
30 steps), so `policy.model_name=Qwen/...` on any launcher wrote them for a 7B model. Now:
- a model preset (configs/model/) sets model facts only;
- recipe.yaml loads NeMo RL's training values (configs/dpo/default.yaml), then the model's own
  on top when it has some (`optional dpo: ${model}`: configs/dpo/<model>.yaml), so a model trained
  on NeMo RL's values is one preset file;
- values chosen for one model (`values_for_model`) are refused for any other policy.model_name.
Every model preset with every launcher, plus the documented overrides, is composed and written
here; the YAML always carries the training values of its own model's preset.
"""

from __future__ import annotations

import itertools

import pytest
import yaml
from omegaconf import OmegaConf
from train_helpers import REPO, compose_config, make_prepared

from recipe.errors import RecipeError
from recipe.train import nemo_rl, prepared, tiny_model

CONFIGS = REPO / "configs"
MODEL_FACTS = ("policy.model_name", "policy.tokenizer", "policy.max_total_sequence_length",
               "policy.precision")
OTHER_NAME = "org/another-model"  # policy.model_name=ORG/NAME, as the README offers


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


MODELS, LAUNCHERS = options("model"), options("launcher")


def leaves(node, prefix=""):
    if isinstance(node, dict) and node:
        for key, value in node.items():
            yield from leaves(value, f"{prefix}.{key}" if prefix else str(key))
    else:
        yield prefix, node


def is_fact(key: str) -> bool:
    return any(key == f or key.startswith(f + ".") for f in MODEL_FACTS)


def model_args(model: str) -> list[str]:
    return [f"model={model}"] + ([f"policy.model_name={OTHER_NAME}"] if model == "hf" else [])


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return prepared.load(make_prepared(tmp_path_factory.mktemp("presets") / "data"))


@pytest.fixture(autouse=True)
def no_tiny_build(monkeypatch):
    """Build the YAML without building the tiny model (its name is what matters here)."""
    monkeypatch.setattr(tiny_model, "resolve_model_name", lambda name, run_dir, train_file: name)


def written(tmp_path, data, *overrides) -> dict:
    cfg = compose_config(f"run_dir={tmp_path / 'run'}", f"data.output_dir={data.folder}", *overrides)
    return nemo_rl.build(cfg, data, tmp_path / "run")


def training_values(doc: dict) -> dict:
    """The written training values: policy/dpo/checkpointing leaves that are not model facts
    (nor the run folder's checkpoint path)."""
    return {key: value for section in ("policy", "dpo", "checkpointing")
            for key, value in leaves(doc[section], section)
            if not is_fact(key) and key != "checkpointing.checkpoint_dir"}


@pytest.fixture(scope="module")
def presets(tmp_path_factory, data) -> dict:
    """model preset -> the training values `model=<preset>` alone writes."""
    root = tmp_path_factory.mktemp("preset-values")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tiny_model, "resolve_model_name", lambda name, run_dir, train_file: name)
        return {model: training_values(written(root / model, data, *model_args(model)))
                for model in MODELS}


def test_model_presets_hold_model_facts_only():
    for model in MODELS:
        text = (CONFIGS / "model" / f"{model}.yaml").read_text()
        document = yaml.safe_load(text) or {}
        assert "defaults" not in document, model  # no preset pulls training values in
        keys = [key for key, _ in leaves(document)]
        assert keys and all(is_fact(key) for key in keys), (model, keys)
    for launcher in LAUNCHERS:
        assert "@package _global_" not in (CONFIGS / "launcher" / f"{launcher}.yaml").read_text()


def test_recipe_yaml_picks_the_training_values_of_the_model():
    text = (CONFIGS / "recipe.yaml").read_text()
    assert "- dpo/default " in text and "- optional dpo: ${model} " in text
    assert "${model}" in text
    for option in set(options("dpo")) - {"default"}:  # no values file that only repeats default
        document = yaml.safe_load((CONFIGS / "dpo" / f"{option}.yaml").read_text()) or {}
        assert "defaults" not in document and document, option


@pytest.mark.parametrize("model,launcher", list(itertools.product(MODELS, LAUNCHERS)))
def test_every_preset_with_every_launcher_writes_its_own_training_values(tmp_path, data, presets,
                                                                          model, launcher):
    own = presets[model]
    values = training_values(written(tmp_path, data, *model_args(model), f"launcher={launcher}"))
    assert values == own
    for other, theirs in presets.items():
        if other == model:
            continue
        differing = {k for k in theirs if theirs[k] != own.get(k)}
        assert all(values[k] != theirs[k] for k in differing), (other, differing)


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_a_real_model_name_never_gets_the_tiny_models_values(tmp_path, data, presets, launcher):
    tiny = presets["tiny"]
    assert tiny["policy.optimizer.kwargs.lr"] == 1e-3  # what must never reach a real model
    # the README's old route: the default preset (tiny) with another model's name
    for overrides in ([f"policy.model_name={OTHER_NAME}"],
                      ["model=tiny", f"policy.model_name={OTHER_NAME}"],
                      [f"policy.model_name={OTHER_NAME}", "dpo=tiny", "model=qwen2.5-1.5b"]):
        with pytest.raises(RecipeError, match=f"policy.model_name={OTHER_NAME} with training values "
                                              "chosen for gym-dpo/tiny"):
            written(tmp_path, data, *overrides, f"launcher={launcher}")
    # the documented routes to another model: its preset, or model=hf with the name
    for overrides in (["model=hf", f"policy.model_name={OTHER_NAME}"],
                      ["model=qwen2.5-1.5b", f"policy.model_name={OTHER_NAME}"],  # e.g. a local copy
                      ["model=qwen2.5-1.5b", "dpo=smoke"]):
        values = training_values(written(tmp_path, data, *overrides, f"launcher={launcher}"))
        assert values["policy.optimizer.kwargs.lr"] == 5e-6, overrides
        assert all(values[k] != tiny[k] for k in ("policy.train_micro_batch_size",
                                                  "dpo.max_num_epochs")), overrides


def test_the_default_is_the_tiny_model_with_its_quick_cpu_values(tmp_path, data):
    doc = written(tmp_path, data)
    assert doc["policy"]["model_name"] == "gym-dpo/tiny"
    assert compose_config("data.input=x").launcher.name == "local_cpu"
    values = training_values(doc)
    assert (values["policy.train_global_batch_size"], values["dpo.max_num_steps"],
            values["policy.optimizer.kwargs.lr"]) == (8, 30, 1e-3)


def test_a_preset_must_set_the_model_facts(tmp_path, data):
    cfg = compose_config("model=hf", "data.input=x")  # no policy.model_name given
    with pytest.raises(Exception, match="model_name"):
        OmegaConf.to_container(cfg.policy, resolve=True, throw_on_missing=True)
