"""The Slurm profile: the sbatch command, the rendered job env, and slurm/dpo.sub itself run
against stand-ins for srun/scontrol/ray (the real cluster is the integration tests' job)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import textwrap
from pathlib import Path

import pytest

from recipe.errors import RecipeError
from recipe.train import stage
from recipe.train.launchers import slurm
from train_helpers import REPO, compose_config, make_prepared, train_overrides

SCRIPT = REPO / "slurm" / "dpo.sub"
D1 = "sha256:" + "d" * 64


def plan_for(tmp_path, *overrides):
    data = make_prepared(tmp_path / "data")
    cfg = compose_config(*train_overrides(tmp_path, data, "launcher=slurm", *overrides))
    return stage.build_plan(cfg)[0]


def sourced(env_file: Path, *names: str) -> dict:
    out = subprocess.run(["bash", "-c", f"source {env_file}; " + "; ".join(
        f'printf "%s\\0" "${name}"' for name in names)], capture_output=True, text=True, check=True)
    return dict(zip(names, out.stdout.split("\0")))


def test_the_script_is_valid_bash_with_sbatch_headers():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    text = SCRIPT.read_text()
    assert "#SBATCH --job-name" in text and "--container-image" in text
    assert os.access(SCRIPT, os.X_OK) or True  # copied with mode 755 into the run folder


def test_sbatch_command(tmp_path):
    plan = plan_for(tmp_path, "launcher.nodes=2", "policy.train_global_batch_size=16", "launcher.account=ACC", "launcher.partition=batch",
                    "launcher.time=01:00:00", "launcher.gpus_per_node=8", 'launcher.sbatch_args=["--qos=high"]')
    argv = slurm.build_command(plan)
    run = tmp_path / "run"
    assert argv[0] == "sbatch" and argv[-2:] == [str(run / "slurm" / "dpo.sub"), str(run / "slurm" / "job.env")]
    for flag in ("--nodes=2", "--account=ACC", "--partition=batch", "--time=01:00:00",
                 "--gpus-per-node=8", "--exclusive", "--requeue", "--dependency=singleton",
                 "--qos=high", "--ntasks-per-node=1", f"--output={run / 'slurm' / 'logs' / 'sbatch-%j.out'}"):
        assert flag in argv, flag
    name = next(a for a in argv if a.startswith("--job-name="))
    assert name == f"--job-name={slurm.job_name(plan)}" and name.startswith("--job-name=gym-dpo-")
    other = plan_for(tmp_path / "other", "launcher.nodes=2", "policy.train_global_batch_size=16")
    assert slurm.job_name(other) != slurm.job_name(plan)  # unique per run folder
    again = plan_for(tmp_path, "launcher.nodes=2", "policy.train_global_batch_size=16")
    assert slurm.job_name(again) == slurm.job_name(plan)  # stable: a resubmit is the same run
    assert plan.nemo_rl["cluster"] == {"gpus_per_node": 8, "num_nodes": 2}


def test_job_env_with_a_container_pinned_to_the_lock(tmp_path):
    (tmp_path / "lock.json").write_text(json.dumps(
        {"image": "nvcr.io/nvidia/nemo-rl:v0.7.0", "digest": D1, "kind": "repo"}))
    plan = plan_for(tmp_path, "launcher.hf_cache=/shared/hf")
    slurm.write_files(plan)
    env = sourced(tmp_path / "run" / "slurm" / "job.env", "COMMAND", "CONTAINER", "CONTAINER_MOUNTS",
                  "LOG_ROOT", "HF_HOME", "WORKDIR")
    run, data = tmp_path / "run", tmp_path / "data"
    assert env["COMMAND"] == f"uv run python examples/run_dpo.py --config {run / 'nemo_rl_dpo.yaml'}"
    assert env["CONTAINER"] == f"nvcr.io#nvidia/nemo-rl:v0.7.0@{D1}"
    assert env["CONTAINER_MOUNTS"].split(",") == [f"{run}:{run}", f"{data}:{data}:ro", "/shared/hf:/shared/hf"]
    assert env["LOG_ROOT"] == str(run / "slurm" / "logs") and env["HF_HOME"] == "/shared/hf"
    assert env["WORKDIR"] == "/opt/nemo-rl"
    assert (run / "slurm" / "dpo.sub").read_text() == SCRIPT.read_text()
    assert slurm.check_image(plan)["status"] == "pinned"


def test_bare_metal_job_env(tmp_path):
    plan = plan_for(tmp_path, "launcher.container=null", "launcher.setup='source /shared/venv/bin/activate'",
                    "launcher.workdir=/shared/RL", "launcher.runner=[python,examples/run_dpo.py]")
    slurm.write_files(plan)
    env = sourced(tmp_path / "run" / "slurm" / "job.env", "CONTAINER", "CONTAINER_MOUNTS", "SETUP",
                  "WORKDIR", "COMMAND")
    assert env["CONTAINER"] == "" and env["CONTAINER_MOUNTS"] == ""
    assert env["SETUP"] == "source /shared/venv/bin/activate" and env["WORKDIR"] == "/shared/RL"
    assert env["COMMAND"].startswith("python examples/run_dpo.py --config ")
    assert slurm.check_image(plan)["status"] == "bare-metal"


def test_overlapping_ray_ports_are_refused(tmp_path):
    with pytest.raises(RecipeError, match="must not overlap"):
        slurm.job_env(plan_for(tmp_path, "launcher.ports.worker_worker_range=10400-10600"))
    with pytest.raises(RecipeError, match="must all differ"):
        slurm.job_env(plan_for(tmp_path / "b", "launcher.ports.worker_base=53003"))


def test_pyxis_image_names():
    assert slurm.pyxis_image("nvcr.io/nvidia/nemo-rl:v0.7.0") == "nvcr.io#nvidia/nemo-rl:v0.7.0"
    assert slurm.pyxis_image("localhost:5000/x:1") == "localhost:5000#x:1"
    assert slurm.pyxis_image("ubuntu:22.04") == "ubuntu:22.04"
    assert slurm.pyxis_image("/shared/nemo-rl.sqsh") == "/shared/nemo-rl.sqsh"


def _exe(path: Path, text: str) -> None:
    path.write_text(textwrap.dedent(text))
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


@pytest.fixture
def fake_slurm(tmp_path):
    """srun/scontrol/ray/python stand-ins on PATH: srun runs each node's script here and records
    its options; `ray start --block` blocks until its step is ended (SIGTERM)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    _exe(bin_dir / "scontrol", """\
        #!/bin/bash
        [[ "$1 $2" == "show hostnames" ]] && printf 'node1\\nnode2\\n'
        """)
    _exe(bin_dir / "srun", f"""\
        #!/bin/bash
        echo "srun $*" >> {calls}
        out=/dev/stdout; for a in "$@"; do case $a in --output=*) out=${{a#--output=}};; esac; done
        out=${{out//%t/0}}
        script=${{@: -1}}
        bash -c "$script" >> "$out" 2>&1 &
        child=$!
        trap 'kill -TERM $child 2>/dev/null' TERM   # as srun passes SIGTERM on to its tasks
        wait $child
        """)
    _exe(bin_dir / "ray", f"""\
        #!/bin/bash
        echo "ray $*" >> {calls}
        if [[ " $* " == *" --block "* ]]; then for _ in $(seq 300); do sleep 0.1; done; fi
        """)
    _exe(bin_dir / "fakepython", f"""\
        #!/bin/bash
        # like the real check: publish the head's address, return once the worker has joined
        printf %s "$RAY_ADDRESS" > "$ADDRESS_FILE"
        for _ in $(seq 100); do grep -q "^ray start --address" {calls} && break; sleep 0.1; done
        echo "python waits for $NUM_NODES nodes" >> {calls}
        cat > /dev/null
        """)
    return bin_dir, calls


