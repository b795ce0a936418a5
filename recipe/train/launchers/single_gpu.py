"""One node: `uv run python examples/run_dpo.py --config <yaml>` in /opt/nemo-rl.

launcher.executor picks where: `subprocess` runs it here (we are inside the NeMo RL container,
e.g. `docker compose run --rm recipe stage=train launcher=single_gpu`), `docker` starts the
container from the host with the Docker SDK (recipe.train.executors.docker_sdk). The GPU count
is launcher.gpus_per_node, written to the YAML as cluster.gpus_per_node; multi_gpu is this
profile with 8.
"""

from __future__ import annotations

from recipe.errors import RecipeError
from recipe.train import container
from recipe.train.launchers import LaunchPlan, nemo_rl_command, shell_line

EXECUTORS = ("subprocess", "docker")


def _executor(plan: LaunchPlan) -> str:
    executor = str(plan.launcher.executor)
    if executor not in EXECUTORS:
        raise RecipeError(f"launcher.executor={executor!r}: choose subprocess (inside the NeMo RL "
                          "container) or docker (from the host, Docker SDK)")
    return executor


def build_command(plan: LaunchPlan) -> list[str]:
    return nemo_rl_command(plan)


def _spec(plan: LaunchPlan) -> dict:
    from recipe.train.executors import docker_sdk

    return docker_sdk.container_spec(plan, build_command(plan))


def describe(plan: LaunchPlan) -> str:
    if _executor(plan) == "docker":
        from recipe.train.executors import docker_sdk

        return docker_sdk.docker_run_line(_spec(plan))
    return shell_line(build_command(plan), plan.launcher.workdir)


def command_record(plan: LaunchPlan) -> dict:
    record = {"executor": _executor(plan), "cwd": str(plan.launcher.workdir)}
    if record["executor"] == "docker":
        from recipe.train.executors import docker_sdk

        record["container"] = docker_sdk.recordable(_spec(plan))
    return record


def check_image(plan: LaunchPlan) -> dict:
    """docker: the local image's digests; subprocess: the base digest baked into our image."""
    if _executor(plan) == "docker":
        client = container.docker_client()
        image = str(plan.cfg.container.image)
        digests, image_id = container.local_digests(container.local_image(client, image).attrs, image)
        return container.check(plan.cfg, digests + [image_id], "local Docker image")
    return container.check(plan.cfg, container.baked_digests(), f"${container.BAKED_ENV}")


def launch(plan: LaunchPlan) -> int:
    log_path = plan.run_dir / "train.log"
    if _executor(plan) == "docker":
        from recipe.train.executors import docker_sdk

        return docker_sdk.run(_spec(plan), log_path, remove=bool(plan.launcher.docker.remove))
    from recipe.train.executors import subprocess_run

    env = {str(k): str(v) for k, v in (plan.launcher.env or {}).items()}
    return subprocess_run.run(build_command(plan), plan.launcher.workdir, log_path, env)
