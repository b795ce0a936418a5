"""What one `gym-dpo stage=iterate ...` run does, resolved once from the composed config: the
model preset and base weights, the launcher, the task files, the overrides handed to the prepare
and train stages, and every command of every round (the dry run prints them all).

The stages are driven only through their command line (`python -m recipe stage=prepare|train
...`, the same as `gym-dpo`) and the files they write (`manifest.json`, the train run folder);
their code is never imported here.
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from recipe import overrides
from recipe.errors import RecipeError
from recipe.run_files import sha256_file

# command-line overrides of the iterate run that belong to a stage, by the key they start with
TRAIN_KEYS = ("policy.", "dpo.", "checkpointing.", "logger.", "launcher.", "container.",
              "nemo_rl_overrides", "nemo_rl_data.", "preflight.", "train.")
PREPARE_KEYS = ("data_prep.", "data.")
TRAIN_GROUPS = ("model", "dpo", "launcher", "container")
PREPARE_GROUPS = ("data_prep",)
OWNED = ("data.input", "data.output_dir", "run_dir", "policy.model_name")  # set per round by the loop
CPU_MODEL = "gym-dpo/tiny"


def flatten(mapping, prefix: str = "") -> list[str]:
    """{a: {b: 1}} -> ["a.b=1"]; lists and scalars as Hydra override values."""
    items = []
    for key, value in mapping.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            items += flatten(value, path + ".")
        else:
            items.append(f"{path}={_value(value)}")
    return items


def _value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, list):
        return "[" + ",".join(_value(v) for v in value) + "]"
    return str(value)


def _key(override: str) -> str:
    return override.lstrip("+~").split("=", 1)[0]


def forwarded(task_overrides: list[str], keys: tuple[str, ...], groups: tuple[str, ...]) -> list[str]:
    """The user's own overrides meant for a stage (its sections and config groups), in order."""
    kept = []
    for override in task_overrides:
        key = _key(override)
        if key in OWNED or key in groups:
            continue  # groups are passed as the resolved choice; owned keys are the loop's
        if any(key == k.rstrip(".") or key.startswith(k) for k in keys):
            kept.append(override)
    return kept


@dataclass
class Plan:
    run_dir: Path
    rounds: int
    model_preset: str
    model_name: str               # the preset's policy.model_name (or the user's)
    base_source: str              # "local" | "offline:<name>" | "hub"
    launcher: str
    gym: DictConfig
    serving: DictConfig
    it: DictConfig                # cfg.iterate
    train_tasks: Path
    eval_tasks: Path
    groups: dict[str, str] = field(default_factory=dict)
    train_overrides: list[str] = field(default_factory=list)
    prepare_overrides: list[str] = field(default_factory=list)
    container: DictConfig | None = None
    notes: list[str] = field(default_factory=list)
    launcher_cfg: DictConfig | None = None
    place: object = None          # recipe.iterate.place: where the converter and the server run

    @property
    def sampler(self) -> DictConfig:
        return self.it.sampler

    # -- the stage commands ----------------------------------------------------------------------
    @staticmethod
    def gym_dpo() -> list[str]:
        return [sys.executable, "-m", "recipe"]

    def prepare_argv(self, rollouts: Path, out: Path) -> list[str]:
        given = overrides.override  # a path with a comma or a [ is still one value
        return [*self.gym_dpo(), "stage=prepare", given("run_dir", out), given("data.input", rollouts),
                given("data.output_dir", out / "data"),
                *[f"{g}={c}" for g, c in self.groups.items() if g in PREPARE_GROUPS],
                *self.prepare_overrides]

    def train_argv(self, pairs: Path, out: Path, policy: str) -> list[str]:
        given = overrides.override
        return [*self.gym_dpo(), "stage=train", given("run_dir", out), given("data.output_dir", pairs),
                f"model={self.model_preset}", given("policy.model_name", policy),
                *[f"{g}={c}" for g, c in self.groups.items() if g in TRAIN_GROUPS and g != "model"],
                *self.train_overrides]

    def dcp_to_hf_argv(self, step_dir: Path, out: Path) -> list[str]:
        """NeMo RL's own converter (v0.7.0 examples/converters/convert_dcp_to_hf.py: --config
        step_N/config.yaml --dcp-ckpt-path step_N/policy/weights --hf-ckpt-path OUT)."""
        runner = [str(p) for p in self.it.dcp_to_hf.runner]
        return [*runner, "--config", str(step_dir / "config.yaml"), "--dcp-ckpt-path",
                str(step_dir / "policy" / "weights"), "--hf-ckpt-path", str(out)]

    def policy_folder(self, k: int) -> Path:
        """Where round K (>= 1) leaves its policy as a Hugging Face folder: the CPU trainer's
        `train/model`, or NeMo RL's checkpoint converted into `policy/`."""
        rd = self.run_dir / f"round_{k}"
        return rd / "train" / "model" if self.launcher == "local_cpu" else rd / "policy"

    @property
    def nemo_rl_dir(self) -> Path:
        """Where NeMo RL's commands run: the launcher's workdir (NeMo RL's folder in its image, or
        a checkout bare-metal)."""
        workdir = self.launcher_cfg.get("workdir") if self.launcher_cfg is not None else None
        return Path(str(workdir or (self.container.nemo_rl_dir if self.container else "/opt/nemo-rl")))

    def sampling(self) -> dict:
        """Every round's sampling, as the requests and the server get it (plan.json keeps it)."""
        from recipe.iterate import serving

        engine = serving.load(str(self.serving.name))
        sampler = OmegaConf.to_container(self.sampler, resolve=True)
        return {"sampler": sampler,
                "collect": {k: self.it.collect.sampling[k] for k in ("temperature", "max_output_tokens")},
                "eval": {k: self.it.eval.sampling[k] for k in ("temperature", "max_output_tokens")},
                "request_extra": engine.sampler_request(self.sampler),
                "server_args": [*[str(a) for a in self.serving.get("args") or []], *engine.sampler_args(self.sampler)]}

    def fingerprint(self) -> dict:
        """What must not change between reruns of one run folder (rounds would not compare)."""
        return {"eval_tasks": str(self.eval_tasks), "eval_tasks_sha256": sha256_file(self.eval_tasks),
                "eval_tasks_limit": self.it.eval.tasks, "eval_repeats": int(self.it.eval.repeats),
                "eval_sampling": OmegaConf.to_container(self.it.eval.sampling, resolve=True),
                "model_preset": self.model_preset, "model_name": self.model_name,
                "serving": {"name": str(self.serving.name), "gguf_type": self.serving.get("gguf_type")},
                "sampling": self.sampling(),
                "gym": {"name": str(self.gym.name), "agent_name": str(self.gym.agent_name),
                        "config_paths": [str(p) for p in self.gym.config_paths]}}


