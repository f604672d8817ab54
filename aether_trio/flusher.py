"""Coalesced writes, the scheduling half: one task calls `flush(round)` on every connection marked
during a scheduling round, once the tasks producing messages have yielded.

A fan-out queues the push on each subscriber and marks it here, synchronously. The flusher runs
in the next scheduling round, after the task that published has handled everything it had read
(a burst of publish frames, or a batch of API calls) and so after everything queued meanwhile:
a subscriber gets one write per round instead of one per message, and the kernel's per-`send`
cost, most of a delivery's CPU, is paid once per round. A lone publication costs one task switch
more than writing it on the spot, for all its subscribers together.

Every flush of one round gets the same `Round`: a one-entry memo where a connection's writer
keeps the bytes it built, so the next connection with the same messages queued (the next
subscriber of the same channels) reuses them. It lives for one round and belongs to this task:
nothing is cached across rounds or in a module global. What a connection does in `flush` (the
frames, the socket, its writer task when the socket is full) is the connection layer's
(connection/writer.py); this module knows only `Flushable`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

import trio

__all__ = ["Flushable", "Flusher", "Round"]

log = logging.getLogger(__name__)


class Round:
    """What the flushes of one round share: the last (key, value) one of them built."""

    __slots__ = ("key", "value")

    def __init__(self) -> None:
        self.key: Any = None
        self.value: Any = None


class Flushable(Protocol):
    def flush(self, round: Round) -> None:
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
        once per round (see connection/writer.py)."""
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
        # Its own frame: while the task waits, nothing of the last round (a closed connection,
        # the round's memo) stays referenced by its locals.
        marked, self._marked = self._marked, []
        shared = Round()
        for connection in marked:
            try:
                connection.flush(shared)
            except Exception as exc:
                # One connection's failure must not cost the others their writes (nor restart
                # this task and lose the round).
                log.exception("flushing %r failed", connection)
                if self.on_error is not None:
                    self.on_error(exc, "flush")
