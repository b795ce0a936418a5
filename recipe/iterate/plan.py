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
from recipe.iterate import suites
from recipe.run_files import sha256_file

# command-line overrides of the iterate run that belong to a stage, by the key they start with
TRAIN_KEYS = ("policy.", "dpo.", "checkpointing.", "logger.", "launcher.", "container.",
              "nemo_rl_overrides", "nemo_rl_data.", "preflight.", "train.")
PREPARE_KEYS = ("data_prep.", "data.")
TRAIN_GROUPS = ("model", "dpo", "launcher", "container")
PREPARE_GROUPS = ("data_prep",)
OWNED = ("data.input", "data.output_dir", "run_dir", "policy.model_name")  # set per round by the loop
# train keys that say where and how a round trains, not what: a rerun may change them (Plan.accepted)
ACCEPTED_TRAIN_KEYS = ("launcher.", "container.", "checkpointing.", "logger.", "preflight.")
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


def override_key(override: str) -> str:
    return override.lstrip("+~").split("=", 1)[0]


def forwarded(task_overrides: list[str], keys: tuple[str, ...], groups: tuple[str, ...]) -> list[str]:
    """The user's own overrides meant for a stage (its sections and config groups), in order."""
    kept = []
    for override in task_overrides:
        key = override_key(override)
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
    suites: list = field(default_factory=list)   # recipe.iterate.suites.Suite: the held-out collections
    gyms: list[DictConfig] = field(default_factory=list)  # every environment NeMo Gym runs (gym first)

    @property
    def require_format(self) -> str | None:
        """The answer format the train environment's reward requires (None: its verifier's own)."""
        return suites.required(self.gym)

    def suites_of(self, k: int) -> list:
        """The held-out suites round K collects: the environment's eval every round; its probe and
        the other environments' (cross-eval) in every round, or in round 0 and the last only."""
        every = str(self.it.get("extra_eval_rounds", "last")) == "all"
        return [s for s in self.suites if s.name == "eval" or every or k in (0, self.rounds)]

    def collect_sampling(self) -> DictConfig:
        return suites.env_sampling(self.it.collect.sampling, self.gym)
    data_prep: dict = field(default_factory=dict)  # the pairing strategy's settings, resolved
    train_settings: dict = field(default_factory=dict)  # what a round's training is (check_batches)
    batch: dict = field(default_factory=dict)  # global batch, data-parallel ranks, micro batch (check_batches)

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

    def dcp_to_hf_step(self, step_dir: Path, out: Path, k: int) -> tuple[list[str], Path | None, dict[str, str]]:
        """The converter as the launcher's place runs it (recipe.iterate.place): argv, cwd and the
        variables it adds to this environment (the training run's, then iterate.dcp_to_hf.env)."""
        from recipe.iterate import place

        size = place.converter_size(step_dir / "policy" / "weights", self.it.dcp_to_hf)
        argv, cwd = self.place.wrap(self.dcp_to_hf_argv(step_dir, out), self.nemo_rl_dir, name=f"dcp-to-hf-{k}",
                                    size=size)
        env = {**self.place.env(), **{str(key): str(v) for key, v in (self.it.dcp_to_hf.get("env") or {}).items()}}
        return argv, cwd, env

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
        """What must not change between reruns of one run folder: what rounds are compared on (the
        eval) and what each round is made of (its tasks, pairs and training). A rerun that changes
        any of it is refused (docs/iterate.md, resume: why, setting by setting)."""
        return {"eval_tasks": str(self.eval_tasks), "eval_tasks_sha256": sha256_file(self.eval_tasks),
                "eval_tasks_limit": self.it.eval.tasks, "eval_repeats": int(self.it.eval.repeats),
                "eval_sampling": OmegaConf.to_container(self.it.eval.sampling, resolve=True),
                "suites": [suite.describe() for suite in self.suites],
                "model_preset": self.model_preset, "model_name": self.model_name,
                "serving": {"name": str(self.serving.name), "gguf_type": self.serving.get("gguf_type")},
                "sampling": self.sampling(),
                "gym": {"name": str(self.gym.name), "agent_name": str(self.gym.agent_name),
                        "config_paths": [str(p) for p in self.gym.config_paths]},
                "reward_requires_format": self.require_format,
                # round K collects tasks (K-1)*tasks.. of this file: another file or count would
                # overlap or skip earlier rounds' tasks
                "train_tasks": str(self.train_tasks), "train_tasks_sha256": sha256_file(self.train_tasks),
                "collect": {"tasks": self.it.collect.tasks, "repeats": int(self.it.collect.repeats)},
                "prepare": {"data_prep": self.data_prep, "overrides": self.prepare_overrides},
                "train": self.train_settings}

    def accepted(self) -> dict:
        """What a rerun may change, said when it does and kept in each step's record (iterate.json,
        per round): how many requests at once, how long to wait, whether a round of fewer pairs
        than a batch trains, and where and how a round trains (its micro batch, launcher keys,
        checkpoints, logs), not what it trains. launcher.env values are not written."""
        runs_with = {}
        for override in self.train_overrides:
            key, value = override_key(override), override.partition("=")[2]
            if key == MICRO or key.startswith(ACCEPTED_TRAIN_KEYS):
                runs_with[key] = "<not recorded>" if key.split(".")[:2] == ["launcher", "env"] else value
        return {"collect_parallel": int(self.it.collect.sampling.parallel),
                "train_small_rounds": bool(self.it.train_small_rounds),
                "watchdog": OmegaConf.to_container(self.it.watchdog, resolve=True),
                "nemo_gym_startup_timeout": self.it.nemo_gym_startup_timeout,
                "train_runs_with": runs_with}


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
    from hydra.errors import MissingConfigException

    try:
        cfg = suites.compose_recipe([f"model={preset}"])
    except MissingConfigException:
        raise RecipeError(f"iterate.default_model={preset!r}: no model preset configs/model/{preset}.yaml") from None
    return str(cfg.policy.model_name)


