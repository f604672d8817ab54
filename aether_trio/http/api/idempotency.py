"""Idempotent publishing for the server API: a repeated `idempotency_key` gets the first result.

Results are kept per (channel, key) for `ttl` seconds (upstream: 5 minutes). Every entry lives
equally long, so insertion order is expiry order and expired entries are dropped from the front;
the cache is bounded by `max_entries` (the oldest go first). A publish with a key that is in
flight makes a second caller with the same key wait for it, so two concurrent retries publish
once. The cache is per node: a Redis engine would keep it next to the stream instead.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import attrs
import trio

from ...protocol.messages import StreamPosition

__all__ = ["IdempotencyCache", "IdempotencyStatistics"]

Key = tuple[str, str]


@attrs.frozen
class IdempotencyStatistics:
    entries: int
    max_entries: int
    in_flight: int


class IdempotencyCache:
    def __init__(
        self,
        ttl: float = 300.0,
        max_entries: int = 100_000,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._clock = clock
        self._results: dict[Key, tuple[float, StreamPosition]] = {}
        self._in_flight: dict[Key, trio.Event] = {}

    async def publish_once(
        self, channel: str, key: str, publish: Callable[[], Awaitable[StreamPosition]]
    ) -> StreamPosition:
        """`publish()`, unless `key` was used for `channel` within ttl: then its result."""
        if not key:
            return await publish()
        entry = (channel, key)
        while (pending := self._in_flight.get(entry)) is not None:
            await pending.wait()
        self._expire()
        cached = self._results.get(entry)
        if cached is not None:
            return cached[1]
        done = self._in_flight[entry] = trio.Event()
        try:
            position = await publish()
            self._results[entry] = (self._clock() + self.ttl, position)
            while len(self._results) > self.max_entries:
                del self._results[next(iter(self._results))]
            return position
        finally:
            del self._in_flight[entry]
            done.set()

    def _expire(self) -> None:
        now = self._clock()
        results = self._results
        while results:
            oldest = next(iter(results))
            if results[oldest][0] > now:
                break
            del results[oldest]

    def statistics(self) -> IdempotencyStatistics:
        return IdempotencyStatistics(len(self._results), self.max_entries, len(self._in_flight))
