"""Several worker processes on one host sharing the WebSocket port (`[server] workers`).

`supervisor.py` is the parent (start, restart with back-off, forward signals, give up on a
crash loop), `policy.py` its sans-IO restart rules, `child.py` the worker's side of the pipes
that connect them. docs/workers.md is the operator's view.
"""

from __future__ import annotations

from .policy import RestartPolicy as RestartPolicy
from .supervisor import Supervisor as Supervisor

__all__ = ["RestartPolicy", "Supervisor"]
