"""The Redis engine beyond the contract (tests/test_engines.py runs that): its layout in Redis,
offsets under concurrency, presence expiry and per-user counts, automatic pipelining, and what it
does when Redis stops answering, restarts or drops the PUB/SUB connection.

Real Redis, real time: a private redis-server (tests/redis_server.py); the tests that stop, pause
or restart it start their own. Waits are polls with deadlines or the engine's own probe, never a
sleep standing in for an event.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
from redis_server import RedisServer, new_prefix, running_redis
from test_engines import RecordingHandler

from aether_trio.config import RedisEngineConfig
from aether_trio.engines.base import EngineError, HistoryOptions, HistoryQuery
from aether_trio.engines.redis import RedisBroker, RedisPresenceManager, open_redis_engine
from aether_trio.engines.redis.codec import (
    CodecError,
    decode_info,
    decode_parts,
    decode_publication,
)
from aether_trio.engines.redis.durability import durability_warnings
from aether_trio.protocol.messages import ClientInfo, Publication, RawJSON

HISTORY = HistoryOptions(size=3, ttl=60.0, meta_ttl=3600.0)
FAST: dict[str, Any] = {"io_timeout": 0.5, "connect_timeout": 0.5, "probe_interval": 0.2}


@asynccontextmanager
async def engine(
    server: RedisServer, prefix: str | None = None, **options: Any
) -> AsyncIterator[tuple[RedisBroker, RedisPresenceManager, RecordingHandler]]:
    config = RedisEngineConfig(address=server.address, prefix=prefix or new_prefix(), **options)
    broker, presence = open_redis_engine(config)
    handler = RecordingHandler()
    async with trio.open_nursery() as nursery:
        with trio.fail_after(10):
            await nursery.start(broker.run, handler)
        yield broker, presence, handler
        nursery.cancel_scope.cancel()


async def until(condition: Callable[[], bool], limit: float = 10.0) -> None:
    """Poll `condition` until it holds; fail after `limit` seconds. (The engine's state has no
    event for every test to wait on: a poll with a deadline.)"""
    with trio.fail_after(limit):
        while not condition():  # noqa: ASYNC110
            await trio.sleep(0.01)


def pub(n: int) -> Publication:
    return Publication(RawJSON(b'{"n":%d}' % n), ClientInfo("alice", "c1"))


# --- layout ------------------------------------------------------------------------------------


async def test_history_is_a_stream_with_offsets_as_ids_and_a_meta_hash_with_ttls(
    redis_server: RedisServer,
) -> None:
    async with engine(redis_server) as (broker, _presence, _handler):
        for n in range(1, 5):
            await broker.publish("news", pub(n), HISTORY)
        stream, meta = broker.keys.stream("news"), broker.keys.meta("news")
        assert stream == f"{broker.keys.prefix}.stream.news"
        assert redis_server.command("TYPE", stream) == b"stream"
        ids = [entry[0] for entry in redis_server.command("XRANGE", stream, "-", "+")]
        assert ids == [b"2-0", b"3-0", b"4-0"]  # size 3: the oldest was trimmed
        assert 59_000 < redis_server.command("PTTL", stream) <= 60_000
        assert redis_server.command("TYPE", meta) == b"hash"
        fields = redis_server.command("HGETALL", meta)
        assert fields[b"s"] == b"4"
        assert fields[b"e"]
        assert 3_599_000 < redis_server.command("PTTL", meta) <= 3_600_000


async def test_presence_keys_have_the_presence_ttl(redis_server: RedisServer) -> None:
    async with engine(redis_server, presence_ttl=30.0) as (broker, presence, _handler):
        await presence.add_presence("room", ClientInfo("alice", "c1"))
        data, expire, users = broker.keys.presence("room")
        assert [redis_server.command("TYPE", key) for key in (data, expire, users)] == [
            b"hash", b"zset", b"hash"
        ]  # fmt: skip
        for key in (data, expire, users):
            assert 29_000 < redis_server.command("PTTL", key) <= 30_000
        assert redis_server.command("HGETALL", users) == {b"alice": b"1"}


async def test_an_idempotency_result_is_a_hash_with_the_result_ttl_seen_by_every_node(
    redis_server: RedisServer,
) -> None:
    prefix = new_prefix()
    async with (
        engine(redis_server, prefix) as (first, _p1, _h1),
        engine(redis_server, prefix) as (second, _p2, handler),
    ):
        await second.subscribe("news")
        position = await first.publish("news", pub(1), HISTORY, idempotency_key="k", result_ttl=90)
        result = first.keys.result("news", "k")
        assert result == f"{prefix}.result.4.news.k"
        fields = redis_server.command("HGETALL", result)
        assert fields == {b"s": b"1", b"e": position.epoch.encode()}
        assert 89_000 < redis_server.command("PTTL", result) <= 90_000
        # The retry through another node: the first result, nothing appended or delivered.
        assert await second.publish("news", pub(2), HISTORY, idempotency_key="k") == position
        await second.pubsub.probe()
        assert [p.offset for p in handler.publications("news")] == [1]
        assert redis_server.command("XLEN", first.keys.stream("news")) == 1
        await first.publish("plain", pub(1), HistoryOptions(), idempotency_key="k")
        assert redis_server.command("HGETALL", first.keys.result("plain", "k")) == {
            b"s": b"0", b"e": b""
        }  # fmt: skip


async def test_concurrent_publishes_of_two_nodes_never_reuse_an_offset(
    redis_server: RedisServer,
) -> None:
    prefix = new_prefix()
    options = HistoryOptions(size=1000, ttl=60.0, meta_ttl=3600.0)
    async with (
        engine(redis_server, prefix) as (a, _pa, handler),
        engine(redis_server, prefix, pipelining=False) as (b, _pb, _hb),
    ):
        await a.subscribe("news")
        offsets: list[int] = []

        async def publish(broker: RedisBroker, n: int) -> None:
            offsets.append((await broker.publish("news", pub(n), options)).offset)

        async with trio.open_nursery() as nursery:
            for n in range(100):
                nursery.start_soon(publish, a, n)
                nursery.start_soon(publish, b, n)
        assert sorted(offsets) == list(range(1, 201))
        await a.pubsub.probe()
        # Node A got all of them, B's included, in offset order.
        assert [p.offset for p in handler.publications("news")] == list(range(1, 201))


# --- presence ----------------------------------------------------------------------------------


async def test_presence_entries_expire_unless_added_again_and_users_are_counted_once(
    redis_server: RedisServer,
) -> None:
    async with engine(redis_server, presence_ttl=60.0) as (broker, presence, _handler):
        now = 1_000_000.0
        presence.clock = lambda: now
        a1, a2, b1 = ClientInfo("alice", "a1"), ClientInfo("alice", "a2"), ClientInfo("bob", "b1")
        for info in (a1, a2, b1):
            await presence.add_presence("room", info)
        assert await presence.presence_stats("room") == (3, 2)
        now += 40
        await presence.add_presence("room", a1)  # a1 and b1 refreshed, a2 not
        await presence.add_presence("room", b1)
        now += 30  # a2 is 70 s old
        assert await presence.presence_stats("room") == (2, 2)
        assert set(await presence.presence("room")) == {"a1", "b1"}
        now += 40  # a1 and b1 are 70 s old
        assert await presence.presence("room") == {}
        assert await presence.presence_stats("room") == (0, 0)
        _data, _expire, users = broker.keys.presence("room")
        assert redis_server.command("HLEN", users) == 0


async def test_presence_stats_of_a_big_channel_reads_two_counters(
    redis_server: RedisServer,
) -> None:
    async with engine(redis_server) as (broker, presence, _handler):
        async with trio.open_nursery() as nursery:
            for n in range(3000):
                info = ClientInfo(f"user{n % 700}", f"c{n}")
                nursery.start_soon(presence.add_presence, "big", info)
        redis_server.command("SLOWLOG", "RESET")
        assert await presence.presence_stats("big") == (3000, 700)
        _data, _expire, users = broker.keys.presence("big")
        assert redis_server.command("HLEN", users) == 700
        await presence.remove_presence("big", "c0")  # user0 still has c700, c1400, ...
        assert await presence.presence_stats("big") == (2999, 700)


# --- pipelining --------------------------------------------------------------------------------


async def test_commands_of_one_round_go_in_one_pipeline(redis_server: RedisServer) -> None:
    async with engine(redis_server) as (broker, _presence, _handler):
        client = broker.client
        before = client.batches
        async with trio.open_nursery() as nursery:
            for n in range(50):
                nursery.start_soon(broker.publish, "news", pub(n), HISTORY)
        assert client.largest_batch >= 50
        assert client.batches - before == 1


async def test_without_pipelining_every_call_goes_alone(redis_server: RedisServer) -> None:
    async with engine(redis_server, pipelining=False) as (broker, _presence, handler):
        await broker.subscribe("news")
        async with trio.open_nursery() as nursery:
            for n in range(20):
                nursery.start_soon(broker.publish, "news", pub(n), HISTORY)
        await broker.pubsub.probe()
        assert broker.client.batches == 0
        assert len(handler.publications("news")) == 20


# --- failures ----------------------------------------------------------------------------------


async def test_a_silent_redis_gives_engine_errors_quickly_and_unreachable() -> None:
    with running_redis() as server:
        async with engine(server, **FAST) as (broker, presence, _handler):
            assert broker.reachable
            server.pause()  # SIGSTOP: connections stay open, nothing answers
            try:
                started = trio.current_time()
                with pytest.raises(EngineError):
                    await broker.publish("news", pub(1), HISTORY)
                assert trio.current_time() - started < 1.5
                assert not broker.reachable
                assert not presence.reachable
                # Known unreachable: calls fail at once.
                started = trio.current_time()
                with pytest.raises(EngineError, match="unreachable"):
                    await presence.presence_stats("room")
                assert trio.current_time() - started < 0.1
            finally:
                server.resume()
            await until(lambda: broker.reachable)
            await broker.publish("news", pub(2), HISTORY)


async def test_a_restarted_redis_is_resubscribed_and_the_gap_reported() -> None:
    with running_redis() as server:
        async with engine(server, **FAST) as (broker, _presence, handler):
            await broker.subscribe("news")
            await broker.subscribe("sport")
            await broker.unsubscribe("sport")
            server.restart()
            await until(lambda: bool(handler.gaps))
            assert handler.gaps == [["news"]]
            await until(lambda: broker.reachable)
            # Subscribed again: publications arrive (in a new epoch: Redis lost everything).
            position = await broker.publish("news", pub(1), HISTORY)
            assert position.offset == 1
            await broker.pubsub.probe()
            assert [p.offset for p in handler.publications("news")] == [1]


async def test_a_killed_pubsub_connection_is_rebuilt_and_the_gap_reported() -> None:
    with running_redis() as server:
        async with engine(server, **FAST) as (broker, _presence, handler):
            await broker.subscribe("news")
            sessions = broker.pubsub.sessions
            assert server.command("CLIENT", "KILL", "TYPE", "pubsub") == 1
            await until(lambda: broker.pubsub.sessions > sessions)
            assert handler.gaps == [["news"]]
            assert broker.reachable
            await broker.publish("news", pub(1), HISTORY)
            await broker.pubsub.probe()
            assert len(handler.publications("news")) == 1


async def test_a_publication_after_missed_ones_is_a_gap_not_a_delivery(
    redis_server: RedisServer,
) -> None:
    """Offsets 2 and 3 of "news" never reach this node's PUB/SUB (taken here without a
    PUBLISH, as when they were published while its session was being rebuilt): offset 4 is
    reported as a gap of "news" (its subscribers recover from history) instead of delivered,
    and delivery goes on from there; other channels are not concerned."""
    async with engine(redis_server) as (broker, _presence, handler):
        await broker.subscribe("news")
        await broker.subscribe("sport")
        await broker.publish("news", pub(1), HISTORY)
        await broker.publish("sport", pub(1), HISTORY)
        redis_server.command("HINCRBY", broker.keys.meta("news"), "s", 2)  # 2 and 3: missed
        await broker.publish("news", pub(4), HISTORY)
        await broker.publish("news", pub(5), HISTORY)
        await broker.publish("sport", pub(2), HISTORY)
        await broker.pubsub.probe()
        assert handler.gaps == [["news"]]
        assert [p.offset for p in handler.publications("news")] == [1, 5]
        assert [p.offset for p in handler.publications("sport")] == [1, 2]


async def test_a_pubsub_connection_that_delivers_nothing_is_caught_by_the_probe(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with engine(redis_server, **FAST) as (broker, _presence, handler):
        await broker.subscribe("news")
        pubsub, sessions = broker.pubsub, broker.pubsub.sessions
        deliver = pubsub._dispatch
        # The connection stays up but its messages vanish (what a failover can leave behind).
        monkeypatch.setattr(pubsub, "_dispatch", lambda message, handler: None)
        await until(lambda: not broker.reachable)
        monkeypatch.setattr(pubsub, "_dispatch", deliver)
        await until(lambda: pubsub.sessions > sessions and broker.reachable)
        assert handler.gaps == [["news"]]


async def test_subscribe_fails_while_the_pubsub_connection_is_down_and_unsubscribe_does_not(
    redis_server: RedisServer,
) -> None:
    async with engine(redis_server, **FAST) as (broker, _presence, _handler):
        await broker.subscribe("news")
        broker.pubsub._conn = None  # as between two sessions
        with pytest.raises(EngineError, match="not connected"):
            await broker.subscribe("sport")
        await broker.unsubscribe("news")
        assert broker.pubsub.wanted == set()


async def test_an_engine_not_running_refuses_calls() -> None:
    broker, _presence = open_redis_engine(RedisEngineConfig())
    with pytest.raises(EngineError, match="not running"):
        await broker.publish("news", pub(1), HistoryOptions())


async def test_foreign_messages_and_entries_are_ignored_or_refused(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    async with engine(redis_server) as (broker, presence, handler):
        await broker.subscribe("news")
        redis_server.command("PUBLISH", broker.keys.client("news"), b"not ours")
        await broker.pubsub.probe()
        assert handler.events == []
        assert "not Aether's" in caplog.text
        data, _expire, _users = broker.keys.presence("room")
        await presence.add_presence("room", ClientInfo("alice", "c1"))
        redis_server.command("HSET", data, "c2", "garbage")
        assert list(await presence.presence("room")) == ["c1"]
        await broker.publish("bad", pub(1), HISTORY)
        redis_server.command("XADD", broker.keys.stream("bad"), "2-0", "d", "garbage")
        with pytest.raises(EngineError, match="not Aether's"):
            await broker.history("bad", HistoryQuery(limit=-1), 60.0)
        with pytest.raises(EngineError, match="refused"):
            await broker.client.call("NOSUCHCOMMAND")


# --- start-up checks and the codec -------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "warned"),
    [
        ({"maxmemory-policy": "noeviction", "appendonly": "yes", "appendfsync": "always"}, []),
        ({"maxmemory-policy": "volatile-lru", "appendonly": "yes", "appendfsync": "always"}, []),
        ({"maxmemory-policy": "allkeys-lru", "appendonly": "yes", "appendfsync": "always"},
         ["maxmemory-policy"]),
        ({"appendonly": "no", "save": ""}, ["neither AOF nor RDB"]),
        ({"appendonly": "yes", "appendfsync": "everysec"}, ["appendfsync is everysec"]),
        ({"appendonly": "no", "save": "3600 1"}, ["only RDB"]),
    ],
)  # fmt: skip
def test_durability_warnings(config: dict[str, str], warned: list[str]) -> None:
    found = durability_warnings(config)
    assert len(found) == len(warned)
    for text, expected in zip(found, warned, strict=True):
        assert expected in text


async def test_start_warns_about_lost_history_and_tolerates_config_being_disabled(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with engine(redis_server):
        pass
    assert "neither AOF nor RDB persistence is on" in caplog.text
    caplog.clear()
    with running_redis() as server:
        server.command("CONFIG", "SET", "maxmemory-policy", "allkeys-lru")
        async with engine(server):
            pass
    assert "maxmemory-policy is allkeys-lru" in caplog.text
    caplog.clear()
    with running_redis("--rename-command", "CONFIG", "") as server:
        async with engine(server) as (broker, _presence, _handler):
            assert broker.reachable
    assert "durability not checked" in caplog.text


@pytest.mark.parametrize("raw", [b"", b"x;", b"1,a;b", b"3;ab", b"i0;", b"i1,1;xy"])
def test_the_codec_refuses_what_it_did_not_write(raw: bytes) -> None:
    with pytest.raises(CodecError):
        decode_publication(raw, 1)
    with pytest.raises(CodecError):
        decode_info(raw)


def test_the_codec_parts() -> None:
    assert decode_parts(b";") == []
    assert decode_parts(b"1,0,2;abc") == [b"a", b"", b"bc"]
