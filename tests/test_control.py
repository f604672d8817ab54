"""The control plane and the shared state: one contract run against the memory twins and Redis,
and the node's `Cluster` (heartbeats, commands, surveys, bad input) on the memory bus with Trio's
autojump clock. Three real nodes over Redis: tests/test_redis_nodes.py.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from redis_server import RedisServer, new_prefix
from trio.testing import MockClock

from aether_trio.cluster import BYE_SECONDS, INBOX_SIZE, Cluster
from aether_trio.config import RedisEngineConfig
from aether_trio.engines.base import EngineError
from aether_trio.engines.control import (
    MEMORY_INBOX,
    ControlPlane,
    MemoryControl,
    MemoryControlBus,
    MemorySharedState,
    SharedState,
)
from aether_trio.engines.redis import open_redis_cluster, open_redis_engine
from aether_trio.engines.redis.control import RedisControl
from aether_trio.protocol.control import ControlError, decode_control, encode_control


class Recorder:
    """A `ControlHandler` keeping what arrives, in order."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.arrived = trio.Event()

    def handle_control(self, sender: str, message: bytes) -> None:
        self.messages.append((sender, message))
        self.arrived.set()

    async def wait_for(self, count: int) -> None:
        with trio.fail_after(10):
            while len(self.messages) < count:
                self.arrived = trio.Event()
                await self.arrived.wait()


@attrs.define
class Node:
    plane: ControlPlane
    shared: SharedState
    handler: Recorder


Opener = Callable[[int], AbstractAsyncContextManager[list[Node]]]


@asynccontextmanager
async def memory_nodes(count: int) -> AsyncIterator[list[Node]]:
    bus, shared = MemoryControlBus(), MemorySharedState()
    nodes = [Node(bus.plane(), shared, Recorder()) for _ in range(count)]
    async with trio.open_nursery() as nursery:
        for node in nodes:
            await nursery.start(node.plane.run, node.handler)
        yield nodes
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def redis_nodes(server: RedisServer, count: int) -> AsyncIterator[list[Node]]:
    config = RedisEngineConfig(address=server.address, prefix=new_prefix(), probe_interval=0.2)
    nodes = []
    async with trio.open_nursery() as nursery:
        for _ in range(count):
            broker, _presence = open_redis_engine(config)
            plane, shared = open_redis_cluster(broker)
            await nursery.start(broker.run, _NoEvents())
            node = Node(plane, shared, Recorder())
            await nursery.start(plane.run, node.handler)
            nodes.append(node)
        yield nodes
        nursery.cancel_scope.cancel()


class _NoEvents:
    def handle_publication(self, channel: str, pub: Any) -> None: ...
    def handle_join(self, channel: str, info: Any) -> None: ...
    def handle_leave(self, channel: str, info: Any) -> None: ...
    def handle_gap(self, channels: list[str]) -> None: ...


def _memory(_request: pytest.FixtureRequest) -> Opener:
    return memory_nodes


def _redis(request: pytest.FixtureRequest) -> Opener:
    return functools.partial(redis_nodes, request.getfixturevalue("redis_server"))


@pytest.fixture(params=[pytest.param(_memory, id="memory"), pytest.param(_redis, id="redis")])
def open_nodes(request: pytest.FixtureRequest) -> Opener:
    factory: Callable[[pytest.FixtureRequest], Opener] = request.param
    return factory(request)


async def settle(nodes: list[Node]) -> None:
    """Let whatever is in flight arrive: a broadcast marker from the last node, seen by all."""
    marker = b"settle-%d" % id(nodes)
    await nodes[-1].plane.broadcast(marker)
    for node in nodes[:-1]:
        with trio.fail_after(10):
            while marker not in [m for _, m in node.handler.messages]:
                node.handler.arrived = trio.Event()
                await node.handler.arrived.wait()
        node.handler.messages.remove((nodes[-1].plane.node_id, marker))


# --- the contract -------------------------------------------------------------------------------