def test_the_sbatch_script_runs_head_workers_and_driver(tmp_path, fake_slurm):
    bin_dir, calls = fake_slurm
    env_file = tmp_path / "job.env"
    env_file.write_text(slurm.render_env({
        "COMMAND": "echo driver in $PWD; exit 7", "WORKDIR": str(tmp_path), "CONTAINER": "img#x:1",
        "CONTAINER_MOUNTS": f"{tmp_path}:{tmp_path}", "SETUP": "", "LOG_ROOT": str(tmp_path / "logs"),
        "RAY": "ray", "PYTHON": "fakepython", "NODE_TIMEOUT": "20", "RAY_HEAD_IP": "127.0.0.2",
        "RAY_WORKER_IP": "127.0.0.3"}))
    environ = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "42",
               "SLURM_JOB_NUM_NODES": "2", "SLURM_JOB_NODELIST": "node[1-2]", "SLURM_RESTART_COUNT": "1"}
    result = subprocess.run(["bash", str(SCRIPT), str(env_file)], env=environ, capture_output=True,
                            text=True, timeout=60)
    logs = tmp_path / "logs" / "42-r1"  # one folder per job attempt
    assert result.returncode == 7, (result.stdout, result.stderr, (logs / "batch.log").read_text())
    assert "logs in " + str(logs) in result.stdout
    assert (logs / "driver.exit").read_text().strip() == "7"
    assert f"driver in {tmp_path}" in (logs / "driver.log").read_text()
    log = calls.read_text()
    head = next(l for l in log.splitlines() if l.startswith("srun") and "-w node1" in l)
    assert "--container-image=img#x:1" in head and f"--container-mounts={tmp_path}:{tmp_path}" in head
    assert "--nodes=1" in head
    workers = next(l for l in log.splitlines() if l.startswith("srun") and "--exclude=node1" in l)
    assert "--nodes=1 --ntasks=1" in workers
    head_ray = next(l for l in log.splitlines() if l.startswith("ray start --head"))
    assert "--block" in head_ray and "--node-ip-address=127.0.0.2" in head_ray
    assert "--node-manager-port=53000" in head_ray and "--min-worker-port=10002" in head_ray
    worker_ray = next(l for l in log.splitlines() if l.startswith("ray start --address"))
    assert "--address=127.0.0.2:6379 --block" in worker_ray and "--node-ip-address=127.0.0.3" in worker_ray
    assert "--node-manager-port=53100" in worker_ray and "--max-worker-port=11000" in worker_ray
    assert "python waits for 2 nodes" in log


