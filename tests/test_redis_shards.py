"""The Redis engine sharded over two private redis-servers: which shard a channel lives on, and
that publications, history and presence work across both, and that one shard stopped makes the
engine (and `/ready`) name it while the channels on the other shard go on working.
"""

from __future__ import annotations

import collections
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import trio
from conftest import make_config, open_raw, serve_in, token, ws_url
from redis_server import RedisServer, new_prefix, running_redis
from test_engines import RecordingHandler

from aether_trio.config import RedisEngineConfig
from aether_trio.engines.base import EngineError, HistoryOptions, HistoryQuery
from aether_trio.engines.redis import RedisBroker, RedisPresenceManager, open_redis_engine
from aether_trio.engines.redis.shards import fnv1a_64, jump_hash, shard_index
from aether_trio.engines.redis.topology import public_name, with_host
from aether_trio.protocol.messages import ClientInfo, Publication, RawJSON

HISTORY = HistoryOptions(size=100, ttl=3600, meta_ttl=86400)
CHANNELS = [f"room-{n}" for n in range(40)]


# --- the hash (no Redis) --------------------------------------------------------------------


def test_fnv1a_64_known_values() -> None:
    assert fnv1a_64(b"") == 0xCBF29CE484222325
    assert fnv1a_64(b"a") == 0xAF63DC4C8601EC8C
    assert fnv1a_64(b"foobar") == 0x85944171F73967E8


@pytest.mark.parametrize(
    ("key", "buckets", "bucket"),
    # The reference vectors of go-jump (github.com/dgryski/go-jump), which centrifuge adapted.
    [(1, 1, 0), (42, 57, 43), (0xDEAD10CC, 1, 0), (0xDEAD10CC, 666, 361), (256, 1024, 520)],
)
def test_jump_hash_matches_the_reference(key: int, buckets: int, bucket: int) -> None:
    assert jump_hash(key, buckets) == bucket


def test_a_new_shard_takes_channels_only_for_itself_and_about_its_share() -> None:
    names = [f"channel-{n}" for n in range(10_000)]
    before = {name: shard_index(name, 4) for name in names}
    after = {name: shard_index(name, 5) for name in names}
    moved = [name for name in names if before[name] != after[name]]
    assert all(after[name] == 4 for name in moved)  # only to the new shard
    assert 1500 < len(moved) < 2500  # about a fifth
    spread = collections.Counter(before.values())
    assert set(spread) == {0, 1, 2, 3}
    assert all(2200 < count < 2800 for count in spread.values())


def test_public_names_never_show_credentials() -> None:
    assert public_name("redis://user:secret@10.0.0.1:6380/2") == "10.0.0.1:6380"
    assert public_name("rediss://:secret@example.com/0") == "example.com:6379"
    assert public_name("unix:///run/redis.sock?db=1") == "/run/redis.sock"
    moved = with_host("rediss://user:secret@old:6379/3", "10.0.0.9", 6390)
    assert moved == "rediss://user:secret@10.0.0.9:6390/3"
    assert with_host("redis://old:6379/0", "new", 1) == "redis://new:1/0"


# --- two shards -----------------------------------------------------------------------------


@pytest.fixture
def two_servers() -> Iterator[tuple[RedisServer, RedisServer]]:
    with running_redis() as first, running_redis() as second:
        yield first, second


@asynccontextmanager
async def sharded(
    servers: tuple[RedisServer, ...], prefix: str, **options: Any
) -> AsyncIterator[tuple[RedisBroker, RedisPresenceManager, RecordingHandler]]:
    config = RedisEngineConfig(addresses=tuple(s.address for s in servers), prefix=prefix,
                               **options)  # fmt: skip
    broker, presence = open_redis_engine(config)
    handler = RecordingHandler()
    async with trio.open_nursery() as nursery:
        await nursery.start(broker.run, handler)
        yield broker, presence, handler
        nursery.cancel_scope.cancel()


def pub(n: int) -> Publication:
    return Publication(RawJSON(b'{"n":%d}' % n))


