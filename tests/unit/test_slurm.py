"""The Slurm profile: the sbatch command, the rendered job env, and slurm/dpo.sub itself run
against stand-ins for srun/scontrol/ray (the real cluster is the integration tests' job)."""

from __future__ import annotations

import json
import os
import re
import resource
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from train_helpers import REPO, compose_config, make_prepared, train_overrides

from recipe.errors import RecipeError
from recipe.run_files import sha256_file
from recipe.train import stage
from recipe.train.launchers import slurm
from recipe.train.plan import build_plan

SCRIPT = REPO / "slurm" / "dpo.sub"
D1 = "sha256:" + "d" * 64


def plan_for(tmp_path, *overrides):
    data = make_prepared(tmp_path / "data")
    cfg = compose_config(*train_overrides(tmp_path, data, "launcher=slurm", *overrides))
    return build_plan(cfg)[0]


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
    plan = plan_for(tmp_path, "launcher.nodes=2", "policy.train_global_batch_size=16", "launcher.account=ACC",
                    "launcher.partition=batch", "launcher.time=01:00:00", "launcher.gpus_per_node=8",
                    'launcher.sbatch_args=["--qos=high"]')
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


def test_cpus_per_node_and_the_job_env_for_the_wait(tmp_path):
    """The CPUs, the GPUs to wait for and Ray's auth reach the job."""
    plan = plan_for(tmp_path, "launcher.exclusive=false", "launcher.cpus_per_node=16",
                    "launcher.gpus_per_node=8")
    argv = slurm.build_command(plan)
    assert "--cpus-per-task=16" in argv and "--exclusive" not in argv
    env = slurm.job_env(plan)
    assert (env["CPUS_PER_NODE"], env["GPUS_PER_NODE"], env["RAY_AUTH"]) == ("16", "8", "token")
    whole = plan_for(tmp_path / "b")  # exclusive: the node's CPUs, counted by the job itself
    assert not any(a.startswith("--cpus-per-task") for a in slurm.build_command(whole))
    assert slurm.job_env(whole)["CPUS_PER_NODE"] == ""
    with pytest.raises(RecipeError, match="launcher.exclusive=false: Slurm gives such a job one CPU"):
        slurm.build_command(plan_for(tmp_path / "c", "launcher.exclusive=false"))
    with pytest.raises(RecipeError, match="cpus_per_node=4 is fewer than launcher.gpus_per_node=8"):
        slurm.build_command(plan_for(tmp_path / "d", "launcher.cpus_per_node=4"))
    assert slurm.job_env(plan_for(tmp_path / "e", "launcher.ray_auth=disabled"))["RAY_AUTH"] == "disabled"
    with pytest.raises(RecipeError, match="launcher.ray_auth='none'"):
        slurm.job_env(plan_for(tmp_path / "f", "launcher.ray_auth=none"))


