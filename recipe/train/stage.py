"""`stage=train`: the train plan (recipe.train.plan) -> preflight -> the chosen launcher.

    run(cfg: DictConfig) -> int

1. `plan.build_plan`: read the prepared pairs, write and check `<run_dir>/nemo_rl_dpo.yaml`.
2. `preflight.run_checks`: what NeMo RL accepts silently but would waste a GPU run (token
   lengths, batches, duplicates), unless `preflight.enabled=false`.
3. Build the launch: the module `recipe.train.launchers.<launcher.name>` (see that package for
   the seam) gives the exact command; the run folder records it (recipe.train.provenance) with the
   image digest check and the data's hashes.
4. `launcher.dry_run=true`: print the command and stop. Else `launch(plan)`; a non-zero exit code
   becomes a RecipeError carrying that code and the end of <run_dir>/train.log.
Returns 0 (trained, or dry run). The run folder is held from the start to the end (recipe.run_lock):
a second train of it meanwhile is refused (launcher=slurm without launcher.wait: until submitted).
"""

from __future__ import annotations

from collections import deque
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from rich.markup import escape

from recipe import processes, report, run_lock
from recipe.errors import RecipeError
from recipe.train import launchers, preflight, provenance
from recipe.train.plan import build_plan


def _tail(path: Path, lines: int) -> str:
    if not path.is_file():
        return ""
    with open(path, "rb") as handle:
        return "\n".join(line.decode("utf-8", "replace").rstrip() for line in deque(handle, maxlen=lines))


def run(cfg: DictConfig) -> int:
    module = launchers.load(str(cfg.launcher.name))  # a wrong name fails before anything is written
    with run_lock.held(Path(str(cfg.run_dir)).expanduser(), "gym-dpo stage=train"):  # one run per folder
        return _run(cfg, module)


def _run(cfg: DictConfig, module) -> int:
    plan, data = build_plan(cfg)
    preflight.run_checks(cfg, plan)
    if hasattr(module, "write_files"):
        module.write_files(plan)
    argv = module.build_command(plan)
    line = launchers.describe(module, plan)
    image = module.check_image(plan) if hasattr(module, "check_image") else {}
    record = module.command_record(plan) if hasattr(module, "command_record") else {}
    dry_run = bool(cfg.launcher.get("dry_run", False))
    provenance.write_recipe_config(plan.run_dir, cfg)
    provenance.write_command(plan.run_dir, argv, line, record, str(cfg.launcher.name), dry_run)
    sources = cfg.train.get("config_sources")
    provenance.write_provenance(plan.run_dir, plan.config_path, data, image, str(cfg.launcher.name),
                                OmegaConf.to_container(sources) if sources is not None else None)
    report.console.print(f"wrote {plan.config_path} ({data.train_pairs} train / {data.val_pairs} "
                         f"val pairs, {data.dataset_name}) and command.txt, provenance.json")
    if dry_run:
        report.console.print("[bold]dry run[/] (launcher.dry_run=true): the command, not run:")
        print(line, flush=True)
        return 0
    report.console.print(f"launching ({cfg.launcher.name}): {escape(line)}", highlight=False, soft_wrap=True)
    try:
        code = module.launch(plan)
    except processes.Interrupted as exc:
        exc.outcome = (f"{getattr(exc, 'stopped', None) or processes.stop_outcome('training')}; the run folder "
                       f"{plan.run_dir} keeps the config and command (a rerun with the same run_dir resumes from "
                       "its last checkpoint)")
        raise
    if code != 0:
        log = plan.run_dir / "train.log"
        tail = _tail(log, int(cfg.launcher.get("docker", {}).get("log_tail", 40) or 40))
        error = RecipeError(f"training ({cfg.launcher.name}) exited with code {code}; the run folder "
                            f"{plan.run_dir} keeps the config and command to retry (a rerun with "
                            "the same run_dir resumes from its last checkpoint)"
                            + (f"\nlast lines of {log}:\n{tail}" if tail else ""))
        error.exit_code = code if 0 < code < 256 else 1
        raise error
    where = plan.nemo_rl["checkpointing"]["checkpoint_dir"]
    if hasattr(module, "detached") and module.detached(plan):
        report.console.print(f"submitted; the job trains and writes checkpoints to {where}")
    else:
        report.console.print(f"training finished; checkpoints in {where}")
    return 0
