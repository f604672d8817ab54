"""Key names and the Lua scripts of the Redis engine (docs/redis.md describes the layout).

The history scripts follow centrifuge's `broker_history_add_stream.lua`,
`broker_publish_idempotent.lua` and `broker_history_stream.lua`, the presence scripts its
`presence_*.lua` (github.com/centrifugal/centrifuge, internal/redis_lua, MIT licence,
Copyright (c) 2016 Alexander Emelin), adapted: the offset is the stream entry's id `<offset>-0`,
TTLs are in milliseconds, and the per-user counts are kept exact (an expired client is taken off
its user's count when it is pruned).

Each script runs atomically in Redis: that is what makes "append, then publish" one step (two
nodes publishing at once never get the same offset, and no subscriber sees a publication live
before it is in history). The same step checks and stores a publish's idempotency result, so a
retried publish is applied once whichever node it goes through.
"""

from __future__ import annotations

import hashlib
import random
import string

import attrs

__all__ = ["ALL_SCRIPTS", "CHECK_TOP", "HISTORY", "PRESENCE_ADD", "PRESENCE_GET",
           "PRESENCE_REMOVE", "PRESENCE_STATS", "PUBLISH", "PUBLISH_ONCE", "PUBLISH_VIA", "Keys",
           "Script", "new_epoch"]  # fmt: skip


def new_epoch() -> str:
    # Like the memory engine's: opaque to clients, new whenever a stream is (re)created.
    return "".join(random.choices(string.ascii_letters, k=8))


@attrs.frozen
class Script:
    name: str
    source: str
    sha: str = attrs.field(init=False)

    @sha.default
    def _sha(self) -> str:
        return hashlib.sha1(self.source.encode()).hexdigest()


class Keys:
    """Every name the engine uses in Redis, under one prefix (`[engine.redis] prefix`).

    With a Redis Cluster (`cluster`) the channel in key names is a hash tag, `{<ch>}`: the
    stream, meta and presence keys of a channel then share a slot, as a Lua script needs (Redis
    hashes only what is between the first `{` and the next `}`, the same part of every key of
    one channel). PUB/SUB channel names are not keys and stay as they are.
    """

    def __init__(self, prefix: str, node_id: str, *, cluster: bool = False) -> None:
        self.prefix = prefix
        self.cluster = cluster
        self.client_prefix = f"{prefix}.client."
        # This engine's own PUB/SUB channel: its probes come back through it.
        self.probe = f"{prefix}.probe.{node_id}"

    def _tag(self, channel: str) -> str:
        return f"{{{channel}}}" if self.cluster else channel

    def client(self, channel: str) -> str:
        return self.client_prefix + channel

    def stream(self, channel: str) -> str:
        return f"{self.prefix}.stream.{self._tag(channel)}"

    def meta(self, channel: str) -> str:
        return f"{self.prefix}.meta.{self._tag(channel)}"

    def result(self, channel: str, idempotency_key: str) -> str:
        """The idempotency result of a publish. Unlike centrifuge's `P.result.<ch>.<key>` the
        channel's length leads, so channel "a.b" with key "c" and channel "a" with key "b.c"
        cannot share a result (each would be answered with the other's position). In a Redis
        Cluster the channel is the hash tag, as in the stream's keys: the publish script takes
        this key too."""
        return f"{self.prefix}.result.{len(channel)}.{self._tag(channel)}.{idempotency_key}"

    def presence(self, channel: str) -> tuple[str, str, str]:
        """The data hash, the expiry zset and the per-user hash of `channel`."""
        p, ch = self.prefix, self._tag(channel)
        return (f"{p}.presence.data.{ch}", f"{p}.presence.expire.{ch}",
                f"{p}.presence.users.{ch}")  # fmt: skip


# Shared by the publish scripts: an idempotency result is a hash {s = offset, e = epoch} with
# the result ttl; `stored_result` gives it as the publish script's answer, or nil.
_RESULT_HELPERS = """
local function stored_result(key)
  local found = redis.call("hmget", key, "s", "e")
  if found[1] then
    return {tonumber(found[1]), found[2]}
  end
  return nil
end
local function store_result(key, ttl, offset, epoch)
  redis.call("hset", key, "s", offset, "e", epoch)
  redis.call("pexpire", key, ttl)
end
"""

# KEYS stream, meta[, result]. ARGV payload, size, stream ttl (ms), PUB/SUB channel, meta ttl
# (ms), epoch if new[, result ttl (ms)]. Returns {offset, epoch}. With the result key (an
# idempotency key): a result stored there is returned at once, nothing appended or published;
# otherwise this publish's result is stored there.
PUBLISH = Script(
    "publish",
    _RESULT_HELPERS
    + """
local idempotent = #KEYS == 3
if idempotent then
  local found = stored_result(KEYS[3])
  if found then
    return found
  end
end
local epoch = redis.call("hget", KEYS[2], "e")
if not epoch then
  epoch = ARGV[6]
  redis.call("hset", KEYS[2], "e", epoch)
end
local offset = redis.call("hincrby", KEYS[2], "s", 1)
redis.call("hdel", KEYS[2], "r")  -- a stream a read created is an ordinary one from now on
redis.call("pexpire", KEYS[2], ARGV[5])
if offset == 1 then
  -- A new epoch: a stream that outlived its meta must not keep older entries (or larger ids).
  redis.call("del", KEYS[1])
end
redis.call("xadd", KEYS[1], "MAXLEN", ARGV[2], offset .. "-0", "d", ARGV[1])
redis.call("pexpire", KEYS[1], ARGV[3])
redis.call("publish", ARGV[4], "p" .. offset .. ":" .. ARGV[1])
if idempotent then
  store_result(KEYS[3], ARGV[7], offset, epoch)
end
return {offset, epoch}
""",
)

