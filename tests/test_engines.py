"""Contract tests for the engine protocols (`Broker`, `PresenceManager`) and for `Node.recover`.

Every test runs against each factory in `ENGINE_FACTORIES`: the memory engine and the Redis
engine (on the session's private redis-server, tests/redis_server.py, under a prefix of its own;
with and without pipelining; sharded over that server and a second one; and on a 3-master Redis
Cluster, tests/redis_topologies.py).

Time: tests that need TTLs to pass take `engine_time` and wait through `engines.elapse`. For the
memory engine that is Trio's autojump clock, so a day of stream lifetime costs nothing; Redis
expires keys on its own clock, so its `elapse` moves every key's TTL forward (and the presence
clock with it), and its tests run in real time. Delivery is asynchronous with Redis: a test
subscribes the channel and waits through `engines.settle` (a probe through the broker's own
PUB/SUB connection: what was published before has been delivered once it is back).
References: reference sections 8.1 (stream model), 8.3 (recovery) and 8.4 (history semantics).
"""

from __future__ import annotations

import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Protocol

import attrs
import pytest
import trio
from conftest import make_config
from redis_server import RedisServer, new_prefix, running_redis
from redis_topologies import RedisCluster, running_cluster
from trio.testing import MockClock

from aether_trio.config import RedisEngineConfig
from aether_trio.engines import memory as memory_module
from aether_trio.engines.base import (
    Broker,
    HistoryOptions,
    HistoryQuery,
    PresenceManager,
    UnrecoverablePosition,
)
from aether_trio.engines.memory import MemoryBroker, MemoryPresenceManager
from aether_trio.engines.redis import open_redis_engine
from aether_trio.node import Node
from aether_trio.protocol.messages import ClientInfo, Publication, RawJSON, StreamPosition

# --- engine factories -----------------------------------------------------------------------


