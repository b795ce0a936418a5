"""gym-dpo: NeMo Gym rollouts -> validated DPO preference pairs -> NeMo RL DPO."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("gym-dpo")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+source"
