"""launcher=slurm in the loop, on the 2-node Slurm cluster of tests/infra/slurm_up.sh: what the
loop runs where the launcher runs NeMo RL (recipe.iterate.place), as real srun steps.

- the policy server: a step on a node, listening on the node's address (127.0.0.2 / 127.0.0.3
  here: Slurm's NodeAddr), found through the node name the step writes; stopping it ends the step;
- the export: NeMo RL's converter command in a step, in launcher.workdir, with iterate.dcp_to_hf.env;
  its output renamed into round_K/policy (a stand-in converter: the real one runs in
  test_nemo_rl_converter.py; bare-metal, launcher.container=null, as the other Slurm tests);
- both steps with the training job's environment (HF_HOME=launcher.hf_cache, launcher.env) and
  sized from what they run (CPUs, memory; Slurm's own record of the step's job says so);
- the whole loop, one round: collect, prepare, train as a Slurm job, export and serve in steps.
Training with launcher.wait=true (the loop forces it) is tests/integration/test_slurm_cluster.py's.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from engines import REPO, converter_settings, gym_dpo_cli, nemo_rl_checkout, run, slurm_cluster, unavailable
from omegaconf import OmegaConf
from test_iterate_loop import TINY, ours, tools  # noqa: F401 (tools: a fixture)
from test_slurm_cluster import BIN, DRIVER

pytestmark = pytest.mark.integration

SLURM = ["launcher=slurm", "launcher.container=null", "launcher.gres=false", "launcher.gpus_per_node=1",
         "launcher.time=00:10:00", "launcher.exclusive=false", "launcher.cpus_per_node=1",
         # the test cluster's nodes: 2 CPUs, 4096 MB each
         "iterate.dcp_to_hf.step.cpus=1", "iterate.dcp_to_hf.step.mem_extra=1G"]


def job_record(name: str) -> dict:
    """Slurm's record of the latest job of that name (jobs stay listed MinJobAge=300 s after they end)."""
    shown = subprocess.run(["scontrol", "show", "job", "-o"], capture_output=True, text=True, timeout=30).stdout
    import re

    records = [dict(re.findall(r"(\w+)=(\S*)", line)) for line in shown.splitlines()]
    found = [r for r in records if r.get("JobName") == name]
    assert found, f"no job {name} in scontrol show job"
    return max(found, key=lambda r: int(r["JobId"]))


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
                           tmp_path, name="serve-test", size=place.Size(gpus=1, cpus=1), node_file=node_file)
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
        "open(os.environ['GYM_DPO_SEEN'], 'w').write(os.environ.get('HF_HOME', '') + ' ' + os.environ.get("
        "'GYM_DPO_LAUNCHER_MARK', ''))\n" + STAND_IN_CONVERTER)
    overrides = ["stage=iterate", f"run_dir={tmp_path / 'run'}", "model=qwen2.5-1.5b", "serving=vllm", *SLURM,
                 f"launcher.workdir={workdir}", f"iterate.dcp_to_hf.runner=[{sys.executable},examples/convert.py]",
                 "+iterate.dcp_to_hf.env.GYM_DPO_MARK=set", f"+iterate.dcp_to_hf.env.GYM_DPO_SEEN={tmp_path / 'seen'}",
                 f"launcher.hf_cache={tmp_path / 'hf'}", "+launcher.env.GYM_DPO_LAUNCHER_MARK=from-launcher-env"]
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
    # the training job's environment reached the step: HF_HOME (launcher.hf_cache) and launcher.env
    assert (tmp_path / "seen").read_text() == f"{tmp_path / 'hf'} from-launcher-env"
    assert "from-launcher-env" not in (tmp_path / "run" / "round_1" / "logs" / "dcp_to_hf.log").read_text()
    # sized from what it runs: no GPU, iterate.dcp_to_hf.step.cpus, twice the (empty) weights + mem_extra
    job = job_record("gym-dpo-dcp-to-hf-1")
    assert job["NumCPUs"] == "1" and job["MinMemoryNode"] == "1G", job