def _choices() -> tuple[dict[str, str], list[str]]:
    """Hydra's group choices and the command line's overrides (empty outside a Hydra run)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        hydra = HydraConfig.get()
        return dict(hydra.runtime.choices), list(hydra.overrides.task)
    except ValueError:
        return {}, []


def _preset_model_name(preset: str) -> str:
    """policy.model_name under `model=<preset>`, as Hydra composes it for the train stage."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import MissingConfigException

    try:
        if GlobalHydra.instance().is_initialized():  # inside the gym-dpo run
            cfg = compose("recipe", overrides=[f"model={preset}"])
        else:
            with initialize_config_module("recipe.configs", version_base="1.3"):
                cfg = compose("recipe", overrides=[f"model={preset}"])
    except MissingConfigException:
        raise RecipeError(f"iterate.default_model={preset!r}: no model preset configs/model/{preset}.yaml") from None
    return str(cfg.policy.model_name)


def _existing(path_text: str, what: str) -> Path:
    path = Path(path_text).expanduser().absolute()
    if not path.is_file():
        raise RecipeError(f"{what}={path_text}: no such file (relative paths are from the folder "
                          "gym-dpo runs in: the repository root for the bundled samples/gym/)")
    return path


def build(cfg: DictConfig) -> Plan:
    choices, task_overrides = _choices()
    it = cfg.iterate
    if int(it.rounds) < 0:
        raise RecipeError(f"iterate.rounds={it.rounds}: give 0 (evaluate the base model only) or more")
    notes = []
    preset = choices.get("model", "tiny")
    model_name = str(cfg.policy.model_name)
    explicit_model = any(_key(o) in ("model", "policy.model_name") for o in task_overrides)
    if model_name == CPU_MODEL:
        if explicit_model:
            raise RecipeError("model=tiny is built from the pairs with random weights: it cannot be "
                              "served or evaluated; the iterate loop needs a real model (the default is "
                              f"model={it.default_model}, or model=<preset> / policy.model_name=<folder>)")
        preset, model_name = str(it.default_model), _preset_model_name(str(it.default_model))
        notes.append(f"model={preset} (iterate.default_model: model=tiny cannot be served)")
    offline = dict(it.get("offline_models") or {})
    if Path(model_name).expanduser().is_dir():
        base_source, model_name = "local", str(Path(model_name).expanduser().absolute())
    elif model_name in offline:
        from recipe.iterate import setup

        if not callable(getattr(setup, str(offline[model_name]), None)):
            raise RecipeError(f"iterate.offline_models: {offline[model_name]!r} (for {model_name}) is not a "
                              "function of recipe.iterate.setup")
        base_source = f"offline:{offline[model_name]}"
    else:
        base_source = "hub"
    # the model is the loop's choice; `dpo` follows it in the train stage (`optional dpo: ${model}`) unless
    # the user picked one; the other groups pass as chosen (their defaults included)
    explicit = {_key(o) for o in task_overrides}
    groups = {g: choices[g] for g in (*TRAIN_GROUPS, *PREPARE_GROUPS)
              if g in choices and (g != "dpo" or g in explicit)}
    groups["model"] = preset
    train_values = OmegaConf.to_container(it.train, resolve=True) or {}
    train_overrides = [o for o in flatten(train_values) if o != f"{MICRO}=null"]
    own_values = len(train_overrides)
    train_overrides += forwarded(task_overrides, TRAIN_KEYS, TRAIN_GROUPS)
    if str(cfg.launcher.name) == "slurm":  # the loop needs the trained policy: wait for the job
        train_overrides.append("launcher.wait=true")
    prepare_overrides = [str(o) for o in it.get("prepare") or []]
    prepare_overrides += forwarded(task_overrides, PREPARE_KEYS, PREPARE_GROUPS)
    gym = cfg.gym
    run_dir = Path(str(cfg.run_dir)).expanduser().absolute()
    from recipe.iterate import place

    plan = Plan(run_dir=run_dir, rounds=int(it.rounds),
                model_preset=preset, model_name=model_name, base_source=base_source,
                launcher=str(cfg.launcher.name), gym=gym, serving=cfg.serving, it=it,
                train_tasks=_existing(str(gym.train_tasks), "gym.train_tasks"),
                eval_tasks=_existing(str(gym.eval_tasks), "gym.eval_tasks"), groups=groups,
                train_overrides=train_overrides, prepare_overrides=prepare_overrides,
                container=cfg.get("container"), notes=notes, launcher_cfg=cfg.launcher,
                place=place.build(cfg, run_dir, model_name))
    micro_given = train_values.get("policy", {}).get("train_micro_batch_size") is not None or any(
        _key(o) == MICRO for o in forwarded(task_overrides, TRAIN_KEYS, TRAIN_GROUPS))
    micro = check_batches(plan, derive_micro=not micro_given)
    if micro is not None:
        plan.train_overrides.insert(own_values, f"{MICRO}={micro}")
    return plan