def test_job_env_with_a_locked_registry_image(tmp_path, capsys):
    """Enroot before 4.0.0 refuses `tag@sha256:`, so pyxis gets the tag unless
    launcher.digest_reference=true says the cluster's enroot takes digests."""
    (tmp_path / "lock.json").write_text(json.dumps(
        {"image": "nvcr.io/nvidia/nemo-rl:v0.7.0", "digest": D1, "kind": "repo"}))
    plan = plan_for(tmp_path, "launcher.hf_cache=/shared/hf")
    slurm.write_files(plan)
    env = sourced(tmp_path / "run" / "slurm" / "job.env", "COMMAND", "CONTAINER", "CONTAINER_MOUNTS",
                  "LOG_ROOT", "HF_HOME", "WORKDIR")
    run, data = tmp_path / "run", tmp_path / "data"
    assert env["COMMAND"] == f"uv run python examples/run_dpo.py --config {run / 'nemo_rl_dpo.yaml'}"
    assert env["CONTAINER"] == "nvcr.io#nvidia/nemo-rl:v0.7.0"  # every enroot takes it
    assert env["CONTAINER_MOUNTS"].split(",") == [f"{run}:{run}", f"{data}:{data}:ro", "/shared/hf:/shared/hf"]
    assert env["LOG_ROOT"] == str(run / "slurm" / "logs") and env["HF_HOME"] == "/shared/hf"
    # pyxis keeps an image's own HF_HOME (our image sets one) unless the job names it
    assert sourced(tmp_path / "run" / "slurm" / "job.env", "CONTAINER_ENV") == {"CONTAINER_ENV": "HF_HOME"}
    assert env["WORKDIR"] == "/opt/nemo-rl"
    assert (run / "slurm" / "dpo.sub").read_text() == SCRIPT.read_text()
    assert slurm.check_image(plan) == {"image": "nvcr.io/nvidia/nemo-rl:v0.7.0", "locked": D1,
                                       "lock_file": str(tmp_path / "lock.json"), "source": "pyxis",
                                       "status": "tag (digest not enforced)"}
    assert "enroot before 4.0.0 refuses tag@digest" in capsys.readouterr().err
    digest = plan_for(tmp_path / "b", f"container.lock_file={tmp_path / 'lock.json'}",
                      "launcher.digest_reference=true")
    assert slurm.job_env(digest)["CONTAINER"] == f"nvcr.io#nvidia/nemo-rl:v0.7.0@{D1}"
    assert slurm.check_image(digest)["status"] == "pinned"


def test_a_squashfs_image_is_pinned_by_its_locked_sha256(tmp_path):
    """The pin every pyxis/enroot takes: a squashfs file, whose sha256 stage=lock_image records."""
    from recipe.train import container

    image = tmp_path / "shared" / "nemo-rl+v0.7.0.sqsh"
    image.parent.mkdir()
    image.write_bytes(b"hsqs" + b"\0" * 4096)
    lock_cfg = compose_config("data.input=x", f"container.lock_file={tmp_path / 'lock.json'}",
                              f"container.squashfs={image}", "container.dockerfile=null")
    unlocked = plan_for(tmp_path, f"launcher.container={image}")
    assert slurm.check_image(unlocked)["status"] == "unlocked"
    container.run(lock_cfg)
    plan = plan_for(tmp_path / "b", f"container.lock_file={tmp_path / 'lock.json'}",
                    f"launcher.container={image}")
    slurm.write_files(plan)
    env = sourced(tmp_path / "b" / "run" / "slurm" / "job.env", "CONTAINER")
    assert env["CONTAINER"] == str(image) and "@" not in env["CONTAINER"]
    record = slurm.check_image(plan)
    assert record["status"] == "match (size and mtime as locked)"
    assert record["locked"] == "sha256:" + sha256_file(image)
    os.utime(image, ns=(1, 1))                      # touched, same bytes: hashed, still the one
    assert slurm.check_image(plan)["status"] == "match (sha256)"
    image.write_bytes(b"hsqs" + b"\1" * 4096)       # replaced by another import
    with pytest.raises(RecipeError, match="but .*lock.json recorded sha256:"):
        slurm.check_image(plan)
    allowed = plan_for(tmp_path / "c", f"container.lock_file={tmp_path / 'lock.json'}",
                       f"launcher.container={image}", "container.allow_digest_mismatch=true")
    assert slurm.check_image(allowed)["status"] == "mismatch"
    image.unlink()
    with pytest.raises(RecipeError, match="no such squashfs file"):
        slurm.check_image(plan)


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
        slurm.job_env(plan_for(tmp_path, "launcher.ports.worker_worker_range=2400-2600"))
    with pytest.raises(RecipeError, match="must all differ"):
        slurm.job_env(plan_for(tmp_path / "b", "launcher.ports.worker_base=1303"))
    with pytest.raises(RecipeError, match="must all differ"):
        slurm.job_env(plan_for(tmp_path / "c", "launcher.ports.client=1200"))


