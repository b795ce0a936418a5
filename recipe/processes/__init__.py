"""Child processes and signals, in one place: every stage starts, tees, bounds and stops what it
runs through this module.

- `signals`: Ctrl-C and SIGTERM as `Interrupted`, and holding them while a process is made;
- `forks`: Python workers (`Pool`, `Background`);
- `commands`: other programs (`run`, `start`, `Service`), each in a session of its own.
"""

from recipe.processes.commands import (
    Service,
    check_services,
    live_services,
    run,
    session_members,
    start,
    stop_session,
)
from recipe.processes.forks import Background, Pool
from recipe.processes.signals import (
    JOIN_TIMEOUT,
    SIGNALS,
    Interrupted,
    block,
    deferred,
    hold,
    in_child,
    install,
    signals_raise,
    unblock,
)

__all__ = ["JOIN_TIMEOUT", "SIGNALS", "Background", "Interrupted", "Pool", "Service", "block", "check_services",
           "deferred", "hold", "in_child", "install", "live_services", "run", "session_members", "signals_raise",
           "start", "stop_session", "unblock"]
