"""The Redis `PresenceManager`: who is in a channel, across every node sharing the Redis.

Per channel (docs/redis.md): a hash client -> encoded ClientInfo, a sorted set client ->
expire-at, and a hash user -> number of the user's clients present, all three kept by Lua
scripts, so `presence_stats` is two HLENs whatever the channel's size.

Entries expire unless refreshed: `add_presence` sets expire-at to now + `presence_ttl`, and the
connection layer adds every presence entry of a live connection again every
`[client] presence_update_interval`, as centrifuge's client does (`updatePresence`). Expired
entries are pruned when the channel's presence is read; the keys themselves expire
`presence_ttl` after the last add, when every node that had someone there is gone.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ...protocol.messages import ClientInfo
from .broker import RedisBroker
from .client import RedisClient
from .codec import CodecError, decode_info, encode_info
from .scripts import PRESENCE_ADD, PRESENCE_GET, PRESENCE_REMOVE, PRESENCE_STATS

__all__ = ["RedisPresenceManager"]


class RedisPresenceManager:
    def __init__(self, broker: RedisBroker, clock: Callable[[], float] = time.time) -> None:
        # The broker's shards: the broker's `run` keeps them (the node runs the broker). A
        # channel's presence lives on the shard of its publications.
        self._broker = broker
        self._keys = broker.keys
        # Wall-clock seconds, the same on every node (expire-at scores are compared across
        # nodes); tests move it with the TTLs in Redis.
        self.clock = clock

    @property
    def reachable(self) -> bool:
        return self._broker.reachable

    @property
    def unreachable(self) -> list[str]:
        return self._broker.unreachable

    def _client(self, channel: str) -> RedisClient:
        return self._broker.shard(channel).client

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    async def add_presence(self, channel: str, info: ClientInfo) -> None:
        client = self._client(channel)
        ttl = client.config.presence_ttl
        ttl_ms = max(1, round(ttl * 1000))
        args = (info.client, encode_info(info), info.user, self._now_ms() + ttl_ms, ttl_ms)
        await client.script(PRESENCE_ADD, self._keys.presence(channel), args)

    async def remove_presence(self, channel: str, client_id: str) -> None:
        await self._client(channel).script(
            PRESENCE_REMOVE, self._keys.presence(channel), (client_id,)
        )

    async def presence(self, channel: str) -> dict[str, ClientInfo]:
        flat = await self._client(channel).script(
            PRESENCE_GET, self._keys.presence(channel), (self._now_ms(),)
        )
        found = {}
        for i in range(0, len(flat), 2):
            try:
                found[flat[i].decode()] = decode_info(flat[i + 1])
            except CodecError:
                continue  # not Aether's: nothing a client could use
        return found

    async def presence_stats(self, channel: str) -> tuple[int, int]:
        clients, users = await self._client(channel).script(
            PRESENCE_STATS, self._keys.presence(channel), (self._now_ms(),)
        )
        return int(clients), int(users)
