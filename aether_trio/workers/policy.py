"""When to restart a worker that exited, and when to give up: sans-IO, one per worker slot.

An exit before the worker reported that it listens is a failed start (a port in use, Redis
unreachable at start, a broken installation); `max_failed_starts` of them in a row and the
parent gives up (`None`), because restarting would loop for ever on what only an operator can
fix. Any exit restarts after a delay that doubles per exit in a row, from `first_delay` up to
`max_delay`; a worker that ran for `stable_after` seconds before exiting starts the count again.
"""

from __future__ import annotations

import attrs

__all__ = ["RestartPolicy"]


@attrs.define
class RestartPolicy:
    first_delay: float = 0.5
    max_delay: float = 30.0
    max_failed_starts: int = 5
    stable_after: float = 60.0
    exits_in_a_row: int = 0
    failed_starts: int = 0

    def after_exit(self, started: bool, uptime: float) -> float | None:
        """Seconds to wait before the next start, or None: give up."""
        if started:
            self.failed_starts = 0
        else:
            self.failed_starts += 1
            if self.failed_starts >= self.max_failed_starts:
                return None
        if uptime >= self.stable_after:
            self.exits_in_a_row = 0
        self.exits_in_a_row += 1
        return float(
            min(self.max_delay, self.first_delay * 2.0 ** min(self.exits_in_a_row - 1, 32))
        )
