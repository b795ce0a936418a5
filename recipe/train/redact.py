"""Secrets stay in the environment: find them before a file or a printed command would leak them.

HF_TOKEN and WANDB_API_KEY (and the like) are passed to NeMo RL by name only. This module answers
three questions for the writers: does this text hold the value of a secret variable of this
environment, does this config set a secret-looking key to a value, and does `launcher.env` (whose
values are recorded: command.json, recipe_config.yaml, Hydra's .hydra/, slurm/job.env) name a
secret-looking variable, which is then refused before anything is written.
"""

from __future__ import annotations

import os
import re

from recipe.errors import RecipeError

SECRET_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "WANDB_API_KEY", "MLFLOW_TRACKING_TOKEN",
              "SWANLAB_API_KEY")
_SECRET_KEY = re.compile(r"(token|api_?key|secret|password|passwd)$", re.IGNORECASE)


def secret_values(environ=None) -> dict[str, str]:
    """The secret variables set in `environ` (long enough to be worth searching for)."""
    environ = os.environ if environ is None else environ
    return {name: environ[name] for name in SECRET_ENV if len(environ.get(name, "")) >= 6}


def leaked(text: str, environ=None) -> list[str]:
    """Names of the secret variables whose value appears in `text`."""
    return [name for name, value in secret_values(environ).items() if value in text]


def secret_keys(tree, path: str = "") -> list[str]:
    """Dotted paths of secret-looking keys set to a non-empty value (e.g. logger.wandb.api_key)."""
    found = []
    if isinstance(tree, dict):
        for key, value in tree.items():
            where = f"{path}.{key}" if path else str(key)
            if _SECRET_KEY.search(str(key)) and isinstance(value, (str, int)) and str(value):
                found.append(where)
            found.extend(secret_keys(value, where))
    elif isinstance(tree, list):
        for index, value in enumerate(tree):
            found.extend(secret_keys(value, f"{path}[{index}]"))
    return found


# a variable name with one of these as a word (HF_TOKEN, WANDB_API_KEY, AWS_SECRET_ACCESS_KEY; not
# TOKENIZERS_PARALLELISM)
_SECRET_NAME = re.compile(r"(^|_)(TOKEN|SECRET|PASSWORD|PASSWD|PASSPHRASE|CREDENTIALS?|API_?KEY|ACCESS_KEY|"
                          r"PRIVATE_KEY|AUTH)(_|$)", re.IGNORECASE)


def check_launcher_env(env) -> None:
    """Refuse `launcher.env` entries named like secrets: their values would be written to the
    run folder. The environment is the way for them (the training command inherits it)."""
    names = [str(name) for name in (env or {}) if _SECRET_NAME.search(str(name))]
    if names:
        raise RecipeError(f"launcher.env.{names[0]} looks like a secret, and launcher.env is written into the run "
                          "folder (command.json, recipe_config.yaml, .hydra/, slurm/job.env): set it in the "
                          f"environment instead (export {names[0]}=...; the training inherits it, sbatch exports "
                          "it, launcher.executor=docker passes the names in launcher.pass_env)")
