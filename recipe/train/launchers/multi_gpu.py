"""One node, several GPUs: the single_gpu launch with cluster.gpus_per_node = launcher.gpus_per_node.

NeMo RL spreads DTensor data parallelism over the GPUs by itself; what changes is the YAML's
`cluster.gpus_per_node` (written by the train stage from the launcher) and, with
executor=docker, the number of GPUs in the device request.
"""

from recipe.train.launchers.single_gpu import (  # noqa: F401  (the launcher seam)
    build_command,
    check_image,
    command_record,
    describe,
    launch,
)

__all__ = ["build_command", "check_image", "command_record", "describe", "launch"]  # the launcher seam