def test_every_default_ray_port_is_below_9000(tmp_path):
    """9000-65000 is the ephemeral range of some DGX/GB200 nodes (NeMo RL's
    ray.sub moved every port below 9000); ours were 53000-53105 and 10002-11000."""
    env = slurm.job_env(plan_for(tmp_path))
    ports = [int(env[k]) for k in ("RAY_GCS_PORT", "RAY_CLIENT_PORT", "RAY_DASHBOARD_PORT")]
    ports += [int(env[k]) + 5 for k in ("RAY_HEAD_PORT_BASE", "RAY_WORKER_PORT_BASE")]
    ports += [int(v) for k in ("RAY_HEAD_WORKER_PORTS", "RAY_WORKER_WORKER_PORTS") for v in env[k].split("-")]
    assert max(ports) < 9000, env
    script_defaults = re.findall(r"^RAY_\w+PORTS?\w*=\$\{\w+:-([\d-]+)\}", SCRIPT.read_text(), re.M)
    assert len(script_defaults) == 7 and all(int(v) < 9000 for d in script_defaults for v in d.split("-"))


def test_pyxis_image_names():
    assert slurm.pyxis_image("nvcr.io/nvidia/nemo-rl:v0.7.0") == "nvcr.io#nvidia/nemo-rl:v0.7.0"
    assert slurm.pyxis_image("localhost:5000/x:1") == "localhost:5000#x:1"
    assert slurm.pyxis_image("ubuntu:22.04") == "ubuntu:22.04"
    assert slurm.pyxis_image("/shared/nemo-rl.sqsh") == "/shared/nemo-rl.sqsh"


def _exe(path: Path, text: str) -> None:
    path.write_text(textwrap.dedent(text))
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


# A stand-in for the `ray` package the head's wait imports: ray.nodes() shows the nodes of
# FAKE_RAY_NODES (JSON), a worker only once its `ray start --address` ran (the calls log says).
FAKE_RAY_MODULE = '''\
import json, os
def init(address=None, logging_level=None):
    with open(os.environ["FAKE_CALLS"], "a") as log:
        log.write(f"python ray.init {address} auth={os.environ.get('RAY_AUTH_MODE')}\\n")
def nodes():
    started = open(os.environ["FAKE_CALLS"]).read().count("ray start --address")
    listed = json.loads(os.environ["FAKE_RAY_NODES"])
    return listed[:1 + started]
def cluster_resources():
    return {"CPU": sum(n["Resources"].get("CPU", 0) for n in nodes())}
'''


@pytest.fixture
def fake_slurm(tmp_path):
    """srun/scontrol/getent/ray stand-ins on PATH and a `ray` module for the head's wait: srun runs
    each node's script here (as node1 or node2) and records its options; `ray start --block`
    records its arguments and auth environment, then blocks until its step is ended (SIGTERM)."""
    bin_dir, module_dir = tmp_path / "bin", tmp_path / "pymodules"
    (module_dir / "ray").mkdir(parents=True)
    bin_dir.mkdir()
    (module_dir / "ray" / "__init__.py").write_text(FAKE_RAY_MODULE)
    calls = tmp_path / "calls"
    _exe(bin_dir / "scontrol", """\
        #!/bin/bash
        [[ "$1 $2" == "show hostnames" ]] && printf 'node1\\nnode2\\n'
        [[ "$1 $2 $3" == "show node node1" ]] && echo "NodeName=node1 Arch=x86_64 \
NodeAddr=${FAKE_ADDR1:-127.0.0.2} NodeHostName=vm"
        [[ "$1 $2 $3" == "show node node2" ]] && echo "NodeName=node2 Arch=x86_64 \
NodeAddr=${FAKE_ADDR2:-127.0.0.3} NodeHostName=vm"
        exit 0
        """)
    _exe(bin_dir / "getent", """\
        #!/bin/bash
        # names resolve only where the test says so (FAKE_HOSTS="node1=10.0.0.1 ..."), like DNS
        for pair in ${FAKE_HOSTS:-}; do [[ "${pair%%=*}" == "$2" ]] && { echo "${pair#*=}  $2"; exit 0; }; done
        exit 2
        """)
    _exe(bin_dir / "host", "#!/bin/bash\nexit 1\n")
    _exe(bin_dir / "srun", f"""\
        #!/bin/bash
        echo "srun $*" >> {calls}
        out=/dev/stdout; node=node1
        for a in "$@"; do case $a in --output=*) out=${{a#--output=}};; --exclude=*) node=node2;; esac; done
        out=${{out//%t/0}}
        script=${{@: -1}}
        SLURMD_NODENAME=$node bash -c "$script" >> "$out" 2>&1 &
        child=$!
        trap 'kill -TERM $child 2>/dev/null' TERM   # as srun passes SIGTERM on to its tasks
        wait $child
        """)
    _exe(bin_dir / "ray", f"""\
        #!/bin/bash
        echo "ray $* nofile=$(ulimit -Sn) uv_run_env=${{RAY_ENABLE_UV_RUN_RUNTIME_ENV:-unset}} \
auth=$RAY_AUTH_MODE path=${{RAY_AUTH_TOKEN_PATH:-}} token=${{RAY_AUTH_TOKEN:-}}" >> {calls}
        if [[ " $* " == *" --block "* ]]; then for _ in $(seq 300); do sleep 0.1; done; fi
        """)
    return bin_dir, module_dir, calls


