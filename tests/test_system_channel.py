"""The operators' system channel: every connection is subscribed to it, none through the hub.

What a client sees must be what it saw when each connection had a hub subscription of its own:
the channel in the connect reply's `subs`, broadcasts as publications of it in order, no counting
against the channel limit, 105 on subscribing to it again, and an unsubscribe that works. What
the server keeps must not be per connection: no hub subscriber, one shared subscription object.

Three layers: the hub's groups without sockets; raw protocol clients against a server in the
test's own Trio run (its node is inspected directly); real centrifuge-python clients for the
whole path from the admin HTTP command to the SDK's server-side publication events.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import attrs
import httpx
import pytest
import trio
from centrifuge import Client, ServerPublicationContext, ServerSubscribedContext
from conftest import (
    RawClient,
    close_reason,
    make_config,
    open_raw,
    running_server,
    serve_in,
    token,
    ws_url,
)
from sdk_helpers import ClientRecorder, disconnect_all
from test_hub import FakeSubscriber, publication
from trio_websocket import ConnectionClosed

from aether_trio.app import Server
from aether_trio.config import Config
from aether_trio.hub import Hub, HubStatistics
from aether_trio.protocol.codec import JSON, Codec, raw_json
from aether_trio.protocol.messages import ClientInfo
from aether_trio.subscriptions import SystemSubscription

SYSTEM = "$aether.system"
ADMIN_KEY = "admin-key-for-system-channel-tests"
WAIT = 5.0


def overrides(**extra: Any) -> dict[str, Any]:
    extra.setdefault("admin", {"system_channel": SYSTEM})  # off by default
    return {"api": {"keys": [{"name": "ops", "key": ADMIN_KEY, "roles": ["admin"]}]}, **extra}


# --- the hub's groups, without sockets ----------------------------------------------------------


class FakeGroup:
    def __init__(self, members: int) -> None:
        self.members = members
        self.received: list[bytes] = []

    def deliver(self, encoded: Callable[[Codec], bytes]) -> int:
        self.received.append(encoded(JSON))
        return self.members

    def count(self) -> int:
        return self.members


def test_a_group_counts_as_subscribers_and_keeps_its_channel_subscribed() -> None:
    hub = Hub()
    group = FakeGroup(members=0)
    assert hub.add_group(SYSTEM, group) is True  # the node subscribes the broker once
    # Without members it is no channel of this node (as an empty hub channel is not).
    assert (hub.channels(), hub.num_subscribers(SYSTEM)) == ([], 0)
    assert hub.statistics() == HubStatistics(channels=0, subscriptions=0)
    group.members = 3
    assert (hub.channels(), hub.num_subscribers(SYSTEM)) == ([SYSTEM], 3)
    assert hub.statistics() == HubStatistics(channels=1, subscriptions=3)
    # An ordinary subscriber of the same channel neither subscribes nor, leaving last,
    # unsubscribes the broker: the group still receives the channel.
    assert hub.add(SYSTEM, FakeSubscriber("a")) is False
    assert hub.add("news", FakeSubscriber("a")) is True
    assert hub.num_subscribers(SYSTEM) == 4
    assert sorted(hub.channels()) == sorted([SYSTEM, "news"])
    assert hub.statistics() == HubStatistics(channels=2, subscriptions=5)
    assert hub.remove(SYSTEM, "a") is False
    assert hub.subscribers(SYSTEM) == []
    assert hub.first_subscriber(SYSTEM) is None
    assert hub.remove("news", "a") is True


def test_a_publication_is_encoded_once_for_the_group_and_the_subscribers(
    encode_calls: list[tuple[str, str]],
) -> None:
    hub = Hub()
    group = FakeGroup(members=5)
    hub.add_group(SYSTEM, group)
    sub = FakeSubscriber("opted-in-again", push_join_leave=True)
    hub.add(SYSTEM, sub)
    assert hub.broadcast_publication(SYSTEM, publication(offset=0)) == 6
    assert encode_calls == [(SYSTEM, "pub")]
    assert len(group.received) == 1
    assert group.received[0] is sub.received[0][0]
    # Join and leave are for subscribers that asked for them, never for the group.
    hub.broadcast_join(SYSTEM, ClientInfo("u", "c"))
    assert len(group.received) == 1
    assert len(sub.received) == 2


def test_a_channel_without_group_or_subscriber_costs_no_encoding(
    encode_calls: list[tuple[str, str]],
) -> None:
    assert Hub().broadcast_publication(SYSTEM, publication()) == 0
    assert encode_calls == []


# --- raw clients against a server in this Trio run ----------------------------------------------


@asynccontextmanager
async def serving(**extra: Any) -> AsyncIterator[Server]:
    async with trio.open_nursery() as nursery:
        yield await serve_in(nursery, make_config(overrides(**extra)))
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def connected(
    server: Server, user: str = "42", **claims: Any
) -> AsyncIterator[tuple[RawClient, dict[str, Any]]]:
    """A raw client and its connect result."""
    async with open_raw(ws_url(server)) as client:
        reply = await client.connect(token(user, **claims))
        assert "connect" in reply, reply
        yield client, reply["connect"]


async def admin_broadcast(server: Server, data: Any) -> httpx.Response:
    url = f"http://127.0.0.1:{server.http_port}/api/admin/broadcast"
    async with httpx.AsyncClient(timeout=WAIT) as http:
        return await http.post(url, json={"data": data}, headers={"X-API-Key": ADMIN_KEY})


async def system_pushes(client: RawClient, channel: str = SYSTEM) -> list[Any]:
    """The system publications that arrived before a round trip made now: the fan-out is
    synchronous, so whatever a finished broadcast sent is queued before this reply."""
    await client.command("presence_stats", {"channel": "probe"})
    found = [m for m in client.pending if m.get("push", {}).get("channel") == channel]
    client.pending = [m for m in client.pending if m not in found]
    return [m["push"]["pub"]["data"] for m in found]


def the_push(data: Any) -> dict[str, Any]:
    # No offset, no epoch: the channel has no history, as before.
    return {"push": {"channel": SYSTEM, "pub": {"data": data}}}


async def test_connect_lists_the_channel_and_the_hub_holds_no_subscription_for_it() -> None:
    async with (
        serving() as server,
        connected(server, "a") as (a, a_result),
        connected(server, "b") as (b, b_result),
    ):
        assert a_result["subs"] == b_result["subs"] == {SYSTEM: {}}
        node = server.node
        assert node.hub.subscribers(SYSTEM) == []
        assert node.hub.first_subscriber(SYSTEM) is None
        # Still counted wherever the hub counts (server API channels/info, metrics, views).
        assert node.hub.num_subscribers(SYSTEM) == 2
        assert node.hub.statistics() == HubStatistics(channels=1, subscriptions=2)
        held = [c.subscriptions[SYSTEM] for c in node.clients.values()]
        assert isinstance(held[0], SystemSubscription)
        assert held[0] is held[1]

        response = await admin_broadcast(server, {"n": 1})
        assert response.json() == {"channel": SYSTEM, "recipients": 2}
        await node.publish(node.resolve(SYSTEM), raw_json({"n": 2}))  # the server API's way
        for client in (a, b):
            assert await client.receive() == the_push({"n": 1})
            assert await client.receive() == the_push({"n": 2})

        registry = node.metrics.registry
        assert registry.get_sample_value(
            "aether_deliveries_total", {"kind": "publication"}
        ) == 4  # fmt: skip
        assert registry.get_sample_value("aether_broadcast_fanout_subscribers_sum") == 4


async def test_a_token_listing_the_channel_gets_it_once_with_the_tokens_data() -> None:
    subs = {SYSTEM: {"data": {"motd": "hi"}}, "news": {}}
    async with serving() as server, connected(server, "a", subs=subs) as (a, result):
        assert result["subs"] == {SYSTEM: {"data": {"motd": "hi"}}, "news": {}}
        await admin_broadcast(server, "once")
        assert await system_pushes(a) == ["once"]


async def test_the_channel_limit_does_not_count_it() -> None:
    async with serving(client={"channel_limit": 2}) as server:
        async with connected(server, "a", channels=["x", "y"]) as (full, result):
            assert sorted(result["subs"]) == sorted([SYSTEM, "x", "y"])
            assert (await full.command("subscribe", {"channel": "z"}))["error"]["code"] == 106
        async with connected(server, "b") as (empty, _):
            for channel in ("x", "y"):
                assert "subscribe" in await empty.command("subscribe", {"channel": channel})
            assert (await empty.command("subscribe", {"channel": "z"}))["error"]["code"] == 106
        async with open_raw(ws_url(server)) as over:
            await over.send({"id": 1, "connect": {"token": token("c", channels=["x", "y", "z"])}})
            with pytest.raises(ConnectionClosed) as closed:
                await over.receive()
            assert close_reason(closed.value).code == 3505


async def test_subscribing_again_is_refused_and_unsubscribing_stops_broadcasts() -> None:
    async with (
        serving() as server,
        connected(server, "a") as (a, _),
        connected(server, "b") as (b, _),
    ):
        again = await a.command("subscribe", {"channel": SYSTEM})
        assert again["error"]["code"] == 105  # already subscribed, as before
        refresh = await a.command("sub_refresh", {"channel": SYSTEM, "token": "t"})
        assert refresh["error"]["code"] == 108  # the shared subscription never expires

        gone = await a.command("unsubscribe", {"channel": SYSTEM})
        assert gone["unsubscribe"] == {}, gone
        assert server.node.hub.num_subscribers(SYSTEM) == 1
        await admin_broadcast(server, "to b only")
        assert await system_pushes(a) == []
        assert await system_pushes(b) == ["to b only"]
        # Without a token the private channel stays closed; with one the connection holds the
        # shared subscription again (no hub subscription of its own), and a broadcast arrives once.
        assert (await a.command("subscribe", {"channel": SYSTEM}))["error"]["code"] == 103
        with_token = await a.command(
            "subscribe", {"channel": SYSTEM, "token": token("a", channel=SYSTEM)}
        )
        assert "subscribe" in with_token, with_token
        assert server.node.hub.subscribers(SYSTEM) == []
        assert server.node.hub.num_subscribers(SYSTEM) == 2
        held = [c.subscriptions[SYSTEM] for c in server.node.clients.values()]
        assert held[0] is held[1]
        await admin_broadcast(server, "both")
        assert await system_pushes(a) == ["both"]
        assert await system_pushes(b) == ["both"]


async def server_api(server: Server, method: str, body: dict[str, Any]) -> Any:
    url = f"http://127.0.0.1:{server.http_port}/api/{method}"
    async with httpx.AsyncClient(timeout=WAIT) as http:
        response = await http.post(url, json=body, headers={"X-API-Key": ADMIN_KEY})
    assert response.status_code == 200, response.text
    return response.json()


async def test_the_server_api_subscribes_and_unsubscribes_it_as_before() -> None:
    async with serving() as server, connected(server, "a") as (a, _):
        # Already subscribed: the call is idempotent, nothing is pushed, nothing doubles.
        await server_api(server, "subscribe", {"user": "a", "channel": SYSTEM})
        await admin_broadcast(server, "one")
        assert await system_pushes(a) == ["one"]

        await server_api(server, "unsubscribe", {"user": "a", "channel": SYSTEM})
        assert await a.receive() == {
            "push": {
                "channel": SYSTEM,
                "unsubscribe": {"code": 2000, "reason": "server unsubscribe"},
            }
        }
        await admin_broadcast(server, "none")
        assert await system_pushes(a) == []

        await server_api(server, "subscribe", {"user": "a", "channel": SYSTEM})
        assert await a.receive() == {"push": {"channel": SYSTEM, "subscribe": {}}}
        await admin_broadcast(server, "again")
        assert await system_pushes(a) == ["again"]


async def test_nothing_of_the_channel_reaches_a_connection_before_its_connect_reply() -> None:
    async with serving() as server, connected(server, "a") as (a, _):
        node = server.node
        entered, release = trio.Event(), trio.Event()

        async def held(channel: str) -> None:
            entered.set()
            await release.wait()  # keeps the connect below between registration and reply

        node.broker.subscribe = held  # type: ignore[method-assign]
        async with open_raw(ws_url(server)) as late:
            await late.send({"id": 1, "connect": {"token": token("b", channels=["news"])}})
            with trio.fail_after(WAIT):
                await entered.wait()
            assert len(node.clients) == 2  # registered, its reply not sent yet
            # Concurrent with that connect: not this connection's (there is no buffer for it).
            await node.publish(node.resolve(SYSTEM), raw_json("during"))
            release.set()
            first = await late.receive()
            assert first["connect"]["subs"] == {"news": {}, SYSTEM: {}}, first
            await node.publish(node.resolve(SYSTEM), raw_json("after"))
            assert await system_pushes(late) == ["after"]
        assert await system_pushes(a) == ["during", "after"]


def with_system_channel(config: Config, name: str) -> Config:
    return attrs.evolve(config, admin=attrs.evolve(config.admin, system_channel=name))


async def test_a_reload_keeps_each_connection_on_the_name_it_was_given() -> None:
    async with serving() as server, connected(server, "old") as (old, _):
        node = server.node
        subscribed: list[str] = []
        asked = trio.Event()

        async def recording(channel: str) -> None:
            subscribed.append(channel)
            asked.set()

        node.broker.subscribe = recording  # type: ignore[method-assign]
        renamed = "$ops.notices"
        node.reload(with_system_channel(server.config, renamed))
        with trio.fail_after(WAIT):
            await asked.wait()
        assert subscribed == [renamed]  # other nodes' broadcasts, under the new name
        async with connected(server, "new") as (new, result):
            assert result["subs"] == {renamed: {}}
            response = await admin_broadcast(server, "renamed")
            assert response.json() == {"channel": renamed, "recipients": 1}
            assert await system_pushes(new, renamed) == ["renamed"]
            assert await system_pushes(old, renamed) == []
            assert sorted(node.hub.channels()) == sorted([SYSTEM, renamed])

            node.reload(with_system_channel(server.config, ""))
            assert (await admin_broadcast(server, "x")).status_code == 409
            async with connected(server, "none") as (_, result):
                assert "subs" not in result
            # Back to the first name: the connection that kept it receives again.
            node.reload(with_system_channel(server.config, SYSTEM))
            response = await admin_broadcast(server, "back")
            assert response.json() == {"channel": SYSTEM, "recipients": 1}
            assert await system_pushes(old) == ["back"]
            assert await system_pushes(new) == []
        assert subscribed == [renamed]  # each name once


# --- real centrifuge-python clients -------------------------------------------------------------


def test_broadcasts_reach_every_sdk_client_in_order() -> None:
    count = 6
    with running_server(make_config(overrides())) as srv:
        node = srv.server.node
        base = f"http://127.0.0.1:{srv.server.http_port}/api/admin/"
        headers = {"X-API-Key": ADMIN_KEY}

        async def main() -> None:
            recorders = [ClientRecorder() for _ in range(count)]
            clients = [
                Client(srv.url, events=rec, token=token(f"u{i}"), proxy=None)
                for i, rec in enumerate(recorders)
            ]
            try:
                for client in clients:
                    await client.connect()
                    await client.ready(timeout=WAIT)
                for rec in recorders:
                    subscribed: ServerSubscribedContext = await rec.one("subscribed")
                    assert subscribed.channel == SYSTEM
                    assert not subscribed.recoverable
                async with httpx.AsyncClient(base_url=base, headers=headers, timeout=WAIT) as http:
                    for n in range(3):
                        response = await http.post("broadcast", json={"data": {"n": n}})
                        assert response.json() == {"channel": SYSTEM, "recipients": count}
                    listed = await http.post("connections", json={"channel": SYSTEM})
                    assert listed.json()["total"] == count
                for rec in recorders:
                    pubs: list[ServerPublicationContext] = await rec.wait("publication", count=3)
                    assert [(p.channel, p.pub.data) for p in pubs] == [
                        (SYSTEM, {"n": n}) for n in range(3)
                    ]
                    assert all(p.pub.offset == 0 for p in pubs)
                assert await asyncio.to_thread(srv.call, node.hub.subscribers, SYSTEM) == []
            finally:
                await disconnect_all(clients)

        asyncio.run(asyncio.wait_for(main(), 40.0))
        deadline = time.monotonic() + WAIT  # the server's cleanup runs after the close
        while srv.call(node.hub.num_subscribers, SYSTEM) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert srv.call(node.hub.num_subscribers, SYSTEM) == 0
