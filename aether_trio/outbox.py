"""A byte-bounded queue of encoded messages between the hub (or a command handler) and one
connection's writer.

`put` never blocks and never awaits: fan-out stays synchronous. When a message would take the
queue past its byte limit, `put` refuses it and the caller disconnects the client with 3008 "slow"
instead of letting one slow reader hold memory or slow everyone else down. The writer takes
everything pending at once (`next_batch`), so messages queued while it was writing go out together
in one frame.
"""

from __future__ import annotations

from collections import deque

import attrs
import trio

__all__ = ["CloseRequest", "Outbox", "OutboxStatistics"]


@attrs.frozen
class CloseRequest:
    code: int
    reason: str
    flush: bool  # send what is queued first (not for 3008: the client cannot keep up anyway)


@attrs.frozen
class OutboxStatistics:
    queued_messages: int
    queued_bytes: int
    max_bytes: int
    closing: bool


class Outbox:
    __slots__ = ("_bytes", "_queue", "_wakeup", "close_request", "max_bytes")

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._queue: deque[bytes] = deque()
        self._bytes = 0
        self._wakeup: trio.Event | None = None
        self.close_request: CloseRequest | None = None

    def put(self, message: bytes) -> bool:
        """Queue `message`; False if it does not fit (or the outbox is closing)."""
        if self.close_request is not None:
            return True  # already going away; dropping is not an overflow
        size = len(message)
        if self._bytes + size > self.max_bytes:
            return False
        self._queue.append(message)
        self._bytes += size
        if self._wakeup is not None:
            self._wakeup.set()
            self._wakeup = None
        return True

    def close(self, code: int, reason: str, *, flush: bool = True) -> bool:
        """Ask the writer to close; the first request wins. Returns whether this one was taken."""
        if self.close_request is not None:
            return False
        self.close_request = CloseRequest(code, reason, flush)
        if not flush:
            self._queue.clear()
            self._bytes = 0
        if self._wakeup is not None:
            self._wakeup.set()
            self._wakeup = None
        return True

    async def next_batch(self, max_messages: int) -> list[bytes]:
        """Wait for messages and take up to `max_messages` of them; [] means: close now."""
        while not self._queue:
            if self.close_request is not None:
                return []
            self._wakeup = event = trio.Event()
            await event.wait()
        batch: list[bytes] = []
        queue = self._queue
        while queue and len(batch) < max_messages:
            batch.append(queue.popleft())
        self._bytes -= sum(map(len, batch))
        return batch

    def statistics(self) -> OutboxStatistics:
        return OutboxStatistics(
            len(self._queue), self._bytes, self.max_bytes, self.close_request is not None
        )
