"""`stage=train`: prepared pairs -> <run_dir>/nemo_rl_dpo.yaml -> checks -> the chosen launcher.

    run(cfg: DictConfig) -> int

1. Read ONLY what stage=prepare wrote in `data.output_dir` (manifest.json, train.jsonl,
   val.jsonl: recipe.train.prepared), never prepare's code, so yesterday's folder trains too.
2. Write the NeMo RL config (recipe.train.nemo_rl) and check it before any GPU is held
   (recipe.train.validate: JSON Schema of the NeMo RL keys we rely on, pair counts against
   train_global_batch_size, val pairs when val_period > 0, save/val periods, no secrets), then
   `recipe.train.preflight.run_checks(cfg, plan)` when that module exists (more checks, e.g.
   token lengths, by the CPU runner's author).
3. Build the launch: the module `recipe.train.launchers.<launcher.name>` (see that package for
   the seam) gives the exact command; the run folder records it (recipe.train.provenance) with the
   image digest check and the data's hashes.
4. `launcher.dry_run=true`: print the command and stop. Else `launch(plan)`; a non-zero exit code
   becomes a RecipeError carrying that code and the end of <run_dir>/train.log.
Returns 0 (trained, or dry run).
"""

from __future__ import annotations

import importlib
from collections import deque
from pathlib import Path

import yaml
from omegaconf import DictConfig, OmegaConf
from rich.markup import escape

import recipe
from recipe import processes, report
from recipe.errors import RecipeError
from recipe.train import launchers, nemo_rl, nemo_rl_loader, prepared, provenance, validate
from recipe.train.launchers import LaunchPlan


def _preflight():
    """recipe.train.preflight if installed (it is another module's concept), else None."""
    try:
        return importlib.import_module("recipe.train.preflight")
    except ModuleNotFoundError as exc:
        if exc.name != "recipe.train.preflight":
            raise
        return None


def _tail(path: Path, lines: int) -> str:
    if not path.is_file():
        return ""
    with open(path, "rb") as handle:
        return "\n".join(l.decode("utf-8", "replace").rstrip() for l in deque(handle, maxlen=lines))


def build_plan(cfg: DictConfig) -> tuple[LaunchPlan, prepared.PreparedData]:
    """Steps 1-2: read the pairs, write and check the NeMo RL config; no launcher side effects."""
    run_dir = Path(str(cfg.run_dir)).expanduser().absolute()
    run_dir.mkdir(parents=True, exist_ok=True)
    data = prepared.load(cfg.data.output_dir, allow_edited=bool(cfg.train.allow_edited_data))
    doc = nemo_rl.build(cfg, data, run_dir)
    config_path = run_dir / nemo_rl.FILENAME
    overrides = [str(o) for o in cfg.launcher.get("overrides") or []]
    try:
        nemo_rl_loader.parse_overrides(overrides)  # the grammar; their keys are NeMo RL's to judge
    except nemo_rl_loader.NemoRLConfigError as exc:
        raise RecipeError(f"launcher.overrides: {exc}") from None
    model = Path(doc["policy"]["model_name"])
    plan = LaunchPlan(run_dir=run_dir, config_path=config_path, overrides=overrides, cfg=cfg,
                      data_dir=data.folder, model_path=model if model.is_absolute() and model.exists()
                      else None, nemo_rl=doc)
    header = nemo_rl.HEADER.format(version=recipe.__version__, run_dir=run_dir,
                                   nemo_rl_dir=cfg.container.nemo_rl_dir,
                                   command=launchers.shell_line(launchers.nemo_rl_command(plan)))
    body = yaml.safe_dump(doc, sort_keys=False, default_flow_style=False, width=100)
    validate.check_secrets(doc, str(config_path), header + body)
    nemo_rl.write(config_path, doc, header)  # written before the checks: a refused config can be read
    validate.check(doc, data, str(config_path), header + body)
    return plan, data


def run(cfg: DictConfig) -> int:
    module = launchers.load(str(cfg.launcher.name))  # a wrong name fails before anything is written
    plan, data = build_plan(cfg)
    checks = _preflight()
    if checks is not None and hasattr(checks, "run_checks"):
        checks.run_checks(cfg, plan)
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
        exc.outcome = (f"training was stopped; the run folder {plan.run_dir} keeps the config and command "
                       "(a rerun with the same run_dir resumes from its last checkpoint)")
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
