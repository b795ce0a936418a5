"""The single_gpu profile without the launch: every file written, the command printed.

The train stage never calls `launch` when launcher.dry_run is true (this profile sets it; any
other profile takes `launcher.dry_run=true`); `launch` here only guards that promise.
"""

from recipe.errors import RecipeError
from recipe.train.launchers.single_gpu import (  # noqa: F401  (the launcher seam)
    build_command,
    check_image,
    command_record,
    describe,
)


def launch(plan) -> int:
    if plan.launcher.dry_run:
        return 0
    raise RecipeError("launcher=dry_run with launcher.dry_run=false: pick a real profile "
                      "(launcher=single_gpu|multi_gpu|slurm) to launch")

__all__ = ["build_command", "check_image", "command_record", "describe", "launch"]  # the launcher seam
