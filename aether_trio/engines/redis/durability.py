"""What the Redis server's configuration means for history: read at start, warned about.

Recovery is only as good as Redis's durability (centrifuge #664, #888): trustworthy when Redis
loses everything (a new epoch makes clients start over) or nothing. An `allkeys-*` eviction
policy can drop a stream or its meta at any time; without persistence a restart loses history.
"""

from __future__ import annotations

import logging

from ..base import EngineError
from .client import RedisClient

__all__ = ["check_durability", "durability_warnings"]

log = logging.getLogger(__name__)

SAFE_POLICIES = frozenset({"noeviction", "volatile-lru", "volatile-lfu", "volatile-random",
                           "volatile-ttl"})  # fmt: skip


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def durability_warnings(config: dict[str, str]) -> list[str]:
    """Warnings for a `CONFIG GET` answer (maxmemory-policy, appendonly, appendfsync, save)."""
    found = []
    policy = config.get("maxmemory-policy")
    if policy is not None and policy not in SAFE_POLICIES:
        found.append(f"maxmemory-policy is {policy}: Redis may evict history and presence; "
                     "use noeviction or a volatile-* policy")  # fmt: skip
    aof, save = config.get("appendonly"), config.get("save")
    if aof == "no" and save == "":
        found.append("neither AOF nor RDB persistence is on: a Redis restart loses all history "
                     "(clients then see a new epoch)")  # fmt: skip
    elif aof == "yes" and config.get("appendfsync") != "always":
        fsync = config.get("appendfsync")
        found.append(f"appendfsync is {fsync}: a crash can lose the last publications while "
                     "offsets go on (recovery may miss them silently)")  # fmt: skip
    elif aof == "no":
        found.append("only RDB snapshots: a crash loses what was published since the last one "
                     "while offsets may go on")  # fmt: skip
    return found


async def check_durability(client: RedisClient) -> list[str]:
    """Log a warning for each way the server's settings can lose history. A server that refuses
    CONFIG (managed Redis often renames it) is noted and accepted."""
    config: dict[str, str] = {}
    try:
        for name in ("maxmemory-policy", "appendonly", "appendfsync", "save"):
            answer = await client.call("CONFIG", "GET", name, check=False)
            # A dict through redis-py's reply callback, a flat list without it.
            if isinstance(answer, dict):
                answer = [item for pair in answer.items() for item in pair]
            pairs = zip(answer[::2], answer[1::2], strict=True)
            config.update((_text(key), _text(value)) for key, value in pairs)
    except EngineError as exc:
        log.info("could not read the redis configuration (%s): durability not checked", exc)
        return []
    warnings = durability_warnings(config)
    for warning in warnings:
        log.warning("redis: %s", warning)
    return warnings
