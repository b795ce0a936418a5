"""`gym-dpo stage=train launcher=slurm` on a real 2-node Slurm cluster with Ray (tests/infra/).

Bare-metal (`launcher.container=null`): the Python environment on the "shared FS" is this
machine's, and both nodes (node1, node2: two slurmd on this host) see the same folders. The job
is slurm/dpo.sub as gym-dpo renders and submits it: a Ray head on node1 (127.0.0.2), a worker on
node2 (127.0.0.3), ports set through launcher.ports so both fit on one host; the driver (the
launcher.runner command) is tests/integration/ray_dpo_driver.py, which joins the Ray cluster as
run_dpo.py does, logs what it sees and trains with the CPU runner. Container mode needs pyxis,
which this cluster does not have: its flags are checked on the rendered files, and the sbatch
command gym-dpo builds is validated by the real sbatch (--test-only).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from engines import REPO, SAMPLE, gym_dpo_cli, run, slurm_cluster, unavailable

pytestmark = pytest.mark.integration
DRIVER = Path(__file__).resolve().with_name("ray_dpo_driver.py")
BIN = Path(sys.executable).parent
HEAD_IP, WORKER_IP = "127.0.0.2", "127.0.0.3"
# below the ephemeral range and away from the test cluster's Slurm ports (17000-17002)
PORTS = ["launcher.ports.gcs=18379", "launcher.ports.dashboard=18265", "launcher.ports.head_base=18400",
         "launcher.ports.worker_base=18500", "launcher.ports.head_worker_range=18600-18699",
         "launcher.ports.worker_worker_range=18700-18799"]
FINISHED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
            "DEADLINE", "PREEMPTED"}


@pytest.fixture(scope="module")
def cluster():
    slurm_cluster(nodes=2)
    if not (BIN / "ray").exists():
        unavailable(f"no ray CLI beside {sys.executable} (pip install -e '.[slurm]')")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, cluster):
    out = tmp_path_factory.mktemp("prepared") / "data"
    run([*gym_dpo_cli(), "stage=prepare", f"data.input={SAMPLE}", f"data.output_dir={out}",
         f"run_dir={out.parent / 'prepare'}"])
    return out


@pytest.fixture
def ray_temp():
    """A short folder for Ray's per-node temp dirs (its unix sockets live below it)."""
    folder = Path(tempfile.mkdtemp(prefix="gdr", dir="/tmp"))
    yield folder
    leftover = subprocess.run(["pgrep", "-f", str(folder)], capture_output=True, text=True).stdout.split()
    for pid in leftover:  # only processes of this test's Ray nodes (their command lines name the folder)
        subprocess.run(["kill", "-9", pid], capture_output=True)
    shutil.rmtree(folder, ignore_errors=True)
    assert not leftover, f"Ray processes outlived the job: {leftover}"


def submit(tmp_path, prepared, ray_temp, *more, check=True):
    """gym-dpo stage=train launcher=slurm, bare-metal on both nodes; returns (result, run_dir)."""
    run_dir = tmp_path / "run"
    result = run([*gym_dpo_cli(), "stage=train", f"data.output_dir={prepared}", f"run_dir={run_dir}",
                  "launcher=slurm", "launcher.container=null", "launcher.nodes=2", "launcher.gres=false",
                  "launcher.time=00:20:00", "launcher.node_timeout=180", "launcher.gpus_per_node=1",
                  "policy.train_micro_batch_size=4",  # 8 pairs a step over 2 nodes x 1 "GPU"
                  f"launcher.runner=[{sys.executable},{DRIVER}]", f"launcher.workdir={REPO}",
                  f"launcher.python={sys.executable}", f"launcher.ray={BIN / 'ray'}",
                  f"launcher.head_ip={HEAD_IP}", f"launcher.worker_ip={WORKER_IP}", *PORTS,
                  f"+launcher.env.RAY_TEMP_ROOT={ray_temp}", "+launcher.env.RAY_USAGE_STATS_ENABLED=0",
                  "dpo.val_period=2", "checkpointing.save_period=2", *more],
                 cwd=tmp_path, check=check, timeout=900)
    return result, run_dir


def job_id(run_dir: Path) -> str:
    return (run_dir / "slurm" / "submitted.txt").read_text().split()[-1]