def test_the_policy_server_step_gets_the_job_s_environment_and_its_size(tmp_path, monkeypatch):
    env = slurm_cluster()
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    from hydra import compose, initialize_config_module

    from recipe.iterate import place, serving
    from recipe.iterate import plan as plan_mod

    (tmp_path / "v1").mkdir()
    (tmp_path / "v1" / "models").write_text("{}")
    (tmp_path / "run").mkdir()
    server = tmp_path / "server.py"  # a server of /v1/models that says what it was given, on vLLM's --port
    server.write_text(f"""import os, sys, http.server as h
print("HF_HOME=" + os.environ["HF_HOME"], os.environ["GYM_DPO_LAUNCHER_MARK"], flush=True)
os.chdir({str(tmp_path)!r})
h.test(HandlerClass=h.SimpleHTTPRequestHandler, port=int(sys.argv[sys.argv.index("--port") + 1]), bind="0.0.0.0")
""")
    overrides = ["stage=iterate", f"run_dir={tmp_path / 'run'}", "model=qwen2.5-1.5b", "serving=vllm", *SLURM,
                 f"serving.command=[{sys.executable},{server}]", "serving.step.cpus=1", "serving.step.mem=2G",
                 f"launcher.hf_cache={tmp_path / 'hf'}", "+launcher.env.GYM_DPO_LAUNCHER_MARK=from-launcher-env"]
    with initialize_config_module("recipe.configs", version_base="1.3"):
        cfg = compose("recipe", overrides=overrides)
    monkeypatch.chdir(REPO)
    monkeypatch.setattr(plan_mod, "_choices", lambda: ({"model": "qwen2.5-1.5b", "launcher": "slurm",
                                                         "container": "nemo_rl"}, overrides))
    p = plan_mod.build(cfg)
    assert isinstance(p.place, place.Slurm)
    log = tmp_path / "logs" / "serve.log"
    with serving.serve(p.serving, "Qwen/Qwen2.5-1.5B-Instruct", "policy-round-0", log, p.sampler, p.place) as url:
        assert url.split("//")[1].split(":")[0] in ("127.0.0.2", "127.0.0.3")  # the node's address
        assert "gym-dpo-serve-policy-round-0 RUNNING" in squeue()
        job = job_record("gym-dpo-serve-policy-round-0")
        # one server without tensor parallelism on a GPU-less cluster: serving.step's CPUs and memory
        assert job["NumCPUs"] == "1" and job["MinMemoryNode"] == "2G", job
    text = log.read_text()
    assert f"HF_HOME={tmp_path / 'hf'} from-launcher-env" in text
    assert "from-launcher-env" not in text.splitlines()[0]  # the logged command line holds no value