async def test_a_broadcast_reaches_every_other_node_in_order_but_not_the_sender(
    open_nodes: Opener,
) -> None:
    async with open_nodes(3) as (a, b, c):
        assert len({a.plane.node_id, b.plane.node_id, c.plane.node_id}) == 3
        for n in range(20):
            await a.plane.broadcast(b"m%d" % n)
        await b.handler.wait_for(20)
        await c.handler.wait_for(20)
        expected = [(a.plane.node_id, b"m%d" % n) for n in range(20)]
        assert b.handler.messages == expected
        assert c.handler.messages == expected
        await settle([a, b, c])
        assert a.handler.messages == []


async def test_send_reaches_only_the_addressed_node(open_nodes: Opener) -> None:
    async with open_nodes(3) as (a, b, c):
        await a.plane.send(c.plane.node_id, b"for c")
        await a.plane.send("0" * 32, b"for nobody")  # no such node: nothing happens
        await c.handler.wait_for(1)
        await settle([a, b, c])
        assert c.handler.messages == [(a.plane.node_id, b"for c")]
        assert b.handler.messages == []
        assert a.handler.messages == []


async def test_shared_tables_are_seen_by_every_node(open_nodes: Opener) -> None:
    async with open_nodes(2) as (a, b):
        await a.shared.put("bans", "alice", b'{"x":1}')
        await a.shared.put("bans", "bob", b"2")
        assert await b.shared.load("bans") == {"alice": b'{"x":1}', "bob": b"2"}
        await b.shared.delete("bans", "alice")
        await b.shared.delete("bans", "nobody")
        assert await a.shared.load("bans") == {"bob": b"2"}
        assert await a.shared.load("empty") == {}


async def test_a_users_connections_are_counted_across_nodes(open_nodes: Opener) -> None:
    async with open_nodes(2) as (a, b):
        user = f"u{id(a)}"
        assert await a.shared.add_connection(user, "c1", 2, 60) is None
        assert await b.shared.add_connection(user, "c2", 2, 60) is None
        # The limit holds on either node; the same client again is not a new one.
        assert await b.shared.add_connection(user, "c3", 2, 60) == 2
        assert await a.shared.add_connection(user, "c1", 2, 60) is None
        await a.shared.remove_connection(user, "c1")
        await a.shared.remove_connection(user, "never")
        assert await b.shared.add_connection(user, "c3", 2, 60) is None
        # Without a limit anyone is counted.
        assert await a.shared.add_connection(user, "c4", 0, 60) is None
        await a.shared.refresh_connections([(user, "c2"), (user, "c3")], 60)
        assert await a.shared.add_connection(user, "c5", 3, 60) == 3


async def test_counted_connections_fade_unless_renewed(redis_server: RedisServer) -> None:
    # Real time (the entries expire in Redis): short TTLs, generous waits.
    async with redis_nodes(redis_server, 2) as (a, b):
        await a.shared.add_connection("dana", "kept", 2, 0.3)
        await a.shared.add_connection("dana", "dropped", 2, 0.3)
        assert await b.shared.add_connection("dana", "new", 2, 0.3) == 2
        for _ in range(4):
            await trio.sleep(0.15)
            await a.shared.refresh_connections([("dana", "kept")], 0.3)
        # "dropped" was not renewed: its node died, as far as the cluster knows.
        assert await b.shared.add_connection("dana", "new", 2, 30) is None
        assert await b.shared.add_connection("dana", "third", 2, 30) == 2


async def test_memory_counted_connections_fade_on_their_clock() -> None:
    now = [0.0]
    shared = MemorySharedState(clock=lambda: now[0])
    await shared.add_connection("u", "a", 1, 10)
    assert await shared.add_connection("u", "b", 1, 10) == 1
    now[0] = 9.0
    await shared.refresh_connections([("u", "a")], 10)
    now[0] = 15.0
    assert await shared.add_connection("u", "b", 1, 10) == 1  # renewed: still there
    now[0] = 19.5
    assert await shared.add_connection("u", "b", 1, 10) is None
    await shared.remove_connection("u", "b")
    await shared.remove_connection("u", "b")