class RecordingHandler:
    """A `BrokerEventHandler` that records what the broker delivers, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, Publication | ClientInfo]] = []
        self.gaps: list[list[str]] = []

    def handle_publication(self, channel: str, pub: Publication) -> None:
        self.events.append(("pub", channel, pub))

    def handle_join(self, channel: str, info: ClientInfo) -> None:
        self.events.append(("join", channel, info))

    def handle_leave(self, channel: str, info: ClientInfo) -> None:
        self.events.append(("leave", channel, info))

    def handle_gap(self, channels: list[str]) -> None:
        self.gaps.append(channels)

    def publications(self, channel: str) -> list[Publication]:
        return [p for _, ch, p in self.events if isinstance(p, Publication) and ch == channel]


async def _trio_sleep(seconds: float) -> None:
    await trio.sleep(seconds)


async def _nothing() -> None:
    pass


@attrs.define
class Engines:
    broker: Broker
    presence: PresenceManager
    handler: RecordingHandler
    # Let `seconds` of engine time pass (the memory engine follows the Trio clock).
    elapse: Callable[[float], Awaitable[None]] = _trio_sleep
    # Return once everything published so far has reached the handler.
    settle: Callable[[], Awaitable[None]] = _nothing


Opener = Callable[[], AbstractAsyncContextManager[Engines]]


@asynccontextmanager
async def memory_engines() -> AsyncIterator[Engines]:
    broker = MemoryBroker()
    handler = RecordingHandler()
    async with trio.open_nursery() as nursery:
        await nursery.start(broker.run, handler)
        yield Engines(broker, MemoryPresenceManager(), handler)
        nursery.cancel_scope.cancel()


class _Elapsing(Protocol):
    def elapse(self, prefix: str, seconds: float) -> object: ...


@asynccontextmanager
async def redis_engines(
    server: RedisServer | RedisCluster, *more: RedisServer, **options: Any
) -> AsyncIterator[Engines]:
    """The Redis engine on `server` (sharded over `more` servers too, if any) or a cluster."""
    prefix = new_prefix()
    if isinstance(server, RedisCluster):
        options["cluster_addresses"] = tuple(server.addresses)
    elif more:
        options["addresses"] = (server.address, *(s.address for s in more))
    else:
        options["address"] = server.address
    config = RedisEngineConfig(prefix=prefix, **options)
    broker, presence = open_redis_engine(config)
    shift = 0.0
    presence.clock = lambda: time.time() + shift
    handler = RecordingHandler()
    servers: list[_Elapsing] = [server, *more]

    async def elapse(seconds: float) -> None:
        nonlocal shift
        shift += seconds
        for each in servers:
            await trio.to_thread.run_sync(each.elapse, prefix, seconds)

    async with trio.open_nursery() as nursery:
        await nursery.start(broker.run, handler)
        yield Engines(broker, presence, handler, elapse, broker.probe)
        nursery.cancel_scope.cancel()


def _memory(_request: pytest.FixtureRequest) -> tuple[Opener, bool]:
    return memory_engines, True


def _redis(request: pytest.FixtureRequest) -> tuple[Opener, bool]:
    server: RedisServer = request.getfixturevalue("redis_server")
    return functools.partial(redis_engines, server), False


def _redis_unpipelined(request: pytest.FixtureRequest) -> tuple[Opener, bool]:
    server: RedisServer = request.getfixturevalue("redis_server")
    return functools.partial(redis_engines, server, pipelining=False), False


def _redis_sharded(request: pytest.FixtureRequest) -> tuple[Opener, bool]:
    server: RedisServer = request.getfixturevalue("redis_server")
    second: RedisServer = request.getfixturevalue("second_redis_server")
    return functools.partial(redis_engines, server, second), False


def _redis_cluster(request: pytest.FixtureRequest) -> tuple[Opener, bool]:
    cluster: RedisCluster = request.getfixturevalue("redis_cluster")
    return functools.partial(redis_engines, cluster), False


@pytest.fixture(scope="module")
def second_redis_server() -> Iterator[RedisServer]:
    with running_redis() as server:
        yield server


@pytest.fixture(scope="module")
def redis_cluster() -> Iterator[RedisCluster]:
    """Three masters with `--cluster-enabled yes`, joined by `redis-cli --cluster create`."""
    with running_cluster() as cluster:
        yield cluster


# Each gives the engines' opener and whether they follow Trio's clock.
ENGINE_FACTORIES = [
    pytest.param(_memory, id="memory"),
    pytest.param(_redis, id="redis"),
    pytest.param(_redis_unpipelined, id="redis-unpipelined"),
    pytest.param(_redis_sharded, id="redis-sharded"),
    pytest.param(_redis_cluster, id="redis-cluster"),
]


@pytest.fixture(params=ENGINE_FACTORIES)
def engine_kind(request: pytest.FixtureRequest) -> tuple[Opener, bool]:
    factory: Callable[[pytest.FixtureRequest], tuple[Opener, bool]] = request.param
    return factory(request)


@pytest.fixture
def engine_time(engine_kind: tuple[Opener, bool]) -> MockClock | None:
    """Trio's autojump clock for an engine on Trio's clock; real time (None) for Redis, whose
    I/O would let an autojump clock fire every timeout at once."""
    return MockClock(autojump_threshold=0) if engine_kind[1] else None


@pytest.fixture
async def engines(engine_kind: tuple[Opener, bool]) -> AsyncIterator[Engines]:
    async with engine_kind[0]() as running:
        yield running


# --- helpers --------------------------------------------------------------------------------

DAY = 24 * 3600.0
HISTORY = HistoryOptions(size=10, ttl=300.0, meta_ttl=DAY)
NO_HISTORY = HistoryOptions()
ALICE = ClientInfo("alice", "c1")


def pub(n: int) -> Publication:
    return Publication(data=RawJSON(b'{"n":%d}' % n), info=ALICE)


async def publish_n(
    engines: Engines, channel: str, count: int, history: HistoryOptions = HISTORY
) -> list[StreamPosition]:
    return [await engines.broker.publish(channel, pub(n), history) for n in range(1, count + 1)]


async def read(
    engines: Engines,
    channel: str,
    *,
    since: StreamPosition | None = None,
    limit: int = -1,
    reverse: bool = False,
    meta_ttl: float = DAY,
) -> tuple[list[int], StreamPosition]:
    """History as a list of offsets (plus the top), which is what most assertions look at."""
    pubs, top = await engines.broker.history(channel, HistoryQuery(since, limit, reverse), meta_ttl)
    return [p.offset for p in pubs], top


# --- stream model (8.1) ---------------------------------------------------------------------


async def test_offsets_start_at_one_and_increase_by_one_with_a_stable_epoch(
    engines: Engines,
) -> None:
    positions = await publish_n(engines, "news", 5)
    assert [p.offset for p in positions] == [1, 2, 3, 4, 5]
    epoch = positions[0].epoch
    assert epoch
    assert all(p.epoch == epoch for p in positions)
    offsets, top = await read(engines, "news")
    assert offsets == [1, 2, 3, 4, 5]
    assert top == StreamPosition(5, epoch)


async def test_channels_have_independent_streams(engines: Engines) -> None:
    await publish_n(engines, "a", 3)
    (b1,) = await publish_n(engines, "b", 1)
    assert b1.offset == 1
    assert (await read(engines, "a"))[0] == [1, 2, 3]
    assert (await read(engines, "b"))[0] == [1]


async def test_no_channel_name_reaches_another_channels_keys(engines: Engines) -> None:
    # Redis: with centrifuge's layout the stream of "meta.x" (P.stream.meta.x) was the meta hash
    # of "x", and every publish to "x" failed with WRONGTYPE after one to "meta.x".
    names = ["x", "meta.x", "stream.x", "meta.meta.x", "result.1.x.k"]
    for n, name in enumerate(names, 1):
        await publish_n(engines, name, n)
    for n, name in enumerate(names, 1):
        await publish_n(engines, name, 1)
        assert (await read(engines, name))[0] == list(range(1, n + 2)), name


async def test_history_publications_keep_data_and_info(engines: Engines) -> None:
    await publish_n(engines, "news", 2)
    pubs, _top = await engines.broker.history("news", HistoryQuery(limit=-1), DAY)
    assert pubs == [attrs.evolve(pub(1), offset=1), attrs.evolve(pub(2), offset=2)]


async def test_publish_without_history_returns_offset_zero_stores_nothing_but_delivers(
    engines: Engines,
) -> None:
    await engines.broker.subscribe("chat")
    position = await engines.broker.publish("chat", pub(1), NO_HISTORY)
    assert position.offset == 0
    await engines.settle()
    assert engines.handler.publications("chat") == [pub(1)]  # delivered, offset 0
    offsets, top = await read(engines, "chat")
    assert offsets == []
    assert top.offset == 0


@pytest.mark.parametrize(
    "options", [HistoryOptions(size=0, ttl=300.0), HistoryOptions(size=10, ttl=0.0)]
)
async def test_history_needs_both_size_and_ttl(engines: Engines, options: HistoryOptions) -> None:
    assert not options.enabled
    position = await engines.broker.publish("chat", pub(1), options)
    assert position.offset == 0
    assert (await read(engines, "chat"))[0] == []


async def test_size_eviction_keeps_the_newest_and_the_top(engines: Engines) -> None:
    positions = await publish_n(engines, "news", 7, HistoryOptions(size=3, ttl=300.0))
    offsets, top = await read(engines, "news")
    assert offsets == [5, 6, 7]
    assert top == positions[-1] == StreamPosition(7, positions[0].epoch)


async def test_history_ttl_counts_from_the_last_publish_and_keeps_top_and_epoch(
    engines: Engines, engine_time: MockClock | None
) -> None:
    options = HistoryOptions(size=10, ttl=60.0, meta_ttl=DAY)
    (first,) = await publish_n(engines, "news", 1, options)
    await engines.elapse(50)
    await engines.broker.publish("news", pub(2), options)
    await engines.elapse(50)  # 100 s after the first publish, 50 s after the last
    assert (await read(engines, "news"))[0] == [1, 2]
    await engines.elapse(11)  # 61 s after the last publish
    offsets, top = await read(engines, "news")
    assert offsets == []
    assert top == StreamPosition(2, first.epoch)
    # The stream goes on where it was.
    position = await engines.broker.publish("news", pub(3), options)
    assert position == StreamPosition(3, first.epoch)
    assert (await read(engines, "news"))[0] == [3]


async def test_history_ttl_expiry_also_happens_without_anyone_reading(
    engines: Engines, engine_time: MockClock | None
) -> None:
    options = HistoryOptions(size=10, ttl=60.0, meta_ttl=DAY)
    (first,) = await publish_n(engines, "news", 1, options)
    await engines.elapse(3600)  # long enough for any background sweep
    offsets, top = await read(engines, "news")
    assert offsets == []
    assert top == first


async def test_meta_ttl_expiry_starts_a_new_epoch_and_restarts_offsets(
    engines: Engines, engine_time: MockClock | None
) -> None:
    options = HistoryOptions(size=10, ttl=60.0, meta_ttl=600.0)
    positions = await publish_n(engines, "news", 3, options)
    await engines.elapse(601)
    fresh = await engines.broker.publish("news", pub(4), options)
    assert fresh.offset == 1
    assert fresh.epoch
    assert fresh.epoch != positions[0].epoch
    offsets, top = await read(engines, "news", meta_ttl=600.0)
    assert offsets == [1]
    assert top == fresh


async def test_meta_ttl_expiry_seen_by_a_read_gives_an_empty_stream_with_a_new_epoch(
    engines: Engines, engine_time: MockClock | None
) -> None:
    options = HistoryOptions(size=10, ttl=60.0, meta_ttl=600.0)
    (first,) = await publish_n(engines, "news", 1, options)
    await engines.elapse(601)
    offsets, top = await read(engines, "news", meta_ttl=600.0)
    assert offsets == []
    assert top.offset == 0
    assert top.epoch
    assert top.epoch != first.epoch


async def test_stream_top_survives_until_meta_ttl(
    engines: Engines, engine_time: MockClock | None
) -> None:
    options = HistoryOptions(size=10, ttl=60.0, meta_ttl=600.0)
    (first,) = await publish_n(engines, "news", 1, options)
    await engines.elapse(590)  # publications long gone, metadata not yet
    position = await engines.broker.publish("news", pub(2), options)
    assert position == StreamPosition(2, first.epoch)


# --- history semantics (8.4) ----------------------------------------------------------------


async def test_reading_a_never_used_channel_creates_an_empty_stream(engines: Engines) -> None:
    offsets, top = await read(engines, "fresh")
    assert offsets == []
    assert top.offset == 0
    assert top.epoch
    # It is a stream now: the epoch is stable and the first publication gets offset 1 in it.
    assert (await read(engines, "fresh"))[1] == top
    position = await engines.broker.publish("fresh", pub(1), HISTORY)
    assert position == StreamPosition(1, top.epoch)


async def test_limit_zero_returns_only_the_top(engines: Engines) -> None:
    positions = await publish_n(engines, "news", 3)
    assert await read(engines, "news", limit=0) == ([], positions[-1])


async def test_negative_limit_returns_everything(engines: Engines) -> None:
    await publish_n(engines, "news", 5)
    assert (await read(engines, "news", limit=-1))[0] == [1, 2, 3, 4, 5]
    assert (await read(engines, "news", limit=-1, reverse=True))[0] == [5, 4, 3, 2, 1]


async def test_positive_limit_caps_the_page(engines: Engines) -> None:
    positions = await publish_n(engines, "news", 5)
    assert await read(engines, "news", limit=2) == ([1, 2], positions[-1])
    assert await read(engines, "news", limit=2, reverse=True) == ([5, 4], positions[-1])
    assert (await read(engines, "news", limit=50))[0] == [1, 2, 3, 4, 5]


async def test_since_forward_returns_later_publications_ascending(engines: Engines) -> None:
    positions = await publish_n(engines, "news", 5)
    since = positions[1]  # offset 2
    assert await read(engines, "news", since=since) == ([3, 4, 5], positions[-1])
    assert (await read(engines, "news", since=since, limit=2))[0] == [3, 4]
    assert (await read(engines, "news", since=StreamPosition(0, since.epoch)))[0] == [
        1,
        2,
        3,
        4,
        5,
    ]


async def test_since_at_the_top_is_empty(engines: Engines) -> None:
    positions = await publish_n(engines, "news", 3)
    assert await read(engines, "news", since=positions[-1]) == ([], positions[-1])


async def test_since_forward_past_an_evicted_offset_starts_from_the_oldest_kept(
    engines: Engines,
) -> None:
    positions = await publish_n(engines, "news", 6, HistoryOptions(size=3, ttl=300.0))
    since = StreamPosition(1, positions[0].epoch)  # 2 was evicted
    assert (await read(engines, "news", since=since))[0] == [4, 5, 6]


async def test_since_reverse_returns_earlier_publications_descending(engines: Engines) -> None:
    positions = await publish_n(engines, "news", 5)
    since = positions[3]  # offset 4
    assert await read(engines, "news", since=since, reverse=True) == ([3, 2, 1], positions[-1])
    assert (await read(engines, "news", since=since, reverse=True, limit=2))[0] == [3, 2]


async def test_since_reverse_with_the_previous_offset_evicted_is_empty(engines: Engines) -> None:
    positions = await publish_n(engines, "news", 6, HistoryOptions(size=3, ttl=300.0))
    epoch = positions[0].epoch
    # Kept: 4, 5, 6. Before 4 is 3: evicted.
    assert (await read(engines, "news", since=StreamPosition(4, epoch), reverse=True))[0] == []
    assert (await read(engines, "news", since=StreamPosition(2, epoch), reverse=True))[0] == []
    # Before 5 is 4: kept.
    assert (await read(engines, "news", since=StreamPosition(5, epoch), reverse=True))[0] == [4]


async def test_since_with_another_epoch_is_unrecoverable(engines: Engines) -> None:
    positions = await publish_n(engines, "news", 3)
    other = StreamPosition(1, positions[0].epoch + "x")
    for limit, reverse in [(-1, False), (2, True), (0, False)]:
        with pytest.raises(UnrecoverablePosition):
            await read(engines, "news", since=other, limit=limit, reverse=reverse)


async def test_since_with_another_epoch_on_an_empty_stream_is_unrecoverable(
    engines: Engines,
) -> None:
    with pytest.raises(UnrecoverablePosition):
        await read(engines, "fresh", since=StreamPosition(0, "not-the-epoch"))


async def test_since_with_an_empty_epoch_matches_any_epoch(engines: Engines) -> None:
    await publish_n(engines, "news", 3)
    assert (await read(engines, "news", since=StreamPosition(1)))[0] == [2, 3]


async def test_remove_history_drops_publications_but_keeps_top_and_epoch(engines: Engines) -> None:
    positions = await publish_n(engines, "news", 3)
    await engines.broker.remove_history("news")
    assert await read(engines, "news") == ([], positions[-1])
    position = await engines.broker.publish("news", pub(4), HISTORY)
    assert position == StreamPosition(4, positions[0].epoch)
    assert (await read(engines, "news"))[0] == [4]


async def test_remove_history_of_an_unknown_channel_is_fine(engines: Engines) -> None:
    await engines.broker.remove_history("nothing-here")


# --- delivery --------------------------------------------------------------------------------


async def test_publish_delivers_in_order_with_offsets(engines: Engines) -> None:
    await engines.broker.subscribe("news")
    for n in range(1, 6):
        position = await engines.broker.publish("news", pub(n), HISTORY)
        await engines.settle()
        # Delivered, carrying the offset it was stored under.
        delivered = engines.handler.publications("news")
        assert len(delivered) == n
        assert delivered[-1] == attrs.evolve(pub(n), offset=position.offset)
    delivered = engines.handler.publications("news")
    assert delivered == [attrs.evolve(pub(n), offset=n) for n in range(1, 6)]


async def test_concurrent_publishes_are_delivered_in_offset_order(engines: Engines) -> None:
    await engines.broker.subscribe("news")
    async with trio.open_nursery() as nursery:
        for n in range(1, 21):
            nursery.start_soon(engines.broker.publish, "news", pub(n), HISTORY)
    await engines.settle()
    assert [p.offset for p in engines.handler.publications("news")] == list(range(1, 21))


async def test_publishes_issued_in_a_row_keep_that_order_and_answer_later(
    engines: Engines,
) -> None:
    """`publish_nowait`: issued one after another without waiting, then waited for in that
    order, a channel's publications are numbered, stored and delivered in the order issued;
    without history the answer is the empty position."""
    await engines.broker.subscribe("news")
    await engines.broker.subscribe("quiet")
    issued = [engines.broker.publish_nowait("news", pub(n), HISTORY) for n in range(1, 21)]
    quiet = [engines.broker.publish_nowait("quiet", pub(n), NO_HISTORY) for n in range(1, 4)]
    positions = [await each.wait() for each in issued]
    assert [p.offset for p in positions] == list(range(1, 21))
    assert len({p.epoch for p in positions}) == 1
    assert [await each.wait() for each in quiet] == [StreamPosition()] * 3
    await engines.settle()
    delivered = engines.handler.publications("news")
    assert delivered == [attrs.evolve(pub(n), offset=n) for n in range(1, 21)]
    assert engines.handler.publications("quiet") == [pub(n) for n in range(1, 4)]
    pubs, top = await engines.broker.history("news", HistoryQuery(limit=-1), DAY)
    assert [p.offset for p in pubs] == list(range(11, 21))  # size 10
    assert top.offset == 20


async def test_publications_keep_data_info_and_tags_through_delivery_and_history(
    engines: Engines,
) -> None:
    await engines.broker.subscribe("news")
    full = Publication(
        RawJSON(b'{"text":"hi \xc3\xa9;,:"}'),
        ClientInfo("", "c;1", RawJSON(b'{"a":[1,2]}'), RawJSON(b'"x"')),
        tags={"k": "v", "empty": "", ";": ","},
    )
    bare = Publication()
    for publication in (full, bare):
        await engines.broker.publish("news", publication, HISTORY)
    await engines.settle()
    expected = [attrs.evolve(full, offset=1), attrs.evolve(bare, offset=2)]
    assert engines.handler.publications("news") == expected
    pubs, _top = await engines.broker.history("news", HistoryQuery(limit=-1), DAY)
    assert pubs == expected


async def test_join_and_leave_are_delivered(engines: Engines) -> None:
    bob = ClientInfo("bob", "c2", RawJSON(b'{"k":1}'))
    await engines.broker.subscribe("room")
    await engines.broker.publish_join("room", ALICE)
    await engines.broker.publish_join("room", bob)
    await engines.broker.publish_leave("room", ALICE)
    await engines.settle()
    assert engines.handler.events == [
        ("join", "room", ALICE),
        ("join", "room", bob),
        ("leave", "room", ALICE),
    ]


async def test_what_was_published_before_unsubscribe_returns_is_delivered(
    engines: Engines,
) -> None:
    await engines.broker.subscribe("news")
    await engines.broker.publish("news", pub(1), HISTORY)
    await engines.broker.unsubscribe("news")
    assert [p.offset for p in engines.handler.publications("news")] == [1]


# --- idempotent publish (issue 11) -----------------------------------------------------------


async def publish_keyed(
    engines: Engines,
    channel: str,
    n: int,
    key: str,
    history: HistoryOptions = HISTORY,
    ttl: float = 300.0,
) -> StreamPosition:
    return await engines.broker.publish(
        channel, pub(n), history, idempotency_key=key, result_ttl=ttl
    )


@pytest.mark.parametrize("history", [HISTORY, NO_HISTORY], ids=["history", "no-history"])
async def test_a_repeated_idempotency_key_returns_the_first_result_and_publishes_nothing(
    engines: Engines, history: HistoryOptions
) -> None:
    await engines.broker.subscribe("news")
    first = await publish_keyed(engines, "news", 1, "k", history)
    # The retry carries other data: it is still the same publish, answered with the first result.
    repeats = [await publish_keyed(engines, "news", 9, "k", history) for _ in range(3)]
    assert repeats == [first] * 3
    assert first.offset == (1 if history.enabled else 0)
    unkeyed = await engines.broker.publish("news", pub(2), history)  # no key: no dedup
    await engines.settle()
    expected_offsets = [1, 2] if history.enabled else [0, 0]
    delivered = engines.handler.publications("news")
    assert [(p.data, p.offset) for p in delivered] == list(
        zip([pub(1).data, pub(2).data], expected_offsets, strict=True)
    )
    offsets, top = await read(engines, "news")
    assert offsets == (expected_offsets if history.enabled else [])
    assert top.offset == unkeyed.offset


async def test_idempotency_keys_are_per_channel_and_per_key(engines: Engines) -> None:
    # "a.b" with key "c" and "a" with key "b.c" too: no two (channel, key) pairs share a result.
    pairs = [("a", "k"), ("b", "k"), ("a", "k2"), ("a.b", "c"), ("a", "b.c")]
    results = [await publish_keyed(engines, ch, n, key) for n, (ch, key) in enumerate(pairs, 1)]
    assert [p.offset for p in results] == [1, 1, 2, 1, 3]
    again = [await publish_keyed(engines, ch, 0, key) for ch, key in pairs]
    assert again == results
    assert (await read(engines, "a"))[0] == [1, 2, 3]
    assert (await read(engines, "a.b"))[0] == [1]


async def test_concurrent_publishes_with_one_key_publish_once(engines: Engines) -> None:
    await engines.broker.subscribe("news")
    results: list[StreamPosition] = []

    async def one(n: int) -> None:
        results.append(await publish_keyed(engines, "news", n, "k"))

    async with trio.open_nursery() as nursery:
        for n in range(1, 11):
            nursery.start_soon(one, n)
    await engines.settle()
    assert len(results) == 10
    assert len(set(results)) == 1
    assert len(engines.handler.publications("news")) == 1
    assert (await read(engines, "news"))[0] == [1]


@pytest.mark.parametrize("history", [HISTORY, NO_HISTORY], ids=["history", "no-history"])
async def test_an_idempotency_result_expires_after_its_ttl(
    engines: Engines, engine_time: MockClock | None, history: HistoryOptions
) -> None:
    await engines.broker.subscribe("news")
    first = await publish_keyed(engines, "news", 1, "k", history, ttl=60.0)
    await engines.elapse(59)
    assert await publish_keyed(engines, "news", 2, "k", history, ttl=60.0) == first
    await engines.elapse(2)  # 61 s after the first publish: the key is free again
    second = await publish_keyed(engines, "news", 3, "k", history, ttl=60.0)
    assert second.offset == (2 if history.enabled else 0)
    assert await publish_keyed(engines, "news", 4, "k", history, ttl=60.0) == second
    await engines.settle()
    assert [p.data for p in engines.handler.publications("news")] == [pub(1).data, pub(3).data]


async def test_the_memory_engines_idempotency_results_are_bounded_and_swept(
    monkeypatch: pytest.MonkeyPatch, autojump_clock: MockClock
) -> None:
    monkeypatch.setattr(memory_module, "MAX_IDEMPOTENT_RESULTS", 3)
    async with memory_engines() as engines:
        for n, key in enumerate("abcd", 1):
            await publish_keyed(engines, "news", n, key)
        # "a" was dropped (the oldest): it publishes again; "d" is still known.
        assert (await publish_keyed(engines, "news", 0, "a")).offset == 5
        assert (await publish_keyed(engines, "news", 0, "d")).offset == 4
        # An expired result is not used, even before a sweep dropped it.
        first = await publish_keyed(engines, "other", 1, "short", ttl=1.0)
        await trio.sleep(2)
        assert (await publish_keyed(engines, "other", 2, "short", ttl=1.0)).offset == 2
        assert first.offset == 1
        # The periodic sweep drops expired results of any ttl, not only the oldest.
        assert isinstance(engines.broker, MemoryBroker)
        await trio.sleep(2)
        engines.broker.sweep()
        assert ("other", "short") not in engines.broker._results
        assert ("news", "d") in engines.broker._results


# --- presence --------------------------------------------------------------------------------


async def test_presence_add_remove_and_stats(engines: Engines) -> None:
    presence = engines.presence
    a1 = ClientInfo("alice", "c1")
    a2 = ClientInfo("alice", "c2", RawJSON(b'{"device":"phone"}'))
    b1 = ClientInfo("bob", "c3")
    for info in (a1, a2, b1):
        await presence.add_presence("room", info)
    assert await presence.presence("room") == {"c1": a1, "c2": a2, "c3": b1}
    assert await presence.presence_stats("room") == (3, 2)  # three clients, two distinct users

    await presence.remove_presence("room", "c1")
    assert await presence.presence("room") == {"c2": a2, "c3": b1}
    assert await presence.presence_stats("room") == (2, 2)
    await presence.remove_presence("room", "c3")
    assert await presence.presence_stats("room") == (1, 1)
    await presence.remove_presence("room", "c2")
    assert await presence.presence("room") == {}
    assert await presence.presence_stats("room") == (0, 0)


async def test_presence_add_again_replaces_the_entry(engines: Engines) -> None:
    presence = engines.presence
    await presence.add_presence("room", ClientInfo("alice", "c1"))
    updated = ClientInfo("alice", "c1", chan_info=RawJSON(b'{"x":1}'))
    await presence.add_presence("room", updated)
    assert await presence.presence("room") == {"c1": updated}
    assert await presence.presence_stats("room") == (1, 1)


async def test_presence_is_per_channel(engines: Engines) -> None:
    presence = engines.presence
    await presence.add_presence("a", ClientInfo("alice", "c1"))
    await presence.add_presence("b", ClientInfo("bob", "c2"))
    assert list(await presence.presence("a")) == ["c1"]
    assert list(await presence.presence("b")) == ["c2"]


async def test_presence_remove_unknown_is_fine(engines: Engines) -> None:
    presence = engines.presence
    await presence.remove_presence("nowhere", "c1")
    await presence.add_presence("room", ClientInfo("alice", "c1"))
    await presence.remove_presence("room", "someone-else")
    assert list(await presence.presence("room")) == ["c1"]
    assert await presence.presence("empty") == {}
    assert await presence.presence_stats("empty") == (0, 0)


async def test_presence_result_is_a_snapshot(engines: Engines) -> None:
    presence = engines.presence
    await presence.add_presence("room", ClientInfo("alice", "c1"))
    snapshot = await presence.presence("room")
    await presence.add_presence("room", ClientInfo("bob", "c2"))
    assert list(snapshot) == ["c1"]


# --- Node.recover (8.3) ----------------------------------------------------------------------


def make_node(engines: Engines, history_size: int = 100) -> Node[Any]:
    config = make_config({"channel": {"without_namespace": {"history_size": history_size}}})
    # The node is not run: its broker already delivers to the test's recording handler.
    return Node(config, engines.broker, engines.presence)


async def node_publish(node: Node[Any], channel: str, count: int) -> list[StreamPosition]:
    ch = node.resolve(channel)
    return [await node.publish(ch, RawJSON(b'{"n":%d}' % n)) for n in range(1, count + 1)]


async def recover(
    node: Node[Any], channel: str, offset: int, epoch: str, limit: int = 300
) -> tuple[list[int], StreamPosition, bool]:
    pubs, top, recovered = await node.recover(
        node.resolve(channel), StreamPosition(offset, epoch), limit
    )
    return [p.offset for p in pubs], top, recovered


async def test_recover_never_used_channel_from_zero(engines: Engines) -> None:
    node = make_node(engines)
    offsets, top, recovered = await recover(node, "news", 0, "")
    assert (offsets, top.offset, recovered) == ([], 0, True)
    assert top.epoch


async def test_recover_nothing_missed(engines: Engines) -> None:
    node = make_node(engines)
    positions = await node_publish(node, "news", 3)
    top = positions[-1]
    assert await recover(node, "news", 3, top.epoch) == ([], top, True)


async def test_recover_gap_returns_missed_publications_oldest_first(engines: Engines) -> None:
    node = make_node(engines)
    positions = await node_publish(node, "news", 5)
    top = positions[-1]
    assert await recover(node, "news", 2, top.epoch) == ([3, 4, 5], top, True)
    assert await recover(node, "news", 0, top.epoch) == ([1, 2, 3, 4, 5], top, True)


async def test_recover_empty_client_epoch_matches(engines: Engines) -> None:
    node = make_node(engines)
    positions = await node_publish(node, "news", 5)
    assert await recover(node, "news", 2, "") == ([3, 4, 5], positions[-1], True)
    assert await recover(node, "news", 5, "") == ([], positions[-1], True)


async def test_recover_epoch_mismatch_is_not_recovered(engines: Engines) -> None:
    node = make_node(engines)
    positions = await node_publish(node, "news", 5)
    top = positions[-1]
    assert await recover(node, "news", 2, "other") == ([], top, False)
    assert await recover(node, "news", 5, "other") == ([], top, False)  # even at the top
    assert await recover(node, "news", 0, "_") == ([], top, False)  # the SDK's sentinel


async def test_recover_trimmed_window_is_not_recovered(engines: Engines) -> None:
    node = make_node(engines, history_size=3)
    positions = await node_publish(node, "news", 6)  # kept: 4, 5, 6
    top = positions[-1]
    assert await recover(node, "news", 1, top.epoch) == ([], top, False)
    assert await recover(node, "news", 2, top.epoch) == ([], top, False)
    # The first missed one is still there: recovered.
    assert await recover(node, "news", 3, top.epoch) == ([4, 5, 6], top, True)


async def test_recover_after_history_ttl_expired_is_not_recovered(
    engines: Engines, engine_time: MockClock | None
) -> None:
    node = make_node(engines)
    positions = await node_publish(node, "news", 3)
    await engines.elapse(node.config.channel.without_namespace.history_ttl + 1)
    top = positions[-1]
    assert await recover(node, "news", 1, top.epoch) == ([], top, False)
    # Nothing was missed: the empty window does not matter.
    assert await recover(node, "news", 3, top.epoch) == ([], top, True)


async def test_recover_more_missed_than_the_limit_is_not_recovered(engines: Engines) -> None:
    node = make_node(engines)
    positions = await node_publish(node, "news", 5)
    top = positions[-1]
    assert await recover(node, "news", 0, top.epoch, limit=2) == ([], top, False)
    assert await recover(node, "news", 2, top.epoch, limit=2) == ([], top, False)
    # Exactly at the limit is fine.
    assert await recover(node, "news", 3, top.epoch, limit=2) == ([4, 5], top, True)
    # 0 means no limit (as recovery_max_publication_limit = 0 in the config).
    assert await recover(node, "news", 0, top.epoch, limit=0) == ([1, 2, 3, 4, 5], top, True)


async def test_recover_from_a_position_ahead_of_the_stream_is_not_recovered(
    engines: Engines,
) -> None:
    node = make_node(engines)
    positions = await node_publish(node, "news", 3)
    top = positions[-1]
    assert await recover(node, "news", 7, top.epoch) == ([], top, False)


async def test_recover_after_remove_history(engines: Engines) -> None:
    node = make_node(engines)
    positions = await node_publish(node, "news", 3)
    await engines.broker.remove_history("news")
    top = positions[-1]
    assert await recover(node, "news", 3, top.epoch) == ([], top, True)
    assert await recover(node, "news", 2, top.epoch) == ([], top, False)


# --- reads do not create long-lived state (issue 14, item 5) --------------------------------------


async def test_a_read_creates_a_stream_only_briefly(
    engines: Engines, engine_time: MockClock | None
) -> None:
    """A read of a channel without a stream answers with an epoch (a client recovering later
    must be able to tell), but that stream lives an hour at most, not `meta_ttl`, and reads do
    not renew it; the first publication makes it an ordinary stream with the same epoch."""
    _, read_top = await read(engines, "quiet")
    assert read_top.offset == 0
    assert read_top.epoch
    await engines.elapse(1800)
    assert (await read(engines, "quiet"))[1] == read_top  # still the same, not renewed
    await engines.elapse(1801)  # 3601 s after the first read
    _, later = await read(engines, "quiet")
    assert later.epoch != read_top.epoch  # forgotten: a recovery with the old one fails
    # A publication keeps the stream it finds, and for the whole meta_ttl from then on.
    position = await engines.broker.publish("quiet", pub(1), HISTORY)
    assert position == StreamPosition(1, later.epoch)
    await engines.elapse(2 * 3600)
    assert (await read(engines, "quiet"))[1] == position


async def test_the_memory_engines_read_created_streams_are_bounded_in_number(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The memory engine also bounds their number (Redis bounds them by their TTL alone)."""
    monkeypatch.setattr(memory_module, "MAX_READ_CREATED", 100)
    async with memory_engines() as engines:
        assert isinstance(engines.broker, MemoryBroker)
        for n in range(1000):
            await read(engines, f"scan:{n}")
        assert engines.broker.statistics()["streams"] == 100
        # The newest are the ones kept; a published stream is never evicted for them.
        await engines.broker.publish("busy", pub(1), HISTORY)
        for n in range(1000, 1200):
            await read(engines, f"scan:{n}")
        assert (await read(engines, "busy"))[1].offset == 1
