"""The held-out collections of every round: the trained environment's eval, its probe in other
words (`gym.probe`), and the eval tasks of other environments (`iterate.cross_eval`), each read
with its environment's rules (recipe.iterate.evaluation.Reading) and, where its environment says
so, with the answer format required of the reward (recipe.iterate.formats)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from recipe.errors import RecipeError
from recipe.run_files import sha256_file


def existing(path_text: str, what: str) -> Path:
    path = Path(path_text).expanduser().absolute()
    if not path.is_file():
        raise RecipeError(f"{what}={path_text}: no such file (relative paths are from the folder "
                          "gym-dpo runs in: the repository root for the bundled samples/gym/)")
    return path

@dataclass
class Suite:
    """One held-out collection of every round: the environment's own eval (`eval`), its probe in
    other words (`probe`), or another environment's eval (`cross-<name>`, iterate.cross_eval)."""
    name: str
    gym: DictConfig               # the environment's gym config (its agent, servers, reading)
    tasks: Path
    limit: int | None             # the first N tasks of the file (None: all)
    repeats: int
    sampling: DictConfig
    reading: object               # recipe.iterate.evaluation.Reading
    require_format: str | None    # the reward requires this answer format (recipe.iterate.formats)
    kind: str                     # eval | probe | cross

    def describe(self) -> dict:
        return {"name": self.name, "environment": str(self.gym.name), "kind": self.kind,
                "tasks_file": str(self.tasks), "tasks_sha256": sha256_file(self.tasks), "limit": self.limit,
                "repeats": self.repeats, "sampling": OmegaConf.to_container(self.sampling, resolve=True),
                "answer_format": self.reading.answer_format, "reward_requires_format": self.require_format,
                "gradable": self.reading.gradable}


def _limit(value) -> int | None:
    return None if value is None else int(value)


def required(gym: DictConfig) -> str | None:
    """The format gym's reward requires: its answer_format when reward_requires_format is set."""
    if not gym.get("reward_requires_format"):
        return None
    if not gym.get("answer_format"):
        raise RecipeError(f"gym={gym.name}: reward_requires_format is set but answer_format names no format")
    return str(gym.answer_format)


def env_sampling(base: DictConfig, gym: DictConfig) -> DictConfig:
    """The loop's sampling with the environment's own values on top (gym.sampling: a multi-turn
    environment answers in a few tokens a turn)."""
    own = gym.get("sampling")
    return OmegaConf.merge(base, own) if own else base


def compose_recipe(overrides: list[str]) -> DictConfig:
    """gym-dpo's config with `overrides`, as Hydra composes it (inside gym-dpo's own Hydra run, or
    outside one)."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        return compose(config_name="recipe", overrides=overrides)
    with initialize_config_module("recipe.configs", version_base="1.3"):
        return compose(config_name="recipe", overrides=overrides)


def gym_config(name: str) -> DictConfig:
    """configs/gym/<name>.yaml as Hydra composes it (`gym=<name>`)."""
    from hydra.errors import MissingConfigException

    try:
        cfg = compose_recipe([f"gym={name}"])
    except MissingConfigException:
        raise RecipeError(f"iterate.cross_eval: {name!r} is not an environment (no configs/gym/{name}.yaml)") from None
    return cfg.gym


def build(gym: DictConfig, it: DictConfig) -> tuple[list[Suite], list[DictConfig]]:
    """The held-out collections of every round, and every environment they need, gym first."""
    from recipe.iterate.evaluation import Reading

    def reading(cfg, answer_format) -> Reading:
        try:
            return Reading(**{**Reading.of(cfg).__dict__, "answer_format": answer_format})
        except (ValueError, RecipeError) as exc:
            raise RecipeError(f"gym={cfg.name}: {exc}") from None

    out = [Suite("eval", gym, existing(str(gym.eval_tasks), "gym.eval_tasks"),
                 _limit(it.eval.tasks), int(it.eval.repeats),
                 env_sampling(it.eval.sampling, gym), reading(gym, gym.get("answer_format")), required(gym), "eval")]
    probe = gym.get("probe")
    if it.get("probe", True) and probe:
        out.append(Suite("probe", gym, existing(str(probe.tasks), "gym.probe.tasks"),
                         _limit(probe.get("limit", it.eval.tasks)),  # row K is eval's row K in other words
                         int(probe.get("repeats") or it.eval.repeats), env_sampling(it.eval.sampling, gym),
                         reading(gym, probe.get("answer_format")),
                         str(probe.answer_format) if probe.get("reward_requires_format") else None, "probe"))
    gyms = [gym]
    cross = it.get("cross_eval") or {}
    for name in cross.get("environments") or []:
        if str(name) == str(gym.name):
            continue
        other = gym_config(str(name))
        gyms.append(other)
        limit = cross.get("tasks")
        out.append(Suite(f"cross-{other.name}", other, existing(str(other.eval_tasks), f"gym={name}: eval_tasks"),
                         None if limit is None else int(limit), int(cross.get("repeats") or other.eval_repeats),
                         env_sampling(it.eval.sampling, other), reading(other, other.get("answer_format")),
                         required(other), "cross"))
    return out, gyms
