"""Run the NeMo RL command in a fresh NeMo RL container from the host, through the Docker SDK.

The container gets what NVIDIA's PyTorch-based images ask for (`docker run --gpus all --ipc=host
--ulimit memlock=-1 --ulimit stack=67108864`): a GPU device request for launcher.gpus_per_node
GPUs (`launcher.docker.gpus=false` drops it, for CPU-only tests), ipc=host or a large /dev/shm,
and the memlock/stack ulimits. The run folder, the prepared data and a local model folder are
mounted at the same paths as on the host, so every absolute path in nemo_rl_dpo.yaml holds in
both places; the HF cache is mounted at launcher.docker.container_hf_cache (HF_HOME points
there). Secrets (launcher.pass_env) go to the Docker API by name from this environment, never
into a file or a printed line. Logs stream to the terminal and to <run_dir>/train.log; the
container's exit code is returned. Ctrl-C or SIGTERM stops the container and is passed on (the
CLI exits 130 / 143 and says it was stopped), never reported as the training's exit code.

The container's name is fixed per run folder: it marks the run as taken. A container of that name
left by a gym-dpo that died without cleaning up (kill -9) is removed by the next launch; one whose
gym-dpo still lives (its pid and host are labels) is a refusal naming it.

`container_spec` is a plain dict (no Docker types) so it can be checked without an engine;
`to_docker_kwargs` turns it into `client.containers.create(**kwargs)` arguments.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import socket
import sys
from pathlib import Path

from recipe import report
from recipe.errors import RecipeError
from recipe.train.container import docker_client

GPU_CAPABILITIES = [["gpu"]]


def _parse_mount(text: str) -> tuple[str, str, str]:
    parts = str(text).split(":")
    if len(parts) == 2:
        parts.append("rw")
    if len(parts) != 3 or parts[2] not in ("ro", "rw") or not parts[0] or not parts[1]:
        raise RecipeError(f"launcher.docker.mounts entry {text!r} is not host:container[:ro|rw]")
    return str(Path(parts[0]).expanduser().absolute()), parts[1], parts[2]


def container_name(run_dir: Path) -> str:
    stem = re.sub(r"[^a-zA-Z0-9_.-]", "-", run_dir.name).strip("-.") or "run"
    return f"gym-dpo-{stem}-{hashlib.sha256(str(run_dir).encode()).hexdigest()[:8]}"


def container_spec(plan, argv: list[str], environ=None) -> dict:
    """The container to create for `plan` (image, command, mounts, env, GPUs, ipc, ulimits)."""
    environ = os.environ if environ is None else environ
    launcher, options = plan.launcher, plan.launcher.docker
    volumes: dict[str, dict] = {}
    for path, read_only in plan.mount_paths():
        volumes[str(path)] = {"bind": str(path), "mode": "ro" if read_only else "rw"}
    env_names = [name for name in launcher.pass_env if name in environ]
    environment = {name: environ[name] for name in env_names}
    environment.update({str(k): str(v) for k, v in (launcher.env or {}).items()})
    if options.hf_cache:
        host_cache = Path(str(options.hf_cache)).expanduser().absolute()
        volumes[str(host_cache)] = {"bind": str(options.container_hf_cache), "mode": "rw"}
        environment["HF_HOME"] = str(options.container_hf_cache)
    for text in options.mounts or []:
        host, bind, mode = _parse_mount(text)
        volumes[host] = {"bind": bind, "mode": mode}
    spec = {
        "image": str(plan.cfg.container.image),
        "command": list(argv),
        "working_dir": str(launcher.workdir),
        "name": container_name(plan.run_dir),
        "labels": {"gym-dpo.run_dir": str(plan.run_dir), "gym-dpo.config": str(plan.config_path),
                   "gym-dpo.pid": str(os.getpid()), "gym-dpo.host": socket.gethostname()},
        "volumes": volumes,
        "environment": environment,
        "ulimits": [{"name": name, "soft": int(options[name]), "hard": int(options[name])}
                    for name in ("memlock", "stack") if options.get(name) is not None],
        "device_requests": ([{"count": int(launcher.gpus_per_node), "capabilities": GPU_CAPABILITIES}]
                            if options.gpus else []),
    }
    if options.ipc_host:
        spec["ipc_mode"] = "host"
    else:
        spec["shm_size"] = str(options.shm_size)
    if options.user:
        spec["user"] = str(options.user)
    if options.network:
        spec["network"] = str(options.network)
    return spec


def recordable(spec: dict) -> dict:
    """The spec without environment values (names only): safe to write and print."""
    safe = {k: v for k, v in spec.items() if k != "environment"}
    safe["environment_names"] = sorted(spec["environment"])
    return safe


def docker_run_line(spec: dict) -> str:
    """The `docker run` a person would type for the same container (env by name only)."""
    args = ["docker", "run", "--rm", "--name", spec["name"], "-w", spec["working_dir"]]
    for request in spec["device_requests"]:
        args += ["--gpus", str(request["count"])]
    if spec.get("ipc_mode"):
        args += ["--ipc", spec["ipc_mode"]]
    if spec.get("shm_size"):
        args += ["--shm-size", spec["shm_size"]]
    for limit in spec["ulimits"]:
        args += ["--ulimit", f"{limit['name']}={limit['soft']}"]
    for host, bind in spec["volumes"].items():
        args += ["-v", f"{host}:{bind['bind']}:{bind['mode']}"]
    for name in sorted(spec["environment"]):
        args += ["-e", name]  # by name: docker takes the value from the caller's environment
    if spec.get("user"):
        args += ["--user", spec["user"]]
    if spec.get("network"):
        args += ["--network", spec["network"]]
    return shlex.join(args + [spec["image"]] + spec["command"])


def to_docker_kwargs(spec: dict) -> dict:
    from docker.types import DeviceRequest, Ulimit

    kwargs = {k: v for k, v in spec.items() if k not in ("ulimits", "device_requests")}
    kwargs["ulimits"] = [Ulimit(**u) for u in spec["ulimits"]]
    if spec["device_requests"]:
        kwargs["device_requests"] = [DeviceRequest(**r) for r in spec["device_requests"]]
    return kwargs


def _gym_dpo_alive(pid: str | None, host: str | None) -> bool:
    """Whether the gym-dpo that labelled a container still runs (on another host: assumed so)."""
    if host != socket.gethostname():
        return True
    try:
        with open(f"/proc/{int(pid)}/cmdline", "rb") as handle:
            words = handle.read().split(b"\0")
    except (OSError, TypeError, ValueError):
        return False
    return any(b"gym-dpo" in w or w == b"recipe" or w.endswith(b"recipe/__main__.py") for w in words)


def clear_left_behind(client, spec: dict) -> None:
    """Before creating the run's container: one of its name left by an earlier launch that died
    without cleaning up is removed; one whose gym-dpo still lives, or not gym-dpo's for this run
    folder, is a refusal that names it."""
    import docker

    name = spec["name"]
    try:
        box = client.containers.get(name)
    except docker.errors.NotFound:
        return
    labels = box.labels or {}
    if labels.get("gym-dpo.run_dir") != spec["labels"]["gym-dpo.run_dir"]:
        raise RecipeError(f"a container named {name} exists that gym-dpo did not start for this run folder; "
                          f"remove it (docker rm -f {name}) or train another run_dir")
    pid, host = labels.get("gym-dpo.pid"), labels.get("gym-dpo.host")
    if box.status in ("running", "restarting", "paused") and _gym_dpo_alive(pid, host):
        raise RecipeError(f"the container {name} is already training this run folder (started by gym-dpo, pid "
                          f"{pid} on {host}); wait for it to end, or stop it: docker rm -f {name}")
    report.console.print(f"removing the container {name} an earlier launch left behind ({box.status}; its "
                         f"gym-dpo, pid {pid} on {host}, is gone)", highlight=False, soft_wrap=True)
    box.remove(force=True)


def run(spec: dict, log_path: Path, remove: bool = True, client=None) -> int:
    """Create and start the container, stream its logs, return its exit code. Ctrl-C or SIGTERM
    (`processes.Interrupted`) stops the container and is raised again, with `stopped` saying so."""
    import docker

    client = client or docker_client()
    for host in spec["volumes"]:
        Path(host).mkdir(parents=True, exist_ok=True)  # else Docker creates it as root
    clear_left_behind(client, spec)
    try:
        box = client.containers.create(**to_docker_kwargs(spec))
    except docker.errors.ImageNotFound:
        raise RecipeError(f"image {spec['image']} is not on this machine: docker pull it first") from None
    except docker.errors.APIError as exc:
        said = str(exc.explanation or exc)
        hint = (" (GPUs: launcher.docker.gpus=false runs without a device request)"
                if re.search(r"gpu|device driver|nvidia", said, re.IGNORECASE) else "")
        raise RecipeError(f"Docker refused the container {spec['name']} for {spec['image']}: {said}{hint}") from None
    log_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(log_path, "ab") as log:
            box.start()
            try:
                for chunk in box.logs(stream=True, follow=True):
                    sys.stdout.buffer.write(chunk)
                    sys.stdout.flush()
                    log.write(chunk)
                    log.flush()  # train.log follows the container as it runs
                return int(box.wait()["StatusCode"])
            except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM through the CLI (processes.Interrupted)
                box.stop(timeout=30)
                exc.stopped = f"the container {spec['name']} was stopped"
                raise
    except docker.errors.APIError as exc:
        hint = (" (this engine may not allow raising that ulimit: launcher.docker.memlock=null or "
                "launcher.docker.stack=null leaves it as the engine's default)"
                if "rlimit" in str(exc) else "")
        raise RecipeError(f"container {spec['name']} failed to start: {exc.explanation or exc}{hint}") from None
    finally:
        if remove:
            try:
                box.remove(force=True)
            except docker.errors.APIError:
                pass