def node(address: str, gpus: float = 1) -> dict:
    return {"NodeManagerAddress": address, "Alive": True, "Resources": {"CPU": 2.0, "GPU": gpus}}


def run_script(tmp_path, fake_slurm, *, command="echo driver in $PWD; exit 7", nodes=None,
               job=None, env=None):
    """Run slurm/dpo.sub on the stand-ins; returns (result, job log folder, calls log text)."""
    bin_dir, module_dir, calls = fake_slurm
    tmp_path.mkdir(parents=True, exist_ok=True)
    calls.unlink(missing_ok=True)  # this run's calls only
    env_file = tmp_path / "job.env"
    env_file.write_text(slurm.render_env({
        "COMMAND": command, "WORKDIR": str(tmp_path), "CONTAINER": "img#x:1",
        "CONTAINER_MOUNTS": f"{tmp_path}:{tmp_path}", "SETUP": "", "LOG_ROOT": str(tmp_path / "logs"),
        "RAY": "ray", "PYTHON": sys.executable, "NODE_TIMEOUT": "20", "GPUS_PER_NODE": "1",
        "CONTAINER_ENV": "HF_HOME", **(job or {})}))
    nodes = nodes if nodes is not None else [node("127.0.0.2"), node("127.0.0.3")]
    environ = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "42",
               "SLURM_JOB_NUM_NODES": "2", "SLURM_JOB_NODELIST": "node[1-2]", "SLURM_RESTART_COUNT": "1",
               "SLURM_JOB_CPUS_PER_NODE": "2(x2)", "PYTHONPATH": str(module_dir),
               "FAKE_CALLS": str(calls), "FAKE_RAY_NODES": json.dumps(nodes), **(env or {})}
    result = subprocess.run(["bash", str(SCRIPT), str(env_file)], env=environ, capture_output=True,
                            text=True, timeout=60)
    return result, tmp_path / "logs" / "42-r1", calls.read_text() if calls.exists() else ""


