"""The default profile: train here on the CPU with TRL, from the NeMo RL config the stage wrote.

The command is the CPU runner's (`python -m recipe.train.local_dpo --config <yaml> [overrides]`,
the command line of NeMo RL's run_dpo.py) run as a child process of the CLI with this Python, its
output on the terminal and in `<run_dir>/train.log`. The child never reaches a hub
(HF_HUB_OFFLINE=1). After a run that trained, `<run_dir>/report.html` is rewritten with the loss
and accuracy curves.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from recipe.train.launchers import LaunchPlan, nemo_rl_command, shell_line


def build_command(plan: LaunchPlan) -> list[str]:
    argv = nemo_rl_command(plan)
    if argv[0] == "python":  # the interpreter that has gym-dpo (and its local extra) installed
        argv[0] = sys.executable
    return argv


def _workdir(plan: LaunchPlan) -> Path:
    return Path(plan.launcher.workdir or os.getcwd())


def environment(plan: LaunchPlan) -> dict[str, str]:
    from recipe.train.local import POLICY_DCP_ENV

    # model/ is this profile's policy: no second copy of the weights in NeMo RL's form per step_N
    env = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONUNBUFFERED": "1", POLICY_DCP_ENV: "0"}
    if plan.launcher.get("threads"):
        env["OMP_NUM_THREADS"] = str(int(plan.launcher.threads))
    env.update({str(k): str(v) for k, v in (plan.launcher.env or {}).items()})
    return env


def describe(plan: LaunchPlan) -> str:
    return shell_line(build_command(plan), _workdir(plan))


def command_record(plan: LaunchPlan) -> dict:
    return {"executor": "subprocess", "cwd": str(_workdir(plan)), "env": environment(plan)}


def launch(plan: LaunchPlan) -> int:
    from recipe import report, report_page
    from recipe.train.executors import subprocess_run

    code = subprocess_run.run(build_command(plan), _workdir(plan), plan.run_dir / "train.log",
                              environment(plan))
    if code == 0 and plan.data_dir is not None:
        path = report_page.write(plan.run_dir, plan.data_dir)
        report.console.print(f"wrote {path}", soft_wrap=True)
    return code
