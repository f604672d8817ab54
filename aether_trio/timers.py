"""One task runs every per-connection timer of the node (pings, pong checks, stale and expiry
closes), so an idle connection costs a heap entry rather than a sleeping task.

Callbacks are synchronous and must not block; one that needs to await starts a task in a nursery
it owns. A callback that raises is logged and the scheduler goes on.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
from collections.abc import Callable

import trio

__all__ = ["Scheduler", "Timer"]

# Cancelled timers tolerated in the heap before a compaction is considered.
COMPACT_AFTER = 256

log = logging.getLogger(__name__)


def _noop() -> None:
    pass


class Timer:
    __slots__ = ("_scheduler", "callback", "cancelled", "deadline")

    def __init__(
        self, deadline: float, callback: Callable[[], None], scheduler: Scheduler | None = None
    ) -> None:
        self.deadline = deadline
        self.callback = callback
        self.cancelled = False
        self._scheduler = scheduler

    def cancel(self) -> None:
        if self.cancelled:
            return
        self.cancelled = True
        # The heap keeps the entry until its deadline (or a compaction); drop the callback now
        # so that whatever it refers to (a closed connection) is not kept alive until then.
        self.callback = _noop
        if self._scheduler is not None:
            self._scheduler._cancelled_one()


class Scheduler:
    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Timer]] = []
        self._seq = itertools.count()
        self._changed = trio.Event()
        # Cancelled timers still in the heap (an estimate: timers cancelled after firing count
        # too, until the next compaction recounts).
        self._cancelled = 0
        # Told about a callback that raised (the node's error tracker), besides the log line.
        self.on_error: Callable[[BaseException, str], None] | None = None

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        return self.call_at(trio.current_time() + delay, callback)

    def call_at(self, deadline: float, callback: Callable[[], None]) -> Timer:
        timer = Timer(deadline, callback, self)
        if not self._heap or deadline < self._heap[0][0]:
            self._changed.set()  # the sleeping loop must wake up earlier
        heapq.heappush(self._heap, (deadline, next(self._seq), timer))
        return timer

    def _cancelled_one(self) -> None:
        """Every connection cancels its stale-connection timer at connect, far before its
        deadline: once cancelled entries are an eighth of the heap, drop them (memory of idle
        connections, and a smaller heap to push into). An idle connection keeps three or four
        timers, so at a quarter the stale ones were never dropped. Each compaction removes at
        least an eighth of the heap, so its cost per cancellation stays constant."""
        self._cancelled += 1
        heap = self._heap
        if self._cancelled > COMPACT_AFTER and 8 * self._cancelled > len(heap):
            # In place: `run` holds the list.
            heap[:] = [entry for entry in heap if not entry[2].cancelled]
            heapq.heapify(heap)
            self._cancelled = 0
            self._changed.set()  # the earliest deadline may have changed

    def __len__(self) -> int:
        """Pending timers (cancelled ones leave at their deadline or a compaction and are not
        counted)."""
        return sum(1 for entry in self._heap if not entry[2].cancelled)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        heap = self._heap
        while True:
            now = trio.current_time()
            while heap and heap[0][0] <= now:
                callback = heapq.heappop(heap)[2].callback
                try:
                    callback()
                except Exception as exc:
                    log.exception("timer callback failed")
                    if self.on_error is not None:
                        self.on_error(exc, "timer callback")
                del callback  # not kept alive while the loop sleeps
            self._changed = trio.Event()
            with trio.move_on_at(heap[0][0] if heap else math.inf):
                await self._changed.wait()
