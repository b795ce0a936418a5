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
  they need no GPU. Each step is sized from what it runs (`server_size`: the engine's GPUs,
  `serving.step`; `converter_size`: from the checkpoint) and gets what the training job's steps
  get: HF_HOME (launcher.hf_cache) and launcher.env (`env()`).
Both give the converter and the server launcher.env, as the training run gets it.
"""

from __future__ import annotations

import math
import re
import shlex
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig

from recipe.errors import RecipeError


def mebibytes(text, what: str) -> int:
    """`32G`, `4096M`, `512K`, `1T` or a number of MiB (Slurm's --mem units) -> MiB."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?\s*", str(text), re.IGNORECASE)
    if not match:
        raise RecipeError(f"{what}={text!r}: give a size as Slurm writes it (e.g. 32G, 4096M)")
    scale = {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024 * 1024}[match.group(2).upper()]
    return max(1, math.ceil(float(match.group(1)) * scale))


@dataclass
class Size:
    """What one step asks Slurm for: GPUs on its node, CPUs, memory (None: Slurm's default)."""

    gpus: int = 0
    cpus: int | None = None
    mem_mib: int | None = None


def server_size(serving: DictConfig) -> Size:
    """The policy server's step: the engine's GPUs (vLLM: tensor x pipeline parallel size, from its
    arguments) and `serving.step` CPUs and memory, per GPU when it has GPUs."""
    from recipe.iterate import serving as engines

    gpus = engines.load(str(serving.name)).gpus(serving)
    step = serving.get("step") or {}
    units = max(gpus, 1)
    cpus = int(step["cpus"]) * units if step.get("cpus") else None
    mem = mebibytes(step["mem"], "serving.step.mem") * units if step.get("mem") else None
    return Size(gpus, cpus, mem)


def converter_size(weights: Path, dcp_to_hf: DictConfig) -> Size:
    """NeMo RL's converter: no GPU; it holds the whole model twice in float32 (torch DCP's
    dcp_to_torch_save, then torch.load of the file it wrote), so its memory is twice the
    checkpoint's weights on disk plus `step.mem_extra`, unless `step.mem` says (none before the
    checkpoint exists: the dry run)."""
    step = dcp_to_hf.get("step") or {}
    cpus = int(step["cpus"]) if step.get("cpus") else None
    if step.get("mem"):
        return Size(0, cpus, mebibytes(step.mem, "iterate.dcp_to_hf.step.mem"))
    if not weights.is_dir():
        return Size(0, cpus)
    size = sum(f.stat().st_size for f in weights.rglob("*") if f.is_file())
    extra = mebibytes(step.get("mem_extra") or 0, "iterate.dcp_to_hf.step.mem_extra")
    return Size(0, cpus, math.ceil(2 * size / 2**20) + extra)


def _launcher_env(launcher: DictConfig | None) -> dict[str, str]:
    return {str(k): str(v) for k, v in ((launcher.get("env") if launcher is not None else None) or {}).items()}


@dataclass
class Here:
    launcher: DictConfig | None = None
    bind_host: str = "127.0.0.1"

    def env(self) -> dict[str, str]:
        """What the training run gets besides this environment: launcher.env."""
        return _launcher_env(self.launcher)

    def wrap(self, argv: list[str], cwd: Path | None, *, name: str, size: Size | None = None,
             node_file: Path | None = None) -> tuple[list[str], Path | None]:
        return [str(a) for a in argv], cwd

    def address(self, node_file: Path) -> str | None:
        return "127.0.0.1"

    def step(self, name: str) -> str | None:
        """The name of the Slurm step that runs `name` (None here)."""
        return None

    def describe(self) -> str:
        return "here"


@dataclass
class Slurm:
    launcher: DictConfig
    run_dir: Path
    mounts: list[str] = field(default_factory=list)   # src:dst[:ro] pyxis mounts besides the run folder
    bind_host: str = "0.0.0.0"
    srun: str = "srun"

    def env(self) -> dict[str, str]:
        """What the training job's steps get (slurm/dpo.sub exports its job.env): HF_HOME (the
        shared launcher.hf_cache) and launcher.env. srun passes its environment to the step, and
        pyxis into the container (`--container-env` names them, as an image's own value, e.g. our
        image's HF_HOME, would win otherwise); values stay out of every command line and log."""
        env = {}
        if self.launcher.get("hf_cache"):
            env["HF_HOME"] = str(Path(str(self.launcher.hf_cache)).expanduser().absolute())
        return {**env, **_launcher_env(self.launcher)}

    def container(self) -> str | None:
        from recipe.train.launchers import slurm

        image = self.launcher.get("container")
        if not image:
            return None
        image = str(image)
        return str(Path(image).expanduser().absolute()) if slurm.is_squashfs(image) else slurm.pyxis_image(image)

    def step(self, name: str) -> str:
        return f"gym-dpo-{name}"

    def options(self, name: str, size: Size | None) -> list[str]:
        launcher, size = self.launcher, size or Size()
        argv = [self.srun, f"--job-name={self.step(name)}", "--nodes=1", "--ntasks=1", f"--time={launcher.time}",
                "--kill-on-bad-exit=1"]
        for key in ("account", "partition", "qos"):
            if launcher.get(key):
                argv.append(f"--{key}={launcher[key]}")
        if size.gpus and launcher.gres:
            argv.append(f"--gpus-per-node={size.gpus}")
        if size.cpus:
            argv.append(f"--cpus-per-task={size.cpus}")
        if size.mem_mib:
            argv.append(f"--mem={size.mem_mib}M")
        image = self.container()
        if image:
            mounts = [f"{self.run_dir}:{self.run_dir}", *self.mounts,
                      *[str(m) for m in launcher.get("container_mounts") or []]]
            argv += [f"--container-image={image}", f"--container-mounts={','.join(mounts)}",
                     "--no-container-mount-home"]
            if self.env():  # by name: pyxis keeps an image's own value of a variable over the job's
                argv.append(f"--container-env={','.join(sorted(self.env()))}")
        return argv

    def wrap(self, argv: list[str], cwd: Path | None, *, name: str, size: Size | None = None,
             node_file: Path | None = None) -> tuple[list[str], Path | None]:
        lines = ["set -e"]
        if self.launcher.get("setup"):
            lines.append(str(self.launcher.setup))
        if node_file is not None:  # the step has started: the start-up clock runs from here
            lines.append(f'echo "$SLURMD_NODENAME" > {shlex.quote(str(node_file))}')
        if cwd is not None:
            lines.append(f"cd {shlex.quote(str(cwd))}")
        lines.append("exec " + shlex.join(str(a) for a in argv))
        wrapped = [*self.options(name, size)]
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
        return Here(launcher)
    mounts = []
    model = Path(model_name).expanduser()
    if model.is_dir():
        mounts.append(f"{model.absolute()}:{model.absolute()}:ro")
    if launcher.get("hf_cache"):
        cache = Path(str(launcher.hf_cache)).expanduser().absolute()
        mounts.append(f"{cache}:{cache}")
    return Slurm(launcher, run_dir, mounts)
