"""A connection's timers, as a component of its `Client`: pings and the pong check, the
stale-connection close, the expiry of the connection and of its subscriptions, and the periodic
refresh of its presence entries.

All run on the node's one `Scheduler` (a heap entry per timer, no task), and their callbacks are
synchronous. The component keeps the connection's pending timers by name and knows its owner only
through `TimerOwner`: what to send, when to close, and what to do with an expired subscription.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from ..protocol.codes import Disconnect
from ..subscriptions import ChannelSubscription

if TYPE_CHECKING:
    from ..config import ClientConfig
    from ..protocol.codec import Codec
    from ..protocol.session import Session
    from ..timers import Scheduler, Timer

__all__ = ["ConnectionTimers", "TimerOwner"]


class TimerOwner(Protocol):
    @property
    def session(self) -> Session: ...

    @property
    def client_config(self) -> ClientConfig:
        """The node's running `[client]` section (a reload changes the delays)."""

    @property
    def expire_at(self) -> int | None: ...

    @property
    def codec(self) -> Codec:
        """Its wire format (the ping is an empty reply in it)."""

    def send(self, message: bytes) -> None: ...

    def close(self, disconnect: Disconnect, *, flush: bool = True, detail: str = "") -> None: ...

    def subscription_expired(self, sub: ChannelSubscription) -> None:
        """`sub` was not refreshed in time (a server-side one closes the connection)."""

    def holds_presence(self) -> bool:
        """Whether one of its subscriptions is in a channel with presence."""

    def refresh_presence(self) -> None:
        """Add the connection's presence entries again (in a task of its own)."""

    def refreshes_itself(self, sub: ChannelSubscription | None = None) -> bool:
        """Whether the server refreshes the connection (`sub` None) or `sub` by asking the
        application's backend at its expiry, rather than waiting for the client's refresh."""

    def refresh_due(self, sub: ChannelSubscription | None = None) -> None:
        """The expiry of the connection (`sub` None) or of `sub` arrived and the server refreshes
        it itself: ask the backend (in a task of its own)."""


class ConnectionTimers:
    # Two references and a dict: an idle connection pays for nothing else here (no callbacks
    # bound per connection: the owner is asked).
    __slots__ = ("_owner", "_scheduler", "_timers")

    def __init__(self, owner: TimerOwner, scheduler: Scheduler) -> None:
        self._owner = owner
        self._scheduler = scheduler
        self._timers: dict[str, Timer] = {}

    def _config(self) -> ClientConfig:
        return self._owner.client_config

    def call_later(self, name: str, delay: float, callback: Callable[[], None]) -> None:
        """Run `callback` in `delay` seconds unless cancelled (replaces a timer of that name)."""
        self.cancel(name)
        self._timers[name] = self._scheduler.call_later(delay, callback)

    def cancel(self, name: str) -> None:
        timer = self._timers.pop(name, None)
        if timer is not None:
            timer.cancel()

    def cancel_all(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()

    # --- the connection ---

    def watch_stale(self) -> None:
        """Close with 3502 unless the connection has connected by then."""
        self.call_later("stale", self._config().stale_close_delay, self._stale)

    def start(self) -> None:
        """After a successful connect: pings (and pong checks), the connection's expiry."""
        self.cancel("stale")
        interval = self._config().ping_interval
        if interval > 0:
            # The first ping at a random point of the interval spreads pings of a reconnect wave.
            self.call_later("ping", random.uniform(interval / 2, interval), self._ping)
        self.schedule_expiry()
        self.watch_presence()

    def _stale(self) -> None:
        if not self._owner.session.is_connected:
            self._owner.close(Disconnect.STALE)

    def _ping(self) -> None:
        cfg, owner = self._config(), self._owner
        if not owner.session.is_connected:
            return
        owner.send(owner.codec.ping)
        if cfg.pong_timeout > 0:
            owner.session.ping_sent()
            self.call_later("pong", cfg.pong_timeout, self._check_pong)
        self.call_later("ping", cfg.ping_interval, self._ping)

    def watch_presence(self) -> None:
        """Refresh the connection's presence entries every `presence_update_interval` while it
        holds a subscription with presence (called at connect and by every subscribe; a
        connection without one keeps no timer for it)."""
        interval = self._config().presence_update_interval
        if interval > 0 and "presence" not in self._timers and self._owner.holds_presence():
            self.call_later("presence", interval, self._presence)

    def _presence(self) -> None:
        # Like centrifuge's client (`updatePresence`): entries of a live connection are added
        # again before the engine's presence TTL lets them expire.
        del self._timers["presence"]
        interval = self._config().presence_update_interval
        if not self._owner.session.is_connected or interval <= 0:
            return
        if self._owner.holds_presence():  # else the next subscribe with presence re-arms it
            self._owner.refresh_presence()
            self.call_later("presence", interval, self._presence)

    def _check_pong(self) -> None:
        if self._owner.session.pong_missing:
            self._owner.close(Disconnect.NO_PONG)

    def schedule_expiry(self) -> None:
        """(Re)arm the connection's expiry from its `expire_at` (a refresh calls it again)."""
        self.cancel("expire")
        expire_at = self._owner.expire_at
        if expire_at is None:
            return
        owner = self._owner
        if owner.refreshes_itself():
            # The backend is asked at the expiry itself (no client is waiting to refresh).
            self.call_later("expire", max(expire_at - time.time(), 0), owner.refresh_due)
            return
        # A refresh cancels this timer and arms a new one, so when it fires the connection was
        # not refreshed in time (no wall-clock re-check: tests run on a virtual clock).
        delay = expire_at - time.time() + self._config().expired_close_delay
        self.call_later("expire", max(delay, 0), lambda: owner.close(Disconnect.EXPIRED))

    # --- subscriptions ---

    def watch_subscription(self, sub: ChannelSubscription) -> None:
        """(Re)arm the expiry of `sub`; `sub_refresh` calls it again with a new expiry."""
        self.forget_subscription(sub)
        if sub.expire_at is None:
            return
        owner = self._owner
        if owner.refreshes_itself(sub):
            sub.expiry_timer = self._scheduler.call_later(
                max(sub.expire_at - time.time(), 0), lambda: owner.refresh_due(sub)
            )
            return
        delay = sub.expire_at - time.time() + self._config().expired_sub_close_delay
        sub.expiry_timer = self._scheduler.call_later(
            max(delay, 0), lambda: owner.subscription_expired(sub)
        )

    @staticmethod
    def forget_subscription(sub: ChannelSubscription) -> None:
        if sub.expiry_timer is not None:
            sub.expiry_timer.cancel()
            sub.expiry_timer = None
