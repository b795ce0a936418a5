"""Secrets stay in the environment: find them before a file or a printed command would leak them.

HF_TOKEN and WANDB_API_KEY (and the like) are passed to NeMo RL by name only. This module answers
two questions for the writers: does this text hold the value of a secret variable of this
environment, and does this config set a secret-looking key to a value.
"""

from __future__ import annotations

import os
import re

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
