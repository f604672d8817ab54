"""A connection's timers: pings and the pong check, the stale-connection close, and the expiry
of the connection and of its subscriptions. All run on the node's one `Scheduler` (a heap entry
per timer, no task), and their callbacks are synchronous.

A mixin of `Client` (client.py), which owns the state used here.
"""

from __future__ import annotations

import logging
import random
import time
from typing import TYPE_CHECKING

from ..engines.base import EngineError
from ..protocol.codec import PING_FRAME, encode_push
from ..protocol.codes import Disconnect, Unsubscribe
from ..protocol.messages import UnsubscribePush

if TYPE_CHECKING:
    import trio

    from ..node import Node
    from ..protocol.session import Session
    from ..timers import Timer
    from .subscription import ChannelSubscription

__all__ = ["ConnectionTimers"]

log = logging.getLogger(__name__)


class ConnectionTimers:
    __slots__ = ()

    if TYPE_CHECKING:  # what Client provides
        node: Node
        session: Session
        expire_at: int | None
        subscriptions: dict[str, ChannelSubscription]
        _timers: dict[str, Timer]
        _nursery: trio.Nursery | None

        def send(self, message: bytes) -> None: ...

        def close(
            self, disconnect: Disconnect, *, flush: bool = True, detail: str = ""
        ) -> None: ...

        def _detach(self, channel: str) -> ChannelSubscription | None: ...

        async def _after_detach(self, sub: ChannelSubscription, *, announce: bool) -> None: ...

    def start_timers(self) -> None:
        interval = self.node.config.client.ping_interval
        if interval > 0:
            # The first ping at a random point of the interval spreads pings of a reconnect wave.
            self._timers["ping"] = self.node.scheduler.call_later(
                random.uniform(interval / 2, interval), self._ping
            )
        self._schedule_expiry()

    def _stale(self) -> None:
        if not self.session.is_connected:
            self.close(Disconnect.STALE)

    def _ping(self) -> None:
        cfg = self.node.config.client
        if not self.session.is_connected:
            return
        self.send(PING_FRAME)
        if cfg.pong_timeout > 0:
            self.session.ping_sent()
            self._timers["pong"] = self.node.scheduler.call_later(
                cfg.pong_timeout, self._check_pong
            )
        self._timers["ping"] = self.node.scheduler.call_later(cfg.ping_interval, self._ping)

    def _check_pong(self) -> None:
        if self.session.pong_missing:
            self.close(Disconnect.NO_PONG)

    def _schedule_expiry(self) -> None:
        old = self._timers.pop("expire", None)
        if old is not None:
            old.cancel()
        if self.expire_at is None:
            return
        # A refresh cancels this timer and arms a new one, so when it fires the connection was
        # not refreshed in time (no wall-clock re-check: tests run on a virtual clock).
        delay = self.expire_at - time.time() + self.node.config.client.expired_close_delay
        self._timers["expire"] = self.node.scheduler.call_later(
            max(delay, 0), lambda: self.close(Disconnect.EXPIRED)
        )

    def watch_expiry(self, sub: ChannelSubscription) -> None:
        """(Re)arm the expiry of a subscription; `sub_refresh` calls it again with a new expiry."""
        if sub.expiry_timer is not None:
            sub.expiry_timer.cancel()
            sub.expiry_timer = None
        if sub.expire_at is None:
            return
        delay = sub.expire_at - time.time() + self.node.config.client.expired_sub_close_delay
        sub.expiry_timer = self.node.scheduler.call_later(
            max(delay, 0), lambda: self._subscription_expired(sub)
        )

    def _subscription_expired(self, sub: ChannelSubscription) -> None:
        if self.subscriptions.get(sub.channel) is not sub:
            return
        if sub.server_side:
            self.close(Disconnect.SUBSCRIPTION_EXPIRED)
            return
        code = Unsubscribe.EXPIRED
        self._detach(sub.channel)
        self.send(encode_push(sub.channel, "unsubscribe", UnsubscribePush(code, code.reason)))
        if self._nursery is not None:
            self._nursery.start_soon(self._finish_unsubscribe, sub)

    async def _finish_unsubscribe(self, sub: ChannelSubscription) -> None:
        try:
            await self._after_detach(sub, announce=True)
        except EngineError:
            log.warning("unsubscribing %s from %s failed", self, sub.channel, exc_info=True)
