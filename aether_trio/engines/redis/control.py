"""The Redis control plane and cluster-wide state (engines/control.py's protocols; docs/redis.md).

Control messages go over PUB/SUB, as centrifuge's: `P.control` to every node, `P.node.<id>` to
one. Both are subscribed on the broker's PUB/SUB connection (`PubSub.raw`), so they share its
probe, reconnection and ordering; a message published while a node's connection is down is lost
for that node (the core repeats heartbeats and re-reads the shared state). A message is
`<sender id>|<body>`; a node drops its own broadcasts, and anything without a well-formed sender
is logged and ignored.

Shared state: each table is a HASH `P.state.<table>` (entries carry their own expiry, judged by
the reader: a ban can be permanent, so the hash has no TTL); each user's connections are a ZSET
`P.conns.<user>` of client id -> expire-at (ms), pruned and counted by one Lua script so two
nodes admitting the same user at once cannot both pass the limit.
"""

from __future__ import annotations

import logging
import re
import time

import trio

from ..base import EngineError
from ..control import ControlHandler
from .broker import RedisBroker
from .scripts import Script

__all__ = ["RedisControl", "RedisSharedState"]

log = logging.getLogger(__name__)

_SENDER = re.compile(rb"[0-9a-f]{32}")
# Entries renewed by one script call at most (a node with 100k connections sends 200 calls).
REFRESH_CHUNK = 500

# KEYS[1] the user's ZSET. ARGV now (ms), client id, limit (0: none), ttl (ms).
# -1 when counted, else the number of live connections that made the limit refuse it.
ADD_CONNECTION = Script(
    "add_connection",
    """
redis.call("zremrangebyscore", KEYS[1], "-inf", ARGV[1])
local limit = tonumber(ARGV[3])
if limit > 0 and not redis.call("zscore", KEYS[1], ARGV[2]) then
  local n = redis.call("zcard", KEYS[1])
  if n >= limit then return n end
end
redis.call("zadd", KEYS[1], tonumber(ARGV[1]) + tonumber(ARGV[4]), ARGV[2])
redis.call("pexpire", KEYS[1], ARGV[4])
return -1
""",
)

# KEYS the users' ZSETs; ARGV expire-at (ms), ttl (ms), then one client id per key.
REFRESH_CONNECTIONS = Script(
    "refresh_connections",
    """
for i, key in ipairs(KEYS) do
  redis.call("zadd", key, ARGV[1], ARGV[i + 2])
  redis.call("pexpire", key, ARGV[2])
end
return #KEYS
""",
)


class RedisControl:
    def __init__(self, broker: RedisBroker, node_id: str) -> None:
        self._client = broker.client
        self._id = node_id
        prefix = broker.client.config.prefix
        self.channel = f"{prefix}.control"
        self._node_prefix = f"{prefix}.node."
        self._handler: ControlHandler | None = None
        pubsub = broker.pubsub
        pubsub.raw[self.channel.encode()] = self._take
        pubsub.raw[self.node_channel(node_id).encode()] = self._take
        self.rejected = 0

    @property
    def node_id(self) -> str:
        return self._id

    def node_channel(self, node_id: str) -> str:
        return self._node_prefix + node_id

    async def run(
        self,
        handler: ControlHandler,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Messages go to `handler` from now on (the broker's run owns the connection)."""
        self._handler = handler
        try:
            task_status.started()
            await trio.sleep_forever()
        finally:
            self._handler = None

    def _take(self, data: bytes) -> None:
        sender, sep, body = data.partition(b"|")
        if not sep or not _SENDER.fullmatch(sender):
            self.rejected += 1
            if self.rejected == 1 or self.rejected % 1000 == 0:  # a flood must not flood the log
                log.warning("ignored a control message that is not Aether's (%d bytes; %d so far)",
                            len(data), self.rejected)  # fmt: skip
            return
        if self._handler is not None and sender.decode() != self._id:
            self._handler.handle_control(sender.decode(), body)

    async def broadcast(self, message: bytes) -> None:
        await self._client.call("PUBLISH", self.channel, self._id.encode() + b"|" + message)

    async def send(self, node_id: str, message: bytes) -> None:
        payload = self._id.encode() + b"|" + message
        await self._client.call("PUBLISH", self.node_channel(node_id), payload)


class RedisSharedState:
    def __init__(self, broker: RedisBroker) -> None:
        self._client = broker.client
        self._prefix = broker.client.config.prefix
        for script in (ADD_CONNECTION, REFRESH_CONNECTIONS):
            self._client.register(script)

    def _table(self, table: str) -> str:
        return f"{self._prefix}.state.{table}"

    def _user(self, user: str) -> str:
        return f"{self._prefix}.conns.{user}"

    async def put(self, table: str, key: str, value: bytes) -> None:
        await self._client.call("HSET", self._table(table), key, value)

    async def delete(self, table: str, key: str) -> None:
        await self._client.call("HDEL", self._table(table), key)

    async def load(self, table: str) -> dict[str, bytes]:
        found = await self._client.call("HGETALL", self._table(table))
        try:
            return {key.decode(): value for key, value in found.items()}
        except UnicodeDecodeError as exc:  # a key Aether never wrote
            raise EngineError(f"shared table {table} holds a key that is not Aether's") from exc

    async def add_connection(self, user: str, client_id: str, limit: int, ttl: float) -> int | None:
        now = int(time.time() * 1000)
        args = (now, client_id, limit, _ms(ttl))
        found = await self._client.script(ADD_CONNECTION, (self._user(user),), args)
        return None if found < 0 else int(found)

    async def remove_connection(self, user: str, client_id: str) -> None:
        await self._client.call("ZREM", self._user(user), client_id)

    async def refresh_connections(self, entries: list[tuple[str, str]], ttl: float) -> None:
        expire_at = int(time.time() * 1000) + _ms(ttl)
        for start in range(0, len(entries), REFRESH_CHUNK):
            chunk = entries[start : start + REFRESH_CHUNK]
            keys = [self._user(user) for user, _ in chunk]
            clients = [client_id for _, client_id in chunk]
            await self._client.script(REFRESH_CONNECTIONS, keys, (expire_at, _ms(ttl), *clients))


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))
