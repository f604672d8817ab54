"""Which channels this node's broker is subscribed to: subscribed when the first local subscriber
arrives, unsubscribed lazily once the last one has left (centrifuge's `Node.addSubscription`,
`removeSubscription` and its "dissolver").

Theory of operation. A subscriber is put into the hub first, then `ensure(channel)` is awaited.
When the broker is subscribed to the channel already it returns at once, without a checkpoint
(the common case). Otherwise it takes the channel's lock and subscribes the broker: a second
subscriber arriving meanwhile waits on that lock instead of reading the stream position before
the broker delivers (with a distributed engine it would miss what is published in between). A
failed subscribe raises `EngineError` to the subscriber, whose caller takes it out of the hub.

`release(channel)` is called, synchronously, when the hub's last subscriber of a channel left.
The channel is queued and `run` unsubscribes the broker in the background, under the channel's
lock and only if no one has subscribed again meanwhile (`in_use`), so a client's unsubscribe
never waits for the engine and a quick re-subscribe costs no round trip. A failed unsubscribe is
retried with capped backoff while the channel stays unused: a leftover broker subscription costs
traffic, never correctness.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import attrs
import trio

from .engines.base import Broker, EngineError

__all__ = ["BrokerChannels", "BrokerChannelsStatistics"]

log = logging.getLogger(__name__)

RETRY_FIRST = 0.5
RETRY_MAX = 10.0


@attrs.frozen
class BrokerChannelsStatistics:
    subscribed: int
    releasing: int  # waiting to be unsubscribed (or retried)


class BrokerChannels:
    def __init__(
        self,
        broker: Broker,
        in_use: Callable[[str], bool],
        on_error: Callable[[BaseException, str], object] | None = None,
    ) -> None:
        self._broker = broker
        self._in_use = in_use
        self._on_error = on_error
        self._subscribed: set[str] = set()
        # Only while someone holds or waits for a channel's lock.
        self._locks: dict[str, trio.Lock] = {}
        # Channels to unsubscribe -> (earliest attempt on trio's clock, next backoff).
        self._releasing: dict[str, tuple[float, float]] = {}
        self._wakeup = trio.Event()

    def is_subscribed(self, channel: str) -> bool:
        return channel in self._subscribed

    async def ensure(self, channel: str) -> None:
        """Return once the broker is subscribed to `channel`; `EngineError` if it cannot be."""
        if channel in self._subscribed:
            return
        async with self._locked(channel):
            if channel not in self._subscribed:
                await self._broker.subscribe(channel)
                self._subscribed.add(channel)

    def release(self, channel: str) -> None:
        """The node has no subscriber of `channel` left: unsubscribe the broker soon."""
        if channel in self._subscribed and channel not in self._releasing:
            self._releasing[channel] = (-math.inf, RETRY_FIRST)
            self._wakeup.set()

    def statistics(self) -> BrokerChannelsStatistics:
        return BrokerChannelsStatistics(len(self._subscribed), len(self._releasing))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            now = trio.current_time()
            due = [ch for ch, (at, _) in self._releasing.items() if at <= now]
            for channel in due:
                await self._dissolve(channel)
            if not due:
                self._wakeup = trio.Event()
                earliest = min((at for at, _ in self._releasing.values()), default=math.inf)
                with trio.move_on_at(earliest):
                    await self._wakeup.wait()

    async def _dissolve(self, channel: str) -> None:
        _, backoff = self._releasing[channel]
        try:
            async with self._locked(channel):
                if self._in_use(channel) or channel not in self._subscribed:
                    del self._releasing[channel]
                    return
                # Before the await: a subscriber arriving meanwhile finds the channel
                # unsubscribed, waits for this lock and subscribes the broker again after us.
                self._subscribed.discard(channel)
                try:
                    await self._broker.unsubscribe(channel)
                except EngineError:
                    self._subscribed.add(channel)  # as far as we know, still subscribed
                    raise
                del self._releasing[channel]
        except EngineError as exc:
            log.warning("unsubscribing the broker from %s failed; retrying in %.1f s", channel,
                        backoff, exc_info=True)  # fmt: skip
            if self._on_error is not None:
                self._on_error(exc, "broker unsubscribe")
            self._releasing[channel] = (trio.current_time() + backoff, min(2 * backoff, RETRY_MAX))

    @asynccontextmanager
    async def _locked(self, channel: str) -> AsyncIterator[None]:
        lock = self._locks.get(channel)
        if lock is None:
            # Nobody holds it: taken without a checkpoint. Every new channel's first subscriber
            # comes here, and a scheduling round per subscribe was a measurable part of it.
            lock = self._locks[channel] = trio.Lock()
            lock.acquire_nowait()
        else:
            await lock.acquire()
        try:
            yield
        finally:
            lock.release()
            # A released trio.Lock passes straight to the next waiter, so it is still locked
            # while anyone needs it.
            if not lock.locked():
                self._locks.pop(channel, None)