async def test_a_full_memory_inbox_drops_and_counts(caplog: pytest.LogCaptureFixture) -> None:
    bus = MemoryControlBus()
    a, b = bus.plane(), bus.plane()
    recorder = Recorder()
    async with trio.open_nursery() as nursery:
        await nursery.start(a.run, Recorder())
        bus.planes[b.node_id] = b  # registered but not reading: its inbox fills up
        for n in range(MEMORY_INBOX + 3):
            await a.broadcast(b"%d" % n)
        assert b.dropped == 3
        assert "inbox full" in caplog.text
        del bus.planes[b.node_id]
        nursery.start_soon(b.run, recorder)
        await recorder.wait_for(MEMORY_INBOX)
        nursery.cancel_scope.cancel()


# --- Redis: what arrives on the control channels that is not a node's --------------------------


async def test_redis_control_ignores_garbage_and_its_own_messages(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    async with redis_nodes(redis_server, 2) as (a, b):
        plane = a.plane
        assert isinstance(plane, RedisControl)
        for junk in (b"junk", b"|no sender", b"NOTHEX" * 6 + b"|x", b"\xff\xfe|x"):
            await trio.to_thread.run_sync(redis_server.command, "PUBLISH", plane.channel, junk)
        # A message claiming to come from the node itself is its own broadcast coming back.
        own = plane.node_id.encode() + b"|echo"
        await trio.to_thread.run_sync(redis_server.command, "PUBLISH", plane.channel, own)
        await settle([a, b])
        assert plane.rejected == 4
        assert a.handler.messages == []
        assert b.handler.messages == [(a.plane.node_id, b"echo")]  # b takes it as a's
        assert "not Aether's" in caplog.text


async def test_redis_shared_table_with_a_foreign_key_is_an_engine_error(
    redis_server: RedisServer,
) -> None:
    async with redis_nodes(redis_server, 1) as (a,):
        shared = a.shared
        prefix = shared._prefix  # type: ignore[attr-defined]
        await trio.to_thread.run_sync(
            redis_server.command, "HSET", f"{prefix}.state.bans", b"\xff", b"x"
        )
        with pytest.raises(EngineError, match="not Aether's"):
            await shared.load("bans")


async def test_redis_control_before_run_drops_messages(redis_server: RedisServer) -> None:
    config = RedisEngineConfig(address=redis_server.address, prefix=new_prefix())
    broker, _presence = open_redis_engine(config)
    plane, _shared = open_redis_cluster(broker)
    assert isinstance(plane, RedisControl)
    plane._take(b"0" * 32 + b"|nobody listens yet")  # no handler: dropped, no error
    assert plane.rejected == 0


# --- the messages -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (b"not json", "not JSON"),
        (b"[1]", "not a JSON object"),
        (b'{"k": "boom"}', "unknown kind"),
        (b'{"i": {}}', "unknown kind"),
        (b'{"k": "node", "i": 3}', "i must be a dict"),
        (b'{"k": "cmd", "m": "x"}', "b must be a dict"),
        (b'{"k": "sreq", "id": 1, "op": "x", "b": {}}', "id must be a str"),
        (b'{"k": "srep", "id": "x"}', "needs a result"),
        (b'{"k": "srep", "id": "x", "r": 1}', "needs a result"),
    ],
)
def test_bad_control_messages_are_refused_by_name(raw: bytes, problem: str) -> None:
    with pytest.raises(ControlError, match=problem):
        decode_control(raw)


def test_control_messages_round_trip() -> None:
    message = decode_control(encode_control("cmd", m="api.disconnect", b={"user": "u"}))
    assert message.kind == "cmd"
    assert message["m"] == "api.disconnect"
    assert decode_control(encode_control("srep", id="s", e="no")).fields == {"id": "s", "e": "no"}
    assert decode_control(encode_control("bye")).fields == {}


# --- the node's Cluster, on the memory bus ------------------------------------------------------


def info_of(name: str) -> Callable[[], dict[str, Any]]:
    return lambda: {"name": name, "num_clients": 0}


