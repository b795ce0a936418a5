"""Launch profiles: the command each builds, dry runs, the subprocess executor for real (with a
stand-in for run_dpo.py), the Docker SDK container spec, and the run folder's records."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest
from train_helpers import compose_config, make_prepared, train_overrides

from recipe.errors import RecipeError
from recipe.train import launchers, stage
from recipe.train.executors import docker_sdk
from recipe.train.launchers import single_gpu
from recipe.train.plan import build_plan

RUN_DPO = ["uv", "run", "python", "examples/run_dpo.py"]


def plan_for(tmp_path, *overrides):
    data = make_prepared(tmp_path / "data")
    cfg = compose_config(*train_overrides(tmp_path, data, *overrides))
    return build_plan(cfg)[0], cfg


def test_unknown_launcher_names_the_choices():
    with pytest.raises(RecipeError, match="is not a launcher; choose one of") as info:
        launchers.load("k8s")
    assert all(name in str(info.value) for name in ("dry_run", "multi_gpu", "single_gpu", "slurm"))
    assert launchers.load("multi_gpu").build_command is single_gpu.build_command


@pytest.mark.parametrize("name", ["single_gpu", "multi_gpu", "dry_run"])
def test_one_node_profiles_run_run_dpo_in_opt_nemo_rl(tmp_path, name):
    plan, _ = plan_for(tmp_path, f"launcher={name}")
    argv = launchers.load(name).build_command(plan)
    assert argv == RUN_DPO + ["--config", str(tmp_path / "run" / "nemo_rl_dpo.yaml")]
    assert launchers.describe(launchers.load(name), plan) == \
        f"cd /opt/nemo-rl && uv run python examples/run_dpo.py --config {tmp_path / 'run' / 'nemo_rl_dpo.yaml'}"


def test_runner_workdir_and_overrides_are_configurable(tmp_path):
    plan, _ = plan_for(tmp_path, "launcher=single_gpu", "launcher.runner=[python,run.py]",
                       "launcher.workdir=/src/RL", 'launcher.overrides=["dpo.max_num_steps=3","~dpo.seed"]')
    assert single_gpu.build_command(plan) == ["python", "run.py", "--config", str(plan.config_path),
                                              "dpo.max_num_steps=3", "~dpo.seed"]
    assert single_gpu.describe(plan).startswith("cd /src/RL && python run.py")
    with pytest.raises(RecipeError, match="launcher.overrides"):
        plan_for(tmp_path / "b", "launcher=single_gpu", "launcher.overrides=['a.b=[1']")


@pytest.mark.parametrize("profile", [("launcher=dry_run",), ("launcher=single_gpu", "launcher.dry_run=true"),
                                     ("launcher=slurm", "launcher.dry_run=true")])
def test_dry_run_writes_everything_and_launches_nothing(tmp_path, monkeypatch, capsys, profile):
    module = launchers.load(profile[0].split("=")[1])
    monkeypatch.setattr(module, "launch", lambda plan: pytest.fail("a dry run launched"))
    data = make_prepared(tmp_path / "data")
    assert stage.run(compose_config(*train_overrides(tmp_path, data, *profile))) == 0
    run = tmp_path / "run"
    line = (run / "command.txt").read_text().strip()
    assert line in capsys.readouterr().out
    record = json.loads((run / "command.json").read_text())
    assert record["dry_run"] is True and record["argv"] == module.build_command(build_plan(
        compose_config(*train_overrides(tmp_path, data, *profile)))[0])
    provenance = json.loads((run / "provenance.json").read_text())
    assert provenance["data"]["sha256"]["train"] == json.loads(
        (data / "manifest.json").read_text())["outputs"]["train"]["sha256"]
    assert provenance["nemo_rl_config"]["path"] == str(run / "nemo_rl_dpo.yaml")
    assert (run / "recipe_config.yaml").is_file()


FAKE_RUN_DPO = textwrap.dedent("""\
    # stands in for NeMo RL's examples/run_dpo.py: loads the config the way NeMo RL does
    import argparse, sys
    from recipe.train import nemo_rl_loader
    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    args, overrides = parser.parse_known_args()
    cfg = nemo_rl_loader.resolved(nemo_rl_loader.load_with_overrides(args.config, overrides))
    print("steps", cfg["dpo"]["max_num_steps"], "train", cfg["data"]["train"]["data_path"])
    sys.exit(cfg["dpo"].get("exit_code", 0))
