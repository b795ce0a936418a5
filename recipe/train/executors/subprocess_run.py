"""Run the NeMo RL command as a child process of the CLI (inside the NeMo RL container, or the
CPU runner here).

`docker compose run recipe stage=train launcher=single_gpu` lands here: the CLI and NeMo RL share
the container, so the command runs in /opt/nemo-rl with the container's environment (HF_TOKEN,
WANDB_API_KEY and HF_HOME are inherited, never written). Output goes to the terminal and to
`<run_dir>/train.log`; Ctrl-C or SIGTERM stops the command's whole session (recipe.processes).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from recipe import processes
from recipe.errors import RecipeError


def run(argv: list[str], cwd: str | Path, log_path: Path, env: dict[str, str] | None = None) -> int:
    """Run `argv` in `cwd` with os.environ + `env`; stream to stdout and `log_path`; exit code."""
    cwd = Path(cwd)
    if not cwd.is_dir():
        raise RecipeError(f"launcher.workdir={cwd} does not exist here: the subprocess executor runs "
                          "NeMo RL inside its container (docker compose run recipe ...); from the "
                          "host use launcher.executor=docker, or set launcher.workdir to a NeMo RL "
                          "checkout")
    child_env = {**os.environ, **(env or {})}
    if shutil.which(argv[0], path=child_env.get("PATH")) is None and not (cwd / argv[0]).exists():
        raise RecipeError(f"launcher.runner starts with {argv[0]!r}, which is not on PATH here; "
                          "run inside the NeMo RL container or set launcher.runner")
    return processes.run(argv, log_path, cwd=cwd, env=child_env, check=False)