@asynccontextmanager
async def clusters(*names: str) -> AsyncIterator[list[Cluster]]:
    bus = MemoryControlBus()
    found = [Cluster(bus.plane(), info_of(name)) for name in names]
    async with trio.open_nursery() as nursery:
        for cluster in found:
            await nursery.start(cluster.run)
        yield found
        nursery.cancel_scope.cancel()


def names(cluster: Cluster) -> list[str]:
    return sorted(info["name"] for info in cluster.nodes().values())


async def wait_until(condition: Callable[[], bool]) -> None:
    with trio.fail_after(30):
        while not condition():  # noqa: ASYNC110  (no event for it: poll with a deadline)
            await trio.sleep(0.01)


async def test_nodes_find_each_other_and_forget_one_that_falls_silent(
    autojump_clock: MockClock,
) -> None:
    async with clusters("a", "b", "c") as (a, b, c):
        await wait_until(lambda: names(a) == names(b) == names(c) == ["a", "b", "c"])
        # c hangs: no more heartbeats (nor a goodbye). It is forgotten after node_expire.
        c.heartbeat_interval = 3600
        silent_since = trio.current_time()
        await wait_until(lambda: names(a) == ["a", "b"])
        assert trio.current_time() - silent_since <= a.node_expire + a.heartbeat_interval
        assert names(b) == ["a", "b"]


async def test_a_node_that_stops_says_goodbye(autojump_clock: MockClock) -> None:
    bus = MemoryControlBus()
    a, b = Cluster(bus.plane(), info_of("a")), Cluster(bus.plane(), info_of("b"))
    async with trio.open_nursery() as nursery:
        await nursery.start(a.run)
        async with trio.open_nursery() as b_nursery:
            await b_nursery.start(b.run)
            await wait_until(lambda: names(a) == ["a", "b"])
            before = trio.current_time()
            b_nursery.cancel_scope.cancel()
        await wait_until(lambda: names(a) == ["a"])
        assert trio.current_time() - before < a.heartbeat_interval  # at once, not by expiry
        # Said once: a node stopped by `goodbye` (graceful shutdown) does not repeat it.
        await a.goodbye()
        sent = a.sent
        await trio.sleep(a.heartbeat_interval * 2)  # no heartbeat after it either
        nursery.cancel_scope.cancel()
    assert a.sent == sent