def test_the_sbatch_script_runs_head_workers_and_driver(tmp_path, fake_slurm):
    result, logs, log = run_script(tmp_path, fake_slurm)  # one folder per job attempt
    batch = (logs / "batch.log").read_text()
    assert result.returncode == 7, (result.stdout, result.stderr, batch)
    assert "logs in " + str(logs) in result.stdout
    assert (logs / "driver.exit").read_text().strip() == "7"
    assert f"driver in {tmp_path}" in (logs / "driver.log").read_text()
    head = next(line for line in log.splitlines() if line.startswith("srun") and "-w node1" in line)
    assert "--container-image=img#x:1" in head and f"--container-mounts={tmp_path}:{tmp_path}" in head
    assert "--container-env=HF_HOME" in head
    assert "--nodes=1" in head
    workers = next(line for line in log.splitlines() if line.startswith("srun") and "--exclude=node1" in line)
    assert "--nodes=1 --ntasks=1" in workers
    head_ray = next(line for line in log.splitlines() if line.startswith("ray start --head"))
    assert "--block" in head_ray and "--node-ip-address=127.0.0.2" in head_ray
    worker_ray = next(line for line in log.splitlines() if line.startswith("ray start --address"))
    assert "--address=127.0.0.2:1200 --block" in worker_ray and "--node-ip-address=127.0.0.3" in worker_ray
    assert "all 2 Ray nodes joined, 1 GPU(s) each" in (logs / "head.log").read_text()
    # item 5: addresses from the Slurm node names (here: Slurm's NodeAddr), never `hostname -I`
    assert "node node1: 127.0.0.2" in batch and "node node2: 127.0.0.3" in batch
    # item 6: the job's CPUs per node (SLURM_JOB_CPUS_PER_NODE) to every step and every Ray node
    assert "--cpus-per-task=2" in head and "--cpus-per-task=2" in workers
    assert "--num-cpus=2" in head_ray and "--num-cpus=2" in worker_ray
    assert "--num-gpus" not in head_ray + worker_ray  # Ray counts the GPUs it sees
    # item 8: every default port below 9000, the Ray Client port only when Ray Client is there
    assert "--port=1200" in head_ray and "--dashboard-port=8265" in head_ray
    assert "--node-manager-port=1300" in head_ray and "--min-worker-port=2000" in head_ray
    assert "--node-manager-port=1310" in worker_ray and "--max-worker-port=2999" in worker_ray
    assert "--ray-client-server-port" not in head_ray  # no grpc in this Python: Ray starts none
    assert all(int(port) < 9000 for port in re.findall(r"port=(\d+)", head_ray + worker_ray))
    # item 9: one new token for the job, for every Ray process, the wait and the driver
    token = logs / "ray_auth_token"
    assert re.fullmatch(r"[0-9a-f]{64}", token.read_text())
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    for line in (head_ray, worker_ray):
        assert line.endswith(f"auth=token path={token} token=")
    assert "python ray.init 127.0.0.2:1200 auth=token" in log
    # as NeMo RL's ray.sub and image: the open-file limit raised, no uv environments built by Ray
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    wanted = 65535 if hard == resource.RLIM_INFINITY or hard >= 65535 else hard
    for line in (head_ray, worker_ray):
        assert f" nofile={wanted} uv_run_env=0 " in line


def test_a_bare_metal_job_keeps_a_uv_run_setting_it_was_given(tmp_path, fake_slurm):
    result, logs, log = run_script(tmp_path, fake_slurm, command="exit 0", job={"CONTAINER": ""},
                                   env={"RAY_ENABLE_UV_RUN_RUNTIME_ENV": "1"})
    assert result.returncode == 0, (logs / "batch.log").read_text()
    assert " uv_run_env=1 " in next(line for line in log.splitlines() if line.startswith("ray start --head"))


def test_the_ray_client_port_is_ours_when_ray_client_is_installed(tmp_path, fake_slurm):
    (fake_slurm[1] / "grpc.py").write_text("")  # `import grpc` works: Ray would open 10001
    result, logs, log = run_script(tmp_path, fake_slurm, command="exit 0")
    assert result.returncode == 0, (logs / "batch.log").read_text()
    head_ray = next(line for line in log.splitlines() if line.startswith("ray start --head"))
    assert "--ray-client-server-port=1201" in head_ray


def test_node_names_resolve_through_dns_first(tmp_path, fake_slurm):
    result, logs, log = run_script(tmp_path, fake_slurm, command="exit 0",
                                   nodes=[node("10.0.0.1"), node("10.0.0.2")],
                                   env={"FAKE_HOSTS": "node1=10.0.0.1 node2=10.0.0.2"})
    assert result.returncode == 0, (logs / "batch.log").read_text()
    assert "--node-ip-address=10.0.0.1" in log and "--node-ip-address=10.0.0.2" in log
    assert "--address=10.0.0.1:1200" in log


