"""Per-connection timers end to end, on the virtual clock and without sockets.

The harness runs the real `Node` and `Client` over in-memory byte streams (the server side on
Aether's transport, the test client trio-websocket's), so `autojump_clock` can skip every wait:
pings, pong checks, the stale close, connection and subscription expiry, and the slow-reader
close. Tokens are checked against the wall clock (`time.time()`) while timers run on the Trio
clock, so a token minted with `exp = int(time.time()) + N` fires its timer about N (+ the
configured delay) Trio-seconds later. The slow-reader test needs back-pressure, which
`memory_stream_pair` does not give (its buffers are unbounded), so it runs over
`bounded_stream_pair`, a pipe with a socket-like bounded buffer.
"""

from __future__ import annotations

import gc
import itertools
import time
import weakref
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, cast

import attrs
import orjson
import pytest
import trio
import trio.testing
import trio_websocket
from conftest import close_reason, get_text, make_config, token
from trio_websocket import ConnectionClosed

from aether_trio.config import Config
from aether_trio.connection.client import Client
from aether_trio.connection.serve import run as run_connection
from aether_trio.connection.writer import CloseRequest
from aether_trio.engines.memory import MemoryBroker, MemoryPresenceManager
from aether_trio.node import Node
from aether_trio.protocol.codec import raw_json
from aether_trio.transport import read_request

StreamPair = Callable[[], tuple[trio.abc.Stream, trio.abc.Stream]]

# --- harness ---------------------------------------------------------------------------------


class _PipeSend(trio.abc.SendStream):
    def __init__(self, channel: trio.MemorySendChannel[bytes]) -> None:
        self._channel = channel

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            await trio.lowlevel.checkpoint()
            return
        # Blocks while the pipe is full; a cancelled send leaves the pipe consistent.
        await self._channel.send(bytes(data))

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        await self._channel.aclose()


class _PipeReceive(trio.abc.ReceiveStream):
    def __init__(self, channel: trio.MemoryReceiveChannel[bytes]) -> None:
        self._channel = channel
        self._pending = b""

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._pending:
            await trio.lowlevel.checkpoint()
        else:
            try:
                self._pending = await self._channel.receive()
            except trio.EndOfChannel:
                return b""
        size = max_bytes or len(self._pending)
        chunk, self._pending = self._pending[:size], self._pending[size:]
        return chunk

    async def aclose(self) -> None:
        await self._channel.aclose()


def bounded_stream_pair(writes: int = 4) -> tuple[trio.abc.Stream, trio.abc.Stream]:
    """Like `trio.testing.memory_stream_pair`, but each direction holds at most `writes` unread
    writes, as a socket buffer does. (Memory streams buffer without bound: their `send_all` never
    blocks, so a peer that stops reading never pushes back on the server's writer.)"""
    a_send, b_receive = trio.open_memory_channel[bytes](writes)
    b_send, a_receive = trio.open_memory_channel[bytes](writes)
    a = trio.StapledStream(_PipeSend(a_send), _PipeReceive(a_receive))
    b = trio.StapledStream(_PipeSend(b_send), _PipeReceive(b_receive))
    return a, b