async def test_commands_reach_the_other_nodes_in_order_and_failures_stay_local(
    autojump_clock: MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    async with clusters("a", "b") as (a, b):
        got: list[Any] = []

        async def record(body: dict[str, Any]) -> None:
            await trio.sleep(0.01)  # a handler that awaits keeps the order too
            got.append(body["n"])

        async def explode(body: dict[str, Any]) -> None:
            raise RuntimeError("handler bug")

        b.commands["record"] = record
        b.commands["explode"] = explode
        for n in range(5):
            await a.broadcast("record", {"n": n})
            if n == 2:
                await a.broadcast("explode", {})
                await a.broadcast("unknown", {})
        await wait_until(lambda: len(got) == 5)
        assert got == [0, 1, 2, 3, 4]
        assert "control cmd from node" in caplog.text
        assert "handler bug" in caplog.text
        assert "unknown control command 'unknown'" in caplog.text


async def test_a_survey_gathers_every_node_and_leaves_out_the_late(
    autojump_clock: MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    async with clusters("a", "b", "c") as (a, b, c):
        await wait_until(lambda: len(a.nodes()) == 3)

        def answer(name: str, delay: float = 0.0) -> Any:
            async def run(body: dict[str, Any]) -> dict[str, Any]:
                await trio.sleep(delay)
                return {"name": name, "asked": body["q"]}

            return run

        a.surveys["who"] = answer("a")
        b.surveys["who"] = answer("b")
        c.surveys["who"] = answer("c")
        replies = await a.survey("who", {"q": 1})
        assert {r["name"] for r in replies.values()} == {"a", "b", "c"}
        assert set(replies) == {a.node_id, b.node_id, c.node_id}

        # c answers too late: the survey returns after survey_timeout without it.
        c.surveys["who"] = answer("c", delay=a.survey_timeout * 2)
        started = trio.current_time()
        replies = await a.survey("who", {"q": 2})
        assert {r["name"] for r in replies.values()} == {"a", "b"}
        assert trio.current_time() - started == pytest.approx(a.survey_timeout, abs=0.1)
        assert "no reply from 1 nodes" in caplog.text

        # A node that does not know the survey says so.
        del b.surveys["who"]
        c.surveys["who"] = answer("c")
        replies = await a.survey("who", {"q": 3})
        assert replies[b.node_id] == {"error": "unknown survey who"}


async def test_garbage_and_floods_are_logged_and_never_crash_the_node(
    autojump_clock: MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with clusters("a") as (a,):
        for junk in (b"", b"\x00\xff", b'{"k": "cmd"}', b'{"k": "srep", "id": "?", "r": {}}'):
            a.handle_control("0" * 32, junk)
        assert a.rejected == 3  # the reply to no survey is well-formed: ignored
        a.handle_control("1" * 32, encode_control("bye"))  # a node never seen: nothing
        blocked = trio.Event()

        async def slow(body: dict[str, Any]) -> None:
            await blocked.wait()

        a.commands["slow"] = slow
        await trio.testing.wait_all_tasks_blocked()  # the worker waits on its inbox
        for _ in range(INBOX_SIZE + 10):
            a.handle_control("2" * 32, encode_control("cmd", m="slow", b={}))
        # The worker took the first at once (it was waiting); the inbox holds INBOX_SIZE more.
        assert a.dropped == 9
        assert caplog.text.count("inbox full") == 1  # logged once, not 9 times
        assert "inbox full" in caplog.text
        blocked.set()
        assert a.nodes()[a.node_id] == {"name": "a", "num_clients": 0}
        stats = a.statistics()
        assert stats["rejected"] == 3
        assert stats["dropped"] == 9
        assert stats["inbox"] == INBOX_SIZE


async def test_a_cluster_restarted_after_a_goodbye_announces_itself_again(
    autojump_clock: MockClock,
) -> None:
    bus = MemoryControlBus()
    a, b = Cluster(bus.plane(), info_of("a")), Cluster(bus.plane(), info_of("b"))
    async with trio.open_nursery() as nursery:
        await nursery.start(a.run)
        async with trio.open_nursery() as first:
            await first.start(b.run)
            await wait_until(lambda: names(a) == ["a", "b"])
            first.cancel_scope.cancel()  # b's run ends (as when a service fails): goodbye
        await wait_until(lambda: names(a) == ["a"])
        await nursery.start(b.run)  # restarted by the supervisor
        await wait_until(lambda: names(a) == ["a", "b"])
        nursery.cancel_scope.cancel()


async def test_a_failing_plane_is_logged_not_fatal(
    autojump_clock: MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    class Down(MemoryControl):
        async def broadcast(self, message: bytes) -> None:
            raise EngineError("redis is unreachable")

        async def send(self, node_id: str, message: bytes) -> None:
            raise EngineError("redis is unreachable")

    cluster = Cluster(Down(), info_of("a"))
    async with trio.open_nursery() as nursery:
        await nursery.start(cluster.run)
        cluster.handle_control("3" * 32, encode_control("node", i={"name": "b"}))  # hello back
        await trio.sleep(cluster.heartbeat_interval * 2)
        with pytest.raises(EngineError):
            await cluster.broadcast("x", {})
        nursery.cancel_scope.cancel()
    assert "control broadcast failed" in caplog.text
    assert "control message to node 333" in caplog.text


async def test_a_goodbye_the_engine_does_not_send_gives_up_in_time(
    autojump_clock: MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)

    class Hanging(MemoryControl):
        async def broadcast(self, message: bytes) -> None:
            await trio.sleep_forever()  # an engine that is stopping

    cluster = Cluster(Hanging(), info_of("a"))
    started = trio.current_time()
    await cluster.goodbye()
    assert trio.current_time() - started == pytest.approx(BYE_SECONDS)
    assert "goodbye not sent within 2.0 s" in caplog.text