def job_info(job: str) -> dict:
    text = run(["scontrol", "show", "job", "-o", job]).stdout
    return dict(re.findall(r"(\w+)=(\S*)", text))


def wait_for(job: str, timeout: float = 600) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = job_info(job)
        if info["JobState"] in FINISHED:
            return info
        time.sleep(0.5)
    subprocess.run(["scancel", job])
    pytest.fail(f"job {job} still {info['JobState']} after {timeout} s", pytrace=False)


def driver_line(log: Path) -> dict:
    line = next(l for l in log.read_text().splitlines() if l.startswith("RAY_DPO_DRIVER {"))
    return json.loads(line.split(" ", 1)[1])


def test_two_nodes_ray_head_and_worker_train_and_return_the_exit_code(tmp_path, prepared, ray_temp):
    # launcher.wait=true: gym-dpo returns when the job has ended, with its exit code
    result, run_dir = submit(tmp_path, prepared, ray_temp, "launcher.wait=true", "dpo.max_num_steps=4",
                             f"launcher.hf_cache={tmp_path / 'hf'}", "+launcher.env.GYM_DPO_TEST_MARK=set")
    job = job_id(run_dir)
    info = job_info(job)
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0"
    assert info["NodeList"] == "node[1-2]" and info["NumNodes"] == "2"
    logs = run_dir / "slurm" / "logs" / job
    assert "all 2 Ray nodes joined" in (logs / "head.log").read_text()
    assert "Ray runtime started" in (logs / "worker-0.log").read_text()  # the worker on node2
    seen = driver_line(logs / "driver.log")
    assert seen["nodes"] == [HEAD_IP, WORKER_IP]       # the driver sees both Ray nodes ...
    assert seen["task_ips"] == [HEAD_IP, WORKER_IP]    # ... and ran a task on each
    assert seen["ray_address"] == f"{HEAD_IP}:18379" and seen["restart"] == 0
    assert seen["hf_home"] == str(tmp_path / "hf") and seen["mark"] == "set"  # job.env reaches the driver
    driver = (logs / "driver.log").read_text()
    assert "[local_dpo] at step 4 of 4" in driver
    assert (logs / "driver.exit").read_text().strip() == "0"
    assert "nodes node[1-2]" in (logs / "batch.log").read_text()
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("step_*")) == ["step_2", "step_4"]
    env = (run_dir / "slurm" / "job.env").read_text()
    assert "CONTAINER=''" in env and "RAY_GCS_PORT=18379" in env and f"RAY_WORKER_IP={WORKER_IP}" in env


def test_a_failing_driver_fails_the_job_with_its_exit_code(tmp_path, prepared, ray_temp):
    result, run_dir = submit(tmp_path, prepared, ray_temp, "launcher.wait=true",
                             'launcher.overrides=["policy.model_name=/no/such/model"]', check=False)
    job = job_id(run_dir)
    info = job_info(job)
    assert info["JobState"] == "FAILED" and info["ExitCode"] == "2:0"
    assert result.returncode == 2  # gym-dpo passes the job's exit code on
    logs = run_dir / "slurm" / "logs" / job
    assert (logs / "driver.exit").read_text().strip() == "2"
    assert "[local_dpo] error: policy.model_name='/no/such/model'" in (logs / "driver.log").read_text()
    assert not (run_dir / "checkpoints").exists()


