"""The server HTTP API (reference section 10) against a live server.

Every method is called with the real PyPI `cent` client (sync `cent.Client`); httpx sends what cent
cannot (batch replies with errors, which cent's batch parser cannot read, and malformed input).
Effects on connections are watched with the real centrifuge-python SDK, driven by `asyncio.run`
inside the sync tests; cent calls made during an SDK scenario run in a worker thread so the SDK's
loop keeps reading. Every wait is bounded. A few pure parts (key parsing, the idempotency cache,
glob patterns, API key configuration) are tested without a server.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, TypeVar

import cent
import httpx
import orjson
import pytest
from cent import (
    BroadcastRequest,
    ChannelsRequest,
    DisconnectRequest,
    HistoryRemoveRequest,
    HistoryRequest,
    InfoRequest,
    InfoResult,
    PresenceRequest,
    PresenceStatsRequest,
    PresenceStatsResult,
    PublishRequest,
    PublishResult,
    RefreshRequest,
    StreamPosition,
    SubscribeRequest,
    UnsubscribeRequest,
)
from cent.dto import Disconnect as CentDisconnect
from cent.exceptions import CentApiResponseError, CentTransportError, CentUnauthorizedError
from centrifuge import (
    Client,
    ClientState,
    SubscriptionState,
)
from conftest import RunningServer, make_config, running_server, token
from sdk_helpers import ClientRecorder, SubscriptionRecorder, disconnect_all

from aether_trio.config import ConfigError, parse_config
from aether_trio.connection.client import Client as ServerClient
from aether_trio.http.api.glob import compile_glob
from aether_trio.http.apiauth import presented_key
from aether_trio.http.asgi import Request, Response
from aether_trio.node import Node

T = TypeVar("T")

WAIT = 5.0  # longest single wait for an expected event
SCENARIO_LIMIT = 40.0  # a whole SDK scenario
QUIET = 0.5  # how long "nothing more happens" is observed

ADMIN = "admin-key-0123456789abcdef"
PUBLISHER = "publisher-key-0123456789abcdef"
READER = "reader-key-0123456789abcdef"
KEYS = [
    {"name": "ops", "key": ADMIN, "roles": ["admin"]},
    {"name": "backend", "key": PUBLISHER, "roles": ["publisher"]},
    {"name": "dashboard", "key": READER, "roles": ["reader"]},
]

CHAT = {  # presence, join/leave to everyone, history
    "name": "chat",
    "presence": True,
    "join_leave": True,
    "force_push_join_leave": True,
    "history_size": 100,
    "history_ttl": 300.0,
    "allow_subscribe_for_client": True,
}
REC = {"name": "rec", "history_size": 100, "history_ttl": 300.0, "force_recovery": True}
PLAIN = {"name": "plain", "allow_subscribe_for_client": True}  # no history, no presence
OBJ = {"name": "obj", "publication_data_format": "json_object"}


def overrides(extra: dict[str, Any] | None = None) -> dict[str, Any]:
    base: dict[str, Any] = {
        "api": {"keys": KEYS},
        "channel": {"namespaces": [CHAT, REC, PLAIN, OBJ]},
    }
    for key, value in (extra or {}).items():
        base[key] = {**base.get(key, {}), **value}
    return base


@contextmanager
def api_server(extra: dict[str, Any] | None = None) -> Iterator[RunningServer]:
    with running_server(make_config(overrides(extra))) as srv:
        yield srv


def api(srv: RunningServer, key: str = ADMIN) -> cent.Client:
    return cent.Client(f"http://127.0.0.1:{srv.server.http_port}/api", api_key=key, timeout=WAIT)


def post(
    srv: RunningServer,
    method: str,
    body: Any = None,
    *,
    key: str | None = ADMIN,
    content: bytes | None = None,
    headers: dict[str, str] | None = None,
    verb: str = "POST",
) -> httpx.Response:
    sent = {"X-API-Key": key} if key else {}
    sent.update(headers or {})
    if content is None and body is not None:
        content = orjson.dumps(body)
    with httpx.Client(base_url=f"http://127.0.0.1:{srv.server.http_port}", timeout=WAIT) as http:
        return http.request(verb, f"/api/{method}", content=content, headers=sent)


def history_data(srv: RunningServer, channel: str) -> list[Any]:
    result = api(srv).history(HistoryRequest(channel=channel, limit=-1))
    return [pub.data for pub in result.publications]


# --- SDK side ---


class Clients:
    def __init__(self, url: str) -> None:
        self.url = url
        self.made: list[Client] = []

    async def connected(
        self, user: str = "42", tok: str | None = None
    ) -> tuple[Client, ClientRecorder]:
        events = ClientRecorder(skip_private_channels=True)
        client = Client(
            self.url, events=events, token=tok or token(user), proxy=None,
            min_reconnect_delay=0.05, max_reconnect_delay=0.3,
        )  # fmt: skip
        self.made.append(client)
        await client.connect()
        await client.ready(timeout=WAIT)
        return client, events


async def subscribed(client: Client, channel: str) -> tuple[Any, SubscriptionRecorder]:
    events = SubscriptionRecorder()
    sub = client.new_subscription(channel, events=events)
    await sub.subscribe()
    await events.one("subscribed")
    return sub, events


@asynccontextmanager
async def sdk(srv: RunningServer) -> AsyncIterator[Clients]:
    clients = Clients(srv.url)
    try:
        yield clients
    finally:
        await disconnect_all(clients.made)


def run(srv: RunningServer, scenario: Callable[[Clients], Awaitable[None]]) -> None:
    async def main() -> None:
        async with asyncio.timeout(SCENARIO_LIMIT), sdk(srv) as clients:
            await scenario(clients)

    asyncio.run(main())


async def call(fn: Callable[..., Any], *args: Any) -> Any:
    """A blocking cent/httpx call from inside an SDK scenario."""
    return await asyncio.to_thread(fn, *args)


async def on_node(srv: RunningServer, fn: Callable[[Node[ServerClient]], T]) -> T:
    return await asyncio.to_thread(srv.call, fn, srv.server.node)


# --- publish and broadcast ---


def test_publish_reaches_subscribers_with_offset_and_tags() -> None:
    with api_server() as srv:
        client = api(srv, PUBLISHER)

        async def scenario(clients: Clients) -> None:
            alice, _ = await clients.connected("42")
            _, events = await subscribed(alice, "chat:room")
            request = PublishRequest(channel="chat:room", data={"text": "hi"}, tags={"k": "v"})
            result = await call(client.publish, request)
            assert result.offset == 1
            assert result.epoch
            pub = (await events.one("publication")).pub
            assert (pub.data, pub.offset, pub.tags, pub.info) == (
                {"text": "hi"},
                1,
                {"k": "v"},
                None,
            )

        run(srv, scenario)
        # Without history the result is {} (cent fills offset 0, epoch "").
        plain = client.publish(PublishRequest(channel="plain:x", data=[1, 2]))
        assert (plain.offset, plain.epoch) == (0, "")
        raw = post(srv, "publish", {"channel": "plain:x", "data": 1}, key=PUBLISHER)
        assert raw.json() == {"result": {}}


def test_publish_idempotency_key_skip_history_and_b64data() -> None:
    with api_server({"api": {"idempotent_result_ttl": 3.0}}) as srv:
        client = api(srv, PUBLISHER)
        first = client.publish(PublishRequest(channel="news", data={"n": 1}, idempotency_key="a"))
        again = client.publish(PublishRequest(channel="news", data={"n": 9}, idempotency_key="a"))
        assert again.offset == first.offset == 1
        assert again.epoch == first.epoch
        # The key is per channel.
        stored = time.monotonic()
        other = client.publish(PublishRequest(channel="news2", data={"n": 1}, idempotency_key="a"))
        assert other.offset == 1
        # A broadcast with a key: each channel once, a repeat answered with the same results.
        request = BroadcastRequest(channels=["news2", "news3"], data={"b": 1}, idempotency_key="b")
        broadcasts = [client.broadcast(request).responses for _ in range(2)]
        offsets = [[r.result.offset if r.result else None for r in rs] for rs in broadcasts]
        assert offsets == [[2, 1], [2, 1]]
        assert history_data(srv, "news3") == [{"b": 1}]
        # [api] idempotent_result_ttl: after it, the key publishes again.
        # Real time: the server runs on its own clock in its own thread.
        time.sleep(max(0.0, stored + 3.2 - time.monotonic()))
        late = client.publish(PublishRequest(channel="news2", data={"n": 3}, idempotency_key="a"))
        assert late.offset == 3
        skipped = client.publish(PublishRequest(channel="news", data={"n": 2}, skip_history=True))
        assert skipped.offset == 0
        encoded = base64.b64encode(b'{"bin": "ary"}').decode()
        from_b64 = client.publish(PublishRequest(channel="news", data=None, b64data=encoded))
        assert from_b64.offset == 2
        assert history_data(srv, "news") == [{"n": 1}, {"bin": "ary"}]
        assert history_data(srv, "news2") == [{"n": 1}, {"b": 1}, {"n": 3}]


def test_publish_refusals() -> None:
    with api_server() as srv:
        client = api(srv, PUBLISHER)

        def refused(request: PublishRequest) -> CentApiResponseError:
            with pytest.raises(CentApiResponseError) as info:
                client.publish(request)
            return info.value

        unknown = refused(PublishRequest(channel="undefined:channel", data={}))
        assert (unknown.code, unknown.message) == (102, "unknown channel")
        assert refused(PublishRequest(channel="", data={})).code == 107
        assert refused(PublishRequest(channel="news", data=None)).code == 107  # empty data
        assert refused(PublishRequest(channel="obj:x", data=[1])).code == 107  # json_object
        not_base64 = PublishRequest(channel="news", data=None, b64data="***")
        assert refused(not_base64).code == 107
        binary = base64.b64encode(b"\x00\xff binary").decode()
        # A JSON connection cannot carry binary data: refused, not sent.
        assert refused(PublishRequest(channel="news", data=None, b64data=binary)).code == 107
        assert history_data(srv, "news") == []


def test_broadcast_answers_per_channel() -> None:
    with api_server() as srv:

        async def scenario(clients: Clients) -> None:
            alice, _ = await clients.connected("42")
            _, room = await subscribed(alice, "chat:room")
            _, news = await subscribed(alice, "news")
            request = BroadcastRequest(
                channels=["chat:room", "nope:x", "news", "plain:y"], data={"all": True}
            )
            result = await call(api(srv, PUBLISHER).broadcast, request)
            replies = result.responses
            assert [r.error.code if r.error else None for r in replies] == [None, 102, None, None]
            assert [r.result.offset for r in (replies[0], replies[2], replies[3])] == [1, 1, 0]
            for events in (room, news):
                assert (await events.one("publication")).pub.data == {"all": True}

        run(srv, scenario)
        with pytest.raises(CentApiResponseError) as info:
            api(srv).broadcast(BroadcastRequest(channels=[], data={"x": 1}))
        assert info.value.code == 107


# --- subscribe, unsubscribe, disconnect, refresh ---


def test_subscribe_sends_subscribe_push_joins_presence_and_publications() -> None:
    with api_server() as srv:
        admin = api(srv)

        async def scenario(clients: Clients) -> None:
            alice, alice_events = await clients.connected("42")
            alice2, alice2_events = await clients.connected("42")
            bob, bob_events = await clients.connected("43")
            _, bob_room = await subscribed(bob, "chat:room")
            request = SubscribeRequest(
                user="42", channel="chat:room", data={"welcome": 1}, info={"seat": 7}
            )
            await call(admin.subscribe, request)
            for events in (alice_events, alice2_events):
                ctx = await events.one("subscribed")
                assert (ctx.channel, ctx.data, ctx.positioned) == (
                    "chat:room",
                    {"welcome": 1},
                    False,
                )
            # Joins go the way of a client's subscribe (force_push_join_leave in "chat").
            joins = await bob_room.wait("join", lambda c: c.info.user == "42", count=2)
            assert {j.info.client for j in joins} == {alice.client_id, alice2.client_id}
            assert joins[0].info.chan_info == {"seat": 7}
            presence = await call(admin.presence, PresenceRequest(channel="chat:room"))
            assert set(presence.presence) == {alice.client_id, alice2.client_id, bob.client_id}
            assert presence.presence[alice.client_id].chan_info == {"seat": 7}
            # Subscribing again changes nothing; bob (another user) got nothing.
            await call(admin.subscribe, SubscribeRequest(user="42", channel="chat:room"))
            await call(api(srv, PUBLISHER).publish, PublishRequest(channel="chat:room", data=5))
            for events in (alice_events, alice2_events):
                pub = await events.one("publication")
                assert (pub.channel, pub.pub.data, pub.pub.offset) == ("chat:room", 5, 1)
            assert (await bob_room.one("publication")).pub.data == 5
            await asyncio.sleep(QUIET)
            assert len(alice_events.of("subscribed")) == 1
            assert not bob_events.of("subscribed")
            subs = await on_node(srv, lambda node: node.hub.num_subscribers("chat:room"))
            assert subs == 3
            # `client` narrows it to one connection.
            one = SubscribeRequest(user="42", channel="news", client=alice2.client_id)
            await call(admin.subscribe, one)
            assert await alice2_events.one("subscribed", lambda c: c.channel == "news")
            await asyncio.sleep(QUIET)
            assert [c.channel for c in alice_events.of("subscribed")] == ["chat:room"]

        run(srv, scenario)
        # Unknown users and unknown namespaces.
        admin.subscribe(SubscribeRequest(user="nobody", channel="news"))
        with pytest.raises(CentApiResponseError) as info:
            admin.subscribe(SubscribeRequest(user="42", channel="nope:x"))
        assert info.value.code == 102


def test_subscribe_recover_since_replays_missed_publications() -> None:
    with api_server() as srv:
        publisher = api(srv, PUBLISHER)

        async def scenario(clients: Clients) -> None:
            first = await call(publisher.publish, PublishRequest(channel="rec:x", data=1))
            for n in (2, 3):
                await call(publisher.publish, PublishRequest(channel="rec:x", data=n))
            _, events = await clients.connected("42")
            since = StreamPosition(offset=1, epoch=first.epoch)
            request = SubscribeRequest(user="42", channel="rec:x", recover_since=since)
            await call(api(srv).subscribe, request)
            ctx = await events.one("subscribed")
            assert ctx.recoverable
            assert ctx.stream_position.offset == 1
            pubs = await events.wait("publication", count=2)
            assert [(p.pub.data, p.pub.offset) for p in pubs] == [(2, 2), (3, 3)]
            await call(publisher.publish, PublishRequest(channel="rec:x", data=4))
            pubs = await events.wait("publication", count=3)
            assert [p.pub.offset for p in pubs] == [2, 3, 4]

        run(srv, scenario)


def test_unsubscribe_sends_2000_to_client_and_server_side_subscriptions() -> None:
    with api_server() as srv:
        admin = api(srv)

        async def scenario(clients: Clients) -> None:
            alice, alice_events = await clients.connected("42")
            sub, news = await subscribed(alice, "news")
            await call(admin.subscribe, SubscribeRequest(user="42", channel="chat:room"))
            await alice_events.one("subscribed")
            await call(admin.unsubscribe, UnsubscribeRequest(user="42", channel="news"))
            ctx = await news.one("unsubscribed")
            assert (ctx.code, ctx.reason) == (2000, "server unsubscribe")
            assert sub.state == SubscriptionState.UNSUBSCRIBED
            await call(admin.unsubscribe, UnsubscribeRequest(user="42", channel="chat:room"))
            assert (await alice_events.one("unsubscribed")).channel == "chat:room"
            presence = await call(admin.presence, PresenceRequest(channel="chat:room"))
            assert presence.presence == {}
            publisher = api(srv, PUBLISHER)
            await call(publisher.publish, PublishRequest(channel="news", data=1))
            await call(publisher.publish, PublishRequest(channel="chat:room", data=1))
            await asyncio.sleep(QUIET)
            assert not news.of("publication")
            assert not alice_events.of("publication")
            assert alice.state == ClientState.CONNECTED
            # Unknown users and channels not subscribed are fine.
            await call(admin.unsubscribe, UnsubscribeRequest(user="nobody", channel="news"))

        run(srv, scenario)


def test_disconnect_default_custom_and_whitelist() -> None:
    with api_server() as srv:
        admin = api(srv)

        async def scenario(clients: Clients) -> None:
            alice, alice_events = await clients.connected("42")
            kept, kept_events = await clients.connected("42")
            bob, bob_events = await clients.connected("43")
            await call(admin.disconnect, DisconnectRequest(user="42", whitelist=[kept.client_id]))
            ctx = await alice_events.one("disconnected")
            assert (ctx.code, ctx.reason) == (3503, "force disconnect")
            custom = DisconnectRequest(
                user="43", disconnect=CentDisconnect(code=4501, reason="go away")
            )
            await call(admin.disconnect, custom)
            ctx = await bob_events.one("disconnected")
            assert (ctx.code, ctx.reason) == (4501, "go away")
            await asyncio.sleep(QUIET)
            assert kept.state == ClientState.CONNECTED
            assert not kept_events.of("disconnected")
            assert alice.state == bob.state == ClientState.DISCONNECTED

        run(srv, scenario)
        admin.disconnect(DisconnectRequest(user="nobody"))
        for code, reason in ((4500, "x" * 124), (4500, "123"), (4500, '{"a": 1}'), (1000, "ok")):
            bad = DisconnectRequest(user="42", disconnect=CentDisconnect(code=code, reason=reason))
            with pytest.raises(CentApiResponseError) as info:
                admin.disconnect(bad)
            assert info.value.code == 107, (code, reason)


def test_refresh_extends_the_connection_and_expired_closes_3005() -> None:
    with api_server({"client": {"expired_close_delay": 0.5}}) as srv:
        admin = api(srv)

        async def scenario(clients: Clients) -> None:
            tok = token("42", ttl=2)
            alice, events = await clients.connected("42", tok=tok)
            _, bob_events = await clients.connected("43", tok=token("43", ttl=3600))
            new_expiry = int(time.time()) + 3600
            await call(admin.refresh, RefreshRequest(user="42", expire_at=new_expiry))
            # Without the refresh the server would close at exp + 0.5 s.
            await asyncio.sleep(3.0)
            assert alice.state == ClientState.CONNECTED
            assert [c.code for c in events.of("connecting")] == [0]  # only the first connect
            expiry = await on_node(srv, lambda node: node.clients[alice.client_id].expire_at)
            assert expiry == new_expiry
            await call(admin.refresh, RefreshRequest(user="43", expired=True))
            ctx = await bob_events.one("connecting", lambda c: c.code == 3005)
            assert ctx.reason == "connection expired"

        run(srv, scenario)
        admin.refresh(RefreshRequest(user="nobody"))


# --- reading ---


def test_presence_presence_stats_and_108() -> None:
    with api_server() as srv:
        reader = api(srv, READER)
        assert reader.presence(PresenceRequest(channel="chat:idle")).presence == {}

        async def scenario(clients: Clients) -> None:
            alice, _ = await clients.connected("42")
            bob, _ = await clients.connected("43")
            for client in (alice, bob):
                await subscribed(client, "chat:room")
            presence = await call(reader.presence, PresenceRequest(channel="chat:room"))
            assert {(i.user, i.client) for i in presence.presence.values()} == {
                ("42", alice.client_id),
                ("43", bob.client_id),
            }
            stats = await call(reader.presence_stats, PresenceStatsRequest(channel="chat:room"))
            assert (stats.num_clients, stats.num_users) == (2, 2)

        run(srv, scenario)
        with pytest.raises(CentApiResponseError) as info:
            reader.presence(PresenceRequest(channel="plain:x"))
        assert info.value.code == 108
        with pytest.raises(CentApiResponseError) as info:
            reader.presence_stats(PresenceStatsRequest(channel="plain:x"))
        assert info.value.code == 108


def test_history_queries_and_history_remove() -> None:
    with api_server() as srv:
        publisher, reader, admin = api(srv, PUBLISHER), api(srv, READER), api(srv)
        for n in range(1, 6):
            publisher.publish(PublishRequest(channel="chat:log", data={"n": n}))

        def offsets(**query: Any) -> list[int]:
            result = reader.history(HistoryRequest(channel="chat:log", **query))
            assert result.offset == 5
            assert result.epoch
            return [pub.offset for pub in result.publications]

        assert offsets() == []  # limit 0: only the stream position
        assert offsets(limit=-1) == [1, 2, 3, 4, 5]
        assert offsets(limit=2) == [1, 2]
        assert offsets(limit=2, reverse=True) == [5, 4]
        epoch = reader.history(HistoryRequest(channel="chat:log")).epoch
        assert offsets(limit=-1, since=StreamPosition(offset=3, epoch=epoch)) == [4, 5]
        assert offsets(limit=-1, since=StreamPosition(offset=3), reverse=True) == [2, 1]
        assert reader.history(HistoryRequest(channel="chat:log", limit=1)).publications[0].data == {
            "n": 1
        }

        def code(request: Any, fn: Callable[[Any], Any] = reader.history) -> int:
            with pytest.raises(CentApiResponseError) as info:
                fn(request)
            return info.value.code

        assert (
            code(HistoryRequest(channel="chat:log", since=StreamPosition(offset=1, epoch="x")))
            == 112
        )
        reverse_zero = HistoryRequest(
            channel="chat:log", since=StreamPosition(offset=0), reverse=True
        )
        assert code(reverse_zero) == 107
        assert code(HistoryRequest(channel="plain:x")) == 108
        assert code(HistoryRemoveRequest(channel="plain:x"), admin.history_remove) == 108

        admin.history_remove(HistoryRemoveRequest(channel="chat:log"))
        after = reader.history(HistoryRequest(channel="chat:log", limit=-1))
        assert (after.publications, after.offset, after.epoch) == ([], 5, epoch)


def test_channels_and_info() -> None:
    with api_server({"server": {"node_name": "api-node"}}) as srv:
        reader = api(srv, READER)

        async def scenario(clients: Clients) -> None:
            alice, _ = await clients.connected("42")
            bob, _ = await clients.connected("43")
            for channel in ("chat:a", "chat:b", "news"):
                await subscribed(alice, channel)
            await subscribed(bob, "chat:a")
            everything = await call(reader.channels, ChannelsRequest())
            counts = {
                name: info.num_clients
                for name, info in everything.channels.items()
                if not name.startswith("$")  # a system channel of every connection, if any
            }
            assert counts == {"chat:a": 2, "chat:b": 1, "news": 1}
            chats = await call(reader.channels, ChannelsRequest(pattern="chat:*"))
            assert set(chats.channels) == {"chat:a", "chat:b"}
            picked = await call(reader.channels, ChannelsRequest(pattern="{news,chat:[b]}"))
            assert set(picked.channels) == {"news", "chat:b"}
            node = (await call(reader.info, InfoRequest())).nodes[0]
            assert node.name == "api-node"
            assert node.uid
            assert node.version
            assert (node.num_clients, node.num_users) == (2, 2)
            stats = await on_node(srv, lambda node: node.hub.statistics())
            assert (node.num_channels, node.num_subs) == (stats.channels, stats.subscriptions)
            assert node.num_channels >= 3
            assert node.num_subs >= 4

        run(srv, scenario)
        assert (
            post(srv, "channels", {"pattern": "[z-a]"}, key=READER).json()["error"]["code"] == 107
        )


# --- batch ---


def test_batch_replies_in_order_with_per_command_errors() -> None:
    with api_server() as srv:
        commands = [
            {"publish": {"channel": "chat:b", "data": {"n": 1}}},
            {"publish": {"channel": "nope:x", "data": {"n": 2}}},
            {"history": {"channel": "chat:b", "limit": -1}},
            {"rpc": {"method": "x"}},
            {"presence_stats": {"channel": "chat:b"}},
        ]
        reply = post(srv, "batch", {"commands": commands, "parallel": False})
        assert reply.status_code == 200
        replies = reply.json()["replies"]
        assert replies[0] == {"publish": {"offset": 1, "epoch": replies[0]["publish"]["epoch"]}}
        assert replies[1] == {"error": {"code": 102, "message": "unknown channel"}}
        assert [p["data"] for p in replies[2]["history"]["publications"]] == [{"n": 1}]
        assert replies[3] == {"error": {"code": 104, "message": "not found"}}
        assert replies[4] == {"presence_stats": {"num_clients": 0, "num_users": 0}}

        # A publisher key: its publishes run, what needs another role is refused per command.
        mixed = [
            {"publish": {"channel": "chat:b", "data": {"n": 3}}},
            {"history": {"channel": "chat:b"}},
            {"unsubscribe": {"user": "42", "channel": "chat:b"}},
        ]
        replies = post(srv, "batch", {"commands": mixed}, key=PUBLISHER).json()["replies"]
        assert "publish" in replies[0]
        assert replies[1] == replies[2] == {"error": {"code": 103, "message": "permission denied"}}

        parallel = [{"publish": {"channel": f"chat:p{n}", "data": n}} for n in range(20)]
        replies = post(srv, "batch", {"commands": parallel, "parallel": True}).json()["replies"]
        assert [r["publish"]["offset"] for r in replies] == [1] * 20

        # A malformed command anywhere: 400 naming it, and nothing ran.
        broken = [
            {"publish": {"channel": "chat:b", "data": {"n": 4}}},
            {"publish": {"channel": 5, "data": {}}},
        ]
        reply = post(srv, "batch", {"commands": broken})
        assert reply.status_code == 400
        assert reply.json()["field"] == "commands[1].publish.channel"
        assert history_data(srv, "chat:b") == [{"n": 1}, {"n": 3}]


def test_batch_through_cent_when_every_command_succeeds() -> None:
    with api_server() as srv:
        batch = cent.BatchRequest(
            requests=[
                PublishRequest(channel="news", data={"n": 1}),
                PresenceStatsRequest(channel="news"),
                InfoRequest(),
            ]
        )
        result = api(srv).batch(batch)
        published, stats, info = result.replies
        assert isinstance(published, PublishResult)
        assert isinstance(stats, PresenceStatsResult)
        assert isinstance(info, InfoResult)
        assert published.offset == 1
        assert (stats.num_clients, stats.num_users) == (0, 0)
        assert info.nodes[0].uid


# --- keys, roles and bad input ---


def test_keys_roles_and_http_errors() -> None:
    with api_server({"http": {"max_body_size": 4096}}) as srv:
        with pytest.raises(CentUnauthorizedError):
            api(srv, "").info(InfoRequest())
        with pytest.raises(CentUnauthorizedError):
            api(srv, "wrong-key").info(InfoRequest())
        with pytest.raises(CentTransportError) as info:
            api(srv, READER).publish(PublishRequest(channel="news", data=1))
        assert info.value.status_code == 403
        with pytest.raises(CentTransportError) as info:
            api(srv, PUBLISHER).history(HistoryRequest(channel="news"))
        assert info.value.status_code == 403
        with pytest.raises(CentTransportError) as info:
            api(srv, PUBLISHER).subscribe(SubscribeRequest(user="42", channel="news"))
        assert info.value.status_code == 403
        assert api(srv, ADMIN).presence(PresenceRequest(channel="news")).presence == {}

        for response, status in (
            (post(srv, "info", {}, key=None), 401),
            (post(srv, "info", {}, key=None, headers={"Authorization": f"Bearer {READER}"}), 401),
            (post(srv, "publish", {"channel": "news", "data": 1}, key=READER), 403),
            (post(srv, "nope", {}), 404),
            (post(srv, "info", verb="GET"), 405),
            (post(srv, "info", verb="PUT"), 405),
        ):
            assert (response.status_code, response.content) == (status, b""), response
        assert post(srv, "info", verb="GET").headers["allow"] == "POST"
        scheme = {"Authorization": f"APIKEY {READER}"}
        assert post(srv, "info", {}, key=None, headers=scheme).status_code == 200

        malformed = post(srv, "publish", content=b'{"channel": ')
        assert malformed.status_code == 400
        assert malformed.json()["detail"] == "malformed JSON"
        body: object  # JSON of any shape, for both loops below
        for body, field in (
            ([1, 2], None),
            ({"channel": 1, "data": {}}, "channel"),
            ({"channel": "news", "data": 1, "tags": {"a": 1}}, "tags.a"),
            ({"channel": "news", "data": 1, "skip_history": "yes"}, "skip_history"),
        ):
            reply = post(srv, "publish", body)
            assert reply.status_code == 400, reply.text
            assert reply.json().get("field") == field, reply.text
            assert reply.json()["code"] == 107
        reply = post(srv, "history", {"channel": "news", "since": {"offset": -1}})
        assert (reply.status_code, reply.json()["field"]) == (400, "since.offset")
        reply = post(srv, "disconnect", {"user": "42", "whitelist": ["a", 2]})
        assert (reply.status_code, reply.json()["field"]) == (400, "whitelist[1]")
        reply = post(srv, "subscribe", {"user": "42", "channel": "x", "override": {"presence": 1}})
        assert (reply.status_code, reply.json()["field"]) == (400, "override.presence")
        # Paths through arrays and nested objects, down into a batch's commands.
        for method, body, field in (
            ("history", {"channel": "news", "limit": "10"}, "limit"),
            ("history", {"channel": "news", "limit": True}, "limit"),
            ("subscribe", {"user": "42", "recover_since": {"offset": 1.5}}, "recover_since.offset"),
            ("disconnect", {"user": "42", "disconnect": {"code": "3000"}}, "disconnect.code"),
            ("broadcast", {"channels": ["a", "b", 3], "data": 1}, "channels[2]"),
            (
                "batch",
                {"commands": [{"info": {}}, {"rpc": {}}, {"publish": {"tags": {"x": 1}}}]},
                "commands[2].publish.tags.x",
            ),
            (
                "batch",
                {"commands": [{"subscribe": {"override": {"join_leave": {"value": "no"}}}}]},
                "commands[0].subscribe.override.join_leave.value",
            ),
        ):
            reply = post(srv, method, body)
            assert reply.status_code == 400, (method, body)
            assert reply.json() == {
                "code": 107, "message": "bad request", "field": field,
                "detail": reply.json()["detail"],
            }  # fmt: skip
            assert reply.json()["detail"].startswith("expected ")

        big = post(srv, "publish", content=b'{"channel": "news", "data": "' + b"x" * 5000 + b'"}')
        assert big.status_code == 413
        assert history_data(srv, "news") == []
        # Still serving.
        assert api(srv, PUBLISHER).publish(PublishRequest(channel="news", data=1)).offset == 1


def test_transport_error_mode() -> None:
    with api_server() as srv:
        transport = {"X-Centrifugo-Error-Mode": "transport"}
        reply = post(srv, "publish", {"channel": "nope:x", "data": 1}, headers=transport)
        assert (reply.status_code, reply.json()) == (
            404,
            {"code": 102, "message": "unknown channel"},
        )
        reply = post(srv, "history", {"channel": "plain:x"}, headers=transport)
        assert (reply.status_code, reply.json()["code"]) == (400, 108)
        reply = post(srv, "publish", {"channel": "news", "data": 1}, headers=transport)
        assert (reply.status_code, reply.json()["result"]["offset"]) == (200, 1)
        # Result mode by default: errors are 200s.
        reply = post(srv, "publish", {"channel": "nope:x", "data": 1})
        assert (reply.status_code, reply.json()["error"]["code"]) == (200, 102)
    with api_server({"api": {"error_mode": "transport"}}) as srv:
        reply = post(srv, "history", {"channel": "news", "since": {"offset": 1, "epoch": "x"}})
        assert (reply.status_code, reply.json()["code"]) == (416, 112)


def test_keys_follow_a_configuration_reload() -> None:
    with api_server() as srv:
        fresh = make_config(
            overrides(
                {"api": {"keys": [{"name": "new", "key": "new-key-0123", "roles": ["reader"]}]}}
            )
        )
        srv.call(srv.server.node.reload, fresh)
        with pytest.raises(CentUnauthorizedError):
            api(srv, ADMIN).info(InfoRequest())
        assert api(srv, "new-key-0123").info(InfoRequest()).nodes


def test_routes_beside_the_api_can_require_roles() -> None:
    # How operator commands use apiauth; the longest prefix wins, whatever the order of routes.
    with api_server() as srv:

        async def ban(request: Request) -> Response:
            return Response(200, b'{"banned": true}')

        auth = srv.server.api_auth
        prefix = "/api/admin/test-only/"
        srv.call(srv.server.http_app.route_prefix, prefix, auth.protect("admin", ban))
        assert post(srv, "admin/test-only/ban", {}, key=ADMIN).json() == {"banned": True}
        assert post(srv, "admin/test-only/ban", {}, key=READER).status_code == 403
        assert post(srv, "admin/test-only/ban", {}, key=None).status_code == 401
        assert post(srv, "info", {}, key=READER).status_code == 200  # /api/ still routes


# --- pure parts ---


@pytest.mark.parametrize(
    ("headers", "key"),
    [
        ({"x-api-key": "k1"}, "k1"),
        ({"x-api-key": "k1", "authorization": "apikey k2"}, "k1"),
        ({"authorization": "apikey k2"}, "k2"),
        ({"authorization": "ApiKey  k2 "}, "k2"),
        ({"authorization": "Bearer k2"}, None),
        ({"authorization": "apikey"}, None),
        ({"x-api-key": ""}, None),
        ({}, None),
    ],
)
def test_presented_key(headers: dict[str, str], key: str | None) -> None:
    assert presented_key(headers) == key


@pytest.mark.parametrize(
    ("pattern", "matches", "misses"),
    [
        ("*", ["", "a", "chat:#42"], []),
        ("chat:*", ["chat:", "chat:a:b"], ["news", "xchat:a"]),
        ("n?ws", ["news", "nows"], ["nws", "neews"]),
        ("[ab]x", ["ax", "bx"], ["cx"]),
        ("[!ab]x", ["cx"], ["ax"]),
        ("[a-c]1", ["b1"], ["d1"]),
        ("{news,chat:{a,b}}", ["news", "chat:a", "chat:b"], ["chat:c", "newschat:a"]),
        ("a\\*", ["a*"], ["ab"]),
        ("a.b", ["a.b"], ["axb"]),
    ],
)
def test_glob(pattern: str, matches: list[str], misses: list[str]) -> None:
    match = compile_glob(pattern)
    assert [m for m in matches if not match(m)] == []
    assert [m for m in misses if match(m)] == []


@pytest.mark.parametrize("pattern", ["[ab", "{a,b", "a\\", "[z-a]", "[]"])
def test_malformed_glob(pattern: str) -> None:
    with pytest.raises(ValueError, match=r"unclosed|backslash|empty|bad character range"):
        compile_glob(pattern)


def test_api_key_configuration(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "ops.key").write_text("from-a-file\n")
    config = parse_config(
        {"api": {"keys": [{"name": "ops", "key_file": "secrets/ops.key", "roles": ["admin"]}]}},
        tmp_path,
    )
    (key,) = config.api.keys
    assert (key.key, key.key_file, key.roles) == ("from-a-file", "", ("admin",))
    assert "from-a-file" not in repr(key)
    (tmp_path / "empty.key").write_text("\n")
    for keys, message in (
        ([{"name": "a", "key": "k", "roles": ["admin"]}] * 2, "api.keys: duplicate key name"),
        (
            [
                {"name": "a", "key": "k", "roles": ["admin"]},
                {"name": "b", "key": "k", "roles": ["reader"]},
            ],
            "api.keys: two entries have the same key",
        ),
        ([{"name": "a", "key": "", "roles": ["admin"]}], "api.keys[0].key: expected a non-empty"),
        ([{"name": "a", "key": "k", "key_file": "f", "roles": ["admin"]}], "api.keys[0].key: give"),
        ([{"name": "a", "key": "k", "roles": ["root"]}], "api.keys[0].roles: unknown role(s)"),
        ([{"name": "a", "key": "k", "roles": []}], "api.keys[0].roles: expected at least one"),
        ([{"name": "", "key": "k", "roles": ["admin"]}], "api.keys[0].name: expected a non-empty"),
        ([{"name": "a", "key_file": "empty.key", "roles": ["admin"]}], "api.keys[0].key_file: "),
        ([{"name": "a", "key_file": "missing", "roles": ["admin"]}], "cannot read"),
        ({"name": "a"}, "api.keys: expected an array of tables ([[api.keys]])"),
    ):
        with pytest.raises(ConfigError) as info:
            parse_config({"api": {"keys": keys}}, tmp_path)
        assert message in str(info.value), (keys, str(info.value))
