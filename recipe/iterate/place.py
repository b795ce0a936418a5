"""Where the loop runs the commands of its GPU half (NeMo RL's converter, the policy server):
where the training launcher puts NeMo RL, so the image's paths and GPUs are the ones meant.

- `Here`: in this process's machine (launcher=local_cpu; single_gpu/multi_gpu with
  executor=subprocess, i.e. gym-dpo runs inside the NeMo RL container). The server listens on
  loopback.
- `Slurm` (launcher=slurm): each command is one `srun` step of a job of its own on a compute
  node, in the launcher's container (pyxis, with the run folder and the model mounted at the same
  paths) or bare-metal after `launcher.setup`, from `launcher.workdir`. The server listens on all
  of the node's addresses; the step writes its node name to a file in the run folder (a file
  system every node sees), and the address is the one Slurm reaches that node at. srun blocks
  until the step ends, and stopping it (SIGTERM) ends the step. NeMo Gym's servers stay here:
  they need no GPU.
"""

from __future__ import annotations

import re
import shlex
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig

from recipe.errors import RecipeError


@dataclass
class Here:
    bind_host: str = "127.0.0.1"
    serving_gpus: int = 0

    def wrap(self, argv: list[str], cwd: Path | None, *, name: str, gpus: int = 0,
             node_file: Path | None = None) -> tuple[list[str], Path | None]:
        return [str(a) for a in argv], cwd

    def address(self, node_file: Path) -> str | None:
        return "127.0.0.1"

    def describe(self) -> str:
        return "here"


@dataclass
class Slurm:
    launcher: DictConfig
    run_dir: Path
    mounts: list[str] = field(default_factory=list)   # src:dst[:ro] pyxis mounts besides the run folder
    bind_host: str = "0.0.0.0"
    srun: str = "srun"

    @property
    def serving_gpus(self) -> int:
        return int(self.launcher.gpus_per_node)

    def container(self) -> str | None:
        from recipe.train.launchers import slurm

        image = self.launcher.get("container")
        if not image:
            return None
        image = str(image)
        return str(Path(image).expanduser().absolute()) if slurm.is_squashfs(image) else slurm.pyxis_image(image)

    def options(self, name: str, gpus: int) -> list[str]:
        launcher = self.launcher
        argv = [self.srun, f"--job-name=gym-dpo-{name}", "--nodes=1", "--ntasks=1", f"--time={launcher.time}",
                "--kill-on-bad-exit=1"]
        for key in ("account", "partition", "qos"):
            if launcher.get(key):
                argv.append(f"--{key}={launcher[key]}")
        if gpus and launcher.gres:
            argv.append(f"--gpus-per-node={gpus}")
        if launcher.get("cpus_per_node"):
            argv.append(f"--cpus-per-task={int(launcher.cpus_per_node)}")
        image = self.container()
        if image:
            mounts = [f"{self.run_dir}:{self.run_dir}", *self.mounts,
                      *[str(m) for m in launcher.get("container_mounts") or []]]
            argv += [f"--container-image={image}", f"--container-mounts={','.join(mounts)}",
                     "--no-container-mount-home"]
        return argv

    def wrap(self, argv: list[str], cwd: Path | None, *, name: str, gpus: int = 0,
             node_file: Path | None = None) -> tuple[list[str], Path | None]:
        lines = ["set -e"]
        if self.launcher.get("setup"):
            lines.append(str(self.launcher.setup))
        if node_file is not None:
            lines.append(f'echo "$SLURMD_NODENAME" > {shlex.quote(str(node_file))}')
        if cwd is not None:
            lines.append(f"cd {shlex.quote(str(cwd))}")
        lines.append("exec " + shlex.join(str(a) for a in argv))
        wrapped = [*self.options(name, gpus)]
        if cwd is not None and self.container():
            wrapped.append(f"--container-workdir={cwd}")
        return [*wrapped, "bash", "-c", "\n".join(lines)], self.run_dir

    def address(self, node_file: Path) -> str | None:
        """The address of the node whose name the step wrote (None until it has)."""
        try:
            node = node_file.read_text().strip()
        except OSError:
            return None
        if not node:
            return None
        return node_address(node)

    def describe(self) -> str:
        return "a Slurm step (srun)" + (f" in {self.container()}" if self.container() else ", bare-metal")


def node_address(node: str) -> str:
    """A Slurm node's address: its name resolved, else the NodeAddr Slurm reaches it at (as
    dpo.sub does for Ray)."""
    try:
        return socket.gethostbyname(node)
    except OSError:
        pass
    try:
        shown = subprocess.run(["scontrol", "show", "node", node, "-o"], capture_output=True, text=True,
                               timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        shown = ""
    match = re.search(r"NodeAddr=(\S+)", shown)
    if not match:
        raise RecipeError(f"cannot resolve the Slurm node {node} to an address (not in DNS or /etc/hosts, "
                          "no NodeAddr from scontrol show node)")
    try:
        return socket.gethostbyname(match.group(1))
    except OSError:
        raise RecipeError(f"the Slurm node {node} has NodeAddr={match.group(1)}, which does not resolve") from None


def build(cfg: DictConfig, run_dir: Path, model_name: str):
    """Where the launcher of `cfg` runs NeMo RL (see the module doc), or a RecipeError for one the
    loop cannot follow."""
    launcher = cfg.launcher
    name = str(launcher.name)
    if name in ("single_gpu", "multi_gpu") and str(launcher.get("executor")) == "docker":
        raise RecipeError(
            "stage=iterate with launcher.executor=docker is not supported: the loop would train in a "
            "fresh container but convert and serve each policy on this host, without the image's NeMo RL "
            "and vLLM. Run the whole loop inside the NeMo RL container instead (our image: `docker compose "
            "run --rm recipe stage=iterate ...`, launcher.executor=subprocess, the default)")
    if name != "slurm":
        return Here()
    mounts = []
    model = Path(model_name).expanduser()
    if model.is_dir():
        mounts.append(f"{model.absolute()}:{model.absolute()}:ro")
    if launcher.get("hf_cache"):
        cache = Path(str(launcher.hf_cache)).expanduser().absolute()
        mounts.append(f"{cache}:{cache}")
    return Slurm(launcher, run_dir, mounts)
