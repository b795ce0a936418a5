"""Stands in for NeMo RL's examples/run_dpo.py in the Slurm tests (launcher.runner points here).

Same command line (`--config FILE [overrides]`). Like run_dpo.py it joins the Ray cluster the job
started (`ray.init(address="auto")`; dpo.sub exports RAY_ADDRESS), then it logs one line the tests
read (the alive nodes with their CPUs and GPUs, where a task pinned to each node ran, how it
authenticated, the Slurm restart count) and trains with gym-dpo's CPU runner (python -m
recipe.train.local_dpo, same arguments).

GYM_DPO_TEST_FIRST_ATTEMPT_STEP_SECONDS (test only): on the job's first attempt
(SLURM_RESTART_COUNT unset or 0) sleep that long after every optimizer step, so a test can requeue
the job mid-run on a machine of any speed. A requeued attempt runs at full speed.
"""

from __future__ import annotations

import json
import os
import sys
import time


def ray_check() -> dict:
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    ray.init(address="auto", logging_level="ERROR")
    nodes = [node for node in ray.nodes() if node["Alive"]]

    @ray.remote(num_cpus=0)
    def where() -> str:
        return ray.util.get_node_ip_address()

    pinned = [where.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False))
              .remote() for node in nodes]
    from ray._private.authentication.authentication_utils import is_token_auth_enabled

    seen = {"nodes": sorted(node["NodeManagerAddress"] for node in nodes),
            "task_ips": sorted(ray.get(pinned, timeout=120)),
            "cpus": ray.cluster_resources().get("CPU"),
            "resources": {node["NodeManagerAddress"]: {k: node["Resources"].get(k, 0) for k in ("CPU", "GPU")}
                          for node in nodes},
            # how the driver authenticated to the job's Ray cluster
            "auth": {"mode": os.environ.get("RAY_AUTH_MODE"), "token_auth": is_token_auth_enabled(),
                     "token_path": os.environ.get("RAY_AUTH_TOKEN_PATH"), "home": os.environ.get("HOME")},
            "restart": int(os.environ.get("SLURM_RESTART_COUNT") or 0),
            "ray_address": os.environ.get("RAY_ADDRESS"),
            # what the job env file set beyond dpo.sub's own variables (launcher.hf_cache, launcher.env)
            "hf_home": os.environ.get("HF_HOME"), "mark": os.environ.get("GYM_DPO_TEST_MARK")}
    ray.shutdown()
    return seen


def slow_first_attempt() -> None:
    seconds = float(os.environ.get("GYM_DPO_TEST_FIRST_ATTEMPT_STEP_SECONDS") or 0)
    if seconds <= 0 or int(os.environ.get("SLURM_RESTART_COUNT") or 0) > 0:
        return
    import transformers

    class SlowSteps(transformers.TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            time.sleep(seconds)

    original = transformers.Trainer.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.add_callback(SlowSteps())

    transformers.Trainer.__init__ = init
    print(f"RAY_DPO_DRIVER first attempt: {seconds} s after every step", flush=True)


def main(argv: list[str]) -> int:
    print("RAY_DPO_DRIVER " + json.dumps(ray_check()), flush=True)
    slow_first_attempt()
    from recipe.train.local_dpo import main as train

    return train(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
