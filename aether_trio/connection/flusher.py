"""Coalesced writes: one task writes, for every connection that has something queued, all of it
with one `send` (several frames at once), once the tasks producing messages have yielded.

A fan-out queues the push on each subscriber and marks it here, synchronously. The flusher runs
in the next scheduling round, after the task that published has handled everything it had read
(a burst of publish frames, or a batch of API calls) and so after everything queued meanwhile:
a subscriber gets one write per round instead of one per message, and the kernel's per-`send`
cost, most of a delivery's CPU, is paid once per round. A lone publication costs one task switch
more than writing it on the spot, for all its subscribers together.

Connections whose socket is full, or that are closing, are written by their own writer task
(client.py); the flusher only ever writes without waiting.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

import trio

__all__ = ["Flushable", "Flusher"]

log = logging.getLogger(__name__)


class Flushable(Protocol):
    def flush(self) -> None:
        """Write what is queued without waiting (or hand it to the connection's writer)."""


class Flusher:
    __slots__ = ("_marked", "_wakeup", "on_error")

    def __init__(self) -> None:
        self._marked: list[Flushable] = []
        self._wakeup = trio.Event()
        # Told about a flush that raised (the node's error tracker); the others still happen.
        self.on_error: Callable[[BaseException, str], object] | None = None

    def mark(self, connection: Flushable) -> None:
        """Have `connection.flush()` called in the next round; the caller marks each connection
        once per round (see Client.send)."""
        self._marked.append(connection)
        if len(self._marked) == 1:
            self._wakeup.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await self._wakeup.wait()
            self._wakeup = trio.Event()
            self._flush_marked()

    def _flush_marked(self) -> None:
        # Its own frame: while the task waits, nothing of the last round (a closed connection)
        # stays referenced by its locals.
        marked, self._marked = self._marked, []
        for connection in marked:
            try:
                connection.flush()
            except Exception as exc:
                # One connection's failure must not cost the others their writes (nor restart
                # this task and lose the round).
                log.exception("flushing %r failed", connection)
                if self.on_error is not None:
                    self.on_error(exc, "flush")
