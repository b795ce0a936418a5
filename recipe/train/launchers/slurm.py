"""Slurm, one or more nodes: render the job's env file and submit slurm/dpo.sub with sbatch.

`gym-dpo stage=train launcher=slurm launcher.nodes=2 launcher.account=ACC launcher.partition=batch`
runs on a login node whose run folder is on a file system every node sees. It writes

    <run_dir>/slurm/dpo.sub    the sbatch script (a copy of the packaged one: the run keeps it)
    <run_dir>/slurm/job.env    the job's variables (bash; no secrets): driver COMMAND, CONTAINER,
                               CONTAINER_MOUNTS, SETUP, LOG_ROOT, ports, ...

and submits `sbatch <options> <run_dir>/slurm/dpo.sub <run_dir>/slurm/job.env`; logs go to
<run_dir>/slurm/logs/<jobid>/. The same two files resubmit by hand. The job id and its log folder
are printed at submission; with launcher.wait=true the job is followed to its end and cancelled
on Ctrl-C or SIGTERM (recipe.train.executors.sbatch). The job name is unique per
run folder and the job has `--dependency=singleton`, so two jobs of one run (a resubmit while a
requeue is pending) never write the same checkpoint_dir at once.

Container: pyxis gets `launcher.container` (default container.image, registry host separated by
`#` as enroot wants) and mounts for the run folder, the data and the HF cache at the same paths.
enroot before 4.0.0 refuses references with `@sha256:`, so the pin every enroot accepts is a
squashfs file: `launcher.container=/shared/nemo-rl.sqsh`, checked against the sha256 that
`gym-dpo stage=lock_image container.squashfs=...` recorded (recipe.train.container). A registry
tag goes to pyxis as a tag, its locked digest only with `launcher.digest_reference=true` (enroot
>= 4.0.0). Bare-metal: `launcher.container=null`, `launcher.setup` activates a Python env on the
shared FS, `launcher.workdir` is a NeMo RL checkout.
"""

from __future__ import annotations

import hashlib
import re
import shlex
import shutil
from importlib import resources
from pathlib import Path

from recipe import report
from recipe.errors import RecipeError
from recipe.train import container as image_lock
from recipe.train.launchers import LaunchPlan, nemo_rl_command, shell_line


def folder(plan: LaunchPlan) -> Path:
    return plan.run_dir / "slurm"


def script_source(plan: LaunchPlan) -> Path:
    if plan.launcher.get("script"):
        path = Path(str(plan.launcher.script)).expanduser().absolute()
        if not path.is_file():
            raise RecipeError(f"launcher.script={path} does not exist")
        return path
    return Path(str(resources.files("recipe.slurm").joinpath("dpo.sub")))


def job_name(plan: LaunchPlan) -> str:
    """launcher.job_name (or gym-dpo-<run folder>) + a hash of the run folder: unique per run,
    the same when the run is submitted again."""
    base = plan.launcher.get("job_name") or f"gym-dpo-{plan.run_dir.name}"
    base = re.sub(r"[^A-Za-z0-9_.-]", "-", str(base))[:80]
    return f"{base}-{hashlib.sha256(str(plan.run_dir).encode()).hexdigest()[:8]}"


def pyxis_image(image: str) -> str:
    """`nvcr.io/nvidia/x:tag` -> `nvcr.io#nvidia/x:tag` (enroot's registry separator); paths as is."""
    if image.startswith(("/", ".")) or image.endswith(".sqsh") or "#" in image:
        return image
    first, _, rest = image.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        return f"{first}#{rest}"
    return image


def is_squashfs(image: str) -> bool:
    return image.endswith(".sqsh") or image.startswith(("/", "."))


def _locked_digest(plan: LaunchPlan, image: str) -> str | None:
    lock = image_lock.read_lock(plan.cfg)
    if lock is not None and lock.image == image and lock.kind in ("repo", "given"):
        return lock.digest
    return None


def container_image(plan: LaunchPlan) -> str | None:
    """What pyxis gets for --container-image: a squashfs path, or a registry tag (tag@digest only
    with launcher.digest_reference=true: enroot before 4.0.0 refuses `@`); None: bare-metal."""
    image = plan.launcher.get("container")
    if not image:
        return None
    image = str(image)
    if is_squashfs(image):
        return str(Path(image).expanduser().absolute())
    digest = _locked_digest(plan, image) if plan.launcher.digest_reference else None
    return pyxis_image(f"{image}@{digest}" if digest else image)