""")


def _subprocess_run(tmp_path, *more):
    from train_helpers import fake_nemo_rl
    nemo_rl_dir = fake_nemo_rl(tmp_path / "c")
    (nemo_rl_dir / "run_dpo.py").write_text(FAKE_RUN_DPO)
    data = make_prepared(tmp_path / "data")
    cfg = compose_config(*train_overrides(
        tmp_path, data, "launcher=single_gpu", f"container.nemo_rl_dir={nemo_rl_dir}",
        f"launcher.runner=[{sys.executable},run_dpo.py]", 'launcher.overrides=["dpo.max_num_steps=5"]',
        *more))
    return stage.run(cfg)


def test_subprocess_executor_runs_the_command_and_logs_it(tmp_path, capfd):
    assert _subprocess_run(tmp_path) == 0
    out = capfd.readouterr().out
    assert f"steps 5 train {tmp_path / 'data' / 'train.jsonl'}" in out
    assert "steps 5" in (tmp_path / "run" / "train.log").read_text()


def test_a_failed_training_is_an_error_with_its_exit_code_and_log_tail(tmp_path):
    with pytest.raises(RecipeError) as info:
        _subprocess_run(tmp_path, "+nemo_rl_overrides.dpo.exit_code=3")
    assert info.value.exit_code == 3
    assert "exited with code 3" in str(info.value) and "steps 5" in str(info.value)


def test_subprocess_outside_the_container_says_what_to_do(tmp_path):
    plan, _ = plan_for(tmp_path, "launcher=single_gpu", "launcher.workdir=/no/such/nemo-rl")
    with pytest.raises(RecipeError, match="launcher.executor=docker"):
        single_gpu.launch(plan)


def test_docker_container_spec(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_secret_value_123")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    cache = tmp_path / "hf"
    plan, _ = plan_for(tmp_path, "launcher=multi_gpu", "launcher.executor=docker",
                       "launcher.gpus_per_node=4", f"launcher.docker.hf_cache={cache}",
                       "launcher.docker.mounts=[/models:/models:ro]", "+launcher.env.NCCL_DEBUG=INFO")
    spec = docker_sdk.container_spec(plan, single_gpu.build_command(plan))
    run, data = tmp_path / "run", tmp_path / "data"
    assert spec["image"] == "nvcr.io/nvidia/nemo-rl:v0.7.0"
    assert spec["command"] == RUN_DPO + ["--config", str(run / "nemo_rl_dpo.yaml")]
    assert spec["working_dir"] == "/opt/nemo-rl"
    assert spec["volumes"] == {str(run): {"bind": str(run), "mode": "rw"},
                               str(data): {"bind": str(data), "mode": "ro"},
                               str(cache): {"bind": "/root/.cache/huggingface", "mode": "rw"},
                               "/models": {"bind": "/models", "mode": "ro"}}
    assert spec["environment"] == {"HF_TOKEN": "hf_secret_value_123", "NCCL_DEBUG": "INFO",
                                   "HF_HOME": "/root/.cache/huggingface"}
    assert spec["device_requests"] == [{"count": 4, "capabilities": [["gpu"]]}]
    assert spec["ipc_mode"] == "host" and "shm_size" not in spec
    assert {u["name"]: u["soft"] for u in spec["ulimits"]} == {"memlock": -1, "stack": 67108864}
    safe = json.dumps(docker_sdk.recordable(spec)) + docker_sdk.docker_run_line(spec)
    assert "hf_secret_value_123" not in safe and "-e HF_TOKEN" in safe and "--gpus 4" in safe
    kwargs = docker_sdk.to_docker_kwargs(spec)
    assert kwargs["device_requests"][0]["Count"] == 4 and kwargs["ulimits"][0]["Name"] == "memlock"


def test_docker_spec_without_gpus_and_with_shm(tmp_path):
    plan, _ = plan_for(tmp_path, "launcher=single_gpu", "launcher.executor=docker",
                       "launcher.docker.gpus=false", "launcher.docker.ipc_host=false",
                       "launcher.docker.hf_cache=null", "launcher.docker.user=1000:1000")
    spec = docker_sdk.container_spec(plan, ["true"])
    assert spec["device_requests"] == [] and spec["shm_size"] == "16g" and "ipc_mode" not in spec
    assert spec["user"] == "1000:1000" and "HF_HOME" not in spec["environment"]
    assert "device_requests" not in docker_sdk.to_docker_kwargs(spec)
    with pytest.raises(RecipeError, match="host:container"):
        docker_sdk._parse_mount("just-a-path")


def test_docker_executor_checks_the_digest_before_launching(tmp_path, monkeypatch):
    from recipe.train import container

    class Image:
        attrs = {"Id": "sha256:" + "1" * 64, "RepoDigests": ["nvcr.io/nvidia/nemo-rl@sha256:" + "2" * 64]}

    monkeypatch.setattr(container, "docker_client", lambda: object())
    monkeypatch.setattr(container, "local_image", lambda client, image: Image())
    (tmp_path / "lock.json").write_text(json.dumps(
        {"image": "nvcr.io/nvidia/nemo-rl:v0.7.0", "digest": "sha256:" + "3" * 64, "kind": "repo"}))
    plan, cfg = plan_for(tmp_path, "launcher=single_gpu", "launcher.executor=docker")
    with pytest.raises(RecipeError, match="but .* recorded sha256:3333"):
        single_gpu.check_image(plan)
    (tmp_path / "lock.json").write_text(json.dumps(
        {"image": "nvcr.io/nvidia/nemo-rl:v0.7.0", "digest": "sha256:" + "2" * 64, "kind": "repo"}))
    assert single_gpu.check_image(plan)["status"] == "match"
