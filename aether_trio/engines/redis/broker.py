"""The Redis `Broker`: history in a Redis Stream per channel, events over PUB/SUB, and the
engine's lifetime (`run` owns the bridge and every shard's client and PUB/SUB connection,
presence.py shares them). A channel lives on one shard (shards.py); with a single Redis, a
Sentinel-managed master or a Redis Cluster there is one shard.

Delivery differs from the memory engine in one way the contract allows: a publication reaches
the node's handler through the PUB/SUB connection, i.e. after `publish` returns and only on
nodes subscribed to the channel, like every other node's publications (docs/redis.md).
"""

from __future__ import annotations

import logging
import uuid

import trio
import trio_asyncio

from ...config.sections import RedisEngineConfig
from ...protocol.messages import ClientInfo, Publication, StreamPosition
from ..base import (
    IDEMPOTENT_RESULT_TTL,
    READ_CREATED_TTL,
    BrokerEventHandler,
    EngineError,
    HistoryOptions,
    HistoryQuery,
    IssuedPublish,
    UnrecoverablePosition,
)
from .client import Issued
from .codec import decode_publication, encode_info, encode_publication
from .scripts import HISTORY, PUBLISH, PUBLISH_ONCE, Keys, new_epoch
from .shards import Shard, shard_index
from .topology import topologies

__all__ = ["RedisBroker"]

log = logging.getLogger(__name__)


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


class _Position:
    """An issued publish's answer as a stream position: a script's (offset, epoch), or none for
    a plain PUBLISH (no history, no idempotency key)."""

    __slots__ = ("_issued", "_scripted")

    def __init__(self, issued: Issued, *, scripted: bool = False) -> None:
        self._issued = issued
        self._scripted = scripted

    async def wait(self) -> StreamPosition:
        answer = await self._issued.wait()
        if not self._scripted:
            return StreamPosition()
        offset, epoch = answer
        return StreamPosition(int(offset), epoch.decode())


class RedisBroker:
    def __init__(self, config: RedisEngineConfig) -> None:
        found = topologies(config)
        self.keys = Keys(config.prefix, uuid.uuid4().hex, cluster=found[0].cluster)
        self.shards = [Shard(config, topology, self.keys, i, len(found))
                       for i, topology in enumerate(found)]  # fmt: skip
        # The first shard's: what is not about one channel (probes in tests, benchmarks).
        self.client = self.shards[0].client
        self.pubsub = self.shards[0].pubsub

    def shard(self, channel: str) -> Shard:
        """The shard `channel` lives on: its publications, history and presence."""
        return self.shards[shard_index(channel, len(self.shards))]

    @property
    def reachable(self) -> bool:
        return all(shard.reachable for shard in self.shards)

    @property
    def unreachable(self) -> list[str]:
        """The shards that are unreachable or not proven yet (for `/ready`'s details)."""
        return [shard.name for shard in self.shards if not shard.reachable]

    async def run(
        self,
        handler: BrokerEventHandler,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Connect every shard (retrying until each answers), then deliver events until
        cancelled. One asyncio loop serves every shard."""
        async with trio_asyncio.open_loop() as loop, trio.open_nursery() as nursery:
            async with trio.open_nursery() as starting:
                for shard in self.shards:
                    starting.start_soon(nursery.start, shard.run, loop, handler)
            task_status.started()

    async def probe(self) -> None:
        """Return once everything published before has been delivered, on every shard."""
        async with trio.open_nursery() as nursery:
            for shard in self.shards:
                nursery.start_soon(shard.pubsub.probe)

    def statistics(self) -> dict[str, int]:
        shards = self.shards
        return {"subscribed_channels": sum(len(s.pubsub.wanted) for s in shards),
                "pipelines": sum(s.client.batches for s in shards),
                "pipelined_commands": sum(s.client.commands for s in shards)}  # fmt: skip

    # --- Broker ---

    async def subscribe(self, channel: str) -> None:
        await self.shard(channel).pubsub.subscribe(channel)

    async def unsubscribe(self, channel: str) -> None:
        await self.shard(channel).pubsub.unsubscribe(channel)

    async def publish(
        self,
        channel: str,
        pub: Publication,
        history: HistoryOptions,
        *,
        idempotency_key: str = "",
        result_ttl: float = IDEMPOTENT_RESULT_TTL,
    ) -> StreamPosition:
        issued = self.publish_nowait(
            channel, pub, history, idempotency_key=idempotency_key, result_ttl=result_ttl
        )
        return await issued.wait()

    def publish_nowait(
        self,
        channel: str,
        pub: Publication,
        history: HistoryOptions,
        *,
        idempotency_key: str = "",
        result_ttl: float = IDEMPOTENT_RESULT_TTL,
    ) -> IssuedPublish:
        # One command on the channel's shard: queued in issue order behind that client's earlier
        # commands, so a channel's publications issued in a row run (and number) in that order.
        client = self.shard(channel).client
        payload = encode_publication(pub)
        # With a key, the result key and its ttl go last (scripts.py).
        result_keys = (self.keys.result(channel, idempotency_key),) if idempotency_key else ()
        result_args = (_ms(result_ttl),) if idempotency_key else ()
        if not history.enabled:
            message = b"p0:" + payload
            if not idempotency_key:
                route = self.keys.meta(channel)
                return _Position(client.publish_nowait(self.keys.client(channel), message, route))
            args = (self.keys.client(channel), message, *result_args)
            return _Position(client.script_nowait(PUBLISH_ONCE, result_keys, args), scripted=True)
        keys = (self.keys.stream(channel), self.keys.meta(channel), *result_keys)
        args = (payload, history.size, _ms(history.ttl), self.keys.client(channel),
                _ms(history.meta_ttl), new_epoch(), *result_args)  # fmt: skip
        return _Position(client.script_nowait(PUBLISH, keys, args), scripted=True)

    async def publish_join(self, channel: str, info: ClientInfo) -> None:
        client = self.shard(channel).client
        message = b"j" + encode_info(info)
        await client.publish(self.keys.client(channel), message, self.keys.meta(channel))

    async def publish_leave(self, channel: str, info: ClientInfo) -> None:
        client = self.shard(channel).client
        message = b"l" + encode_info(info)
        await client.publish(self.keys.client(channel), message, self.keys.meta(channel))

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
        top, epoch, entries = await self.shard(channel).client.script(HISTORY, keys, args)
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
        await self.shard(channel).client.call("DEL", self.keys.stream(channel))