def test_two_nodes_with_one_address_are_refused(tmp_path, fake_slurm):
    result, logs, log = run_script(tmp_path, fake_slurm, env={"FAKE_ADDR2": "127.0.0.2"})
    assert result.returncode == 1 and "srun" not in log
    assert "the Slurm nodes node1 and node2 both resolve to 127.0.0.2" in (logs / "batch.log").read_text()


def test_a_node_without_its_gpus_fails_the_job_by_name_before_the_driver(tmp_path, fake_slurm):
    result, logs, _ = run_script(tmp_path, fake_slurm, nodes=[node("127.0.0.2", 1), node("127.0.0.3", 0)])
    assert result.returncode == 1
    head = (logs / "head.log").read_text()
    assert "Ray node node2 (127.0.0.3) joined with 0 of 1 GPUs" in head and "--gpus-per-node" in head
    assert not (logs / "driver.log").exists()


def test_a_node_that_never_joins_is_named(tmp_path, fake_slurm):
    result, logs, _ = run_script(tmp_path, fake_slurm, nodes=[node("127.0.0.2")],
                                 job={"NODE_TIMEOUT": "3"})
    assert result.returncode == 1
    assert "1 of 2 nodes did not join Ray within 3 s: node2 (127.0.0.3)" in (logs / "head.log").read_text()


def test_cpus_and_gpus_given_to_ray(tmp_path, fake_slurm):
    result, logs, log = run_script(tmp_path, fake_slurm, command="exit 0",
                                   job={"CPUS_PER_NODE": "2", "RAY_NUM_GPUS": "1"},
                                   env={"SLURM_JOB_CPUS_PER_NODE": "1(x2)"})
    assert result.returncode == 0, (logs / "batch.log").read_text()
    assert log.count("--num-cpus=2 --num-gpus=1") == 2 and log.count("--cpus-per-task=2") == 2
    fewer, logs, _ = run_script(tmp_path / "b", fake_slurm, job={"GPUS_PER_NODE": "4"})
    assert fewer.returncode == 1
    assert "CPUS_PER_NODE=2 is fewer than GPUS_PER_NODE=4" in (logs / "batch.log").read_text()


def test_ray_auth_ignores_the_home_token_and_can_be_disabled(tmp_path, fake_slurm):
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text("a-token-from-an-earlier-local-ray-init")
    mine = {"HOME": str(home), "RAY_AUTH_TOKEN": "from-the-submitting-shell"}
    result, logs, log = run_script(tmp_path, fake_slurm, command="exit 0", env=mine)
    assert result.returncode == 0, (logs / "batch.log").read_text()
    assert f"auth=token path={logs / 'ray_auth_token'} token=\n" in log
    assert "from-the-submitting-shell" not in log
    off, logs, log = run_script(tmp_path / "b", fake_slurm, command="exit 0", env=mine,
                                job={"RAY_AUTH": "disabled"})
    assert off.returncode == 0, (logs / "batch.log").read_text()
    assert log.count("auth=disabled path= token=\n") == 2 and not (logs / "ray_auth_token").exists()


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


