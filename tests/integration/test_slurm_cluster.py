"""`gym-dpo stage=train launcher=slurm` on a real 2-node Slurm cluster with Ray (tests/infra/).

Bare-metal (`launcher.container=null`): the Python environment on the "shared FS" is this
machine's, and both nodes (node1, node2: two slurmd on this host) see the same folders. The job
is slurm/dpo.sub as gym-dpo renders and submits it, with its default Ray ports (all below 9000;
head and worker ports differ, so both fit on one host): a Ray head on node1 and a worker on node2,
at the addresses their Slurm node names resolve to (here Slurm's NodeAddr: 127.0.0.2, 127.0.0.3),
each with the job's CPUs per node; the cluster has no GPUs, so each node's Ray advertises one
(RAY_NUM_GPUS=1) and the job waits for launcher.gpus_per_node=1 per node. The driver (the
launcher.runner command) is tests/integration/ray_dpo_driver.py, which joins the Ray cluster as
run_dpo.py does, logs what it sees and trains with the CPU runner. Each job runs with a HOME of
its own, with or without a `~/.ray/auth_token` (what any local ray.init() leaves behind).
Container mode needs pyxis, which this cluster does not have: its flags are checked on the
rendered files, and the sbatch command gym-dpo builds is validated by the real sbatch (--test-only).
"""

from __future__ import annotations

import json
import os
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
HEAD_IP, WORKER_IP = "127.0.0.2", "127.0.0.3"  # the test cluster's NodeAddr of node1, node2
# the default ports, but the dashboard's: a local Ray of another program may hold 8265
PORTS = ["launcher.ports.dashboard=18265"]
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


@pytest.fixture(params=["no_ray_token", "ray_token_in_home"])
def home(request, tmp_path):
    """The HOME the job runs with (sbatch passes the environment on): pinned per test, with or
    without the ~/.ray/auth_token a local ray.init() writes, whatever this machine's HOME holds."""
    folder = tmp_path / "home"
    folder.mkdir()
    if request.param == "ray_token_in_home":
        (folder / ".ray").mkdir()
        (folder / ".ray" / "auth_token").write_text("f" * 64)  # not this job's token
    return folder


def submit(tmp_path, prepared, ray_temp, *more, check=True, home=None):
    """gym-dpo stage=train launcher=slurm, bare-metal on both nodes; returns (result, run_dir)."""
    run_dir = tmp_path / "run"
    env = {**os.environ, "HOME": str(home or tmp_path / "home")}
    Path(env["HOME"]).mkdir(exist_ok=True)
    result = run([*gym_dpo_cli(), "stage=train", f"data.output_dir={prepared}", f"run_dir={run_dir}",
                  "launcher=slurm", "launcher.container=null", "launcher.nodes=2", "launcher.gres=false",
                  "launcher.time=00:20:00", "launcher.node_timeout=180", "launcher.gpus_per_node=1",
                  "+launcher.env.RAY_NUM_GPUS=1",  # a GPU-less cluster: each Ray node claims one
                  "policy.train_micro_batch_size=4",  # 8 pairs a step over 2 nodes x 1 "GPU"
                  f"launcher.runner=[{sys.executable},{DRIVER}]", f"launcher.workdir={REPO}",
                  f"launcher.python={sys.executable}", f"launcher.ray={BIN / 'ray'}", *PORTS,
                  f"+launcher.env.RAY_TEMP_ROOT={ray_temp}", "+launcher.env.RAY_USAGE_STATS_ENABLED=0",
                  "dpo.val_period=2", "checkpointing.save_period=2", *more],
                 cwd=tmp_path, check=check, timeout=900, env=env)
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
    line = next(candidate for candidate in log.read_text().splitlines() if candidate.startswith("RAY_DPO_DRIVER {"))
    return json.loads(line.split(" ", 1)[1])


def test_two_nodes_ray_head_and_worker_train_and_return_the_exit_code(tmp_path, prepared, ray_temp,
                                                                     home):
    # launcher.wait=true: gym-dpo returns when the job has ended, with its exit code. With a Ray
    # token in HOME the job is also not exclusive: it asks for its CPUs (launcher.cpus_per_node)
    token_in_home = (home / ".ray" / "auth_token").is_file()
    cpus = ["launcher.exclusive=false", "launcher.cpus_per_node=2"] if token_in_home else []
    result, run_dir = submit(tmp_path, prepared, ray_temp, "launcher.wait=true", "dpo.max_num_steps=4",
                             f"launcher.hf_cache={tmp_path / 'hf'}", "+launcher.env.GYM_DPO_TEST_MARK=set",
                             *cpus, home=home)
    job = job_id(run_dir)
    info = job_info(job)
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0"
    assert info["NodeList"] == "node[1-2]" and info["NumNodes"] == "2"
    logs = run_dir / "slurm" / "logs" / job
    batch = (logs / "batch.log").read_text()
    assert f"node node1: {HEAD_IP}" in batch and f"node node2: {WORKER_IP}" in batch  # by node name
    assert "all 2 Ray nodes joined, 1 GPU(s) each" in (logs / "head.log").read_text()
    assert "Ray runtime started" in (logs / "worker-0.log").read_text()  # the worker on node2
    seen = driver_line(logs / "driver.log")
    assert seen["nodes"] == [HEAD_IP, WORKER_IP]       # the driver sees both Ray nodes ...
    assert seen["task_ips"] == [HEAD_IP, WORKER_IP]    # ... and ran a task on each
    assert seen["ray_address"] == f"{HEAD_IP}:1200" and seen["restart"] == 0  # default GCS port
    # every CPU Slurm gave each node (2), exclusive or asked for, and the GPU each claimed
    assert seen["resources"] == {ip: {"CPU": 2.0, "GPU": 1.0} for ip in (HEAD_IP, WORKER_IP)}
    # the job's own token, the same for every Ray process, whatever HOME holds
    assert seen["auth"] == {"mode": "token", "token_auth": True, "home": str(home),
                            "token_path": str(logs / "ray_auth_token")}
    if token_in_home:
        assert (home / ".ray" / "auth_token").read_text() == "f" * 64  # untouched
    else:
        assert not (home / ".ray" / "auth_token").exists()  # and none left behind
    assert seen["hf_home"] == str(tmp_path / "hf") and seen["mark"] == "set"  # job.env reaches the driver
    driver = (logs / "driver.log").read_text()
    assert "[local_dpo] at step 4 of 4" in driver
    assert (logs / "driver.exit").read_text().strip() == "0"
    assert "nodes node[1-2]" in (logs / "batch.log").read_text()
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("step_*")) == ["step_2", "step_4"]
    env = (run_dir / "slurm" / "job.env").read_text()
    assert "CONTAINER=''" in env and "RAY_GCS_PORT=1200" in env and "GPUS_PER_NODE=1" in env