def test_one_round_of_the_loop_on_slurm_trains_as_a_job_and_exports_and_serves_in_steps(tools, tmp_path):  # noqa: F811
    """The whole loop with launcher=slurm, bare-metal, the CPU runner in NeMo RL's place: round 0
    serves the base model in a step and evaluates it through NeMo Gym (here, on the "login node");
    round 1 collects, prepares, trains as a 2-node job (dpo.sub: Ray head and worker, the driver
    tests/integration/ray_dpo_driver.py), followed to its end, converts the checkpoint with NeMo RL
    v0.7.0's own converter (the reference source tree) in a step, serves it in a step, evaluates."""
    slurm_cluster()
    root = tools
    if not (BIN / "ray").exists():
        unavailable(f"no ray CLI beside {sys.executable} (pip install -e '.[slurm]')")
    checkout = nemo_rl_checkout()
    ray_temp = Path(tempfile.mkdtemp(prefix="gdi", dir="/tmp"))
    run_dir = tmp_path / "run"
    # smaller than test_iterate_loop.py's TINY: a step gets 2 CPUs, shared with the rest of the machine
    tiny = [o for o in TINY if not o.startswith(("iterate.collect.", "iterate.eval.", "iterate.train.policy."))]
    args = [*gym_dpo_cli(), "stage=iterate", f"run_dir={run_dir}", "iterate.rounds=1", *tiny,
            "iterate.collect.tasks=12", "iterate.collect.repeats=4", "iterate.eval.tasks=4", "iterate.eval.repeats=2",
            "iterate.collect.sampling.max_output_tokens=32", "iterate.eval.sampling.max_output_tokens=32",
            "model=smollm2-135m", f"policy.model_name={root / 'models' / 'SmolLM2-135M-Instruct'}",  # no hub here
            "iterate.train.policy.train_global_batch_size=2",  # one pair for each of the two nodes' ranks
            *SLURM, "launcher.nodes=2", "launcher.time=00:30:00", "launcher.node_timeout=300",
            "+launcher.env.RAY_NUM_GPUS=1", f"launcher.runner=[{sys.executable},{DRIVER}]",
            f"launcher.workdir={checkout}", f"launcher.python={sys.executable}", f"launcher.ray={BIN / 'ray'}",
            "launcher.ports.dashboard=18265", f"+launcher.env.RAY_TEMP_ROOT={ray_temp}",
            "+launcher.env.RAY_USAGE_STATS_ENABLED=0", *converter_settings(checkout)]
    try:
        result = run(args, cwd=REPO, timeout=3600)
    finally:
        leftover = subprocess.run(["pgrep", "-f", str(ray_temp)], capture_output=True, text=True).stdout.split()
        for pid in leftover:
            subprocess.run(["kill", "-9", pid], capture_output=True)
        shutil.rmtree(ray_temp, ignore_errors=True)
    said = result.stdout + result.stderr
    doc = json.loads((run_dir / "iterate.json").read_text())
    r0, r1 = doc["rounds"]
    assert r0["done"] and r1["done"] and r1["train"]["step"] == 1 and r1["eval"]["n"] == 8
    # training: a Slurm job of two nodes, shown at submission and followed to its end
    [job] = (run_dir / "round_1" / "train" / "slurm" / "submitted.txt").read_text().split()
    shown = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True).stdout
    assert "JobState=COMPLETED" in shown and "NumNodes=2" in shown, shown
    assert f"submitted job {job}" in said and f"job {job} ended: completed, exit code 0" in said
    # export: NeMo RL's converter in a step sized from the checkpoint, into round_1/policy
    assert "Saved HF checkpoint to" in (run_dir / "round_1" / "logs" / "dcp_to_hf.log").read_text()
    assert r1["policy"] == str(run_dir / "round_1" / "policy")
    converter = job_record("gym-dpo-dcp-to-hf-1")
    weights = sum(f.stat().st_size for f in (run_dir / "round_1" / "train" / "checkpoints").glob(
        "step_1/policy/weights/*") if f.is_file())
    assert converter["NumCPUs"] == "1" and converter["MinMemoryNode"] == f"{-(-2 * weights // 2**20) + 1024}M"
    # serving: each policy in a step of its own, reached at its node's address
    for k in (0, 1):
        log = (run_dir / f"round_{k}" / "logs" / "serve.log").read_text()
        # the logged command: its bash -c '...' spans lines
        command = log[log.rindex(f"# srun --job-name=gym-dpo-serve-policy-round-{k} "):][:3000]
        assert "--host 0.0.0.0" in command
        step = job_record(f"gym-dpo-serve-policy-round-{k}")
        assert step["NumCPUs"] == "2" and step["MinMemoryNode"] == "4G", step  # serving.step: threads, 4G
    evals = [json.loads(line) for line in (run_dir / "round_1" / "rollouts" / "eval.jsonl").read_text().splitlines()]
    assert {r["response"]["model"] for r in evals} == {"policy-round-1"}
    # nothing left: no step or job of the run in the queue, no process
    assert not [line for line in squeue().splitlines() if line.startswith("gym-dpo-")]
    assert not ours(run_dir)