async def test_channels_spread_over_both_shards_with_their_history_and_presence(
    two_servers: tuple[RedisServer, RedisServer],
) -> None:
    prefix = new_prefix()
    async with sharded(two_servers, prefix) as (broker, presence, handler):
        assert len(broker.shards) == 2
        for channel in CHANNELS:
            await broker.subscribe(channel)
        for n, channel in enumerate(CHANNELS):
            await broker.publish(channel, pub(n), HISTORY)
            await presence.add_presence(channel, ClientInfo("u", f"c{n}"))
        await broker.probe()

        # Every channel's stream and presence are on the shard the hash names, and only there.
        placed = {0: [], 1: []}  # type: dict[int, list[str]]
        for channel in CHANNELS:
            index = shard_index(channel, 2)
            placed[index].append(channel)
            here, there = two_servers[index], two_servers[1 - index]
            for key in (broker.keys.stream(channel), *broker.keys.presence(channel)):
                assert here.command("EXISTS", key) == 1
                assert there.command("EXISTS", key) == 0
        assert len(placed[0]) >= 10, placed
        assert len(placed[1]) >= 10, placed

        # Every publication came back through its shard's PUB/SUB connection.
        for n, channel in enumerate(CHANNELS):
            assert handler.publications(channel) == [Publication(pub(n).data, None, 1, None)]
            pubs, top = await broker.history(channel, HistoryQuery(limit=-1), 86400)
            assert [p.offset for p in pubs] == [1]
            assert top.offset == 1
            assert await presence.presence_stats(channel) == (1, 1)
            assert set(await presence.presence(channel)) == {f"c{n}"}
        stats = broker.statistics()
        assert stats["subscribed_channels"] == len(CHANNELS)
        assert broker.reachable
        assert broker.unreachable == []


async def test_a_stopped_shard_is_named_while_the_other_shard_works(
    two_servers: tuple[RedisServer, RedisServer],
) -> None:
    _first, second = two_servers
    on_first = next(c for c in CHANNELS if shard_index(c, 2) == 0)
    on_second = next(c for c in CHANNELS if shard_index(c, 2) == 1)
    async with sharded(two_servers, new_prefix(), probe_interval=0.2, io_timeout=1.0) as (
        broker, presence, handler,
    ):  # fmt: skip
        await broker.subscribe(on_first)
        await broker.subscribe(on_second)
        second.stop()
        with trio.fail_after(10):
            while broker.reachable:  # noqa: ASYNC110  (the prober finds out: poll)
                await trio.sleep(0.05)
        assert broker.unreachable == [f"shard 2 of 2 (127.0.0.1:{second.port})"]
        assert presence.unreachable == broker.unreachable
        assert not presence.reachable

        # The channels of the first shard go on working...
        position = await broker.publish(on_first, pub(1), HISTORY)
        await broker.shards[0].pubsub.probe()
        assert [p.offset for p in handler.publications(on_first)] == [position.offset]
        await presence.add_presence(on_first, ClientInfo("u", "c"))
        assert await presence.presence_stats(on_first) == (1, 1)
        # ...those of the second fail at once with a temporary error.
        with pytest.raises(EngineError):
            await broker.publish(on_second, pub(1), HISTORY)
        with pytest.raises(EngineError):
            await presence.presence_stats(on_second)

        # Back: resubscribed, proven, reachable; its channel's subscribers are told to recover.
        second.start()
        with trio.fail_after(15):
            while not broker.reachable:  # noqa: ASYNC110
                await trio.sleep(0.05)
        assert [on_second] in handler.gaps
        assert [on_first] not in handler.gaps
        await broker.publish(on_second, pub(2), HISTORY)
        await broker.probe()
        assert [p.data for p in handler.publications(on_second)] == [pub(2).data]


async def test_ready_names_the_stopped_shard(two_servers: tuple[RedisServer, RedisServer]) -> None:
    first, second = two_servers
    config = make_config({"engine": {"type": "redis", "redis": {
        "addresses": [first.address, second.address], "prefix": new_prefix(),
        "probe_interval": 0.2, "io_timeout": 1.0,
    }}})  # fmt: skip
    on_first = next(c for c in CHANNELS if shard_index(c, 2) == 0)

    async def ready() -> tuple[int, dict[str, Any]]:
        url = f"http://127.0.0.1:{server.http_port}/ready"
        response = await trio.to_thread.run_sync(httpx.get, url)
        engines = next(c for c in response.json()["checks"] if c["name"] == "engines")
        return response.status_code, engines

    async with trio.open_nursery() as nursery:
        server = await serve_in(nursery, config)
        status, engines = await ready()
        assert status == 200, engines
        assert engines["ok"]
        second.stop()
        with trio.fail_after(10):
            while (await ready())[0] == 200:  # noqa: ASYNC110  (poll /ready with a deadline)
                await trio.sleep(0.05)
        status, engines = await ready()
        assert status == 503
        assert not engines["ok"]
        assert engines["detail"] == (
            f"unreachable: broker, presence (shard 2 of 2 (127.0.0.1:{second.port}))"
        )
        # A client publishing on the first shard's channel is served meanwhile.
        async with open_raw(ws_url(server)) as client:
            assert "connect" in await client.connect(token("alice"))
            reply = await client.command("publish", {"channel": on_first, "data": {"x": 1}})
            assert reply.get("publish") == {}, reply
        second.start()
        with trio.fail_after(15):
            while (await ready())[0] != 200:  # noqa: ASYNC110
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
