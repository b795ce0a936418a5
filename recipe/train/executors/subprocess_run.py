"""Run the NeMo RL command as a child process of the CLI (inside the NeMo RL container).

`docker compose run recipe stage=train launcher=single_gpu` lands here: the CLI and NeMo RL share
the container, so the command runs in /opt/nemo-rl with the container's environment (HF_TOKEN,
WANDB_API_KEY and HF_HOME are inherited, never written). Output goes to the terminal and to
`<run_dir>/train.log`; Ctrl-C stops the child and returns 130.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections import deque
from pathlib import Path

from recipe.errors import RecipeError


def run(argv: list[str], cwd: str | Path, log_path: Path, env: dict[str, str] | None = None,
        tail: deque | None = None) -> int:
    """Run `argv` in `cwd` with os.environ + `env`; stream to stdout and `log_path`; exit code."""
    cwd = Path(cwd)
    if not cwd.is_dir():
        raise RecipeError(f"launcher.workdir={cwd} does not exist here: the subprocess executor runs "
                          "NeMo RL inside its container (docker compose run recipe ...); from the "
                          "host use launcher.executor=docker, or set launcher.workdir to a NeMo RL "
                          "checkout")
    if shutil.which(argv[0], path=(env or {}).get("PATH", os.environ.get("PATH"))) is None \
            and not (cwd / argv[0]).exists():
        raise RecipeError(f"launcher.runner starts with {argv[0]!r}, which is not on PATH here; "
                          "run inside the NeMo RL container or set launcher.runner")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    child_env = {**os.environ, **(env or {})}
    with open(log_path, "ab") as log:
        try:
            process = subprocess.Popen(argv, cwd=cwd, env=child_env, stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT)
        except OSError as exc:
            raise RecipeError(f"could not start {argv[0]} in {cwd}: {exc}") from None
        try:
            for line in iter(process.stdout.readline, b""):
                sys.stdout.buffer.write(line)
                sys.stdout.flush()
                log.write(line)
                if tail is not None:
                    tail.append(line.decode("utf-8", "replace").rstrip("\n"))
            return process.wait()
        except KeyboardInterrupt:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            return 130
