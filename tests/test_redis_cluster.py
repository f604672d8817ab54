"""Aether servers sharing one Redis: what a client on one node sees of the others, and what the
node does with a gap the Redis engine reports. Real servers, raw protocol clients, a private
redis-server per test where it is stopped, the session's otherwise (each test its own prefix).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import trio
from conftest import RawClient, close_reason, make_config, open_raw, serve_in, token, ws_url
from redis_server import RedisServer, new_prefix
from trio_websocket import ConnectionClosed

from aether_trio.app import Server
from aether_trio.config import Config


def redis_config(server: RedisServer, prefix: str) -> Config:
    return make_config({
        "engine": {"type": "redis", "redis": {
            "address": server.address, "prefix": prefix, "io_timeout": 2.0,
            "probe_interval": 0.2,
        }},
    })  # fmt: skip


async def until(condition: Callable[[], bool], limit: float = 10.0) -> None:
    with trio.fail_after(limit):
        while not condition():  # noqa: ASYNC110  (no event for it: poll with a deadline)
            await trio.sleep(0.01)


async def connected(client: RawClient, user: str) -> dict[str, Any]:
    reply = await client.connect(token(user))
    assert "connect" in reply, reply
    return reply


async def subscribe(client: RawClient, channel: str, **body: Any) -> dict[str, Any]:
    reply = await client.command("subscribe", {"channel": channel, **body})
    assert "subscribe" in reply, reply
    result: dict[str, Any] = reply["subscribe"]
    return result


async def publications(client: RawClient, count: int) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    with trio.fail_after(10):
        while len(found) < count:
            message = await client.receive()
            if "pub" in message.get("push", {}):
                found.append(message["push"]["pub"])
    return found


async def test_two_nodes_share_publications_in_order_presence_and_recovery(
    redis_server: RedisServer,
) -> None:
    prefix = new_prefix()
    async with trio.open_nursery() as nursery:
        a = await serve_in(nursery, redis_config(redis_server, prefix))
        b = await serve_in(nursery, redis_config(redis_server, prefix))
        async with open_raw(ws_url(a)) as on_a, open_raw(ws_url(b)) as on_b:
            await connected(on_a, "alice")
            await connected(on_b, "bob")
            await subscribe(on_b, "news", recoverable=True)
            first = await subscribe(on_a, "news", recoverable=True)

            # A publication through node A reaches the subscriber on node B, in order.
            for n in range(20):
                reply = await on_a.command("publish", {"channel": "news", "data": {"n": n}})
                assert reply.get("publish") == {}, reply
            got = await publications(on_b, 20)
            assert [p["data"]["n"] for p in got] == list(range(20))
            assert [p["offset"] for p in got] == list(range(1, 21))

            # Presence is seen from both nodes.
            for client in (on_a, on_b):
                reply = await client.command("presence_stats", {"channel": "news"})
                assert reply["presence_stats"] == {"num_clients": 2, "num_users": 2}
                reply = await client.command("presence", {"channel": "news"})
                users = {info["user"] for info in reply["presence"]["presence"].values()}
                assert users == {"alice", "bob"}

            seen = await publications(on_a, 20)
            epoch = first["epoch"]

        # Alice left node A; three more publications go through node B meanwhile.
        async with open_raw(ws_url(b)) as publisher:
            await connected(publisher, "carol")
            for n in range(20, 23):
                await publisher.command("publish", {"channel": "news", "data": {"n": n}})
            # ...and she comes back on node B: what she missed is recovered.
            async with open_raw(ws_url(b)) as again:
                await connected(again, "alice")
                result = await subscribe(
                    again, "news", recover=True, offset=seen[-1]["offset"], epoch=epoch
                )
                assert result["recovered"] is True
                assert [p["data"]["n"] for p in result["publications"]] == [20, 21, 22]
        nursery.cancel_scope.cancel()


async def test_a_gap_makes_subscribers_resubscribe_and_server_side_ones_reconnect(
    redis_server: RedisServer,
) -> None:
    async with trio.open_nursery() as nursery:
        server: Server = await serve_in(nursery, redis_config(redis_server, new_prefix()))
        async with open_raw(ws_url(server)) as client, open_raw(ws_url(server)) as pinned:
            await connected(client, "alice")
            await subscribe(client, "news", recoverable=True)
            await subscribe(client, "sport")
            assert "connect" in await pinned.connect(token("bob", channels=["news"]))
            # The PUB/SUB connection is killed: the engine reconnects and reports the gap.
            redis_server.command("CLIENT", "KILL", "TYPE", "pubsub")
            pushes: list[dict[str, Any]] = []
            with trio.fail_after(10):
                while len(pushes) < 2:
                    message = await client.receive()
                    if "unsubscribe" in message.get("push", {}):
                        pushes.append(message["push"])
            assert sorted(p["channel"] for p in pushes) == ["news", "sport"]
            for push in pushes:
                assert push["unsubscribe"] == {"code": 2500, "reason": "insufficient state"}
            # The SDK resubscribes and recovers (2500); here by hand.
            await subscribe(client, "news", recover=True, offset=0)
            # A server-side subscription cannot be unsubscribed: its connection closes (3010).
            with trio.fail_after(10), pytest.raises(ConnectionClosed) as closed:
                await pinned.read_until_closed()
            assert close_reason(closed.value).code == 3010
        nursery.cancel_scope.cancel()


async def test_presence_entries_outlive_the_ttl_while_the_connection_lives(
    redis_server: RedisServer,
) -> None:
    prefix = new_prefix()
    config = make_config({
        "engine": {"type": "redis", "redis": {"address": redis_server.address, "prefix": prefix,
                                              "presence_ttl": 0.6}},
        "client": {"presence_update_interval": 0.2},
    })  # fmt: skip
    async with trio.open_nursery() as nursery:
        server = await serve_in(nursery, config)
        async with open_raw(ws_url(server)) as client:
            await connected(client, "alice")
            await subscribe(client, "room")
            started = trio.current_time()
            while trio.current_time() - started < 2.0:  # three times the TTL
                reply = await client.command("presence_stats", {"channel": "room"})
                assert reply["presence_stats"] == {"num_clients": 1, "num_users": 1}
                await trio.sleep(0.1)
        nursery.cancel_scope.cancel()
