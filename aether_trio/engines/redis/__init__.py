"""The Redis engine: history, PUB/SUB and presence shared by every node using one Redis, on
redis-py's asyncio client bridged into Trio by trio-asyncio (docs/redis.md).

    client.py      the bridge (trio-asyncio), timeouts and errors, automatic pipelining
    pubsub.py      the PUB/SUB connection: subscriptions, reader, probe, reconnection, gaps
    broker.py      `RedisBroker`: publish + history (Lua), the engine's `run`
    presence.py    `RedisPresenceManager`: presence with TTLs and per-user counts (Lua)
    scripts.py     key names and the Lua scripts
    codec.py       the compact encoding of publications and client infos
    durability.py  the start-up check of Redis's eviction policy and persistence
    control.py     the control plane (node-to-node messages) and the cluster-wide state
"""

import uuid

from ...config.sections import RedisEngineConfig
from .broker import RedisBroker as RedisBroker
from .control import RedisControl as RedisControl
from .control import RedisSharedState as RedisSharedState
from .presence import RedisPresenceManager as RedisPresenceManager

__all__ = [
    "RedisBroker",
    "RedisControl",
    "RedisPresenceManager",
    "RedisSharedState",
    "open_redis_cluster",
    "open_redis_engine",
]


def open_redis_engine(config: RedisEngineConfig) -> tuple[RedisBroker, RedisPresenceManager]:
    """A broker and a presence manager sharing one connection (the node runs the broker)."""
    broker = RedisBroker(config)
    return broker, RedisPresenceManager(broker)


def open_redis_cluster(broker: RedisBroker) -> tuple[RedisControl, RedisSharedState]:
    """The control plane and the shared state, on `broker`'s connections (its run owns them)."""
    return RedisControl(broker, uuid.uuid4().hex), RedisSharedState(broker)
