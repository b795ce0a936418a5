"""NeMo Gym, driven through its own CLI and config files (never re-implemented).

`ng_run` starts the environment's resource server, its agent and the model server
(`responses_api_models/vllm_model`, pointed at our served policy) plus a local Ray;
`ng_collect_rollouts` then writes real rollout rows. Both run in NeMo Gym's venv
(recipe.iterate.setup), each with:
- a HOME of the run's own (`<work>/home`) and a Ray temp dir of its own: nothing lands in the
  user's home (Ray >= 2.59 writes `~/.ray/auth_token` for a new local cluster, which breaks later
  Ray clusters that share that home);
- Ray's token auth kept on with a per-session random token in the environment only
  (`RAY_AUTH_TOKEN`: Ray reads it before any file, so it writes none), on loopback
  (`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`), without usage stats;
- uv on the local Python (>= 3.12, `UV_PYTHON_DOWNLOADS=never`), the server venvs and uv's cache in
  the shared cache (`skip_venv_if_present`: built once, ~30 s to start after that), built from the
  lock (`UV_CONSTRAINT`, `UV_EXCLUDE_NEWER`: recipe.iterate.lock);
- the head server on a free port, given to both commands.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import tempfile
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import yaml
from omegaconf import DictConfig, OmegaConf

from recipe import processes
from recipe.errors import RecipeError
from recipe.iterate import watchdog as watch
from recipe.iterate.serving import free_port
from recipe.overrides import override, quote
from recipe.scratch import Scratch

if TYPE_CHECKING:  # an annotation only: gym_install -> servers -> gym would be a circle
    from recipe.iterate.gym_install import NemoGym

POLICY_CONFIG = "policy_model.yaml"


class Gym:
    """Commands and environment of one NeMo Gym session (ng_run + collections) in `work`."""

    def __init__(self, gym_cfg: DictConfig, serving_cfg: DictConfig, work: Path, base_url: str,
                 model_name: str, tools: NemoGym, head_port: int | str | None = None,
                 sampler: DictConfig | None = None, others: list[DictConfig] = ()):
        self.cfg, self.serving, self.work, self.sampler = gym_cfg, serving_cfg, work, sampler
        self.others = [o for o in others if str(o.name) != str(gym_cfg.name)]  # cross-eval environments
        self.base_url, self.model_name, self.tools = base_url, model_name, tools
        self.head_port = head_port or free_port()
        self.ray_tmp: Path | None = None

    def write_config(self) -> Path:
        """Our one config file for NeMo Gym: the model server's settings for this engine, with the
        pinned sampler in its `extra_body` (merged into every chat request it sends)."""
        self.work.mkdir(parents=True, exist_ok=True)
        settings = OmegaConf.to_container(self.serving.nemo_gym_model, resolve=True)
        if self.sampler is not None:
            from recipe.iterate import serving

            extra = serving.load(str(self.serving.name)).sampler_request(self.sampler)
            settings["extra_body"] = {**(settings.get("extra_body") or {}), **extra}
        path = self.work / POLICY_CONFIG
        path.write_text(yaml.safe_dump({"policy_model": {"responses_api_models": {"vllm_model": settings}}}))
        return path

    def environment(self) -> dict[str, str]:
        home = self.work / "home"
        home.mkdir(parents=True, exist_ok=True)
        if self.ray_tmp is None:  # short: Ray's socket paths must stay under ~107 characters
            self._ray_scratch = Scratch(Path(tempfile.gettempdir()), "ray", prefix="gym-dpo-")  # a dead run's: swept
            self.ray_tmp = self._ray_scratch.path
        path = os.pathsep.join([str(self.tools.bin), str(self.tools.python.parent),
                                os.environ.get("PATH", "/usr/bin:/bin")])
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "VIRTUAL_ENV", "PYTHON"))}
        env.update(HOME=str(home), PATH=path, UV_PYTHON_DOWNLOADS="never", RAY_TMPDIR=str(self.ray_tmp),
                   RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.token, RAY_USAGE_STATS_ENABLED="0",
                   RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
        env.update(self.tools.uv_env())  # ng_run's server venvs are built from the lock
        return env

    @property
    def token(self) -> str:
        if not hasattr(self, "_token"):
            self._token = secrets.token_hex(16)
        return self._token

    def head_args(self) -> list[str]:
        return ["++head_server.host=127.0.0.1", f"++head_server.port={self.head_port}"]

    def run_argv(self) -> list[str]:
        """ng_run with every environment of the run (the trained one and the cross-eval ones) in one
        session: their resource servers and agents share the policy's model server."""
        envs = [self.cfg, *self.others]
        paths = list(dict.fromkeys(str(p) for env in envs for p in env.config_paths)) + [
            "responses_api_models/vllm_model/configs/vllm_model.yaml", str(self.work / POLICY_CONFIG)]
        return [str(self.tools.bin / "ng_run"), f"+config_paths=[{','.join(map(quote, paths))}]",
                f"+policy_base_url={self.base_url}", "+policy_api_key=dummy",
                f"+policy_model_name={self.model_name}", f"+uv_venv_dir={self.tools.server_venvs}",
                f"+uv_cache_dir={self.tools.uv_cache}", "+skip_venv_if_present=true", *self.head_args(),
                *dict.fromkeys(str(o) for env in envs for o in env.get("nemo_gym_overrides") or [])]

    def collect_argv(self, tasks: Path, out: Path, repeats: int, sampling: DictConfig,
                     agent: str | None = None) -> list[str]:
        return [str(self.tools.bin / "ng_collect_rollouts"), f"+agent_name={agent or self.cfg.agent_name}",
                override("+input_jsonl_fpath", tasks), override("+output_jsonl_fpath", out), f"+num_repeats={repeats}",
                "+num_repeats_add_seed=true", f"+num_samples_in_parallel={sampling.parallel}",
                f"++responses_create_params.temperature={sampling.temperature}",
                f"++responses_create_params.max_output_tokens={sampling.max_output_tokens}",
                *([f"++responses_create_params.top_p={float(self.sampler.top_p)}"] if self.sampler is not None else []),
                *self.head_args()]

    def cleanup(self) -> None:
        if self.ray_tmp is not None:
            self._ray_scratch.remove()
            self.ray_tmp = None


