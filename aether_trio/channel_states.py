"""Channel occupied / vacated across the cluster: a channel's first subscriber anywhere, and its
last one gone for `delay` seconds (so a reconnect does not flap), told to the application's
backend (`[channel] state_proxy_name`, or the `on_channel_event` hook).

Theory of operation. Each node keeps an entry in the presence of a hidden channel per channel it
has subscribers of (`OCCUPANCY_PREFIX` + channel; presence is where the engines already count
members across nodes, with expiry on Redis). The node's hub says when its first subscriber of a
channel arrives and when its last one leaves (`local_occupied`, `local_vacated`, synchronous);
a vacate waits `delay` (cancelled by a new subscriber meanwhile). The transitions are then
worked through in order by one task: occupied counts the other nodes' entries *before* adding
this node's (none: the channel was empty everywhere: "occupied"), vacated removes this node's
entry and then counts (none left: "vacated"). Counting before adding and after removing makes
both events at-least-once: two nodes racing for the same empty channel may both tell it (the
backend sees "occupied" twice), never neither. Entries are added again every
`refresh_interval` so that an engine's presence expiry keeps them while the node lives, and
lets them go when it dies.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Final

import trio

from .engines.base import EngineError, PresenceManager
from .protocol.messages import ClientInfo
from .timers import Scheduler, Timer

__all__ = ["OCCUPANCY_PREFIX", "ChannelStates"]

log = logging.getLogger(__name__)

# "$": private, and a namespace no one configures: no client can read this presence.
OCCUPANCY_PREFIX: Final = "$aether.occupancy:"

Notify = Callable[[str, str, int], None]  # channel, "occupied" | "vacated", time in ms


class ChannelStates:
    def __init__(
        self,
        presence: PresenceManager,
        scheduler: Scheduler,
        node_id: str,
        has_subscribers: Callable[[str], bool],
        notify: Notify,
        capture: Callable[[BaseException, str], None],
    ) -> None:
        self._presence = presence
        self._scheduler = scheduler
        self._entry = ClientInfo(user=node_id, client=node_id)
        self._has_subscribers = has_subscribers
        self._notify = notify
        self._capture = capture
        # Channels this node holds an entry for (or is about to), with a pending vacate timer.
        self._held: dict[str, Timer | None] = {}
        # Channels whose entry was added (what the refresh adds again): not one whose
        # "occupied" is still queued, which must count the others before adding it.
        self._added: set[str] = set()
        self._todo: deque[tuple[str, str]] = deque()
        self._wake = trio.Event()
        self.delay = 2.0
        self.refresh_interval = 25.0

    # --- from the node (synchronous) ---

    def local_occupied(self, channel: str) -> None:
        if channel in self._held:
            pending = self._held[channel]
            if pending is not None:  # back within the delay: nothing changed for anyone
                pending.cancel()
                self._held[channel] = None
            return
        self._held[channel] = None
        self._push("occupied", channel)

    def local_vacated(self, channel: str) -> None:
        if channel not in self._held:
            return
        previous = self._held[channel]
        if previous is not None:
            previous.cancel()
        self._held[channel] = self._scheduler.call_later(
            self.delay, lambda: self._delay_over(channel)
        )

    def _delay_over(self, channel: str) -> None:
        if self._has_subscribers(channel):  # a subscriber arrived the moment the delay ended
            self._held[channel] = None
            return
        del self._held[channel]
        self._push("vacated", channel)

    def _push(self, kind: str, channel: str) -> None:
        self._todo.append((kind, channel))
        self._wake.set()

    def statistics(self) -> dict[str, int]:
        return {"held": len(self._held), "pending": len(self._todo)}

    # --- the task ---

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        next_refresh = trio.current_time() + self.refresh_interval
        while True:
            with trio.move_on_at(next_refresh):
                while not self._todo:
                    await self._wake.wait()
                    self._wake = trio.Event()
            while self._todo:
                kind, channel = self._todo.popleft()
                await self._apply(kind, channel)
            if trio.current_time() >= next_refresh:
                await self._refresh()
                next_refresh = trio.current_time() + self.refresh_interval

    async def _apply(self, kind: str, channel: str) -> None:
        key = OCCUPANCY_PREFIX + channel
        try:
            if kind == "occupied":
                others, _users = await self._presence.presence_stats(key)
                await self._presence.add_presence(key, self._entry)
                self._added.add(channel)
                alone = others == 0
            else:
                self._added.discard(channel)
                await self._presence.remove_presence(key, self._entry.client)
                left, _users = await self._presence.presence_stats(key)
                alone = left == 0
        except EngineError as exc:
            log.warning("channel state %s of %s not known: %s", kind, channel, exc)
            self._capture(exc, f"channel state {kind}")
            return
        if alone:
            self._notify(channel, kind, int(time.time() * 1000))

    async def _refresh(self) -> None:
        for channel in [c for c in self._held if c in self._added]:
            try:
                await self._presence.add_presence(OCCUPANCY_PREFIX + channel, self._entry)
            except EngineError as exc:
                log.info("refreshing the occupancy of %s failed: %s", channel, exc)
