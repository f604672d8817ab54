"""The small interfaces every engine implements (memory now, Redis later).

A `Broker` owns history: `publish` appends to the channel's stream *and* delivers the publication to
every node subscribed to the channel, as one step, so offsets are never reused and a publication is
in history before anyone can see it live. Nodes learn about publications, joins and leaves through
the `BrokerEventHandler` they pass to `run`, in publish order per channel; the broker never knows
about hubs or connections. Delivery is only promised to nodes that `subscribe`d the channel, and
may come after `publish` returns (Redis delivers through PUB/SUB; the memory engine delivers to
its one node before `publish` returns). A broker that may have lost events of some channels (a
PUB/SUB connection re-established) says so with `handle_gap`.

A publish may carry an idempotency key (the server API's `idempotency_key`): the broker keeps the
result under (channel, key) for `result_ttl` and answers a repeat with the first result, appending
and delivering nothing. Checking and storing the result is one atomic step with the append (one
Lua script in Redis), so a retry of a publish whose answer was lost -- through the same node or
another -- is never applied twice, and neither are two concurrent retries.

`publish_nowait` is `publish` split in two: the publication is issued at once (no checkpoint: its
place in the channel's order is taken before the call returns) and `wait()` on what it returns is
`publish`'s answer. A channel's publications issued in a row, by one task without waiting in
between, and then waited for in that order, are appended and delivered in that order and get
consecutive offsets in it; an engine that pipelines (Redis) sends them together instead of one
round trip each, the memory engine has published each one before `publish_nowait` returns.
(Redis without pipelining sends each at its `wait`, hence "waited for in that order". Order
across channels is not promised: channels on different shards never were, and on one Redis a
script the server lost, after its restart, is sent again after the batch's other commands.)

A `PresenceManager` keeps who is in a channel.

Errors:
    EngineError              base: the engine could not do it (becomes error 100 for a client)
    └── UnrecoverablePosition   a `since` epoch does not match the stream (error 112)
"""

from __future__ import annotations

from typing import Protocol

import attrs
import trio

from ..protocol.messages import ClientInfo, Publication, StreamPosition

__all__ = [
    "IDEMPOTENT_RESULT_TTL",
    "READ_CREATED_TTL",
    "Broker",
    "BrokerEventHandler",
    "EngineError",
    "HistoryOptions",
    "HistoryQuery",
    "IssuedPublish",
    "PresenceManager",
    "Published",
    "UnrecoverablePosition",
]


# A stream a read creates (history or a positioned subscribe on a channel nobody published to)
# lives this long at most from that read, whatever `meta_ttl` says, and later reads do not renew
# it: reads must not keep state for a month. Its first publication makes it an ordinary stream.
READ_CREATED_TTL = 3600.0

# How long a publish's result is kept for its idempotency key unless the caller says otherwise
# (centrifuge's default `idempotent_result_ttl`; `[api] idempotent_result_ttl` sets Aether's).
IDEMPOTENT_RESULT_TTL = 300.0


class EngineError(Exception):
    pass


class UnrecoverablePosition(EngineError):
    pass


@attrs.frozen
class HistoryOptions:
    """How a publish treats the channel's stream; size 0 or ttl 0 means no history."""

    size: int = 0
    ttl: float = 0.0
    meta_ttl: float = 30 * 24 * 3600.0

    @property
    def enabled(self) -> bool:
        return self.size > 0 and self.ttl > 0


@attrs.frozen
class HistoryQuery:
    # Without `since`: from the oldest kept publication (newest with `reverse`).
    since: StreamPosition | None = None
    # 0: none, only the stream top; < 0: no limit.
    limit: int = 0
    reverse: bool = False


class IssuedPublish(Protocol):
    """A publish `Broker.publish_nowait` issued."""

    async def wait(self) -> StreamPosition:
        """Its answer, as `Broker.publish` would have returned it, or `EngineError`."""


@attrs.frozen
class Published:
    """An `IssuedPublish` that was done as it was issued (the memory engine's)."""

    position: StreamPosition

    async def wait(self) -> StreamPosition:
        return self.position


class BrokerEventHandler(Protocol):
    def handle_publication(self, channel: str, pub: Publication) -> None: ...
    def handle_join(self, channel: str, info: ClientInfo) -> None: ...
    def handle_leave(self, channel: str, info: ClientInfo) -> None: ...
    def handle_gap(self, channels: list[str]) -> None:
        """Events of `channels` may have been lost (they are subscribed again now)."""


class Broker(Protocol):
    async def run(
        self,
        handler: BrokerEventHandler,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Deliver events to `handler` until cancelled; report readiness through task_status."""

    async def subscribe(self, channel: str) -> None:
        """This node now has subscribers in `channel` and wants its events."""

    async def unsubscribe(self, channel: str) -> None: ...

    async def publish(
        self,
        channel: str,
        pub: Publication,
        history: HistoryOptions,
        *,
        idempotency_key: str = "",
        result_ttl: float = IDEMPOTENT_RESULT_TTL,
    ) -> StreamPosition:
        """Append (when history is on) and deliver; returns the new top (0 without history).
        With `idempotency_key`: if a publish with that key in `channel` returned within
        `result_ttl`, its result is returned and nothing is appended or delivered."""

    def publish_nowait(
        self,
        channel: str,
        pub: Publication,
        history: HistoryOptions,
        *,
        idempotency_key: str = "",
        result_ttl: float = IDEMPOTENT_RESULT_TTL,
    ) -> IssuedPublish:
        """`publish`, issued now and answered by `wait()` on the result (module docstring).
        May raise `EngineError` at once (an engine that knows it cannot publish now)."""

    async def publish_join(self, channel: str, info: ClientInfo) -> None: ...

    async def publish_leave(self, channel: str, info: ClientInfo) -> None: ...

    async def history(
        self, channel: str, query: HistoryQuery, meta_ttl: float
    ) -> tuple[list[Publication], StreamPosition]:
        """Publications matching `query` and the current stream top (created if missing)."""

    async def remove_history(self, channel: str) -> None:
        """Drop the publications but keep the top offset and epoch."""


class PresenceManager(Protocol):
    async def add_presence(self, channel: str, info: ClientInfo) -> None: ...

    async def remove_presence(self, channel: str, client_id: str) -> None: ...

    async def presence(self, channel: str) -> dict[str, ClientInfo]: ...

    async def presence_stats(self, channel: str) -> tuple[int, int]:
        """(number of clients, number of distinct users)."""
