"""`python -m recipe ...` and the `gym-dpo` command.

Ctrl-C, SIGTERM and SIGHUP wait while the CLI starts and composes the config (recipe.processes.block);
from the moment a stage runs they end the run with one line and exit code 130 / 143 / 129.
"""

import signal


def main() -> None:
    signal.pthread_sigmask(signal.SIG_BLOCK, (signal.SIGINT, signal.SIGTERM, signal.SIGHUP))  # = processes.block()
    from recipe import cli

    cli.main()


if __name__ == "__main__":
    main()