def check_image(plan: LaunchPlan) -> dict:
    """What the job will run, checked against the lock where it can be; for provenance.json."""
    image = plan.launcher.get("container")
    if not image:
        return {"image": None, "status": "bare-metal"}
    image = str(image)
    if is_squashfs(image):
        return image_lock.check_squashfs(plan.cfg, image)
    digest = _locked_digest(plan, image)
    record = {"image": image, "lock_file": str(image_lock.lock_path(plan.cfg)), "locked": digest,
              "source": "pyxis", "status": "unlocked"}
    if digest and plan.launcher.digest_reference:
        record["status"] = "pinned"  # pyxis pulls tag@digest: that digest or nothing
        return record
    pin = ("import it once as a squashfs file (enroot import -o /shared/nemo-rl.sqsh 'docker://"
           f"{pyxis_image(image)}'), lock that file (gym-dpo stage=lock_image "
           "container.squashfs=/shared/nemo-rl.sqsh) and run it (launcher.container=/shared/nemo-rl.sqsh)")
    if digest:
        record["status"] = "tag (digest not enforced)"
        report.console.print(
            f"[yellow]note:[/] pyxis gets the tag {image}, not its locked digest {digest[:19]}…, as "
            f"enroot before 4.0.0 refuses tag@digest. To run exactly the locked image on any enroot, "
            f"{pin}; on enroot >= 4.0.0, launcher.digest_reference=true", highlight=False, soft_wrap=True)
    else:
        report.console.print(f"[yellow]note:[/] no digest recorded for {image}: pyxis pulls the tag "
                             f"as it is today. To pin it, {pin}", highlight=False, soft_wrap=True)
    return record


def mounts(plan: LaunchPlan) -> list[str]:
    found = [f"{p}:{p}" + (":ro" if ro else "") for p, ro in plan.mount_paths()]
    if plan.launcher.get("hf_cache"):
        cache = Path(str(plan.launcher.hf_cache)).expanduser().absolute()
        found.append(f"{cache}:{cache}")
    return found + [str(m) for m in plan.launcher.container_mounts or []]


def job_env(plan: LaunchPlan) -> dict[str, str]:
    """The variables dpo.sub reads (see its header). Values only from the config: no secrets."""
    launcher, ports = plan.launcher, plan.launcher.ports
    image = container_image(plan)
    env = {
        "COMMAND": shlex.join(nemo_rl_command(plan)),
        "WORKDIR": str(launcher.workdir),
        "CONTAINER": image or "",
        "CONTAINER_MOUNTS": ",".join(mounts(plan)) if image else "",
        "SETUP": str(launcher.setup or ""),
        "LOG_ROOT": str(folder(plan) / "logs"),
        "RAY": str(launcher.ray),
        "PYTHON": str(launcher.python),
        "NODE_TIMEOUT": str(int(launcher.node_timeout)),
        "GPUS_PER_NODE": str(int(launcher.gpus_per_node)),
        "CPUS_PER_NODE": str(cpus_per_node(plan) or ""),
        "RAY_AUTH": ray_auth(plan),
        "RAY_GCS_PORT": str(ports.gcs),
        "RAY_CLIENT_PORT": str(ports.client),
        "RAY_DASHBOARD_PORT": str(ports.dashboard),
        "RAY_HEAD_PORT_BASE": str(ports.head_base),
        "RAY_WORKER_PORT_BASE": str(ports.worker_base),
        "RAY_HEAD_WORKER_PORTS": str(ports.head_worker_range),
        "RAY_WORKER_WORKER_PORTS": str(ports.worker_worker_range),
    }
    extra = {}
    if launcher.get("hf_cache"):
        extra["HF_HOME"] = str(Path(str(launcher.hf_cache)).expanduser().absolute())
    extra.update({str(k): str(v) for k, v in (launcher.env or {}).items()})
    # by name, for pyxis: an image's own value of a variable (our image's HF_HOME) wins over the job's otherwise
    env["CONTAINER_ENV"] = ",".join(sorted(extra)) if image else ""
    env.update(extra)
    _check_ports(ports)
    return env


def cpus_per_node(plan: LaunchPlan) -> int | None:
    """launcher.cpus_per_node, checked; None: the whole node's (an exclusive job gets them all).

    A job that is not exclusive gets one CPU per task from Slurm unless it asks for more, and
    NeMo RL places one CPU with every GPU: such a job must say how many it needs.
    """
    launcher = plan.launcher
    cpus = launcher.get("cpus_per_node")
    if cpus is None:
        if not launcher.exclusive:
            raise RecipeError("launcher.exclusive=false: Slurm gives such a job one CPU per node "
                              "unless it asks for more, and NeMo RL needs one per GPU; set "
                              f"launcher.cpus_per_node (at least launcher.gpus_per_node="
                              f"{int(launcher.gpus_per_node)})")
        return None
    cpus = int(cpus)
    if cpus < max(1, int(launcher.gpus_per_node)):
        raise RecipeError(f"launcher.cpus_per_node={cpus} is fewer than launcher.gpus_per_node="
                          f"{int(launcher.gpus_per_node)}: NeMo RL places one CPU with every GPU")
    return cpus


AUTH_MODES = ("token", "disabled")


def ray_auth(plan: LaunchPlan) -> str:
    mode = str(plan.launcher.ray_auth)
    if mode not in AUTH_MODES:
        raise RecipeError(f"launcher.ray_auth={mode!r}: token (a new token per job, the default) "
                          "or disabled")
    return mode


