"""The Hydra entrypoint: compose the config, then run the stage it names.

`gym-dpo stage=prepare data.input=rollouts.jsonl` (or `python -m recipe ...`). Each stage is a
function `run(cfg)` in its own module, imported only when chosen, so the light data-preparation
install never imports what training needs.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import logging
import os
import signal
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, open_dict, read_write

from recipe import processes, run_lock
from recipe.errors import RecipeError, full_disk
from recipe.train import redact

log = logging.getLogger("gym-dpo")

# stage name -> the modules whose `run(cfg)` it calls, in order
STAGES: dict[str, list[str]] = {
    "prepare": ["recipe.prepare.stage"],
    "train": ["recipe.train.stage"],                     # NeMo RL config, checks, launcher
    "all": ["recipe.prepare.stage", "recipe.train.stage"],
    "preflight": ["recipe.train.preflight"],             # write + check the config and pairs, no launch
    "report": ["recipe.report_page"],                    # <run_dir>/report.html (plots, offline)
    "lock_image": ["recipe.train.container"],            # record the pulled image's digest
    "compare_strategies": ["recipe.prepare.compare"],    # every pairing strategy side by side, no files
    "iterate": ["recipe.iterate.stage"],                 # NeMo Gym rollouts -> prepare -> train -> eval, per round
}


def run_stage(cfg: DictConfig, overrides: list[str] | None = None) -> None:
    """Run `cfg.stage`. `overrides` (the command line's): a stage that trains an existing run
    folder again takes that folder's own config as the base, with them on top (recipe.train.run_folder)."""
    if cfg.stage not in STAGES:
        raise RecipeError(f"stage={cfg.stage!r} is not a stage; choose one of {', '.join(STAGES)}")
    if overrides is not None:
        from recipe.train import run_folder

        cfg = run_folder.rebase(cfg, overrides)
    for module in STAGES[cfg.stage]:
        importlib.import_module(module).run(cfg)


def _say(text: str, **options) -> None:
    """Print, unless stdout is gone (a closed pipe, the terminal of a dropped ssh session)."""
    from recipe import report

    try:
        report.console.print(text, soft_wrap=True, **options)
    except OSError:  # and what is still buffered for it is not flushed at exit (one more error)
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


class RunStart(Callback):
    """Hydra calls it (configs/recipe.yaml, hydra.callbacks) with the composed config before it
    makes the run folder and writes .hydra/ into it: a secret-looking `launcher.env` entry is
    refused before its value is written anywhere, and a run that names neither `run_dir` nor
    `run_name` gets a folder of its own (`output_root/<timestamp>`, or `<timestamp>-2`, ...)."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        try:
            redact.check_launcher_env(config.launcher.get("env"))
            given = {str(o).lstrip("+~").split("=", 1)[0] for o in config.hydra.overrides.task}
            if not given & {"run_dir", "run_name"}:
                with read_write(config), open_dict(config):
                    config.run_name = run_lock.claim(Path(str(config.output_root)), str(config.run_name))
            elif config.get("stage") == "train":  # a run folder trained again: not on other pairs
                from recipe.train import resume, run_folder

                task = copy.deepcopy(config)
                with read_write(task), open_dict(task):
                    del task["hydra"]
                resume.refuse_early(run_folder.rebase(task, [str(o) for o in config.hydra.overrides.task], say=False))
        except RecipeError as exc:
            _error(exc)


def _error(exc: RecipeError) -> None:
    from rich.markup import escape  # the message is text: `.[local]` or a log line's `[tag]` is not markup

    _say(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
    sys.exit(exc.exit_code)


@hydra.main(version_base="1.3", config_path="pkg://recipe.configs", config_name="recipe")
def _hydra_main(cfg: DictConfig) -> None:
    processes.unblock()  # a signal that came while the config was composed is raised here
    try:
        run_stage(cfg, list(HydraConfig.get().overrides.task))
    except RecipeError as exc:
        _error(exc)
    except OSError as exc:
        full = full_disk(exc)
        if full is None:
            raise
        _error(full)
    finally:
        processes.hold()  # the stage is over: what Hydra does on the way out is not cut short


def main() -> None:
    """`gym-dpo` (recipe.__main__): Ctrl-C, SIGTERM or SIGHUP ends a stage with one line and exit
    code 130 / 143 / 129, no traceback; one that comes while the config is composed waits for the
    stage; once a stop is under way, or the stage is over, further ones are only counted (the
    stop is not cut short). No worker forked by the stage outlives the CLI."""
    processes.block()
    processes.install()
    with processes.reaping():
        try:
            _hydra_main()
        except KeyboardInterrupt as exc:
            processes.hold()
            interrupted = exc if isinstance(exc, processes.Interrupted) else processes.Interrupted(signal.SIGINT)
            _say(f"interrupted ({interrupted}): {interrupted.outcome}", markup=False)
            sys.exit(interrupted.exit_code)
        finally:
            processes.hold()
            # and blocked for good: the interpreter's exit puts the default handlers back (CPython's
            # signal finalizer), so a signal then (a second Ctrl-C) would end the process with no
            # exit code of ours; a blocked one is dropped with the process
            processes.block()