# what ng_run prints once every server answers (NeMo Gym v0.4.0 nemo_gym/cli/env.py), not its
# "0 / 3 servers ready. Waiting for servers to spin up" while they start
ALL_READY = re.compile(r"\bAll (\d+) / \1 servers ready")


# what ng_run says, within 60 s, when one of its servers dies (nemo_gym/cli/env.py, `poll`)
SERVER_STOPPED = re.compile(r"Process `([^`]+)` finished unexpectedly")


def server_stopped(lines: list[str]) -> str | None:
    """Which of NeMo Gym's servers stopped, from ng_run's last lines."""
    names = [m.group(1) for line in lines for m in SERVER_STOPPED.finditer(line)]
    return f"NeMo Gym's server {', '.join(dict.fromkeys(names))} stopped" if names else None


# Ray (2.60, ray/_private/node.py) gives a new node a fixed 30 s to register, not configurable: on a
# loaded machine ng_run's local Ray can miss it, and a second start usually makes it
RAY_SLOW = "The current node timed out during startup"
STARTS = 3


@contextmanager
def session(gym: Gym, log_path: Path, timeout: float = 900.0):
    """`ng_run` until the block ends (all its servers ready first); then everything it started
    (servers, Ray) is stopped, and its Ray temp dir removed. A start whose Ray node missed Ray's
    fixed startup wait is tried again (STARTS in all), said on one line."""
    from recipe import report

    gym.write_config()
    ready = lambda service: any(ALL_READY.search(line) for line in service.output)  # noqa: E731
    try:
        with ExitStack() as stack:
            for start in range(1, STARTS + 1):
                try:
                    stack.enter_context(processes.Service("ng_run", gym.run_argv(), log_path, cwd=gym.work,
                                                          env=gym.environment(), ready=ready, timeout=timeout,
                                                          explain=server_stopped))
                    break
                except RecipeError as failed:
                    if start == STARTS or RAY_SLOW not in str(failed):
                        raise
                    gym.cleanup()
                    report.console.print(f"ng_run: its Ray node did not register within Ray's fixed 30 s (a loaded "
                                         f"machine?); starting it again ({start + 1}/{STARTS})",
                                         highlight=False, soft_wrap=True)
            yield gym
    finally:
        gym.cleanup()


SERVER_POLL = 65.0  # seconds: ng_run looks at its servers every 60 s once they are up


def _blame_a_server(failed: RecipeError) -> None:
    """A collection that failed because one of NeMo Gym's servers died (its agent answers 500)
    fails with that server's name: ng_run says which within a minute; else the collection's own
    error stands."""
    deadline = time.monotonic() + SERVER_POLL
    while time.monotonic() < deadline:
        try:
            processes.check_services()
        except RecipeError as stopped:
            raise stopped from failed
        time.sleep(1.0)
    raise failed


def collect(gym: Gym, tasks: Path, out: Path, repeats: int, sampling: DictConfig, log_path: Path,
            agent: str | None = None, finish=None, watchdog: DictConfig | None = None) -> Path:
    """`ng_collect_rollouts` into a partial folder, moved into place when it succeeded: `out` and
    its NeMo Gym sidecars (`_materialized_inputs`, `_aggregate_metrics`, `_failures`). `finish`
    (a function of the partial rollouts file) runs before the move: what is in place is whole.
    With a `watchdog` (iterate.watchdog), a collection that makes no new row (success or failure)
    for too long, or passes its deadline, is stopped and fails naming the stuck server
    (recipe.iterate.watchdog)."""
    partial = out.parent / f".partial-{out.stem}"
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    from tqdm.auto import tqdm

    expected = repeats * sum(1 for line in tasks.read_text(encoding="utf-8").splitlines() if line.strip())
    stuck = watch.Progress(watch.Limits.of(watchdog, expected, sampling)) if watchdog is not None else None
    with tqdm(total=expected, desc=f"NeMo Gym {out.stem} rollouts", unit="rollout") as bar:
        def progress() -> None:  # rows are appended as rollouts finish; the servers must stay up
            processes.check_services()
            rows = sum(watch.lines(partial / name) for name in (out.name, f"{out.stem}_failures.jsonl"))
            bar.update(rows - bar.n)
            if stuck is not None:
                stuck.check(rows, f"{expected} {out.stem} rows", gym, log_path)

        try:
            try:
                processes.run(gym.collect_argv(tasks, partial / out.name, repeats, sampling, agent),
                              log_path,
                              cwd=gym.work, env=gym.environment(), prefix="[ng_collect_rollouts] ", echo=False,
                              what="ng_collect_rollouts", watch=progress)
            except watch.Stuck:
                raise
            except RecipeError as failed:
                _blame_a_server(failed)
            progress()
            if not (partial / out.name).is_file():
                raise RecipeError(f"ng_collect_rollouts wrote no {out.name} (log: {log_path})")
            if finish is not None:
                finish(partial / out.name)
        except BaseException:  # failed, stuck or stopped: no half-written rows stay
            shutil.rmtree(partial, ignore_errors=True)
            raise
    for item in sorted(partial.iterdir()):
        os.replace(item, out.parent / item.name)
    partial.rmdir()
    return out
