"""`python -m recipe.train.local_dpo --config FILE [overrides]`: NeMo RL's DPO run, on the CPU.

The command of the CPU runner (recipe.train.local.runner), with NeMo RL's `examples/run_dpo.py`
command line: `launcher=local_cpu` runs it, and it stands where run_dpo.py is expected.
"""

import sys

from recipe.train.local.runner import main

if __name__ == "__main__":
    sys.exit(main())