# A publish without history but with an idempotency key. KEYS result. ARGV PUB/SUB channel,
# message, result ttl (ms). Returns {offset, epoch}: {0, ""}, as the first publish returned.
PUBLISH_ONCE = Script(
    "publish_once",
    _RESULT_HELPERS
    + """
local found = stored_result(KEYS[1])
if found then
  return found
end
redis.call("publish", ARGV[1], ARGV[2])
store_result(KEYS[1], ARGV[3], 0, "")
return {0, ""}
""",
)

# KEYS stream, meta. ARGV meta ttl (ms), epoch if new, "" (only the top) or the range command
# ("xrange"/"xrevrange"), its start and end, a count ("" for all), the ttl (ms) of a meta this
# read creates. Returns {top, epoch, entries}. A meta a read creates is marked `r`: it lives that
# shorter ttl from its creation and reads do not renew it (reads must not keep state for the
# whole meta ttl); the first publish clears the mark.
HISTORY = Script(
    "history",
    """
local meta = redis.call("hmget", KEYS[2], "e", "s", "r")
local epoch, top, read_created = meta[1], meta[2], meta[3]
if not epoch then
  epoch, top = ARGV[2], 0
  redis.call("hset", KEYS[2], "e", epoch, "s", 0, "r", 1)
  redis.call("del", KEYS[1])
  redis.call("pexpire", KEYS[2], ARGV[7])
elseif not read_created then
  redis.call("pexpire", KEYS[2], ARGV[1])
end
local entries = {}
if ARGV[3] ~= "" then
  if ARGV[6] ~= "" then
    entries = redis.call(ARGV[3], KEYS[1], ARGV[4], ARGV[5], "COUNT", ARGV[6])
  else
    entries = redis.call(ARGV[3], KEYS[1], ARGV[4], ARGV[5])
  end
end
return {tonumber(top), epoch, entries}
""",
)

# KEYS meta. ARGV the highest offset this node delivered, an epoch. Returns 1 when the stream's
# top is below that offset and its epoch was replaced: the server lost publications that were
# delivered (a promoted replica that lacked them, a restart from an older snapshot), so the
# positions clients hold in the old epoch are not to be trusted (pubsub.py).
CHECK_TOP = Script(
    "check_top",
    """
local top = redis.call("hget", KEYS[1], "s")
if top and tonumber(top) < tonumber(ARGV[1]) then
  redis.call("hset", KEYS[1], "e", ARGV[2])
  return 1
end
return 0
""",
)

# KEYS a key of the slot whose master must send it (Redis Cluster). ARGV PUB/SUB channel,
# message. A plain PUBLISH through redis-py's cluster client goes to any node, and messages that
# reach a subscriber through different nodes' bus links can overtake each other: a channel's
# joins, leaves and publications without history all go through its slot's master, like the
# publish script, so they stay in order (scripts.Keys.meta gives the key; probes use one key
# per master).
PUBLISH_VIA = Script("publish_via", 'return redis.call("publish", ARGV[1], ARGV[2])\n')

# Shared by the presence scripts. KEYS data, expire, users. An entry's value is the engine's
# encoding of a ClientInfo, whose first part is the user (codec.py).
_PRESENCE_HELPERS = """
local function user_of(value)
  local head = string.find(value, ";", 1, true)
  local comma = string.find(value, ",", 1, true)
  local n = tonumber(string.sub(value, 1, comma - 1))
  return string.sub(value, head + 1, head + n)
end
local function forget(client)
  local value = redis.call("hget", KEYS[1], client)
  if value then
    redis.call("hdel", KEYS[1], client)
    local user = user_of(value)
    if redis.call("hincrby", KEYS[3], user, -1) <= 0 then
      redis.call("hdel", KEYS[3], user)
    end
  end
  redis.call("zrem", KEYS[2], client)
end
local function prune(now)
  for _, client in ipairs(redis.call("zrangebyscore", KEYS[2], "-inf", now)) do
    forget(client)
  end
end
"""

# ARGV client, value, user, expire at (ms), key ttl (ms).
PRESENCE_ADD = Script(
    "presence_add",
    _PRESENCE_HELPERS
    + """
local old = redis.call("hget", KEYS[1], ARGV[1])
if old and user_of(old) ~= ARGV[3] then
  forget(ARGV[1])
  old = false
end
if not old then
  redis.call("hincrby", KEYS[3], ARGV[3], 1)
end
redis.call("hset", KEYS[1], ARGV[1], ARGV[2])
redis.call("zadd", KEYS[2], ARGV[4], ARGV[1])
for i = 1, 3 do
  redis.call("pexpire", KEYS[i], ARGV[5])
end
""",
)

# ARGV client.
PRESENCE_REMOVE = Script("presence_remove", _PRESENCE_HELPERS + "\nforget(ARGV[1])\n")

# ARGV now (ms). Returns the data hash as a flat list.
PRESENCE_GET = Script(
    "presence_get", _PRESENCE_HELPERS + '\nprune(ARGV[1])\nreturn redis.call("hgetall", KEYS[1])\n'
)

# ARGV now (ms). Returns {clients, users}: two HLENs, whatever the channel's size.
PRESENCE_STATS = Script(
    "presence_stats",
    _PRESENCE_HELPERS
    + '\nprune(ARGV[1])\nreturn {redis.call("hlen", KEYS[1]), redis.call("hlen", KEYS[3])}\n',
)

ALL_SCRIPTS = (
    PUBLISH,
    PUBLISH_ONCE,
    HISTORY,
    CHECK_TOP,
    PUBLISH_VIA,
    PRESENCE_ADD,
    PRESENCE_REMOVE,
    PRESENCE_GET,
    PRESENCE_STATS,
)
