"""The Protobuf protocol end to end: centrifuge-python with `use_protobuf=True` (subprotocol
`centrifuge-protobuf`), JSON and Protobuf clients on the same channels, bad Protobuf input from
raw WebSocket clients, and the refusal of subprotocols Aether does not speak.

(The npm SDK's Protobuf build runs in tests/test_sdk_js.py, each scenario in both encodings.)
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import orjson
import pytest
import trio
from centrifuge import ReplyError, ServerPublicationContext, ServerSubscribedContext
from centrifuge.protocol import client_pb2 as sdk_pb
from conftest import RunningServer, make_config, running_server, serve_in, token, ws_url
from test_bad_input import STEP, Bystander, bystander, server  # noqa: F401  (fixtures)
from test_sdk_python import (
    CHAT,
    REC,
    Clients,
    namespaces,
    on_server,
    sdk,
    server_publish,
    subscribed,
)
from trio_websocket import (
    ConnectionClosed,
    WebSocketConnection,
    open_websocket_url,
)

from aether_trio.app import Server
from aether_trio.connection.client import Client as ServerClient
from aether_trio.protocol.protobuf import varint

SCENARIO_LIMIT = 40.0


def run(overrides: dict[str, Any] | None, scenario: Any) -> None:
    with running_server(make_config(overrides)) as srv:

        async def main() -> None:
            async with asyncio.timeout(SCENARIO_LIMIT):
                await scenario(srv)

        asyncio.run(main())


async def protobuf_client(clients: Clients, user: str = "42", **claims: Any) -> Any:
    client, rec = clients.new(token(user, **claims), use_protobuf=True)
    await client.connect()
    await client.ready(timeout=5.0)
    return client, rec


def j(value: Any) -> bytes:
    """A JSON payload as a Protobuf client publishes it."""
    return json.dumps(value).encode()


async def codecs_in_use(srv: RunningServer) -> list[str]:
    def names(node: Any) -> list[str]:
        return sorted(c.codec.name for c in node.clients.values())

    return await on_server(srv, names)


# --- centrifuge-python in Protobuf mode ---


def test_protobuf_client_publishes_and_reads_history_presence_joins() -> None:
    async def scenario(srv: RunningServer) -> None:
        async with sdk(srv.url) as clients:
            client, _ = await protobuf_client(clients, info={"name": "Alex"})
            assert await codecs_in_use(srv) == ["protobuf"]
            _, rec = await subscribed(client, "chat:room", join_leave=True)
            await client.publish("chat:room", j({"text": "hi", "n": [1, 2.5, None]}))
            ctx = await rec.one("publication")
            assert json.loads(ctx.pub.data) == {"text": "hi", "n": [1, 2.5, None]}
            assert ctx.pub.offset == 1
            assert ctx.pub.info.user == "42"
            assert ctx.pub.info.client == client.client_id
            assert json.loads(ctx.pub.info.conn_info) == {"name": "Alex"}

            history = await client.history("chat:room", limit=10)
            assert [json.loads(p.data) for p in history.publications] == [
                {"text": "hi", "n": [1, 2.5, None]}
            ]
            assert history.offset == 1
            assert history.epoch
            presence = await client.presence("chat:room")
            assert list(presence.clients) == [client.client_id]
            stats = await client.presence_stats("chat:room")
            assert (stats.num_clients, stats.num_users) == (1, 1)

            other, _ = await protobuf_client(clients, "43")
            _, other_rec = await subscribed(other, "chat:room")
            join = await rec.one("join", lambda c: c.info.user == "43")
            assert (join.info.user, join.info.client) == ("43", other.client_id)
            await other.disconnect()
            leave = await rec.one("leave")
            assert leave.info.client == other.client_id
            del other_rec

    run(namespaces(CHAT), scenario)


def test_json_and_protobuf_subscribers_get_the_same_publications_encoded_once_per_encoding(
    encode_calls: list[tuple[str, str]],
) -> None:
    async def scenario(srv: RunningServer) -> None:
        async with sdk(srv.url) as clients:
            json_recs, proto_recs = [], []
            for n in range(3):
                client, _ = await clients.connected(f"j{n}")
                json_recs.append((await subscribed(client, "rec:mixed"))[1])
                client, _ = await protobuf_client(clients, f"p{n}")
                proto_recs.append((await subscribed(client, "rec:mixed"))[1])
            json_publisher, proto_publisher = clients.made[0], clients.made[1]
            encode_calls.clear()
            await json_publisher.publish("rec:mixed", {"from": "json"})
            await proto_publisher.publish("rec:mixed", j({"from": "protobuf"}))
            await server_publish(srv, "rec:mixed", {"from": "api"})
            expected = [{"from": "json"}, {"from": "protobuf"}, {"from": "api"}]
            for rec in json_recs:
                await rec.wait("publication", count=3)
                assert rec.data() == expected
                assert rec.offsets() == [1, 2, 3]
            for rec in proto_recs:
                await rec.wait("publication", count=3)
                assert [json.loads(d) for d in rec.data()] == expected
                assert rec.offsets() == [1, 2, 3]
            # Six subscribers, two encodings: each publication encoded twice, never per client.
            assert [c for c in encode_calls if c[1] == "pub"] == [("rec:mixed", "pub")] * 6

    run(namespaces(REC), scenario)


def test_protobuf_client_recovers_what_a_json_client_published_meanwhile() -> None:
    async def scenario(srv: RunningServer) -> None:
        async with sdk(srv.url) as clients:
            client, _ = await protobuf_client(clients)
            _, rec = await subscribed(client, "rec:r")
            publisher, _ = await clients.connected("43")
            await publisher.publish("rec:r", {"n": 0})
            await rec.wait("publication")
            await client.disconnect()
            for n in (1, 2, 3):
                await publisher.publish("rec:r", {"n": n})
            await client.connect()
            resubscribed = await rec.wait("subscribed", count=2)
            assert resubscribed[1].was_recovering is True
            assert resubscribed[1].recovered is True
            await rec.wait("publication", count=4)
            assert [json.loads(d)["n"] for d in rec.data()] == [0, 1, 2, 3]
            assert rec.offsets() == [1, 2, 3, 4]

    run(namespaces(REC), scenario)


def test_protobuf_server_side_subscription_from_the_token() -> None:
    async def scenario(srv: RunningServer) -> None:
        async with sdk(srv.url) as clients:
            client, rec = clients.new(token("42", channels=["rec:server"]), use_protobuf=True)
            await client.connect()
            subscribed_ctx: ServerSubscribedContext = await rec.one(
                "subscribed", lambda c: c.channel == "rec:server"
            )
            assert subscribed_ctx.recoverable is True
            await server_publish(srv, "rec:server", {"to": "all"})
            pub: ServerPublicationContext = await rec.one(
                "publication", lambda c: c.channel == "rec:server"
            )
            assert (json.loads(pub.pub.data), pub.pub.offset) == ({"to": "all"}, 1)

    run(namespaces(REC), scenario)


def test_binary_publication_data_is_refused_with_107_and_the_connection_stays() -> None:
    async def scenario(srv: RunningServer) -> None:
        async with sdk(srv.url) as clients:
            client, _ = await protobuf_client(clients)
            _, rec = await subscribed(client, "rec:bin")
            with pytest.raises(ReplyError) as info:
                await client.publish("rec:bin", b"\x00\xff not json")
            assert info.value.code == 107
            await client.publish("rec:bin", j("still here"))
            await rec.wait("publication")
            assert [json.loads(d) for d in rec.data()] == ["still here"]

    run(namespaces(REC), scenario)


# --- raw clients: bad input, frames of the wrong kind, subprotocols ---


def _delimited(*commands: Any) -> bytes:
    return b"".join(varint(len(d)) + d for d in (c.SerializeToString() for c in commands))


def _replies(frame: bytes) -> list[Any]:
    replies, pos = [], 0
    while pos < len(frame):
        length = shift = 0
        while True:
            byte = frame[pos]
            pos += 1
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        replies.append(sdk_pb.Reply.FromString(frame[pos : pos + length]))
        pos += length
    return replies


@asynccontextmanager
async def _protobuf_connected(url: str) -> AsyncIterator[WebSocketConnection]:
    async with open_websocket_url(url, subprotocols=["centrifuge-protobuf"]) as ws:
        assert ws.subprotocol == "centrifuge-protobuf"
        connect = sdk_pb.Command(id=1, connect=sdk_pb.ConnectRequest(token=token("42")))
        await ws.send_message(_delimited(connect))
        with trio.fail_after(STEP):
            frame = await ws.get_message()
        assert isinstance(frame, bytes)
        (reply,) = _replies(frame)
        assert reply.id == 1
        assert reply.connect.client
        try:
            yield ws
        finally:
            # trio-websocket leaves its socket open when the server closed first (conftest).
            await ws._stream.aclose()


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        pytest.param(b"\x05\x08", 3501, id="truncated"),
        pytest.param(b"\x03\xff\xff\xff", 3501, id="not-a-command"),
        pytest.param(b"\xff" * 12, 3501, id="endless-varint"),
        pytest.param(
            _delimited(sdk_pb.Command(publish=sdk_pb.PublishRequest(channel="x"))),
            3501,
            id="without-id",
        ),
        pytest.param("{}", 3506, id="text-frame"),
    ],
)
async def test_bad_protobuf_input_closes_that_connection_only(
    server: Server,  # noqa: F811
    bystander: Bystander,  # noqa: F811
    payload: str | bytes,
    code: int,
) -> None:
    async def read_until_closed(ws: WebSocketConnection) -> None:
        while True:
            await ws.get_message()

    async with _protobuf_connected(ws_url(server)) as ws:
        await ws.send_message(payload)
        with trio.fail_after(STEP), pytest.raises(ConnectionClosed) as info:
            await read_until_closed(ws)
    assert info.value.reason is not None
    assert info.value.reason.code == code
    assert info.value.reason.reason in ("bad request", "inappropriate protocol")
    await bystander.assert_still_served()


async def test_a_protobuf_connection_answers_commands_in_one_frame(nursery: trio.Nursery) -> None:
    aether = await serve_in(nursery, make_config())
    async with _protobuf_connected(ws_url(aether)) as ws:
        await ws.send_message(
            _delimited(
                sdk_pb.Command(id=2, subscribe=sdk_pb.SubscribeRequest(channel="news")),
                sdk_pb.Command(id=3, publish=sdk_pb.PublishRequest(channel="news", data=b"[1]")),
            )
        )
        seen: list[Any] = []
        with trio.fail_after(STEP):
            while len(seen) < 3:
                frame = await ws.get_message()
                assert isinstance(frame, bytes)
                seen += _replies(frame)
        kinds = sorted("push" if r.HasField("push") else str(r.id) for r in seen)
        assert kinds == ["2", "3", "push"]
        (push,) = [r.push for r in seen if r.HasField("push")]
        assert (push.channel, push.pub.data, push.pub.offset) == ("news", b"[1]", 1)


async def test_an_unsupported_subprotocol_is_refused_with_400_and_logged(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    aether = await serve_in(nursery, make_config())
    caplog.set_level(logging.INFO, logger="aether_trio.app")
    # A raw upgrade request: the answer is read whole, and the socket closed by the test.
    request = (
        f"GET /connection/websocket HTTP/1.1\r\nHost: 127.0.0.1:{aether.port}\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Protocol: centrifuge-msgpack\r\n\r\n"
    )
    stream = await trio.open_tcp_stream("127.0.0.1", aether.port)
    async with stream:
        await stream.send_all(request.encode())
        answer = b""
        with trio.fail_after(STEP):
            while chunk := await stream.receive_some():
                answer += chunk
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert b"unsupported WebSocket subprotocol" in answer
    assert b"centrifuge-protobuf" in answer
    (line,) = [r.getMessage() for r in caplog.records if "subprotocol" in r.getMessage()]
    assert "centrifuge-msgpack" in line
    assert "refused" in line
    async with httpx.AsyncClient() as http:
        metrics = (await http.get(f"http://127.0.0.1:{aether.http_port}/metrics")).text
    assert 'aether_handshake_failures_total{reason="subprotocol"} 1.0' in metrics

    # centrifuge-json names the JSON protocol; it is accepted and echoed.
    async with open_websocket_url(ws_url(aether), subprotocols=["centrifuge-json"]) as ws:
        assert ws.subprotocol == "centrifuge-json"
        await ws.send_message(orjson.dumps({"id": 1, "connect": {"token": token("42")}}).decode())
        with trio.fail_after(STEP):
            reply = orjson.loads(await ws.get_message())
        assert reply["connect"]["client"]
    clients: dict[str, ServerClient] = aether.node.clients
    assert all(c.codec.name == "json" for c in clients.values())