class WsClient:
    """A bare protocol client: send commands, read decoded lines in order.

    Messages that arrive while `command` waits for its reply are kept in `stash` and come out of
    `receive` first. (conftest's `WsClient.command` spins forever without a checkpoint as soon
    as a push arrives before the reply: it re-queues the push into the list it reads from.)
    """

    def __init__(self, ws: trio_websocket.WebSocketConnection) -> None:
        self.ws = ws
        self.next_id = 1
        self.stash: list[dict[str, Any]] = []
        self._lines: deque[dict[str, Any]] = deque()

    async def send(self, *commands: dict[str, Any]) -> None:
        await self.ws.send_message("\n".join(orjson.dumps(c).decode() for c in commands))

    async def _read(self) -> dict[str, Any]:
        if not self._lines:
            frame = await get_text(self.ws)
            self._lines.extend(orjson.loads(line) for line in frame.split("\n"))
        return self._lines.popleft()

    async def receive(self) -> dict[str, Any]:
        if self.stash:
            return self.stash.pop(0)
        return await self._read()

    async def read_until_closed(self) -> None:
        """Read (and drop) messages until the server closes (`ConnectionClosed`)."""
        while True:
            await self.receive()

    async def command(self, method: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        cmd_id = self.next_id
        self.next_id += 1
        await self.send({"id": cmd_id, method: body or {}})
        while True:
            msg = await self._read()
            if msg.get("id") == cmd_id:
                return msg
            self.stash.append(msg)

    async def connect(self, tok: str) -> dict[str, Any]:
        return await self.command("connect", {"token": tok})


@attrs.define
class Harness:
    node: Node[Client]
    nursery: trio.Nursery

    async def connect_ws(
        self, pair: StreamPair = trio.testing.memory_stream_pair
    ) -> tuple[WsClient, Client]:
        """Open a WebSocket to a fresh server-side `Client`; returns the raw test client and the
        server's `Client` object."""
        server_stream, client_stream = pair()
        send_client, receive_client = trio.open_memory_channel[Client](1)
        self.nursery.start_soon(self._serve, server_stream, send_client)
        # trio-websocket annotates the stream as a socket (or TLS over one); it only sends and
        # receives on it, and the test's is an in-memory stream pair.
        ws = await trio_websocket.wrap_client_stream(
            self.nursery,
            cast(trio.SocketStream, client_stream),
            "localhost",
            self.node.config.server.websocket_path,
        )
        client = await receive_client.receive()
        return WsClient(ws), client

    async def _serve(
        self, stream: trio.abc.Stream, send_client: trio.MemorySendChannel[Client]
    ) -> None:
        try:
            request = await read_request(
                stream, max_message_size=self.node.config.server.max_message_size
            )
            assert request is not None
            client = Client(self.node, await request.accept())
            send_client.send_nowait(client)
            await run_connection(client)
        finally:
            await stream.aclose()

    async def publish(self, channel: str, data: Any) -> None:
        await self.node.publish(self.node.resolve(channel), raw_json(data))


@asynccontextmanager
async def open_harness(config: Config) -> AsyncIterator[Harness]:
    """A node wired as `app.py` does (memory engines), running until the block ends."""
    node: Node[Client] = Node(config, MemoryBroker(), MemoryPresenceManager())
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        yield Harness(node, nursery)
        nursery.cancel_scope.cancel()


def config(**client: Any) -> Config:
    return make_config({"client": client})


def connection_token(ttl: int | None = None, user: str = "42") -> str:
    """A connection token expiring `ttl` wall-clock seconds from now (never, if None)."""
    if ttl is None:
        return token(user, ttl=None)
    return token(user, exp=int(time.time()) + ttl)


def subscription_token(channel: str, ttl: int, user: str = "42") -> str:
    return token(user, channel=channel, exp=int(time.time()) + ttl)


@attrs.frozen
class Closed:
    code: int
    reason: str | None
    at: float  # Trio time at which the client saw the close
    messages: list[dict[str, Any]]  # what arrived before it


async def read_until_closed(raw: WsClient) -> Closed:
    messages: list[dict[str, Any]] = []
    try:
        while True:
            messages.append(await raw.receive())
    except ConnectionClosed as exc:
        close = close_reason(exc)
        return Closed(close.code, close.reason, trio.current_time(), messages)


async def expect_open(raw: WsClient) -> list[dict[str, Any]]:
    """Prove the connection is alive with a round trip; returns the pushes seen meanwhile."""
    reply = await raw.command("presence_stats", {"channel": "probe"})
    assert "error" not in reply, reply
    pushes, raw.stash = raw.stash, []
    return pushes


async def idle(raw: WsClient, seconds: float) -> list[dict[str, Any]]:
    """Read whatever arrives during `seconds` (without answering pings)."""
    messages: list[dict[str, Any]] = []
    with trio.move_on_after(seconds):
        while True:
            messages.append(await raw.receive())
    return messages


def is_ping(message: dict[str, Any]) -> bool:
    return message == {}


def pubs_of(messages: list[dict[str, Any]], channel: str) -> list[dict[str, Any]]:
    return [
        m["push"]["pub"]
        for m in messages
        if m.get("push", {}).get("channel") == channel and "pub" in m["push"]
    ]


# --- ping / pong (reference 5) ---------------------------------------------------------------


async def test_first_ping_arrives_within_half_to_one_interval(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_harness(config(ping_interval=20, pong_timeout=5)) as harness:
        for _ in range(5):  # the first ping is randomized: look at a few connections
            raw, _client = await harness.connect_ws()
            reply = await raw.connect(connection_token())
            connected_at = trio.current_time()
            assert reply["connect"]["ping"] == 20
            assert reply["connect"]["pong"] is True
            assert is_ping(await raw.receive())
            assert 10 <= trio.current_time() - connected_at <= 20
            await raw.ws.aclose()


async def test_answering_pongs_keeps_the_connection_and_pings_are_periodic(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_harness(config(ping_interval=20, pong_timeout=5)) as harness:
        raw, client = await harness.connect_ws()
        await raw.connect(connection_token())
        ping_times: list[float] = []
        for _ in range(6):
            assert is_ping(await raw.receive())
            ping_times.append(trio.current_time())
            await raw.send({})  # pong
        gaps = [b - a for a, b in itertools.pairwise(ping_times)]
        assert gaps == pytest.approx([20] * 5)
        assert client.writer.close_request is None
        assert await expect_open(raw) == []


async def test_missing_pong_closes_with_3012_after_pong_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_harness(config(ping_interval=20, pong_timeout=5)) as harness:
        raw, _client = await harness.connect_ws()
        await raw.connect(connection_token())
        assert is_ping(await raw.receive())
        pinged_at = trio.current_time()
        closed = await read_until_closed(raw)
        assert (closed.code, closed.reason) == (3012, "no pong")
        assert closed.at - pinged_at == pytest.approx(5)
        assert closed.messages == []


async def test_pong_for_the_first_ping_only_then_silence_closes_after_the_second(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_harness(config(ping_interval=20, pong_timeout=5)) as harness:
        raw, _client = await harness.connect_ws()
        await raw.connect(connection_token())
        assert is_ping(await raw.receive())
        first = trio.current_time()
        await raw.send({})
        assert is_ping(await raw.receive())
        assert trio.current_time() - first == pytest.approx(20)
        closed = await read_until_closed(raw)
        assert (closed.code, closed.reason) == (3012, "no pong")
        assert closed.at - first == pytest.approx(25)


async def test_ping_interval_zero_disables_pings(autojump_clock: trio.testing.MockClock) -> None:
    async with open_harness(config(ping_interval=0)) as harness:
        raw, _client = await harness.connect_ws()
        reply = await raw.connect(connection_token())
        assert "ping" not in reply["connect"]
        assert "pong" not in reply["connect"]
        assert await idle(raw, 1000) == []
        assert await expect_open(raw) == []


async def test_pong_timeout_zero_sends_pings_without_asking_for_pongs(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_harness(config(ping_interval=20, pong_timeout=0)) as harness:
        raw, client = await harness.connect_ws()
        reply = await raw.connect(connection_token())
        assert reply["connect"]["ping"] == 20
        assert "pong" not in reply["connect"]
        messages = await idle(raw, 100)
        assert len(messages) >= 4
        assert all(is_ping(m) for m in messages)
        assert client.writer.close_request is None
        assert await expect_open(raw) == []


# --- stale (reference 7.3, 3502) --------------------------------------------------------------


async def test_no_connect_within_stale_delay_closes_with_3502(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_harness(config(stale_close_delay=7)) as harness:
        opened_at = trio.current_time()
        raw, _client = await harness.connect_ws()
        closed = await read_until_closed(raw)
        assert (closed.code, closed.reason) == (3502, "stale")
        assert closed.at - opened_at == pytest.approx(7)


async def test_connect_in_time_cancels_the_stale_close(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_harness(config(stale_close_delay=7, ping_interval=0)) as harness:
        raw, _client = await harness.connect_ws()
        await trio.sleep(5)
        assert "connect" in await raw.connect(connection_token())
        assert await idle(raw, 100) == []
        assert await expect_open(raw) == []


# --- presence refresh (centrifuge's updatePresence) -----------------------------------------


async def test_presence_is_refreshed_only_while_a_presence_subscription_is_held(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Every `presence_update_interval` the connection's presence entries are added again, as
    centrifuge's client does; a connection without a presence subscription keeps no timer for
    it (idle memory), gets one with its first such subscription and drops it with its last."""
    cfg = make_config(
        {
            "client": {"ping_interval": 0, "presence_update_interval": 10},
            "channel": {"namespaces": [{"name": "plain", "allow_subscribe_for_client": True}]},
        }
    )
    async with open_harness(cfg) as harness:
        refreshed: list[tuple[float, str]] = []
        real_refresh = harness.node.refresh_presence

        async def refresh_presence(sub: Any, info: Any) -> None:
            refreshed.append((trio.current_time(), sub.channel))
            await real_refresh(sub, info)

        harness.node.refresh_presence = refresh_presence  # type: ignore[method-assign]
        raw, client = await harness.connect_ws()
        await raw.connect(connection_token())
        await raw.command("subscribe", {"channel": "plain:a"})
        assert "presence" not in client.timers._timers
        await idle(raw, 25)
        assert refreshed == []
        start = trio.current_time()
        await raw.command("subscribe", {"channel": "room"})  # presence on
        await idle(raw, 25)
        assert [(round(t - start), ch) for t, ch in refreshed] == [(10, "room"), (20, "room")]
        await raw.command("unsubscribe", {"channel": "room"})
        await idle(raw, 25)
        assert len(refreshed) == 2
        assert "presence" not in client.timers._timers


# --- connection expiry (reference 9.4, 3005) -------------------------------------------------


async def test_connection_token_expiry_closes_with_3005_after_the_close_delay(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_harness(config(ping_interval=0, expired_close_delay=25)) as harness:
        raw, _client = await harness.connect_ws()
        reply = await raw.connect(connection_token(ttl=100))
        connected_at = trio.current_time()
        assert reply["connect"]["expires"] is True
        assert reply["connect"]["ttl"] in (99, 100)  # whole seconds left (wall clock)
        closed = await read_until_closed(raw)
        assert (closed.code, closed.reason) == (3005, "connection expired")
        assert 124 <= closed.at - connected_at <= 125


async def test_refresh_with_a_new_token_keeps_the_connection_past_the_old_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_harness(config(ping_interval=0, expired_close_delay=25)) as harness:
        raw, _client = await harness.connect_ws()
        await raw.connect(connection_token(ttl=100))
        connected_at = trio.current_time()
        await trio.sleep(90)  # as the SDK does, around `ttl`
        reply = await raw.command("refresh", {"token": connection_token(ttl=1000)})
        assert reply["refresh"]["expires"] is True
        assert reply["refresh"]["ttl"] in (999, 1000)
        # Well past the old deadline (connect + 125 s): still open.
        assert await idle(raw, 200) == []
        assert await expect_open(raw) == []
        # The new deadline is honoured in turn: about 1000 + 25 s after the refresh.
        closed = await read_until_closed(raw)
        assert (closed.code, closed.reason) == (3005, "connection expired")
        assert 90 + 1024 <= closed.at - connected_at <= 90 + 1025


async def test_refresh_with_a_token_without_exp_stops_the_expiry(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_harness(config(ping_interval=0, expired_close_delay=25)) as harness:
        raw, _client = await harness.connect_ws()
        await raw.connect(connection_token(ttl=100))
        reply = await raw.command("refresh", {"token": connection_token()})
        assert "expires" not in reply["refresh"]
        assert await idle(raw, 1000) == []
        assert await expect_open(raw) == []


async def test_a_closed_connection_is_not_kept_alive_by_its_expiry_timer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_harness(config(ping_interval=20, pong_timeout=5)) as harness:
        raw, client = await harness.connect_ws()
        await raw.connect(connection_token(ttl=30 * 24 * 3600))
        await raw.command(
            "subscribe", {"channel": "news", "token": subscription_token("news", 3600)}
        )
        alive = weakref.ref(client)
        del client
        await raw.ws.aclose()
        await trio.sleep(100)  # the connection is long gone; its ping timer has come and gone
        assert harness.node.clients == {}
        # One more timer run, so that nothing the scheduler popped last is still referenced.
        harness.node.scheduler.call_later(1, lambda: None)
        await trio.sleep(5)
        gc.collect()
        assert alive() is None, "the closed connection is held until its token expires"


# --- subscription expiry (reference 9.4, unsubscribe 2501) -----------------------------------


async def test_subscription_token_expiry_sends_unsubscribe_2501_and_stops_publications(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_harness(config(ping_interval=0, expired_sub_close_delay=25)) as harness:
        raw, _client = await harness.connect_ws()
        await raw.connect(connection_token())
        reply = await raw.command(
            "subscribe", {"channel": "news", "token": subscription_token("news", 100)}
        )
        subscribed_at = trio.current_time()
        assert reply["subscribe"]["expires"] is True
        assert reply["subscribe"]["ttl"] in (99, 100)

        await harness.publish("news", {"n": 1})
        assert [p["data"] for p in pubs_of(await expect_open(raw), "news")] == [{"n": 1}]

        push = await raw.receive()
        assert push == {
            "push": {
                "channel": "news",
                "unsubscribe": {"code": 2501, "reason": "subscription expired"},
            }
        }
        assert 124 <= trio.current_time() - subscribed_at <= 125

        await harness.publish("news", {"n": 2})
        assert pubs_of(await expect_open(raw), "news") == []
        assert harness.node.hub.num_subscribers("news") == 0
        assert await harness.node.presence.presence("news") == {}  # left the channel
        # The connection itself stays, and the client may subscribe again.
        reply = await raw.command(
            "subscribe", {"channel": "news", "token": subscription_token("news", 1000)}
        )
        assert "subscribe" in reply
        await harness.publish("news", {"n": 3})
        assert [p["data"] for p in pubs_of(await expect_open(raw), "news")] == [{"n": 3}]


async def test_subscription_expiry_leaves_other_subscriptions_alone(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_harness(config(ping_interval=0, expired_sub_close_delay=25)) as harness:
        raw, _client = await harness.connect_ws()
        await raw.connect(connection_token())
        await raw.command(
            "subscribe", {"channel": "news", "token": subscription_token("news", 100)}
        )
        await raw.command("subscribe", {"channel": "chat"})
        push = await raw.receive()
        assert push["push"]["channel"] == "news"
        assert push["push"]["unsubscribe"]["code"] == 2501
        await harness.publish("chat", {"n": 1})
        assert [p["data"] for p in pubs_of(await expect_open(raw), "chat")] == [{"n": 1}]
        assert harness.node.hub.num_subscribers("news") == 0
        assert harness.node.hub.num_subscribers("chat") == 1


async def test_unsubscribe_cancels_the_expiry_of_that_subscription(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_harness(config(ping_interval=0, expired_sub_close_delay=25)) as harness:
        raw, _client = await harness.connect_ws()
        await raw.connect(connection_token())
        news_token = subscription_token("news", 100)
        await raw.command("subscribe", {"channel": "news", "token": news_token})
        await raw.command("unsubscribe", {"channel": "news"})
        await raw.command("subscribe", {"channel": "news"})  # again, without a token
        assert await idle(raw, 1000) == []
        await harness.publish("news", {"n": 1})
        assert [p["data"] for p in pubs_of(await expect_open(raw), "news")] == [{"n": 1}]


async def test_sub_refresh_extends_the_subscription(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_harness(config(ping_interval=0, expired_sub_close_delay=25)) as harness:
        raw, _client = await harness.connect_ws()
        await raw.connect(connection_token())
        await raw.command(
            "subscribe", {"channel": "news", "token": subscription_token("news", 100)}
        )
        subscribed_at = trio.current_time()
        await trio.sleep(90)
        reply = await raw.command(
            "sub_refresh", {"channel": "news", "token": subscription_token("news", 1000)}
        )
        assert reply["sub_refresh"]["expires"] is True
        assert reply["sub_refresh"]["ttl"] in (999, 1000)
        assert await idle(raw, 200) == []  # past the old deadline (subscribe + 125 s)
        await harness.publish("news", {"n": 1})
        assert [p["data"] for p in pubs_of(await expect_open(raw), "news")] == [{"n": 1}]
        # The new deadline: about 1000 + 25 s after the refresh.
        push = await raw.receive()
        assert push["push"]["unsubscribe"] == {"code": 2501, "reason": "subscription expired"}
        assert 90 + 1024 <= trio.current_time() - subscribed_at <= 90 + 1025


async def test_server_side_subscription_from_the_connection_token_has_no_expiry(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_harness(config(ping_interval=0)) as harness:
        raw, _client = await harness.connect_ws()
        reply = await raw.connect(token("42", ttl=None, channels=["news"]))
        assert "news" in reply["connect"]["subs"]
        assert "expires" not in reply["connect"]["subs"]["news"]
        assert await idle(raw, 1000) == []
        await harness.publish("news", {"n": 1})
        assert [p["data"] for p in pubs_of(await expect_open(raw), "news")] == [{"n": 1}]


# --- slow reader (reference 7.1, 3008) -------------------------------------------------------


async def test_a_client_that_stops_reading_is_closed_as_slow_and_others_keep_receiving(
    autojump_clock: trio.testing.MockClock,
) -> None:
    cfg = config(ping_interval=0, outbox_max_bytes=2000)
    async with open_harness(cfg) as harness:
        slow, slow_client = await harness.connect_ws(bounded_stream_pair)
        good, good_client = await harness.connect_ws(bounded_stream_pair)
        for raw in (slow, good):
            await raw.connect(connection_token())
            await raw.command("subscribe", {"channel": "news"})

        received: list[dict[str, Any]] = []

        async def keep_reading() -> None:
            while True:
                received.extend(pubs_of([await good.receive()], "news"))

        async with trio.open_nursery() as readers:
            readers.start_soon(keep_reading)
            # `slow` reads nothing from here on.
            published = 0
            while slow_client.writer.close_request is None:
                published += 1
                assert published < 1000, "the slow client was never closed"
                await harness.publish("news", {"n": published, "pad": "x" * 50})
                await trio.sleep(0.01)
            assert slow_client.writer.close_request == CloseRequest(3008, "slow", False)
            assert slow_client.writer.statistics().queued_messages == 0  # dropped, not flushed

            # The slow client gets the close frame once it reads again; what it got before is
            # a gap-free prefix of the stream, and it did not get everything.
            closed = await read_until_closed(slow)
            assert (closed.code, closed.reason) == (3008, "slow")
            offsets = [p["offset"] for p in pubs_of(closed.messages, "news")]
            assert offsets == list(range(1, len(offsets) + 1))
            assert len(offsets) < published

            for _ in range(5):
                published += 1
                await harness.publish("news", {"n": published})
                await trio.sleep(0.01)
            await trio.sleep(1)
            assert [p["offset"] for p in received] == list(range(1, published + 1))
            assert good_client.writer.close_request is None
            assert harness.node.hub.num_subscribers("news") == 1
            readers.cancel_scope.cancel()
