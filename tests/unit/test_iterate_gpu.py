"""stage=iterate on a GPU launcher (single_gpu, multi_gpu, slurm, dry_run): what a GPU user's
first run starts with, without a GPU: the default model, the GPU preset, the vLLM server's
environment and the Slurm steps' sizes and environment (the commands, as the dry run prints them)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from test_iterate import build_plan, gpu_choices

from recipe.iterate import report

REPO = Path(__file__).resolve().parents[2]


def gpu_plan(tmp_path, *overrides, launcher="single_gpu", model=None):
    task = [f"launcher={launcher}", "serving=vllm", *overrides] + ([f"model={model}"] if model else [])
    choices = {**gpu_choices(launcher), "model": model or "tiny"}
    return build_plan(f"run_dir={tmp_path}", *task, choices=choices, task=task)


# -- item: the default model on a GPU launcher --------------------------------------------------------
@pytest.mark.parametrize("launcher", ["single_gpu", "multi_gpu", "slurm", "dry_run"])
def test_a_gpu_launcher_without_model_trains_and_serves_a_hub_model(tmp_path, launcher):
    """The CPU default is SmolLM2 dequantized from a GGUF file into a folder of this machine's cache:
    neither NeMo RL's image (no `gguf`) nor a Slurm step (the folder is not mounted) can use it."""
    extra = ["launcher.gpus_per_node=1"] if launcher in ("multi_gpu", "slurm") else []
    p = gpu_plan(tmp_path, *extra, launcher=launcher)
    assert p.model_preset == "qwen2.5-1.5b" and p.model_name == "Qwen/Qwen2.5-1.5B-Instruct"
    assert p.base_source == "hub"
    assert any("iterate.gpu.default_model" in note for note in p.notes)
    text = "\n".join(report.dry_run_lines(p))
    assert "--model Qwen/Qwen2.5-1.5B-Instruct " in text and "models/SmolLM2" not in text


def test_a_cpu_model_named_on_a_gpu_launcher_is_its_hub_model_not_the_gguf_folder(tmp_path):
    p = gpu_plan(tmp_path, model="smollm2-135m")
    assert p.model_name == "HuggingFaceTB/SmolLM2-135M-Instruct" and p.base_source == "hub"
    cpu = build_plan(f"run_dir={tmp_path / 'cpu'}", "model=smollm2-135m",
                     choices={"model": "smollm2-135m", "launcher": "local_cpu"}, task=["model=smollm2-135m"])
    assert cpu.base_source == "offline:smollm2_base"  # on the CPU it still comes from the wheel


# -- item: the GPU preset ------------------------------------------------------------------------
def train_value(p, key):
    return [o.split("=", 1)[1] for o in p.train_argv(Path("/p"), Path("/t"), "m") if o.startswith(key + "=")][-1]


def test_a_gpu_launcher_gets_its_own_preset_printed_in_the_dry_run(tmp_path):
    p = gpu_plan(tmp_path, model="qwen2.5-1.5b")
    assert int(p.it.collect.tasks) == 256
    assert p.it.collect.sampling.max_output_tokens == p.it.eval.sampling.max_output_tokens == 1024
    assert train_value(p, "policy.train_micro_batch_size") == "2"  # not the whole global batch of 8
    assert p.fingerprint()["eval_sampling"]["max_output_tokens"] == 1024
    text = "\n".join(report.dry_run_lines(p))
    assert ("# iterate.gpu preset for launcher=single_gpu: iterate.collect.tasks=256, "
            "iterate.collect.sampling.max_output_tokens=1024, iterate.eval.sampling.max_output_tokens=1024") in text
    assert "++responses_create_params.max_output_tokens=1024" in text
    cpu = build_plan(f"run_dir={tmp_path / 'cpu'}")  # the CPU keeps its own values
    assert int(cpu.it.collect.tasks) == 64 and cpu.it.eval.sampling.max_output_tokens == 128
    assert train_value(cpu, "policy.train_micro_batch_size") == "8"
    assert not any("iterate.gpu" in note for note in cpu.notes)


def test_what_the_command_line_gives_wins_over_the_gpu_preset(tmp_path):
    p = gpu_plan(tmp_path, "iterate.collect.tasks=16", "iterate.eval.sampling.max_output_tokens=64",
                 "iterate.train.policy.train_micro_batch_size=8", model="qwen2.5-1.5b")
    assert int(p.it.collect.tasks) == 16 and p.it.eval.sampling.max_output_tokens == 64
    assert p.it.collect.sampling.max_output_tokens == 1024
    assert train_value(p, "policy.train_micro_batch_size") == "8"
    # 8 GPUs: one pair per rank, under the cap; a share the cap does not divide takes its largest divisor
    eight = gpu_plan(tmp_path / "8", "launcher.gpus_per_node=8", launcher="multi_gpu", model="qwen2.5-1.5b")
    assert train_value(eight, "policy.train_micro_batch_size") == "1"
    three = gpu_plan(tmp_path / "3", "iterate.train.policy.train_global_batch_size=9", "iterate.gpu.max_micro_batch=4",
                     model="qwen2.5-1.5b")
    assert train_value(three, "policy.train_micro_batch_size") == "3"


# -- item: the vLLM server runs as its venv's (NeMo RL's python-VllmGenerationWorker wrapper) -----
def test_the_vllm_server_starts_with_its_venv_s_virtual_env_and_path(tmp_path):
    from recipe.iterate import serving

    venv = tmp_path / "ray_venvs" / "VllmGenerationWorker"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"  # says what it was started with, whatever its arguments
    python.write_text('#!/bin/sh\necho "VIRTUAL_ENV=$VIRTUAL_ENV"\necho "first=$(echo "$PATH" | cut -d: -f1)"\n'
                      'echo "args=$*"\n')
    python.chmod(0o755)
    p = gpu_plan(tmp_path, f"serving.python={python}", model="qwen2.5-1.5b")
    argv = serving.server_argv(p.serving, "/m", 8000, "policy-round-0", p.sampler)
    said = subprocess.run(argv, capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"}).stdout
    assert f"VIRTUAL_ENV={venv}\n" in said and f"first={venv / 'bin'}\n" in said
    assert "args=-m vllm.entrypoints.openai.api_server --model /m --host 127.0.0.1 --port 8000 " in said
