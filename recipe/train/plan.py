"""The train plan: read the prepared pairs, write and check `<run_dir>/nemo_rl_dpo.yaml`.

    build_plan(cfg: DictConfig) -> (LaunchPlan, PreparedData)

What `stage=train` hands to its launcher and `stage=preflight` checks, made the same way for both:
1. read ONLY what stage=prepare wrote in `data.output_dir` (recipe.train.prepared), never
   prepare's code, so yesterday's folder trains too;
2. write the NeMo RL config (recipe.train.nemo_rl), then check it before any GPU is held
   (recipe.train.validate: the JSON Schema of the NeMo RL keys we rely on, pair counts against
   train_global_batch_size, val pairs when val_period > 0, save/val periods, no secrets).
No launcher side effect: nothing is launched, no launcher file is written.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from omegaconf import DictConfig

import recipe
from recipe.errors import RecipeError
from recipe.train import launchers, nemo_rl, nemo_rl_loader, prepared, redact, resume, validate
from recipe.train.launchers import LaunchPlan


def build_plan(cfg: DictConfig) -> tuple[LaunchPlan, prepared.PreparedData]:
    """Steps 1-2: read the pairs, write and check the NeMo RL config."""
    redact.check_launcher_env(cfg.launcher.get("env"))  # (the CLI refuses it before Hydra writes .hydra/)
    run_dir = Path(str(cfg.run_dir)).expanduser().absolute()
    run_dir.mkdir(parents=True, exist_ok=True)
    data = prepared.load(cfg.data.output_dir, allow_edited=bool(cfg.train.allow_edited_data))
    # before anything is written (the tiny model, the config): checkpoints of other pairs are not resumed
    resume.check(run_dir, nemo_rl.checkpoint_dir(cfg), data, bool(cfg.train.get("fresh_start")))
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
