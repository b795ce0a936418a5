"""What a run folder keeps so the run can be repeated and audited, beside Hydra's .hydra/.

    recipe_config.yaml   the composed config, resolved (Hydra's .hydra/config.yaml keeps it unresolved)
    nemo_rl_dpo.yaml     the NeMo RL config (written by recipe.train.nemo_rl)
    command.txt          the exact command as one shell line (what a person would type)
    command.json         argv, working folder, executor, launcher, container spec (env names only)
    provenance.json      gym-dpo version, sha256 of the NeMo RL config, the data manifest's hashes
                         (inputs, train, val, the manifest itself), the image and its digest check,
                         and where the composed config came from (a retrained run folder's own)

Nothing here may hold a secret: every text is checked against the secret variables of this
environment before it is written.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

import recipe
from recipe.errors import RecipeError
from recipe.run_files import write_atomic
from recipe.train import redact
from recipe.train.prepared import PreparedData


def _write(path: Path, text: str) -> None:
    names = redact.leaked(text)
    if names:
        raise RecipeError(f"refusing to write {path}: it would contain the value of "
                          f"{', '.join('$' + n for n in names)}; pass secrets by name only")
    write_atomic(path, text)


def write_recipe_config(run_dir: Path, cfg: DictConfig) -> Path:
    path = run_dir / "recipe_config.yaml"
    _write(path, OmegaConf.to_yaml(cfg, resolve=True))
    return path


def write_command(run_dir: Path, argv: list[str], line: str, record: dict, launcher: str,
                  dry_run: bool) -> None:
    _write(run_dir / "command.txt", line + "\n")
    document = {"launcher": launcher, "dry_run": dry_run, "argv": argv, "shell": line, **record}
    _write(run_dir / "command.json", json.dumps(document, indent=2) + "\n")


def write_provenance(run_dir: Path, config_path: Path, data: PreparedData, image: dict,
                     launcher: str, config_sources: dict | None = None) -> Path:
    path = run_dir / "provenance.json"
    document = {
        "gym_dpo_version": recipe.__version__,
        "written_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "run_dir": str(run_dir),
        "launcher": launcher,
        "nemo_rl_config": {"path": str(config_path),
                           "sha256": hashlib.sha256(config_path.read_bytes()).hexdigest()},
        "data": {"folder": str(data.folder), "manifest": str(data.manifest_path),
                 "format": data.format, "train_pairs": data.train_pairs,
                 "val_pairs": data.val_pairs, "sha256": data.hashes},
        "image": image,
        "recipe_config": config_sources or {"base": "the defaults and the command line"},
    }
    _write(path, json.dumps(document, indent=2) + "\n")
    return path