def test_a_requeued_job_resumes_from_its_last_checkpoint(tmp_path, prepared, ray_temp):
    steps = 12
    _, run_dir = submit(tmp_path, prepared, ray_temp, f"dpo.max_num_steps={steps}",
                        "+launcher.env.GYM_DPO_TEST_FIRST_ATTEMPT_STEP_SECONDS=1.5")
    job = job_id(run_dir)
    checkpoints = run_dir / "checkpoints"
    deadline = time.monotonic() + 300
    while not list(checkpoints.glob("step_*")):  # a step_N is only there once complete
        assert time.monotonic() < deadline, f"no checkpoint of job {job} after 300 s"
        assert job_info(job)["JobState"] in ("PENDING", "RUNNING", "CONFIGURING")
        time.sleep(0.25)
    run(["scontrol", "requeue", job])
    before = max(int(p.name.split("_")[1]) for p in checkpoints.glob("step_*"))
    info = wait_for(job)
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0" and info["Restarts"] == "1"

    first, second = (run_dir / "slurm" / "logs" / name for name in (job, f"{job}-r1"))
    assert "RAY_DPO_DRIVER first attempt" in (first / "driver.log").read_text()
    assert f"at step {steps} of {steps}" not in (first / "driver.log").read_text()  # stopped mid-run
    assert not (first / "driver.exit").exists()
    assert driver_line(second / "driver.log")["restart"] == 1
    assert driver_line(second / "driver.log")["nodes"] == [HEAD_IP, WORKER_IP]
    driver = (second / "driver.log").read_text()
    resumed = re.search(r"resuming from (\S+/step_(\d+))", driver)
    assert resumed, driver[-3000:]
    step = int(resumed.group(2))
    assert step >= before > 0  # the last complete checkpoint, not step 0
    trained = re.search(rf"at step {steps} of {steps} \((\d+) trained now", driver)
    assert trained and int(trained.group(1)) == steps - step  # only the steps after it
    settings = json.loads((run_dir / "trl_settings.json").read_text())
    assert settings["resumed_from"] == resumed.group(1)
    metrics = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    trained_steps = [row["step"] for row in metrics if "train:loss" in row or "loss" in row]
    assert sorted(set(trained_steps)) == list(range(1, steps + 1))
    assert (checkpoints / f"step_{steps}").is_dir()


def test_container_mode_renders_the_pyxis_flags(tmp_path, prepared, cluster):
    """pyxis is not installed here: the rendered script and env carry its flags, and the real
    sbatch accepts gym-dpo's sbatch command for the script (--test-only: checked, not queued)."""
    digest = "sha256:" + "ab" * 32
    (tmp_path / "lock.json").write_text(json.dumps(
        {"image": "nvcr.io/nvidia/nemo-rl:v0.7.0", "digest": digest, "kind": "repo"}))
    run_dir = tmp_path / "run"
    result = run([*gym_dpo_cli(), "stage=train", f"data.output_dir={prepared}", f"run_dir={run_dir}",
                  "launcher=slurm", "launcher.nodes=2", "launcher.dry_run=true",  # 2 nodes x 8 GPUs
                  "policy.train_global_batch_size=16", "policy.train_micro_batch_size=1",
                  f"container.lock_file={tmp_path / 'lock.json'}", "launcher.hf_cache=/shared/hf",
                  "launcher.container_mounts=[/lustre/me:/lustre/me]"], cwd=tmp_path)
    script = (run_dir / "slurm" / "dpo.sub").read_text()
    assert script == (REPO / "slurm" / "dpo.sub").read_text()
    for flag in ('--container-image="$CONTAINER"', '--container-workdir="$WORKDIR"',
                 "--no-container-mount-home", '--container-mounts="$CONTAINER_MOUNTS"'):
        assert flag in script, flag
    env = subprocess.run(["bash", "-c", f"source {run_dir / 'slurm' / 'job.env'}; "
                          'printf "%s\\n" "$CONTAINER" "$CONTAINER_MOUNTS" "$WORKDIR" "$COMMAND"'],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert env[0] == f"nvcr.io#nvidia/nemo-rl:v0.7.0@{digest}"  # enroot's registry#image, pinned
    mounts = env[1].split(",")
    assert f"{run_dir}:{run_dir}" in mounts and f"{prepared}:{prepared}:ro" in mounts
    assert "/shared/hf:/shared/hf" in mounts and "/lustre/me:/lustre/me" in mounts
    assert env[2] == "/opt/nemo-rl"
    assert env[3] == f"uv run python examples/run_dpo.py --config {run_dir / 'nemo_rl_dpo.yaml'}"
    # the sbatch line gym-dpo would run (printed by the dry run, kept in command.json), checked by
    # the real sbatch without queueing anything
    argv = json.loads((run_dir / "command.json").read_text())["argv"]
    assert argv[0] == "sbatch" and "--nodes=2" in argv and "--requeue" in argv
    assert "--gpus-per-node=8" in argv and "sbatch" in result.stdout
    # ... without the GPU request: this cluster has no GPU gres
    check = run(["sbatch", "--test-only", *(a for a in argv[1:] if a != "--gpus-per-node=8")], check=False)
    assert check.returncode == 0, check.stderr
    assert re.search(r"Job \d+ to start at .* using 4 processors on nodes node\[1-2\]", check.stderr), check.stderr
