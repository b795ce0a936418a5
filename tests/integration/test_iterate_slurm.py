"""launcher=slurm in the loop, on the 2-node Slurm cluster of tests/infra/slurm_up.sh: what the
loop runs where the launcher runs NeMo RL (recipe.iterate.place), as real srun steps.

- the policy server: a step on a node, listening on the node's address (127.0.0.2 / 127.0.0.3
  here: Slurm's NodeAddr), found through the node name the step writes; stopping it ends the step;
- the export: NeMo RL's converter command in a step, in launcher.workdir, with iterate.dcp_to_hf.env;
  its output renamed into round_K/policy (a stand-in converter: the real one runs in
  test_nemo_rl_converter.py; bare-metal, launcher.container=null, as the other Slurm tests).
Training with launcher.wait=true (the loop forces it) is tests/integration/test_slurm_cluster.py's.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request

import pytest
from engines import REPO, slurm_cluster
from omegaconf import OmegaConf

pytestmark = pytest.mark.integration

SLURM = ["launcher=slurm", "launcher.container=null", "launcher.gres=false", "launcher.gpus_per_node=1",
         "launcher.time=00:10:00", "launcher.exclusive=false", "launcher.cpus_per_node=1"]


def squeue() -> str:
    return subprocess.run(["squeue", "-h", "-o", "%j %T"], capture_output=True, text=True, timeout=30).stdout


def test_a_server_in_a_slurm_step_is_reached_at_its_node_and_ends_with_it(tmp_path, monkeypatch):
    env = slurm_cluster()
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    from recipe import processes
    from recipe.iterate import place
    from recipe.iterate.serving import answers, free_port

    launcher = OmegaConf.create({"name": "slurm", "time": "00:10:00", "gres": False, "gpus_per_node": 1,
                                 "cpus_per_node": 1, "container": None, "setup": "export GYM_DPO_MARK=set"})
    where = place.Slurm(launcher, tmp_path)
    port = free_port()
    node_file = tmp_path / ".serve.node"
    argv, cwd = where.wrap([sys.executable, "-c", "import os, sys, http.server as h; assert os.environ['GYM_DPO_MARK'];"
                            f" h.test(HandlerClass=h.SimpleHTTPRequestHandler, port={port}, bind='0.0.0.0')"],
                           tmp_path, name="serve-test", gpus=1, node_file=node_file)
    (tmp_path / "v1").mkdir()
    (tmp_path / "v1" / "models").write_text("{}")
    found = []

    def ready(service) -> bool:
        address = where.address(node_file)
        if address and answers(f"http://{address}:{port}/v1/models"):
            found.append(address)
            return True
        return False

    with processes.Service("serve:test", argv, tmp_path / "serve.log", cwd=cwd, ready=ready, timeout=120):
        assert found[0] in ("127.0.0.2", "127.0.0.3")  # the node's own address, not loopback 127.0.0.1
        assert "gym-dpo-serve-test RUNNING" in squeue()
        with urllib.request.urlopen(f"http://{found[0]}:{port}/v1/models", timeout=10) as response:
            assert response.status == 200
    deadline = time.monotonic() + 60
    while "gym-dpo-serve-test" in squeue() and time.monotonic() < deadline:
        time.sleep(1)
    assert "gym-dpo-serve-test" not in squeue()  # stopping srun ended the step and its job


def test_the_export_runs_nemo_rl_s_converter_in_a_slurm_step(tmp_path, monkeypatch):
    env = slurm_cluster()
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    from hydra import compose, initialize_config_module

    from recipe.iterate import plan as plan_mod
    from recipe.iterate.stage import Loop

    sys.path.insert(0, str(REPO / "tests" / "unit"))
    from test_iterate import STAND_IN_CONVERTER

    workdir = tmp_path / "nemo-rl"
    (workdir / "examples").mkdir(parents=True)
    (workdir / "examples" / "convert.py").write_text(
        "import os\nassert os.environ['GYM_DPO_MARK'] == 'set', 'iterate.dcp_to_hf.env did not reach the step'\n"
        + STAND_IN_CONVERTER)
    overrides = ["stage=iterate", f"run_dir={tmp_path / 'run'}", "model=qwen2.5-1.5b", "serving=vllm", *SLURM,
                 f"launcher.workdir={workdir}", f"iterate.dcp_to_hf.runner=[{sys.executable},examples/convert.py]",
                 "+iterate.dcp_to_hf.env.GYM_DPO_MARK=set"]
    with initialize_config_module("recipe.configs", version_base="1.3"):
        cfg = compose("recipe", overrides=overrides)
    monkeypatch.chdir(REPO)
    monkeypatch.setattr(plan_mod, "_choices", lambda: ({"model": "qwen2.5-1.5b", "launcher": "slurm",
                                                         "container": "nemo_rl"}, overrides))
    p = plan_mod.build(cfg)
    assert p.train_argv(tmp_path, tmp_path, "m")[-1] == "launcher.wait=true"
    step = tmp_path / "run" / "round_1" / "train" / "checkpoints" / "step_3"
    (step / "policy" / "weights").mkdir(parents=True)
    policy = Loop(p).trained_policy(1)
    seen = json.loads((policy / "config.json").read_text())
    assert seen["cwd"] == str(workdir) and seen["--dcp-ckpt-path"] == str(step / "policy" / "weights")
    assert policy == tmp_path / "run" / "round_1" / "policy"
    assert not (tmp_path / "run" / "round_1" / ".policy.partial").exists()
    assert "gym-dpo-dcp-to-hf-1" not in squeue()