def build(cfg: DictConfig) -> Plan:
    choices, task_overrides = _choices()
    it = cfg.iterate
    if str(it.get("extra_eval_rounds", "last")) not in ("last", "all"):
        raise RecipeError(f"iterate.extra_eval_rounds={it.extra_eval_rounds}: last (round 0 and the last round) or all")
    if int(it.rounds) < 0:
        raise RecipeError(f"iterate.rounds={it.rounds}: give 0 (evaluate the base model only) or more")
    from recipe.iterate import preset as gpu_preset

    notes = []
    given = {override_key(o) for o in task_overrides}
    on_gpu = gpu_preset.on_gpu(cfg)
    applied = gpu_preset.apply(cfg, given)
    if applied:
        notes.append(f"iterate.gpu preset for launcher={cfg.launcher.name}: {', '.join(applied)}")
    preset = choices.get("model", "tiny")
    model_name = str(cfg.policy.model_name)
    explicit_model = any(override_key(o) in ("model", "policy.model_name") for o in task_overrides)
    default_key = "iterate.gpu.default_model" if on_gpu else "iterate.default_model"
    default = str(OmegaConf.select(cfg, default_key))
    if model_name == CPU_MODEL:
        if explicit_model:
            raise RecipeError("model=tiny is built from the pairs with random weights: it cannot be "
                              "served or evaluated; the iterate loop needs a real model (the default is "
                              f"model={default}, or model=<preset> / policy.model_name=<folder>)")
        preset, model_name = default, _preset_model_name(default)
        notes.append(f"model={preset} ({default_key}: model=tiny cannot be served)")
    # a model made here for the CPU (a GGUF file's folder in this machine's cache) is the CPU's only:
    # NeMo RL's image and a Slurm step load the hub model by its name
    offline = dict(it.get("offline_models") or {}) if not on_gpu else {}
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
    groups = {g: choices[g] for g in (*TRAIN_GROUPS, *PREPARE_GROUPS)
              if g in choices and (g != "dpo" or g in given)}
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
                train_tasks=suites.existing(str(gym.train_tasks), "gym.train_tasks"),
                eval_tasks=suites.existing(str(gym.eval_tasks), "gym.eval_tasks"), groups=groups,
                train_overrides=train_overrides, prepare_overrides=prepare_overrides,
                container=cfg.get("container"), notes=notes, launcher_cfg=cfg.launcher,
                place=place.build(cfg, run_dir, model_name),
                data_prep=OmegaConf.to_container(cfg.data_prep, resolve=True))
    plan.suites, plan.gyms = suites.build(gym, it)
    micro_given = train_values.get("policy", {}).get("train_micro_batch_size") is not None or any(
        override_key(o) == MICRO for o in forwarded(task_overrides, TRAIN_KEYS, TRAIN_GROUPS))
    micro = check_batches(plan, derive_micro=not micro_given, cap=gpu_preset.micro_batch_cap(cfg, given))
    if micro is not None:
        plan.train_overrides.insert(own_values, f"{MICRO}={micro}")
    return plan