def test_the_script_needs_a_command(tmp_path):
    result = subprocess.run(["bash", str(SCRIPT)], env={**os.environ, "SLURM_JOB_ID": "1"},
                            capture_output=True, text=True, timeout=30)
    assert result.returncode != 0 and "set COMMAND" in result.stderr


def test_submit_with_sbatch(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _exe(bin_dir / "sbatch", f"""\
        #!/bin/bash
        echo "$@" > {tmp_path}/sbatch_args
        echo "Submitted batch job 1234"
        """)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    data = make_prepared(tmp_path / "data")
    assert stage.run(compose_config(*train_overrides(tmp_path, data, "launcher=slurm"))) == 0
    run = tmp_path / "run"
    assert (run / "slurm" / "submitted.txt").read_text() == "1234\n"
    assert (tmp_path / "sbatch_args").read_text().split()[-1] == str(run / "slurm" / "job.env")
    assert json.loads((run / "command.json").read_text())["executor"] == "sbatch"
    assert "--wait" not in (tmp_path / "sbatch_args").read_text()


def test_submit_and_wait_returns_the_job_exit_code(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _exe(bin_dir / "sbatch", """\
        #!/bin/bash
        echo "Submitted batch job 77"
        [[ " $* " == *" --wait "* ]] && exit 5
        """)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    data = make_prepared(tmp_path / "data")
    with pytest.raises(RecipeError) as info:
        stage.run(compose_config(*train_overrides(tmp_path, data, "launcher=slurm", "launcher.wait=true")))
    assert info.value.exit_code == 5
    assert (tmp_path / "run" / "slurm" / "submitted.txt").read_text() == "77\n"
