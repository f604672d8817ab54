"""A connection's publishes issued together (connection/serve.py `IssuedPublishes`): the
publishes of one frame, and of the frames one socket read brought, are issued to the broker
before any is waited for, so through Redis they share a pipeline. What must not change:
publications reach subscribers in the order sent with consecutive offsets, replies go in command
order, a refused publish is answered in its place without stopping the others, a close or a rate
limit mid-batch behaves as command by command, and what was issued before the connection went is
published.

Real servers in the test's Trio run, on the memory engine and on the session's private
redis-server (a prefix per test); raw protocol clients, and a raw TCP socket where several
WebSocket frames must arrive in one write.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
import pytest
import trio
from conftest import RawClient, close_reason, make_config, open_raw, serve_in, token, ws_url
from redis_server import RedisServer, new_prefix
from test_bad_input import RawSocket
from trio_websocket import ConnectionClosed

from aether_trio.app import Server
from aether_trio.backend import Hooks
from aether_trio.config import Config
from aether_trio.engines.redis import RedisBroker
from aether_trio.protocol.errors import AppError

WITHIN = 10.0  # generous bounds for a loaded machine; what is asserted is the outcome

NAMESPACES = [
    {"name": "locked", "allow_publish_for_client": False},
    {"name": "small", "max_publication_size": 20, "allow_publish_for_client": True},
]


def config(engine: str, redis: RedisServer, **extra: Any) -> Config:
    overrides: dict[str, Any] = {"channel": {"namespaces": NAMESPACES}, **extra}
    if engine == "redis":
        overrides["engine"] = {
            "type": "redis",
            "redis": {"address": redis.address, "prefix": new_prefix(), "io_timeout": 5.0},
        }
    return make_config(overrides)


@pytest.fixture(params=["memory", "redis"])
def engine(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@asynccontextmanager
async def serving(cfg: Config, hooks: Hooks | None = None) -> AsyncIterator[Server]:
    async with trio.open_nursery() as nursery:
        if hooks is None:
            server = await serve_in(nursery, cfg)
        else:
            server = await nursery.start(Server(cfg, hooks=hooks).run)
        yield server
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def subscribed(server: Server, channel: str = "news") -> AsyncIterator[RawClient]:
    async with open_raw(ws_url(server)) as client:
        assert "connect" in await client.connect(token("reader"))
        assert "subscribe" in await client.command("subscribe", {"channel": channel})
        yield client


@asynccontextmanager
async def publisher(server: Server) -> AsyncIterator[RawClient]:
    async with open_raw(ws_url(server)) as client:
        assert "connect" in await client.connect(token("writer"))
        client.next_id = 100
        yield client


def publish(cmd_id: int, n: int, channel: str = "news") -> dict[str, Any]:
    return {"id": cmd_id, "publish": {"channel": channel, "data": {"n": n}}}


async def replies(client: RawClient, count: int) -> list[dict[str, Any]]:
    """The next `count` replies (messages with an id), in the order they arrived."""
    got: list[dict[str, Any]] = []
    with trio.fail_after(WITHIN):
        while len(got) < count:
            message = await client.receive()
            if "id" in message:
                got.append(message)
    return got


async def publications(client: RawClient, count: int) -> list[tuple[int, int]]:
    """The next `count` publications pushed to `client`: (data n, offset) in arrival order."""
    got: list[tuple[int, int]] = []
    with trio.fail_after(WITHIN):
        while len(got) < count:
            message = await client.receive()
            pub = message.get("push", {}).get("pub")
            if pub is not None:
                got.append((pub["data"]["n"], pub.get("offset", 0)))
    return got


async def read_until_closed(client: RawClient, into: list[dict[str, Any]]) -> ConnectionClosed:
    """Read every message into `into` until the server closes; its close."""
    with trio.fail_after(WITHIN), pytest.raises(ConnectionClosed) as closed:
        await _read_forever(client, into)
    return closed.value


async def _read_forever(client: RawClient, into: list[dict[str, Any]]) -> None:
    while True:
        into.append(await client.receive())


def largest_pipeline(server: Server) -> int:
    broker = server.node.broker
    assert isinstance(broker, RedisBroker)
    return broker.client.largest_batch


# --- order and offsets ---------------------------------------------------------------------------


async def test_publishes_of_one_frame_arrive_in_order_with_consecutive_offsets(
    engine: str, redis_server: RedisServer
) -> None:
    async with (
        serving(config(engine, redis_server)) as server,
        subscribed(server) as reader,
        publisher(server) as writer,
    ):
        await writer.send(*(publish(100 + n, n) for n in range(1, 101)))
        answered = await replies(writer, 100)
        assert answered == [{"id": 100 + n, "publish": {}} for n in range(1, 101)]
        assert await publications(reader, 100) == [(n, n) for n in range(1, 101)]
        if engine == "redis":
            # Issued together: they went to Redis in one pipeline, not one round trip each.
            assert largest_pipeline(server) >= 100


def client_frame(text: str | bytes, opcode: int = 0x1) -> bytes:
    """A masked WebSocket frame (text unless told), as a client sends it."""
    payload = text.encode() if isinstance(text, str) else text
    mask = os.urandom(4)
    size = len(payload)
    header = bytes([0x80 | opcode]) + (
        bytes([0x80 | size]) if size < 126 else bytes([0x80 | 126]) + size.to_bytes(2, "big")
    )
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


@asynccontextmanager
async def connected_socket(server: Server) -> AsyncIterator[RawSocket]:
    sock = await RawSocket.open(server.port)
    try:
        connect = {"id": 1, "connect": {"token": token("writer")}}
        await sock.stream.send_all(client_frame(orjson.dumps(connect).decode()))
        with trio.fail_after(WITHIN):
            assert "connect" in (await raw_text(sock))[0]
        yield sock
    finally:
        await sock.stream.aclose()


async def raw_text(sock: RawSocket) -> list[dict[str, Any]]:
    opcode, payload = await sock.read_frame()
    assert opcode == 1, (opcode, payload)
    return [orjson.loads(line) for line in payload.split(b"\n")]


async def test_publishes_in_many_frames_of_one_read_share_a_pipeline_in_order(
    engine: str, redis_server: RedisServer
) -> None:
    async with (
        serving(config(engine, redis_server)) as server,
        subscribed(server) as reader,
        connected_socket(server) as sock,
    ):
        # 60 frames of one publish each, in one TCP write: the server reads them at once.
        frames = b"".join(client_frame(orjson.dumps(publish(n, n)).decode()) for n in range(2, 62))
        assert len(frames) < 16384  # one read (transport/sockets.py RECEIVE_BYTES)
        await sock.stream.send_all(frames)
        answered: list[dict[str, Any]] = []
        with trio.fail_after(WITHIN):
            while len(answered) < 60:
                answered.extend(await raw_text(sock))
        assert answered == [{"id": n, "publish": {}} for n in range(2, 62)]
        assert await publications(reader, 60) == [(n, n - 1) for n in range(2, 62)]
        if engine == "redis":
            assert largest_pipeline(server) >= 60


async def test_a_ping_among_the_frames_of_one_read_is_answered_and_the_rest_handled(
    engine: str, redis_server: RedisServer
) -> None:
    async with serving(config(engine, redis_server)) as server, connected_socket(server) as sock:
        frames = [client_frame(orjson.dumps(publish(n, n)).decode()) for n in (2, 3)]
        await sock.stream.send_all(frames[0] + client_frame(b"hello", 0x9) + frames[1])
        pongs: list[bytes] = []
        answered: list[dict[str, Any]] = []
        with trio.fail_after(WITHIN):
            while len(answered) < 2 or not pongs:
                opcode, payload = await sock.read_frame()
                if opcode == 0xA:
                    pongs.append(payload)
                else:
                    answered.extend(orjson.loads(line) for line in payload.split(b"\n"))
        assert pongs == [b"hello"]
        assert answered == [{"id": 2, "publish": {}}, {"id": 3, "publish": {}}]


async def test_an_oversized_message_among_the_frames_of_one_read_closes_1009_nothing_after_it(
    engine: str, redis_server: RedisServer
) -> None:
    cfg = config(engine, redis_server, server={"max_message_size": 4096})
    async with (
        serving(cfg) as server,
        subscribed(server) as reader,
        connected_socket(server) as sock,
    ):
        big = {"id": 3, "publish": {"channel": "news", "data": {"blob": "x" * 5000}}}
        await sock.stream.send_all(
            client_frame(orjson.dumps(publish(2, 1)).decode())
            + client_frame(orjson.dumps(big).decode())
            + client_frame(orjson.dumps(publish(4, 2)).decode())
        )
        code, _reason, _before = await sock.close_frame()
        # (The reply to the publish before it may not make it: the transport's 1009 goes out
        # ahead of the queued replies, as it always did.)
        assert code == 1009
        assert await publications(reader, 1) == [(1, 1)]
        history = await reader.command("history", {"channel": "news", "limit": 10})
        assert [p["data"]["n"] for p in history["history"]["publications"]] == [1]


async def test_a_command_after_publishes_sees_them_and_replies_in_turn(
    engine: str, redis_server: RedisServer
) -> None:
    async with serving(config(engine, redis_server)) as server, publisher(server) as writer:
        await writer.send(
            publish(1, 1),
            publish(2, 2),
            {"id": 3, "history": {"channel": "news", "limit": 10}},
            publish(4, 3),
        )
        first, second, history, last = await replies(writer, 4)
        assert (first["id"], second["id"], history["id"], last["id"]) == (1, 2, 3, 4)
        assert [p["data"]["n"] for p in history["history"]["publications"]] == [1, 2]
        assert last == {"id": 4, "publish": {}}
        assert history["history"]["offset"] == 2


# --- refusals in the middle ----------------------------------------------------------------------


async def test_refused_publishes_are_answered_in_place_and_stop_nothing(
    engine: str, redis_server: RedisServer
) -> None:
    async with (
        serving(config(engine, redis_server)) as server,
        subscribed(server) as reader,
        publisher(server) as writer,
    ):
        await writer.send(
            publish(1, 1),
            publish(2, 0, "locked:x"),  # 103: clients may not publish there
            publish(3, 2),
            {"id": 4, "publish": {"channel": "small:a", "data": "x" * 40}},  # 107: too large
            {"id": 5, "publish": {"channel": "news", "data": {"n": 3}}},
            {"id": 6, "publish": {"channel": "nowhere:x", "data": {}}},  # 102: no such namespace
            publish(7, 4),
        )
        answered = await replies(writer, 7)
        assert [reply["id"] for reply in answered] == [1, 2, 3, 4, 5, 6, 7]
        assert answered[1]["error"]["code"] == 103
        assert answered[3]["error"]["code"] == 107
        assert answered[5]["error"]["code"] == 102
        assert all(answered[i] == {"id": i + 1, "publish": {}} for i in (0, 2, 4, 6))
        assert await publications(reader, 4) == [(1, 1), (2, 2), (3, 3), (4, 4)]


async def test_a_rate_limit_mid_batch_answers_in_order_then_closes(
    engine: str, redis_server: RedisServer
) -> None:
    limits = {"command_rate": 0.001, "command_burst": 5, "command_refusals": 2,
              "command_refusal_window": 1000.0, "user_command_rate": 0}  # fmt: skip
    async with (
        serving(config(engine, redis_server, limits=limits)) as server,
        open_raw(ws_url(server)) as writer,
    ):
        assert "connect" in await writer.connect(token("writer"))  # exempt from the limit
        await writer.send(*(publish(n, n) for n in range(1, 11)))
        answered: list[dict[str, Any]] = []
        closed = await read_until_closed(writer, answered)
        # Five publishes within the burst, two 111 refusals, then 3013 for the eighth.
        assert answered == [{"id": n, "publish": {}} for n in range(1, 6)] + [
            {"id": n, "error": {"code": 111, "message": "too many requests", "temporary": True}}
            for n in (6, 7)
        ]
        assert close_reason(closed).code == 3013
        async with publisher(server) as other:
            history = await other.command("history", {"channel": "news", "limit": 20})
        assert [p["data"]["n"] for p in history["history"]["publications"]] == [1, 2, 3, 4, 5]


async def test_a_close_mid_batch_answers_what_came_before_it_and_publishes_nothing_after(
    engine: str, redis_server: RedisServer
) -> None:
    async with (
        serving(config(engine, redis_server)) as server,
        subscribed(server) as reader,
        open_raw(ws_url(server)) as writer,
    ):
        assert "connect" in await writer.connect(token("writer"))
        await writer.send(
            *(publish(n, n) for n in range(10, 15)),
            {"id": 15, "connect": {}},  # a second connect: closed with 3501
            *(publish(n, n) for n in range(16, 20)),
        )
        answered: list[dict[str, Any]] = []
        closed = await read_until_closed(writer, answered)
        assert answered == [{"id": n, "publish": {}} for n in range(10, 15)]
        assert close_reason(closed).code == 3501
        assert await publications(reader, 5) == [(n, n - 9) for n in range(10, 15)]
        history = await reader.command("history", {"channel": "news", "limit": 20})
        assert [p["data"]["n"] for p in history["history"]["publications"]] == list(range(10, 15))


async def test_publishes_sent_by_a_client_that_went_away_are_all_published(
    engine: str, redis_server: RedisServer
) -> None:
    async with serving(config(engine, redis_server)) as server, subscribed(server) as reader:
        async with open_raw(ws_url(server)) as writer:
            assert "connect" in await writer.connect(token("writer"))
            await writer.send(*(publish(n, n) for n in range(1, 51)))
        # Gone without reading a reply: whatever was read was issued, and is published in order.
        assert await publications(reader, 50) == [(n, n) for n in range(1, 51)]


# --- the application's backend decides: one at a time, in order ---------------------------------


async def test_publishes_the_backend_decides_keep_their_order(
    engine: str, redis_server: RedisServer
) -> None:
    decided: list[int] = []

    async def on_publish(event: Any) -> None:
        decided.append(event.data["n"])
        await trio.lowlevel.checkpoint()  # a backend that answers later: the next one waits
        if event.data["n"] % 3 == 0:
            raise AppError(4000, "not this one")

    async with (
        serving(config(engine, redis_server), Hooks(on_publish=on_publish)) as server,
        subscribed(server) as reader,
        publisher(server) as writer,
    ):
        await writer.send(*(publish(n, n) for n in range(1, 11)))
        answered = await replies(writer, 10)
        assert [reply["id"] for reply in answered] == list(range(1, 11))
        assert [n for n in range(1, 11) if "error" in answered[n - 1]] == [3, 6, 9]
        kept = [n for n in range(1, 11) if n % 3]
        assert await publications(reader, 7) == [(n, i) for i, n in enumerate(kept, 1)]
        assert decided == list(range(1, 11))