MICRO = "policy.train_micro_batch_size"
BATCH = "policy.train_global_batch_size"


def compose_train(argv: list[str]) -> DictConfig:
    """The config a round's `gym-dpo stage=train` composes from `argv` (its overrides)."""
    return suites.compose_recipe(argv)


def check_batches(plan: Plan, derive_micro: bool, cap: int | None = None) -> int | None:
    """Before the first collection, what the train stage would refuse only after a round's
    collection and prepare: the batch against the GPUs (gpus_per_node x nodes over the
    model-parallel size). The rounds' train configs differ only in the model folder and the pairs,
    so one composition checks them all. `derive_micro`: the micro batch is not the user's, so it is
    the global batch over the data-parallel ranks (the whole batch in one pass on one device, at
    most `cap` pairs on a GPU: recipe.iterate.preset); it is returned, to be handed to every round.
    launcher.overrides (NeMo RL's command line) are the train stage's to check."""
    from recipe.iterate import preset as gpu_preset
    from recipe.train import nemo_rl, validate

    argv = plan.train_argv(plan.run_dir / "round_1" / "prepare" / "data", plan.run_dir / "round_1" / "train",
                           plan.model_name)[3:]
    train = compose_train(argv)
    policy = OmegaConf.to_container(train.policy, resolve=True)
    extra = (OmegaConf.to_container(train.nemo_rl_overrides, resolve=True) or {}).get("policy") or {}
    policy = nemo_rl._deep_merge(policy, extra)
    cluster = {"gpus_per_node": int(train.launcher.gpus_per_node), "num_nodes": int(train.launcher.nodes)}
    ranks, _ = validate.data_parallel_ranks(policy, cluster)  # None: batch_problems names why
    plan.train_settings = {"launcher": plan.launcher, **{
        section: _without_micro(OmegaConf.to_container(train[section], resolve=True))
        for section in ("policy", "dpo", "nemo_rl_data", "nemo_rl_overrides")}}
    if derive_micro and ranks is not None:
        global_batch = int(policy["train_global_batch_size"])
        if global_batch % ranks:
            raise RecipeError(f"policy.train_global_batch_size={global_batch} cannot be split over the {ranks} "
                              f"data-parallel ranks of launcher={plan.launcher} ({cluster['gpus_per_node']} GPUs x "
                              f"{cluster['num_nodes']} nodes): set iterate.train.policy.train_global_batch_size "
                              f"to a multiple of {ranks}; nothing was run")
        policy["train_micro_batch_size"] = gpu_preset.capped(global_batch // ranks, cap)
    problems = validate.batch_problems(policy, cluster)
    if problems:
        raise RecipeError("every round's training would be refused (found before any collection); nothing "
                          "was run:\n" + "\n".join(f"  - {p}" for p in problems))
    plan.batch = {"global": int(policy["train_global_batch_size"]), "ranks": ranks,
                  "micro": None if derive_micro else int(policy["train_micro_batch_size"])}
    return policy["train_micro_batch_size"] if derive_micro else None


def _without_micro(section):
    """A config section less its micro batch sizes: how many pairs go through the model at once is
    memory and speed (the step's gradient is the same), so a rerun may change it (Plan.accepted)."""
    if isinstance(section, dict):
        return {k: _without_micro(v) for k, v in section.items() if not str(k).endswith("micro_batch_size")}
    return section


def shell(argv: list[str]) -> str:
    return shlex.join(str(a) for a in argv)