MICRO = "policy.train_micro_batch_size"


def compose_train(argv: list[str]) -> DictConfig:
    """The config a round's `gym-dpo stage=train` composes from `argv` (its overrides)."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():  # inside gym-dpo's own Hydra run
        return compose(config_name="recipe", overrides=argv)
    with initialize_config_module("recipe.configs", version_base="1.3"):
        return compose(config_name="recipe", overrides=argv)


def check_batches(plan: Plan, derive_micro: bool) -> int | None:
    """Before the first collection, what the train stage would refuse only after a round's
    collection and prepare: the batch against the GPUs (gpus_per_node x nodes over the
    model-parallel size). The rounds' train configs differ only in the model folder and the pairs,
    so one composition checks them all. `derive_micro`: the micro batch is not the user's, so it is
    the global batch over the data-parallel ranks (the whole batch in one pass on one device); it
    is returned, to be handed to every round. launcher.overrides (NeMo RL's command line) are the
    train stage's to check."""
    from recipe.train import nemo_rl, validate

    argv = plan.train_argv(plan.run_dir / "round_1" / "prepare" / "data", plan.run_dir / "round_1" / "train",
                           plan.model_name)[3:]
    train = compose_train(argv)
    policy = OmegaConf.to_container(train.policy, resolve=True)
    extra = (OmegaConf.to_container(train.nemo_rl_overrides, resolve=True) or {}).get("policy") or {}
    policy = nemo_rl._deep_merge(policy, extra)
    cluster = {"gpus_per_node": int(train.launcher.gpus_per_node), "num_nodes": int(train.launcher.nodes)}
    ranks, _ = validate.data_parallel_ranks(policy, cluster)  # None: batch_problems names why
    if derive_micro and ranks is not None:
        global_batch = int(policy["train_global_batch_size"])
        if global_batch % ranks:
            raise RecipeError(f"policy.train_global_batch_size={global_batch} cannot be split over the {ranks} "
                              f"data-parallel ranks of launcher={plan.launcher} ({cluster['gpus_per_node']} GPUs x "
                              f"{cluster['num_nodes']} nodes): set iterate.train.policy.train_global_batch_size "
                              f"to a multiple of {ranks}; nothing was run")
        policy["train_micro_batch_size"] = global_batch // ranks
    problems = validate.batch_problems(policy, cluster)
    if problems:
        raise RecipeError("every round's training would be refused (found before any collection); nothing "
                          "was run:\n" + "\n".join(f"  - {p}" for p in problems))
    return policy["train_micro_batch_size"] if derive_micro else None


def shell(argv: list[str]) -> str:
    return shlex.join(str(a) for a in argv)