def fake_queue(tmp_path, monkeypatch, running_polls: int) -> Path:
    """sbatch, squeue, scontrol and scancel of a job 77 that runs for `running_polls` looks of
    squeue (or until scancel), writes its logs as dpo.sub does, and fails with exit code 5."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls"
    bin_dir.mkdir()
    logs = tmp_path / "run" / "slurm" / "logs"
    _exe(bin_dir / "sbatch", f"""\
        #!/bin/bash
        echo "sbatch $*" >> {calls}
        mkdir -p {logs}/77
        echo "gym-dpo: job 77 on 1 node(s); logs in {logs}/77" > {logs}/sbatch-77.out
        echo "node node1: 127.0.0.2" > {logs}/77/batch.log
        echo 77
        """)
    _exe(bin_dir / "squeue", f"""\
        #!/bin/bash
        echo "squeue $*" >> {calls}
        [[ -f {tmp_path}/cancelled ]] && exit 0
        n=$(grep -c '^squeue' {calls})
        if (( n > {running_polls} )); then exit 0; fi
        echo "[local_dpo] at step $n" >> {logs}/77/driver.log
        if (( n == 1 )); then echo "PENDING|(Priority)"; else echo "RUNNING|node1"; fi
        """)
    _exe(bin_dir / "scontrol", f"""\
        #!/bin/bash
        if [[ -f {tmp_path}/cancelled ]]; then echo "JobId=77 JobState=CANCELLED ExitCode=0:15"
        else echo "JobId=77 JobState=FAILED Reason=NonZeroExitCode ExitCode=5:0"; fi
        """)
    _exe(bin_dir / "scancel", f"""\
        #!/bin/bash
        echo "scancel $*" >> {calls}
        touch {tmp_path}/cancelled
        """)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    return calls


def test_a_waited_job_is_shown_at_submission_followed_and_gives_its_exit_code(tmp_path, monkeypatch, capsys):
    """Not `sbatch --wait` with its output captured (no job id until the job had ended)."""
    calls = fake_queue(tmp_path, monkeypatch, running_polls=3)
    data = make_prepared(tmp_path / "data")
    with pytest.raises(RecipeError) as info:
        stage.run(compose_config(*train_overrides(tmp_path, data, "launcher=slurm", "launcher.wait=true")))
    assert info.value.exit_code == 5 and "[local_dpo] at step 3" in str(info.value)  # the log's tail
    run = tmp_path / "run"
    assert (run / "slurm" / "submitted.txt").read_text() == "77\n"
    said = capsys.readouterr()
    err = " ".join(said.err.split())
    assert "submitted job 77 (gym-dpo-run-" in err and f"logs in {run / 'slurm' / 'logs' / '77'}/" in err
    # at once, then the job's states and, on stdout, its logs as they grow
    assert err.index("submitted job 77") < err.index("job 77: pending ((Priority))") < err.index(
        "job 77: running (node1)") < err.index("job 77 ended: failed, exit code 5")
    assert "[local_dpo] at step 1\n[local_dpo] at step 2\n[local_dpo] at step 3\n" in said.out
    train_log = (run / "train.log").read_text()
    assert "[slurm] gym-dpo: job 77 on 1 node(s)" in train_log and "[slurm] node node1: 127.0.0.2" in train_log
    assert [line for line in train_log.splitlines() if "at step" in line] == [
        f"[local_dpo] at step {n}" for n in (1, 2, 3)]
    sbatch = calls.read_text().splitlines()[0]
    assert "--parsable" in sbatch and "--wait" not in sbatch


def test_stopping_a_waited_job_cancels_it(tmp_path, monkeypatch):
    import signal
    import threading

    from recipe import processes

    calls = fake_queue(tmp_path, monkeypatch, running_polls=10**6)
    data = make_prepared(tmp_path / "data")
    cfg = compose_config(*train_overrides(tmp_path, data, "launcher=slurm", "launcher.wait=true"))
    log = tmp_path / "run" / "slurm" / "logs" / "77" / "driver.log"
    timer = threading.Thread(target=lambda: (_wait_for(lambda: log.is_file() and "step 2" in log.read_text()),
                                             os.kill(os.getpid(), signal.SIGTERM)))
    with pytest.raises(processes.Interrupted) as info, processes.signals_raise():
        timer.start()
        stage.run(cfg)
    timer.join()
    assert info.value.exit_code == 143 and "job 77 was cancelled (scancel 77)" in info.value.outcome
    assert "scancel 77" in calls.read_text()


def _wait_for(condition, seconds=60):
    import time

    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.1)
