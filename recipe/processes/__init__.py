"""Child processes and signals, in one place: every stage starts, tees, bounds and stops what it
runs through this module.

- `signals`: Ctrl-C, SIGTERM and SIGHUP as `Interrupted`, holding them while a process is made
  and while a stop cleans up;
- `forks`: Python workers (`Pool`, `Background`), and `reaping()` of those a block left;
- `commands`: other programs (`run`, `start`, `Service`), each in a session of its own.
"""

from recipe.processes.commands import (
    Service,
    check_services,
    left_behind,
    live_services,
    run,
    session_members,
    start,
    stdout_gone,
    stop_outcome,
    stop_session,
)
from recipe.processes.forks import Background, Pool, forked, reaping
from recipe.processes.signals import (
    JOIN_TIMEOUT,
    SIGNALS,
    Interrupted,
    block,
    deferred,
    hold,
    ignored,
    in_child,
    install,
    signals_raise,
    unblock,
)

__all__ = ["JOIN_TIMEOUT", "SIGNALS", "Background", "Interrupted", "Pool", "Service", "block", "check_services",
           "deferred", "forked", "hold", "ignored", "in_child", "install", "left_behind", "live_services", "reaping",
           "run", "session_members", "signals_raise", "start", "stdout_gone", "stop_outcome", "stop_session", "unblock"]