def _range(text) -> range:
    try:
        low, high = (int(v) for v in str(text).split("-"))
    except ValueError:
        raise RecipeError(f"launcher.ports: {text!r} is not a MIN-MAX port range") from None
    return range(low, high + 1)


def _check_ports(ports) -> None:
    """Every port distinct: the head's and the workers' may share one host (tests, small nodes)."""
    head, worker = _range(ports.head_worker_range), _range(ports.worker_worker_range)
    if not head or not worker or set(head) & set(worker):
        raise RecipeError(f"launcher.ports: the head's worker ports {ports.head_worker_range} and the "
                          f"workers' {ports.worker_worker_range} must be non-empty and must not overlap")
    singles = [int(ports.gcs), int(ports.client), int(ports.dashboard)] + [
        int(b) + i for b in (ports.head_base, ports.worker_base) for i in range(6)]
    if len(set(singles)) != len(singles) or any(p in head or p in worker for p in singles):
        raise RecipeError("launcher.ports: gcs, client, dashboard, the six ports from head_base and "
                          "from worker_base, and the worker ranges must all differ")


def render_env(env: dict[str, str]) -> str:
    lines = ["# Written by gym-dpo for slurm/dpo.sub (sourced by bash). No secrets: HF_TOKEN and",
             "# WANDB_API_KEY come from the environment sbatch exports.", ""]
    lines += [f"{name}={shlex.quote(value)}" for name, value in env.items()]
    return "\n".join(lines) + "\n"


def write_files(plan: LaunchPlan) -> list[Path]:
    target = folder(plan)
    (target / "logs").mkdir(parents=True, exist_ok=True)
    script = target / "dpo.sub"
    shutil.copyfile(script_source(plan), script)
    script.chmod(0o755)
    env_file = target / "job.env"
    env_file.write_text(render_env(job_env(plan)))
    return [script, env_file]


def build_command(plan: LaunchPlan) -> list[str]:
    """`sbatch <options> <run_dir>/slurm/dpo.sub <run_dir>/slurm/job.env`."""
    launcher = plan.launcher
    nodes = int(launcher.nodes)
    if nodes < 1:
        raise RecipeError(f"launcher.nodes={nodes}: at least 1")
    argv = [str(launcher.sbatch), "--parsable", f"--job-name={job_name(plan)}", f"--nodes={nodes}",
            "--ntasks-per-node=1", f"--time={launcher.time}", "--dependency=singleton",
            f"--output={folder(plan) / 'logs' / 'sbatch-%j.out'}"]
    for key in ("account", "partition", "qos"):
        if launcher.get(key):
            argv.append(f"--{key}={launcher[key]}")
    if launcher.gres:
        argv.append(f"--gpus-per-node={int(launcher.gpus_per_node)}")
    cpus = cpus_per_node(plan)
    if cpus is not None:
        argv.append(f"--cpus-per-task={cpus}")  # one task per node: the node's CPUs for Ray
    if launcher.exclusive:
        argv.append("--exclusive")
    argv.append("--requeue" if launcher.requeue else "--no-requeue")
    argv += [str(a) for a in launcher.sbatch_args or []]
    return argv + [str(folder(plan) / "dpo.sub"), str(folder(plan) / "job.env")]


def describe(plan: LaunchPlan) -> str:
    return shell_line(build_command(plan))


def command_record(plan: LaunchPlan) -> dict:
    image = container_image(plan)
    return {"executor": "sbatch", "cwd": str(plan.run_dir), "driver": nemo_rl_command(plan),
            "driver_cwd": str(plan.launcher.workdir), "container": image,
            "job_env": str(folder(plan) / "job.env")}


def launcher_waits(plan: LaunchPlan) -> bool:
    return bool(plan.launcher.get("wait"))


def detached(plan: LaunchPlan) -> bool:
    """True: launch() returns once the job is queued (launcher.wait=false), not when it ends."""
    return not launcher_waits(plan)


def launch(plan: LaunchPlan) -> int:
    """Submit; with launcher.wait=true follow the job to its end and return its exit code."""
    from recipe.train.executors import sbatch

    argv = build_command(plan)
    if shutil.which(argv[0]) is None:
        raise RecipeError(f"{argv[0]} is not on PATH: run on a Slurm login node, or write the job "
                          f"files with launcher.dry_run=true and submit {folder(plan)}/dpo.sub by hand")
    job = sbatch.submit(argv, plan.run_dir, folder(plan) / "submitted.txt")
    report.console.print(f"submitted job {job} ({job_name(plan)}); logs in {folder(plan) / 'logs' / job}/ "
                         f"(squeue -j {job}; scancel {job} stops it)", highlight=False, soft_wrap=True)
    if not launcher_waits(plan):
        return 0
    return sbatch.wait(job, folder(plan) / "logs", plan.run_dir / "train.log")