def test_a_node_whose_gpus_ray_cannot_see_fails_the_job_by_name(tmp_path, prepared, ray_temp):
    """node2's Ray comes up without its GPU: the job ends at the wait, naming the node, instead of
    a driver that dies later on NeMo RL's "Not enough GPUs"."""
    setup = 'if [[ $SLURMD_NODENAME == node2 ]]; then RAY_NUM_GPUS=0; fi'
    started = time.monotonic()
    result, run_dir = submit(tmp_path, prepared, ray_temp, "launcher.wait=true",
                             f"launcher.setup='{setup}'", check=False)
    job = job_id(run_dir)
    assert job_info(job)["JobState"] == "FAILED" and result.returncode == 1
    logs = run_dir / "slurm" / "logs" / job
    head = (logs / "head.log").read_text()
    assert f"Ray node node2 ({WORKER_IP}) joined with 0 of 1 GPUs" in head, head[-3000:]
    assert not (logs / "driver.log").exists()
    assert time.monotonic() - started < 170  # failed at once, not at launcher.node_timeout (180 s)


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
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
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
    # enroot's registry#image; the tag alone, as enroot < 4.0.0 refuses tag@digest (the README's
    # pin for every enroot is a squashfs file: tests/unit/test_slurm.py)
    assert env[0] == "nvcr.io#nvidia/nemo-rl:v0.7.0" and "enroot before 4.0.0" in result.stderr
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


def test_a_waited_job_is_shown_at_once_followed_and_cancelled_by_ctrl_c(tmp_path, prepared, ray_temp):
    """`sbatch --wait` with its output captured said nothing (no job id) until the job had ended,
    and Ctrl-C left the job training. Now the job id and its log folder come at submission, its
    logs follow, and Ctrl-C cancels it (scancel)."""
    import signal

    run_dir, home = tmp_path / "run", tmp_path / "home"
    home.mkdir()
    args = [*gym_dpo_cli(), "stage=train", f"data.output_dir={prepared}", f"run_dir={run_dir}",
            "launcher=slurm", "launcher.container=null", "launcher.nodes=2", "launcher.gres=false",
            "launcher.time=00:20:00", "launcher.node_timeout=180", "launcher.gpus_per_node=1",
            "+launcher.env.RAY_NUM_GPUS=1", "policy.train_micro_batch_size=4",
            f"launcher.runner=[{sys.executable},{DRIVER}]", f"launcher.workdir={REPO}",
            f"launcher.python={sys.executable}", f"launcher.ray={BIN / 'ray'}", *PORTS,
            f"+launcher.env.RAY_TEMP_ROOT={ray_temp}", "+launcher.env.RAY_USAGE_STATS_ENABLED=0",
            "+launcher.env.GYM_DPO_TEST_FIRST_ATTEMPT_STEP_SECONDS=5", "dpo.max_num_steps=40",
            "dpo.max_num_epochs=40", "launcher.wait=true"]
    with open(tmp_path / "out", "w") as out, open(tmp_path / "err", "w") as err:
        process = subprocess.Popen(args, cwd=tmp_path, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                   env={**os.environ, "HOME": str(home)}, start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        said = lambda: " ".join((tmp_path / "err").read_text().split())  # noqa: E731
        while "submitted job" not in said():
            assert process.poll() is None and time.monotonic() < deadline, said()[-3000:]
            time.sleep(0.5)
        job = re.search(r"submitted job (\d+)", said()).group(1)
        assert (run_dir / "slurm" / "submitted.txt").read_text().split() == [job]  # recorded at once
        assert f"logs in {run_dir / 'slurm' / 'logs' / job}/" in said()
        assert job_info(job)["JobState"] in ("PENDING", "CONFIGURING", "RUNNING")  # long before its end
        while "RAY_DPO_DRIVER first attempt" not in (tmp_path / "out").read_text():  # driver.log, followed
            assert process.poll() is None and time.monotonic() < deadline, said()[-3000:]
            time.sleep(0.5)
        time.sleep(10)  # training: 5 s a step
        assert "[slurm] node node1: 127.0.0.2" in (tmp_path / "out").read_text()  # and the job's batch.log
        assert f"job {job}: running (node[1-2])" in said()
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=180) == 130
    finally:
        if process.poll() is None:
            process.kill()
    assert f"job {job} was cancelled (scancel {job})" in said()
    info = wait_for(job, timeout=120)
    assert info["JobState"] == "CANCELLED"
    assert job not in subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout.split()
    assert "at step 40 of 40" not in (run_dir / "slurm" / "logs" / job / "driver.log").read_text()
