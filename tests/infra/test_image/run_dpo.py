"""Stand-in for NeMo RL's examples/run_dpo.py in the test images: gym-dpo's CPU DPO runner.

Same command line (`--config FILE [overrides]`), run from /opt/nemo-rl by the default
`uv run python examples/run_dpo.py ...` with NeMo RL's venv Python (torch, TRL, ... are there).
gym-dpo itself is in its own venv (/opt/gym-dpo, our Dockerfile): its site-packages are added
after this venv's, then the runner module runs as `python -m recipe.train.local_dpo` would.
"""

import glob
import runpy
import sys

sys.path.extend(glob.glob("/opt/gym-dpo/lib/python3*/site-packages"))
print(f"[run_dpo.py stand-in] {sys.executable} -m recipe.train.local_dpo {' '.join(sys.argv[1:])}",
      flush=True)
sys.argv[0] = "run_dpo.py"
runpy.run_module("recipe.train.local_dpo", run_name="__main__", alter_sys=True)
