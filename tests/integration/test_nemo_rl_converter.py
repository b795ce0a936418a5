"""NeMo RL's own DCP -> Hugging Face converter (v0.7.0 `examples/converters/convert_dcp_to_hf.py`,
from its source tree in the reference files: engines.nemo_rl_checkout; in CI too) on a checkpoint
in NeMo RL's layout, through the loop's export step.

The checkpoint: `gym-dpo stage=all launcher=single_gpu` as on a GPU (the NeMo RL YAML inheriting
the checkout's own examples/configs/dpo.yaml, run in the checkout as NeMo RL's folder), with the
CPU runner standing in for run_dpo.py: it writes `step_N/config.yaml`, `step_N/policy/weights`
(torch DCP) and `step_N/policy/tokenizer`. The converter runs on a CPU: it imports only torch,
transformers and PyYAML (nemo_rl/utils/native_checkpoint.py). Its output must hold exactly the
trained weights (the CPU runner's own `model/` of the same last step).
"""

from __future__ import annotations

import json
import sys

import pytest
from engines import REPO, SAMPLE, converter_settings, gym_dpo_cli, nemo_rl_checkout, run

pytest.importorskip("trl")
pytestmark = pytest.mark.integration


def test_the_loop_exports_a_nemo_rl_checkpoint_with_nemo_rl_s_converter(tmp_path, monkeypatch):
    import torch
    from hydra import compose, initialize_config_module
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from recipe.iterate import plan as plan_mod
    from recipe.iterate.stage import Loop

    checkout = nemo_rl_checkout()
    run_dir = tmp_path / "run" / "round_1" / "train"
    run([*gym_dpo_cli(), "stage=all", f"data.input={SAMPLE}", f"run_dir={run_dir}",
         f"data.output_dir={tmp_path / 'pairs'}", "model=tiny", "launcher=single_gpu",
         f"launcher.runner=[{sys.executable},-m,recipe.train.local_dpo]", f"container.nemo_rl_dir={checkout}",
         "dpo.max_num_steps=2", "dpo.val_period=2", "checkpointing.save_period=2"],
        cwd=tmp_path, timeout=900, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    step = run_dir / "checkpoints" / "step_2"
    assert (step / "policy" / "weights" / ".metadata").is_file()  # NeMo RL's DTensor (v1) layout
    assert (step / "policy" / "tokenizer" / "tokenizer_config.json").is_file()
    assert (step / "config.yaml").is_file() and (run_dir / "model" / "config.json").is_file()

    # the loop's export step, as configured for the GPU path, the converter from the checkout
    overrides = ["stage=iterate", f"run_dir={tmp_path / 'run'}", "model=qwen2.5-1.5b", "launcher=single_gpu",
                 "serving=vllm", f"container.nemo_rl_dir={checkout}",
                 *converter_settings(checkout)]
    with initialize_config_module("recipe.configs", version_base="1.3"):
        cfg = compose("recipe", overrides=overrides)
    monkeypatch.chdir(REPO)
    monkeypatch.setattr(plan_mod, "_choices", lambda: ({"model": "qwen2.5-1.5b", "launcher": "single_gpu",
                                                         "container": "nemo_rl"}, overrides))
    loop = Loop(plan_mod.build(cfg))
    policy = loop.trained_policy(1)
    assert policy == tmp_path / "run" / "round_1" / "policy"
    log = (tmp_path / "run" / "round_1" / "logs" / "dcp_to_hf.log").read_text()
    assert "Using dcp_ckpt_path of Dtensor V1" in log and "Saved HF checkpoint to" in log
    assert sorted(p.name for p in policy.iterdir() if p.name.startswith(("pytorch_model", "config", "tokenizer"))) \
        == ["config.json", "pytorch_model.bin", "tokenizer.json", "tokenizer_config.json"]
    assert not (policy / "generation_config.json").exists()  # as the GPU path: the loop pins the sampler

    converted = AutoModelForCausalLM.from_pretrained(policy)
    trained = AutoModelForCausalLM.from_pretrained(run_dir / "model")
    a, b = converted.state_dict(), trained.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (AutoTokenizer.from_pretrained(policy).chat_template
            == AutoTokenizer.from_pretrained(run_dir / "model").chat_template)
    assert json.loads((policy / "config.json").read_text())["model_type"] == "llama"
    assert loop.step_export(1) == {"policy": str(policy), "artifact": str(policy)}  # vLLM serves the folder
