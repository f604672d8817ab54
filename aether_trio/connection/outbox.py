"""A byte-bounded queue of encoded messages between the hub (or a command handler) and what
writes one connection: the node's flusher (`queued`, then `taken` once written without waiting),
or the connection's writer task once it has one.

`put` never blocks and never awaits: fan-out stays synchronous. When a message would take the
queue past its byte limit, `put` refuses it and the caller disconnects the client with 3008 "slow"
instead of letting one slow reader hold memory or slow everyone else down. The writer takes
everything pending at once (`next_batch`), so messages queued while it was writing go out together
in one frame.

A probe (`probe`) times one queued message until the frame carrying it has been written: the
node probes one subscriber per broadcast for `aether_publish_write_latency_seconds`, so the
measurement costs nothing per subscriber.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

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
    __slots__ = ("_bytes", "_kicked", "_probe", "_queue", "_wakeup", "close_request", "max_bytes")

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        # A list, not a deque: the writer takes batches from the front (a slice), and an idle
        # connection's empty list is 56 bytes where an empty deque is 760.
        self._queue: list[bytes] = []
        self._bytes = 0
        self._wakeup: trio.Event | None = None
        self._kicked = False
        self.close_request: CloseRequest | None = None
        # [messages up to and including the probed one still queued, start, report]
        self._probe: list[Any] | None = None

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
            self._probe = None
        if self._wakeup is not None:
            self._wakeup.set()
            self._wakeup = None
        return True

    def kick(self) -> None:
        """Wake the writer with nothing queued (the transport has bytes of its own pending)."""
        self._kicked = True
        if self._wakeup is not None:
            self._wakeup.set()
            self._wakeup = None

    async def next_batch(self, max_messages: int) -> list[bytes]:
        """Wait for messages and take up to `max_messages` of them; [] means: closing, or
        kicked (see `kick`)."""
        probe = self._probe
        if probe is not None and probe[0] <= 0:
            # The writer asks for more only after writing the previous batch, which held it.
            self._probe = None
            probe[2](time.perf_counter() - probe[1])
        while not self._queue:
            if self.close_request is not None or self._kicked:
                self._kicked = False
                return []
            self._wakeup = event = trio.Event()
            await event.wait()
        queue = self._queue
        batch = queue[:max_messages]
        del queue[:max_messages]
        self._bytes -= sum(map(len, batch))
        if self._probe is not None:
            self._probe[0] -= len(batch)
        return batch

    @property
    def queued(self) -> list[bytes]:
        """What is queued, oldest first (not a copy: read it, then `taken()` if written)."""
        return self._queue

    def taken(self) -> None:
        """Everything queued has been written (coalesced, by the node's flusher)."""
        self._queue = []
        self._bytes = 0
        probe = self._probe
        if probe is not None:
            self._probe = None
            probe[2](time.perf_counter() - probe[1])

    def probe(self, report: Callable[[float], object]) -> bool:
        """Time the newest queued message: `report(seconds)` once the frame carrying it has been
        written. One probe at a time; False if not taken (one is pending or nothing is queued)."""
        if self._probe is not None or not self._queue or self.close_request is not None:
            return False
        self._probe = [len(self._queue), time.perf_counter(), report]
        return True

    @property
    def queued_bytes(self) -> int:
        return self._bytes

    def statistics(self) -> OutboxStatistics:
        return OutboxStatistics(
            len(self._queue), self._bytes, self.max_bytes, self.close_request is not None
        )
