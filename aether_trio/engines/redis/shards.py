"""Shards: the Redis servers a channel can live on, and which one it does.

A channel's publications, history and presence all live on one shard, picked by jump consistent
hashing (Lamping & Veach, "A Fast, Minimal Memory, Consistent Hash Algorithm", 2014) of the
FNV-1a 64-bit hash of its name: the same choice as centrifuge's `consistentIndex`, so a channel
maps to the same shard index as in Centrifugo given the same list, and adding a shard at the end
moves only about 1/n of the channels.

Each shard is a complete single-server engine of its own: a `RedisClient` (pipelining, timeouts,
reachability) on its topology, and a `PubSub` connection with its own probe. The broker is
reachable while every shard is; `/ready` names the ones that are not.
"""

from __future__ import annotations

import trio
import trio_asyncio

from ...config.sections import RedisEngineConfig
from ..base import BrokerEventHandler
from .client import RedisClient
from .durability import check_durability
from .pubsub import PubSub
from .scripts import Keys
from .topology import Topology

__all__ = ["Shard", "fnv1a_64", "jump_hash", "shard_index"]

_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3
_MASK = 0xFFFFFFFFFFFFFFFF


def fnv1a_64(data: bytes) -> int:
    value = _FNV_OFFSET
    for byte in data:
        value = ((value ^ byte) * _FNV_PRIME) & _MASK
    return value


def jump_hash(key: int, buckets: int) -> int:
    """A bucket in [0, buckets) for a 64-bit key; with one more bucket, a key either stays or
    moves to the new one."""
    b, j = -1, 0
    while j < buckets:
        b = j
        key = (key * 2862933555777941757 + 1) & _MASK
        j = int((b + 1) * (float(1 << 31) / float((key >> 33) + 1)))
    return b


def shard_index(channel: str, shards: int) -> int:
    if shards == 1:
        return 0  # no hashing for the common case
    return jump_hash(fnv1a_64(channel.encode()), shards)


class Shard:
    def __init__(
        self, config: RedisEngineConfig, topology: Topology, keys: Keys, number: int, count: int
    ) -> None:
        self.client = RedisClient(config, topology)
        self.pubsub = PubSub(self.client, keys)
        where = topology.name
        self.name = f"shard {number + 1} of {count} ({where})" if count > 1 else where

    @property
    def reachable(self) -> bool:
        return self.client.reachable

    async def run(
        self,
        loop: trio_asyncio.TrioEventLoop,
        handler: BrokerEventHandler,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Connect (retrying until the shard answers), then deliver its events until cancelled."""
        async with self.client.opened(loop), trio.open_nursery() as nursery:
            await nursery.start(self.pubsub.run, handler)
            await self.pubsub.connected.wait()
            await check_durability(self.client)
            task_status.started()
