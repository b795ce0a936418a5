"""Launch profiles: how the written NeMo RL config gets run (one module per `launcher=` option).

The seam every launcher module implements (the train stage calls it; `launcher.name` picks the
module `recipe.train.launchers.<name>`):

    build_command(plan: LaunchPlan) -> list[str]
        The exact argv the launch runs (recorded in <run_dir>/command.json and printed).
    launch(plan: LaunchPlan) -> int
        Run it and return its exit code (0 = trained). Not called on a dry run.

and may add (the stage calls them when present):

    write_files(plan) -> list[Path]    more files a launch needs (e.g. the Slurm job env file);
                                       written on dry runs too
    describe(plan) -> str              the command as one shell line for people (default: cd + argv)
    check_image(plan) -> dict          digest check of the image it will run (recipe.train.container);
                                       raises RecipeError to refuse; the dict goes to provenance.json
    command_record(plan) -> dict       more to record beside argv (cwd, executor, container spec)
    detached(plan) -> bool             True when launch() returns once a job is queued (Slurm),
                                       not when training ends

`launcher.dry_run=true` on any profile (and the `dry_run` profile) writes everything, prints the
command and launches nothing: the stage handles it, a launcher module need not.
"""

from __future__ import annotations

import importlib
import pkgutil
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

from omegaconf import DictConfig

from recipe.errors import RecipeError


@dataclass
class LaunchPlan:
    """Everything a launcher needs; built by the train stage once the NeMo RL YAML is written."""

    run_dir: Path                     # absolute run folder (all outputs go here)
    config_path: Path                 # <run_dir>/nemo_rl_dpo.yaml, absolute
    overrides: list[str]              # NeMo RL overrides appended after --config (launcher.overrides)
    cfg: DictConfig                   # the whole composed Hydra config (cfg.launcher is this profile)
    data_dir: Path | None = None      # the prepared pairs' folder (containers mount it read-only)
    model_path: Path | None = None    # policy.model_name when it is a local folder (mounted too)
    nemo_rl: dict = field(default_factory=dict)  # the written NeMo RL document (before inheritance)

    @property
    def launcher(self) -> DictConfig:
        return self.cfg.launcher

    def mount_paths(self) -> list[tuple[Path, bool]]:
        """(path, read_only) a container needs at the same path as here: run folder, data, model."""
        paths = [(self.run_dir, False)]
        for extra in (self.data_dir, self.model_path):
            if extra is not None and not _inside(extra, self.run_dir):
                paths.append((extra, True))
        return paths


def _inside(path: Path, folder: Path) -> bool:
    try:
        Path(path).absolute().relative_to(Path(folder).absolute())
        return True
    except ValueError:
        return False


def available() -> list[str]:
    """The launcher names this install has (module names of this package)."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def load(name: str) -> ModuleType:
    """The launcher module for `launcher.name`, or a RecipeError listing the available ones."""
    if not name or name.startswith("_") or name not in available():
        raise RecipeError(f"launcher.name={name!r} is not a launcher; choose one of "
                          f"{', '.join(available())} (launcher=<name>)")
    module = importlib.import_module(f"{__name__}.{name}")
    for required in ("build_command", "launch"):
        if not callable(getattr(module, required, None)):
            raise RecipeError(f"launcher module {module.__name__} has no {required}(plan)")
    return module


def nemo_rl_command(plan: LaunchPlan) -> list[str]:
    """`<runner> --config <yaml> [overrides]`, e.g. uv run python examples/run_dpo.py --config ..."""
    runner = [str(part) for part in plan.launcher.runner]
    if not runner:
        raise RecipeError("launcher.runner is empty: give the command that runs NeMo RL's "
                          "examples/run_dpo.py (default: [uv, run, python, examples/run_dpo.py])")
    return runner + ["--config", str(plan.config_path)] + [str(o) for o in plan.overrides]


def shell_line(argv: list[str], cwd: str | Path | None = None) -> str:
    line = shlex.join(argv)
    return f"cd {shlex.quote(str(cwd))} && {line}" if cwd else line


def describe(module: ModuleType, plan: LaunchPlan) -> str:
    if hasattr(module, "describe"):
        return module.describe(plan)
    return shell_line(module.build_command(plan), plan.launcher.get("workdir"))
