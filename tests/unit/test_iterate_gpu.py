"""stage=iterate on a GPU launcher (single_gpu, multi_gpu, slurm, dry_run): what a GPU user's
first run starts with, without a GPU: the default model, the GPU preset, the vLLM server's
environment and the Slurm steps' sizes and environment (the commands, as the dry run prints them)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from test_iterate import build_plan, gpu_choices

from recipe.errors import RecipeError
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


# -- items: a Slurm step's environment, size and start-up clock ------------------------------------
def slurm_plan(tmp_path, *overrides):
    common = ["launcher.container=null", "launcher.gres=true", "launcher.gpus_per_node=8",
              f"launcher.hf_cache={tmp_path / 'hf'}", "+launcher.env.GYM_DPO_MARK=from-launcher-env"]
    return gpu_plan(tmp_path, *common, *overrides, launcher="slurm", model="qwen2.5-1.5b")


def option(argv, name):
    found = [a.split("=", 1)[1] for a in argv if a.startswith(f"--{name}=")]
    return found[0] if found else None


def test_a_slurm_step_is_sized_from_what_it_runs(tmp_path):
    """The server: the GPUs of its tensor x pipeline parallelism (not every GPU of the node), and
    serving.step's CPUs and memory per GPU; the converter: no GPU, twice the checkpoint's weights."""
    from recipe.iterate import place

    p = slurm_plan(tmp_path)
    argv, _ = p.place.wrap(["vllm"], None, name="serve-x", size=place.server_size(p.serving))
    assert (option(argv, "gpus-per-node"), option(argv, "cpus-per-task"), option(argv, "mem")) == ("1", "8", "32768M")
    tp = slurm_plan(tmp_path / "tp", "serving.args=[--tensor-parallel-size,2,-pp,2]")
    argv, _ = tp.place.wrap(["vllm"], None, name="serve-x", size=place.server_size(tp.serving))
    assert (option(argv, "gpus-per-node"), option(argv, "cpus-per-task"), option(argv, "mem")) == ("4", "32", "131072M")
    assert place.server_size(slurm_plan(tmp_path / "eq", "serving.args=['--tensor-parallel-size=2']").serving).gpus == 2
    step = tmp_path / "ckpt" / "step_3"
    (step / "policy" / "weights").mkdir(parents=True)
    (step / "policy" / "weights" / "__0_0.distcp").write_bytes(b"\0" * (3 * 2**20))
    argv, cwd, env = p.dcp_to_hf_step(step, tmp_path / "out", 1)
    assert option(argv, "gpus-per-node") is None and option(argv, "cpus-per-task") == "4"
    assert option(argv, "mem") == f"{2 * 3 + 4096}M"  # 2 x 3 MiB of weights + mem_extra 4G
    assert env == {"HF_HOME": str(tmp_path / "hf"), "GYM_DPO_MARK": "from-launcher-env"}
    given = slurm_plan(tmp_path / "given", "iterate.dcp_to_hf.step.mem=20G", "iterate.dcp_to_hf.step.cpus=2")
    argv, _, _ = given.dcp_to_hf_step(step, tmp_path / "out", 1)
    assert (option(argv, "cpus-per-task"), option(argv, "mem")) == ("2", "20480M")
    # in a container the job's values win over the image's own (pyxis keeps those unless named)
    boxed = slurm_plan(tmp_path / "box", "launcher.container=/shared/nemo-rl.sqsh")
    argv, _, _ = boxed.dcp_to_hf_step(step, tmp_path / "out", 1)
    assert option(argv, "container-env") == "GYM_DPO_MARK,HF_HOME" and "from-launcher-env" not in " ".join(argv)
    with pytest.raises(RecipeError, match="serving.step.mem='lots'"):
        place.server_size(slurm_plan(tmp_path / "bad", "serving.step.mem=lots").serving)


FAKE_SRUN = """#!/bin/bash
# a Slurm that queues every step QUEUE seconds, then runs its `bash -c SCRIPT` on the node `localhost`
while [[ "$1" != bash ]]; do echo "srun option: $1"; shift; done
sleep "$QUEUE"
export SLURMD_NODENAME=localhost
exec "$@"
"""


def test_a_slurm_server_step_gets_the_job_s_environment_and_its_start_up_time_counts_from_its_start(tmp_path,
                                                                                                  monkeypatch):
    from recipe.iterate import place, serving

    srun = tmp_path / "srun"
    srun.write_text(FAKE_SRUN)
    srun.chmod(0o755)
    monkeypatch.setenv("QUEUE", "4")
    p = slurm_plan(tmp_path, "serving.startup_timeout=2",
                   "serving.command=[bash,-c,'echo HF_HOME=$HF_HOME MARK=$GYM_DPO_MARK; sleep 60',server]")
    where = place.Slurm(p.launcher_cfg, tmp_path, srun=str(srun))
    log = tmp_path / "logs" / "serve.log"
    started = time.monotonic()
    with pytest.raises(RecipeError) as caught:
        with serving.serve(p.serving, "/m", "policy-round-0", log, p.sampler, where):
            pass
    waited = time.monotonic() - started
    message = str(caught.value)
    assert ("the policy server (policy-round-0, serving=vllm, Slurm step gym-dpo-serve-policy-round-0) on 127.0.0.1 "
            "was not ready 2s after it started (serving.startup_timeout") in message
    assert waited >= 4 + 2  # the queue does not eat the start-up time
    text = log.read_text()
    assert f"HF_HOME={tmp_path / 'hf'} MARK=from-launcher-env" in text
    assert "from-launcher-env" not in text.splitlines()[0]  # the command line holds no value of launcher.env
    assert not (tmp_path / "logs" / ".serve.node").exists()
    # and a step Slurm never starts is bounded apart, when asked
    monkeypatch.setenv("QUEUE", "30")
    p = slurm_plan(tmp_path, "serving.startup_timeout=2", "+serving.queue_timeout=1", "serving.command=[sleep,60]")
    with pytest.raises(RecipeError, match="Slurm step gym-dpo-serve-policy-round-0.*did not start within 1s"):
        with serving.serve(p.serving, "/m", "policy-round-0", log, p.sampler,
                           place.Slurm(p.launcher_cfg, tmp_path, srun=str(srun))):
            pass
