"""The Redis `Broker`: history in a Redis Stream per channel, events over PUB/SUB, and the
engine's lifetime (`run` owns the bridge and the PUB/SUB connection, presence.py shares them).

Delivery differs from the memory engine in one way the contract allows: a publication reaches
the node's handler through the PUB/SUB connection, i.e. after `publish` returns and only on
nodes subscribed to the channel, like every other node's publications (docs/redis.md).
"""

from __future__ import annotations

import logging
import random
import string
import uuid

import trio

from ...config.sections import RedisEngineConfig
from ...protocol.messages import ClientInfo, Publication, StreamPosition
from ..base import (
    IDEMPOTENT_RESULT_TTL,
    READ_CREATED_TTL,
    BrokerEventHandler,
    EngineError,
    HistoryOptions,
    HistoryQuery,
    UnrecoverablePosition,
)
from .client import RedisClient
from .codec import decode_publication, encode_info, encode_publication
from .durability import check_durability
from .pubsub import PubSub
from .scripts import HISTORY, PUBLISH, PUBLISH_ONCE, Keys

__all__ = ["RedisBroker"]

log = logging.getLogger(__name__)


def new_epoch() -> str:
    # Like the memory engine's: opaque to clients, new whenever a stream is (re)created.
    return "".join(random.choices(string.ascii_letters, k=8))


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


class RedisBroker:
    def __init__(self, config: RedisEngineConfig) -> None:
        self.client = RedisClient(config)
        self.keys = Keys(config.prefix, uuid.uuid4().hex)
        self.pubsub = PubSub(self.client, self.keys)

    @property
    def reachable(self) -> bool:
        return self.client.reachable

    async def run(
        self,
        handler: BrokerEventHandler,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Connect (retrying until Redis answers), then deliver events until cancelled."""
        async with self.client.opened(), trio.open_nursery() as nursery:
            await nursery.start(self.pubsub.run, handler)
            await self.pubsub.connected.wait()
            await check_durability(self.client)
            task_status.started()

    def statistics(self) -> dict[str, int]:
        client = self.client
        return {"subscribed_channels": len(self.pubsub.wanted), "pipelines": client.batches,
                "pipelined_commands": client.commands}  # fmt: skip

    # --- Broker ---

    async def subscribe(self, channel: str) -> None:
        await self.pubsub.subscribe(channel)

    async def unsubscribe(self, channel: str) -> None:
        await self.pubsub.unsubscribe(channel)

    async def publish(
        self,
        channel: str,
        pub: Publication,
        history: HistoryOptions,
        *,
        idempotency_key: str = "",
        result_ttl: float = IDEMPOTENT_RESULT_TTL,
    ) -> StreamPosition:
        payload = encode_publication(pub)
        # With a key, the result key and its ttl go last (scripts.py).
        result_keys = (self.keys.result(channel, idempotency_key),) if idempotency_key else ()
        result_args = (_ms(result_ttl),) if idempotency_key else ()
        if not history.enabled:
            message = b"p0:" + payload
            if not idempotency_key:
                await self.client.call("PUBLISH", self.keys.client(channel), message)
                return StreamPosition()
            args = (self.keys.client(channel), message, *result_args)
            offset, epoch = await self.client.script(PUBLISH_ONCE, result_keys, args)
        else:
            keys = (self.keys.stream(channel), self.keys.meta(channel), *result_keys)
            args = (payload, history.size, _ms(history.ttl), self.keys.client(channel),
                    _ms(history.meta_ttl), new_epoch(), *result_args)  # fmt: skip
            offset, epoch = await self.client.script(PUBLISH, keys, args)
        return StreamPosition(int(offset), epoch.decode())

    async def publish_join(self, channel: str, info: ClientInfo) -> None:
        await self.client.call("PUBLISH", self.keys.client(channel), b"j" + encode_info(info))

    async def publish_leave(self, channel: str, info: ClientInfo) -> None:
        await self.client.call("PUBLISH", self.keys.client(channel), b"l" + encode_info(info))

    async def history(
        self, channel: str, query: HistoryQuery, meta_ttl: float
    ) -> tuple[list[Publication], StreamPosition]:
        since, limit = query.since, query.limit
        count = str(limit) if limit > 0 else ""
        if limit == 0 or (since is not None and query.reverse and since.offset == 0):
            command, start, end = "", "", ""  # only the top
        elif query.reverse:
            command, start, end = "XREVRANGE", f"{since.offset - 1}" if since else "+", "-"
        else:
            command, start, end = "XRANGE", f"{since.offset + 1}" if since else "-", "+"
        keys = (self.keys.stream(channel), self.keys.meta(channel))
        read_created_ttl = _ms(min(meta_ttl, READ_CREATED_TTL))
        args = (_ms(meta_ttl), new_epoch(), command, start, end, count, read_created_ttl)
        top, epoch, entries = await self.client.script(HISTORY, keys, args)
        position = StreamPosition(int(top), epoch.decode())
        if since is not None and since.epoch and since.epoch != position.epoch:
            raise UnrecoverablePosition(f"epoch {since.epoch!r} is not the stream's")
        try:
            pubs = [decode_publication(fields[1], int(entry_id.partition(b"-")[0]))
                    for entry_id, fields in entries]  # fmt: skip
        except ValueError as exc:
            raise EngineError(f"history of {channel} holds something that is not Aether's") from exc
        if since is not None and query.reverse and pubs and pubs[0].offset != since.offset - 1:
            pubs = []  # the page would not start right before `since` (as the memory engine)
        return pubs, position

    async def remove_history(self, channel: str) -> None:
        await self.client.call("DEL", self.keys.stream(channel))
