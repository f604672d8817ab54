"""Integration tests with the real centrifuge-python SDK (0.7.x, asyncio) against a real server.

Each test is a plain (sync) function: it starts the server in its own thread with
`running_server` and drives the SDK with `asyncio.run`. Every wait is bounded, every scenario is
bounded as a whole, and every client is disconnected (and its tasks drained) at the end.
Expected behaviour comes from the protocol reference (sections 3, 4, 7, 8, 9 and 14).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import jwt
import pytest
from centrifuge import (
    Client,
    ClientState,
    ConnectedContext,
    ConnectingContext,
    DisconnectedContext,
    JoinContext,
    LeaveContext,
    PublicationContext,
    ReplyError,
    ServerJoinContext,
    ServerLeaveContext,
    ServerPublicationContext,
    ServerSubscribedContext,
    StreamPosition,
    SubscribedContext,
    SubscribingContext,
    Subscription,
    SubscriptionState,
    UnsubscribedContext,
)
from conftest import RunningServer, make_config, running_server, token
from sdk_helpers import ClientRecorder, SubscriptionRecorder, disconnect_all

from aether_trio.auth.tokens import mint_token
from aether_trio.connection.client import Client as ServerClient
from aether_trio.node import Node
from aether_trio.protocol.codec import raw_json
from aether_trio.protocol.codes import Disconnect
from aether_trio.protocol.messages import StreamPosition as ServerPosition

T = TypeVar("T")

WAIT = 5.0  # longest single wait for an expected event
SCENARIO_LIMIT = 40.0  # a whole scenario
QUIET = 0.5  # how long "nothing more happens" is observed

Scenario = Callable[[RunningServer], Awaitable[None]]

# Namespaces used across the tests.
CHAT = {
    "name": "chat",
    "presence": True,
    "join_leave": True,
    "force_push_join_leave": True,
    "history_size": 100,
    "history_ttl": 300.0,
    "allow_subscribe_for_client": True,
    "allow_publish_for_client": True,
    "allow_history_for_client": True,
    "allow_presence_for_client": True,
}
REC = {
    "name": "rec",
    "history_size": 100,
    "history_ttl": 300.0,
    "force_recovery": True,
    "allow_subscribe_for_client": True,
    "allow_publish_for_client": True,
    "allow_history_for_client": True,
}
SMALL = {**REC, "name": "small", "history_size": 2}
PLAIN = {  # no history, no presence
    "name": "plain",
    "allow_subscribe_for_client": True,
    "allow_publish_for_client": True,
    "allow_history_for_client": True,
    "allow_presence_for_client": True,
}
LOCKED = {"name": "locked", "history_size": 10, "history_ttl": 60.0}  # nothing allowed


class TokenSource:
    """A get_token callback that mints a fresh token per call and counts the calls."""

    def __init__(self, mint: Callable[[], str]) -> None:
        self.mint = mint
        self.calls = 0
        self.minted: list[str] = []

    async def __call__(self, *_args: Any) -> str:
        self.calls += 1
        self.minted.append(self.mint())
        return self.minted[-1]


def token_exp(tok: str) -> int:
    exp: int = jwt.decode(tok, options={"verify_signature": False})["exp"]
    return exp


# --- clients and scenarios ---


class Clients:
    """Creates SDK clients for one scenario and tears them all down at its end."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.made: list[Client] = []

    def new(
        self, tok: str = "", *, get_token: Any = None, **kwargs: Any
    ) -> tuple[Client, ClientRecorder]:
        rec = ClientRecorder()
        kwargs.setdefault("min_reconnect_delay", 0.05)
        kwargs.setdefault("max_reconnect_delay", 0.3)
        client = Client(self.url, events=rec, token=tok, get_token=get_token, proxy=None, **kwargs)
        self.made.append(client)
        return client, rec

    async def connected(
        self, user: str = "42", *, get_token: Any = None, tok: str | None = None, **claims: Any
    ) -> tuple[Client, ClientRecorder]:
        client, rec = self.new(token(user, **claims) if tok is None else tok, get_token=get_token)
        await client.connect()
        await client.ready(timeout=WAIT)
        assert client.state == ClientState.CONNECTED
        return client, rec


async def subscribed(
    client: Client, channel: str, **kwargs: Any
) -> tuple[Subscription, SubscriptionRecorder]:
    rec = SubscriptionRecorder()
    sub = client.new_subscription(channel, events=rec, **kwargs)
    await sub.subscribe()
    await rec.one("subscribed")
    assert sub.state == SubscriptionState.SUBSCRIBED
    return sub, rec


async def subscribe_fails(client: Client, channel: str, **kwargs: Any) -> UnsubscribedContext:
    rec = SubscriptionRecorder()
    sub = client.new_subscription(channel, events=rec, **kwargs)
    await sub.subscribe()
    ctx: UnsubscribedContext = await rec.one("unsubscribed")
    assert sub.state == SubscriptionState.UNSUBSCRIBED
    assert not rec.of("subscribed"), channel
    return ctx


@asynccontextmanager
async def sdk(url: str) -> AsyncIterator[Clients]:
    clients = Clients(url)
    try:
        yield clients
    finally:
        await disconnect_all(clients.made)


def run(overrides: dict[str, Any] | None, scenario: Scenario) -> None:
    with running_server(make_config(overrides)) as srv:

        async def main() -> None:
            async with asyncio.timeout(SCENARIO_LIMIT):
                await scenario(srv)

        asyncio.run(main())


def namespaces(*spaces: dict[str, Any], **client: Any) -> dict[str, Any]:
    overrides: dict[str, Any] = {"channel": {"namespaces": list(spaces)}}
    if client:
        overrides["client"] = client
    return overrides


async def server_publish(srv: RunningServer, channel: str, data: Any) -> ServerPosition:
    """Publish from the server side (no client info), like the HTTP API would."""
    node = srv.server.node

    async def publish() -> ServerPosition:
        return await node.publish(node.resolve(channel), raw_json(data))

    return await asyncio.to_thread(srv.acall, publish)


async def on_server(srv: RunningServer, fn: Callable[[Node[ServerClient]], T]) -> T:
    """Evaluate `fn(node)` inside the server's Trio thread."""
    return await asyncio.to_thread(srv.call, fn, srv.server.node)


async def num_subscribers(srv: RunningServer, channel: str) -> int:
    return await on_server(srv, lambda node: node.hub.num_subscribers(channel))


async def publish_all(client: Client, channel: str, items: list[Any]) -> None:
    for item in items:
        await client.publish(channel, item, timeout=WAIT)


def reply_error(exc: pytest.ExceptionInfo[ReplyError]) -> int:
    code: int = exc.value.code
    return code


# --- 1. connect ---


def test_connected_context_has_uuid_client_id_and_version() -> None:
    async def scenario(srv: RunningServer) -> None:
        async with sdk(srv.url) as clients:
            client, rec = await clients.connected("42")
            ctx: ConnectedContext = await rec.one("connected")
            parsed = uuid.UUID(ctx.client)
            assert str(parsed) == ctx.client
            assert parsed.version == 4
            assert ctx.client == client.client_id
            assert isinstance(ctx.version, str)
            assert ctx.version
            assert [c.code for c in rec.of("connecting")] == [0]  # only "connect called"

            _other, other_rec = await clients.connected("43")
            assert (await other_rec.one("connected")).client != ctx.client

    run(None, scenario)


@pytest.mark.parametrize(
    "bad_token",
    [
        "garbage",
        "a.b.c",
        mint_token("wrong-secret-0123456789abcdef0123456789abcdef", {"sub": "42"}),
        token("42", channel="news"),  # a subscription token is not a connection token
    ],
    ids=["garbage", "three-dots", "wrong-secret", "channel-claim"],
)
def test_invalid_token_disconnects_3500_without_reconnect(bad_token: str) -> None:
    async def scenario(srv: RunningServer) -> None:
        async with sdk(srv.url) as clients:
            client, rec = clients.new(bad_token)
            await client.connect()
            ctx: DisconnectedContext = await rec.one("disconnected")
            assert ctx.code == 3500
            assert ctx.reason == "invalid token"
            await asyncio.sleep(QUIET)  # reconnect delay is 0.05-0.3 s: it would show by now
            assert client.state == ClientState.DISCONNECTED
            assert [c.code for c in rec.of("connecting")] == [0]
            assert not rec.of("connected")
            assert len(rec.of("disconnected")) == 1

    run(None, scenario)


def test_expired_token_gets_109_then_get_token_and_connects() -> None:
    async def scenario(srv: RunningServer) -> None:
        async with sdk(srv.url) as clients:
            source = TokenSource(lambda: token("42", ttl=3600))
            client, rec = clients.new(token("42", ttl=-60), get_token=source)
            await client.connect()
            await rec.one("connected")
            assert client.state == ClientState.CONNECTED
            assert source.calls == 1
            errors = [e.error for e in rec.of("error") if isinstance(e.error, ReplyError)]
            assert [e.code for e in errors] == [109]
            assert not rec.of("disconnected")

    run(None, scenario)


def test_get_token_without_initial_token_fetches_before_connect() -> None:
    async def scenario(srv: RunningServer) -> None:
        async with sdk(srv.url) as clients:
            tokens = iter([token("42", ttl=-60), token("42", ttl=3600)])
            source = TokenSource(lambda: next(tokens))
            client, rec = clients.new(get_token=source)
            await client.connect()
            await rec.one("connected")
            # First token (expired) -> 109 -> second call -> connected.
            assert source.calls == 2
            assert [e.error.code for e in rec.of("error") if isinstance(e.error, ReplyError)] == [
                109
            ]

    run(None, scenario)


def test_no_token_while_anonymous_disallowed_disconnects_3501() -> None:
    async def scenario(srv: RunningServer) -> None:
        async with sdk(srv.url) as clients:
            client, rec = clients.new()
            await client.connect()
            ctx: DisconnectedContext = await rec.one("disconnected")
            assert ctx.code == 3501
            await asyncio.sleep(QUIET)
            assert client.state == ClientState.DISCONNECTED
            assert not rec.of("connected")
            assert [c.code for c in rec.of("connecting")] == [0]

    run(None, scenario)


def test_anonymous_token_disallowed_disconnects_3507() -> None:
    async def scenario(srv: RunningServer) -> None:
        async with sdk(srv.url) as clients:
            client, rec = clients.new(token(""))
            await client.connect()
            ctx: DisconnectedContext = await rec.one("disconnected")
            assert (ctx.code, ctx.reason) == (3507, "permission denied")
            assert not rec.of("connected")

    run({"client": {"disallow_anonymous_connection_tokens": True}}, scenario)


def test_anonymous_connect_allowed_by_config() -> None:
    async def scenario(srv: RunningServer) -> None:
        async with sdk(srv.url) as clients:
            client, rec = clients.new()
            await client.connect()
            await rec.one("connected")
            # Anonymous users may not subscribe/publish without the *_for_anonymous options.
            assert (await subscribe_fails(client, "news")).code == 103
            with pytest.raises(ReplyError) as exc:
                await client.publish("news", {"x": 1})
            assert reply_error(exc) == 103

    run({"client": {"allow_anonymous_connect_without_token": True}}, scenario)


# --- 2. publish / receive ---


def test_receive_own_publication_with_info_and_offset() -> None:
    async def scenario(srv: RunningServer) -> None:
        async with sdk(srv.url) as clients:
            client, _ = await clients.connected("42", info={"name": "Alex"})
            _, rec = await subscribed(client, "news")
            payload = {"text": "hello", "n": [1, 2.5, None, True], "u": "\u00e9\u6f22"}
            await client.publish("news", payload)
            ctx: PublicationContext = await rec.one("publication")
            assert ctx.pub.data == payload
            assert ctx.pub.offset == 1
            assert ctx.pub.info is not None
            assert ctx.pub.info.user == "42"
            assert ctx.pub.info.client == client.client_id
            assert ctx.pub.info.conn_info == {"name": "Alex"}

            # Any JSON value is a valid payload, carried as is.
            for value in ("a string", 42, [1, "two"], False):
                await client.publish("news", value)
            await rec.wait("publication", count=5)
            assert rec.data()[1:] == ["a string", 42, [1, "two"], False]
            assert rec.offsets() == [1, 2, 3, 4, 5]

    run(None, scenario)


def test_publication_without_history_has_no_offset() -> None:
    async def scenario(srv: RunningServer) -> None:
        async with sdk(srv.url) as clients:
            client, _ = await clients.connected("42")
            _, rec = await subscribed(client, "plain:room")
            await client.publish("plain:room", {"a": 1})
            ctx: PublicationContext = await rec.one("publication")
            assert ctx.pub.data == {"a": 1}
            assert ctx.pub.offset == 0

    run(namespaces(PLAIN), scenario)


def test_two_clients_receive_50_publications_in_order() -> None:
    async def scenario(srv: RunningServer) -> None:
        async with sdk(srv.url) as clients:
            alice, _ = await clients.connected("42")
            bob, _ = await clients.connected("43")
            _, alice_rec = await subscribed(alice, "chat:room")
            _, bob_rec = await subscribed(bob, "chat:room")
            items = [{"seq": i} for i in range(50)]
            await publish_all(alice, "chat:room", items)
            for rec in (alice_rec, bob_rec):
                await rec.wait("publication", count=50)
                assert rec.data() == items
                assert rec.offsets() == list(range(1, 51))
                assert {ctx.pub.info.user for ctx in rec.of("publication")} == {"42"}
            await asyncio.sleep(0.2)
            assert len(alice_rec.of("publication")) == len(bob_rec.of("publication")) == 50

    run(namespaces(CHAT), scenario)


def test_publish_errors() -> None:
    async def scenario(srv: RunningServer) -> None:
        async with sdk(srv.url) as clients:
            client, rec = await clients.connected("42")
            cases = {"nope:x": 102, "locked:x": 103, "x" * 300: 107}
            for channel, code in cases.items():
                with pytest.raises(ReplyError) as exc:
                    await client.publish(channel, {"a": 1})
                assert reply_error(exc) == code, channel
            # Error replies keep the connection.
            assert client.state == ClientState.CONNECTED
            assert [c.code for c in rec.of("connecting")] == [0]

    run(namespaces(LOCKED), scenario)


# --- 3. history ---


def test_history_limit_since_reverse() -> None:
    async def scenario(srv: RunningServer) -> None:
        async with sdk(srv.url) as clients:
            client, _ = await clients.connected("42")
            channel = "chat:history"
            await publish_all(client, channel, [{"n": i} for i in range(1, 11)])

            top = await client.history(channel, limit=0)
            assert top.publications == []
            assert top.offset == 10
            assert top.epoch
            epoch = top.epoch

            def offsets(result: Any) -> list[int]:
                return [p.offset for p in result.publications]

            first3 = await client.history(channel, limit=3)
            assert offsets(first3) == [1, 2, 3]
            assert [p.data for p in first3.publications] == [{"n": 1}, {"n": 2}, {"n": 3}]
            assert first3.publications[0].info.user == "42"
            assert (first3.offset, first3.epoch) == (10, epoch)

            assert offsets(await client.history(channel, limit=-1)) == list(range(1, 11))
            assert offsets(await client.history(channel, limit=100)) == list(range(1, 11))
            assert offsets(await client.history(channel, limit=3, reverse=True)) == [10, 9, 8]

            since5 = StreamPosition(offset=5, epoch=epoch)
            assert offsets(await client.history(channel, limit=3, since=since5)) == [6, 7, 8]
            assert offsets(await client.history(channel, limit=-1, since=since5)) == list(
                range(6, 11)
            )
            assert offsets(await client.history(channel, limit=2, since=since5, reverse=True)) == [
                4,
                3,
            ]
            at_top = await client.history(
                channel, limit=-1, since=StreamPosition(offset=10, epoch=epoch)
            )
            assert at_top.publications == []
            assert at_top.offset == 10

            with pytest.raises(ReplyError) as exc:
                await client.history(channel, limit=1, since=StreamPosition(5, "not-the-epoch"))
            assert reply_error(exc) == 112
            with pytest.raises(ReplyError) as exc:
                await client.history(channel, limit=1, since=StreamPosition(0, epoch), reverse=True)
            assert reply_error(exc) == 107

            # A channel never published to: empty stream with an epoch of its own.
            empty = await client.history("chat:empty", limit=-1)
            assert empty.publications == []
            assert empty.offset == 0
            assert empty.epoch

    run(namespaces(CHAT), scenario)


def test_history_errors() -> None:
    async def scenario(srv: RunningServer) -> None:
        async with sdk(srv.url) as clients:
            client, rec = await clients.connected("42")
            for channel, code in {"plain:x": 108, "locked:x": 103, "nope:x": 102}.items():
                with pytest.raises(ReplyError) as exc:
                    await client.history(channel, limit=10)
                assert reply_error(exc) == code, channel
            assert client.state == ClientState.CONNECTED
            assert [c.code for c in rec.of("connecting")] == [0]

    run(namespaces(PLAIN, LOCKED), scenario)


# --- 4. presence ---


def test_presence_and_presence_stats() -> None:
    async def scenario(srv: RunningServer) -> None:
        async with sdk(srv.url) as clients:
            channel = "chat:presence"
            alice, _ = await clients.connected("42", info={"name": "Alice"})
            alice_sub, _ = await subscribed(alice, channel)

            presence = await alice_sub.presence()
            assert set(presence.clients) == {alice.client_id}
            me = presence.clients[alice.client_id]
            assert (me.user, me.client, me.conn_info) == ("42", alice.client_id, {"name": "Alice"})
            stats = await alice_sub.presence_stats()
            assert (stats.num_clients, stats.num_users) == (1, 1)

            bob, _ = await clients.connected("43")
            await subscribed(bob, channel)
            presence = await alice.presence(channel)
            assert set(presence.clients) == {alice.client_id, bob.client_id}
            assert presence.clients[bob.client_id].user == "43"
            stats = await bob.presence_stats(channel)
            assert (stats.num_clients, stats.num_users) == (2, 2)

            # A second connection of the same user: 3 clients, still 2 users.
            alice2, _ = await clients.connected("42")
            await subscribed(alice2, channel)
            stats = await alice.presence_stats(channel)
            assert (stats.num_clients, stats.num_users) == (3, 2)

            await alice2.disconnect()
            await bob.get_subscription(channel).unsubscribe()
            for _ in range(50):  # the server learns about the close asynchronously
                stats = await alice.presence_stats(channel)
                if stats.num_clients == 1:
                    break
                await asyncio.sleep(0.05)
            assert (stats.num_clients, stats.num_users) == (1, 1)
            assert set((await alice.presence(channel)).clients) == {alice.client_id}

    run(namespaces(CHAT), scenario)


def test_presence_errors() -> None:
    async def scenario(srv: RunningServer) -> None:
        async with sdk(srv.url) as clients:
            client, _ = await clients.connected("42")
            for call in (client.presence, client.presence_stats):
                for channel, code in {"plain:x": 108, "locked:x": 108, "nope:x": 102}.items():
                    with pytest.raises(ReplyError) as exc:
                        await call(channel)
                    assert reply_error(exc) == code, (call, channel)
            assert client.state == ClientState.CONNECTED

    run(namespaces(PLAIN, LOCKED), scenario)


def test_presence_permission_denied() -> None:
    locked_presence = {**LOCKED, "presence": True}

    async def scenario(srv: RunningServer) -> None:
        async with sdk(srv.url) as clients:
            client, _ = await clients.connected("42")
            for call in (client.presence, client.presence_stats):
                with pytest.raises(ReplyError) as exc:
                    await call("locked:x")
                assert reply_error(exc) == 103

    run(namespaces(locked_presence), scenario)


# --- 5. join / leave ---


def test_join_and_leave_with_force_push_join_leave() -> None:
    async def scenario(srv: RunningServer) -> None:
        async with sdk(srv.url) as clients:
            channel = "chat:lobby"
            alice, _ = await clients.connected("42", info={"name": "Alice"})
            _, alice_rec = await subscribed(alice, channel)  # join_leave not asked: forced
            own: JoinContext = await alice_rec.one("join")
            assert (own.info.client, own.info.user) == (alice.client_id, "42")
            assert own.info.conn_info == {"name": "Alice"}

            bob, _ = await clients.connected("43")
            bob_sub, bob_rec = await subscribed(bob, channel)
            joined: JoinContext = await alice_rec.one("join", lambda c: c.info.user == "43")
            assert joined.info.client == bob.client_id
            assert (await bob_rec.one("join")).info.client == bob.client_id  # bob's own join

            await bob_sub.unsubscribe()
            left: LeaveContext = await alice_rec.one("leave")
            assert (left.info.client, left.info.user) == (bob.client_id, "43")

            await bob_sub.subscribe()
            await alice_rec.wait("join", lambda c: c.info.client == bob.client_id, count=2)
            await bob.disconnect()  # a disconnect is a leave as well
            await alice_rec.wait("leave", lambda c: c.info.client == bob.client_id, count=2)

            await asyncio.sleep(0.2)
            assert [c.info.user for c in alice_rec.of("join")] == ["42", "43", "43"]
            assert [c.info.user for c in alice_rec.of("leave")] == ["43", "43"]
            assert not [c for c in alice_rec.of("leave") if c.info.client == alice.client_id]

    run(namespaces(CHAT), scenario)


def test_join_leave_only_when_asked_without_force() -> None:
    asked = {**CHAT, "name": "ask", "force_push_join_leave": False}

    async def scenario(srv: RunningServer) -> None:
        async with sdk(srv.url) as clients:
            alice, _ = await clients.connected("42")
            bob, _ = await clients.connected("43")
            _, asking = await subscribed(alice, "ask:room", join_leave=True)
            _, silent = await subscribed(bob, "ask:room")
            await asking.wait("join", lambda c: c.info.client == bob.client_id)
            await bob.disconnect()
            await asking.one("leave")
            assert not silent.of("join")

    run(namespaces(asked), scenario)


# --- 6. recovery ---


def test_recovery_after_reconnect() -> None:
    async def scenario(srv: RunningServer) -> None:
        async with sdk(srv.url) as clients:
            channel = "rec:feed"
            alice, _ = await clients.connected("42")
            bob, _ = await clients.connected("43")
            _, rec = await subscribed(alice, channel)
            first: SubscribedContext = rec.of("subscribed")[0]
            assert first.recoverable
            assert first.positioned
            assert first.stream_position.offset == 0
            assert first.stream_position.epoch
            assert not first.was_recovering
            assert not first.recovered

            await publish_all(bob, channel, [{"n": 1}, {"n": 2}])
            await rec.wait("publication", count=2)

            await alice.disconnect()
            # Kept, to be resubscribed on the next connect: subscribing "transport closed" (1).
            assert [c.code for c in rec.of("subscribing")] == [0, 1]
            missed = [{"n": n} for n in range(3, 9)]
            await publish_all(bob, channel, missed)
            await alice.connect()

            again: SubscribedContext = (await rec.wait("subscribed", count=2))[1]
            assert again.was_recovering is True
            assert again.recovered is True
            assert again.stream_position.epoch == first.stream_position.epoch
            await rec.wait("publication", count=8)
            await asyncio.sleep(0.2)  # nothing duplicated arrives late
            assert rec.offsets() == list(range(1, 9))
            assert rec.data() == [{"n": 1}, {"n": 2}, *missed]
            assert {ctx.pub.info.user for ctx in rec.of("publication")} == {"43"}

            # Live publications continue after the recovered ones.
            await bob.publish(channel, {"n": 9})
            await rec.wait("publication", count=9)
            assert rec.offsets() == list(range(1, 10))

    run(namespaces(REC), scenario)


def test_recovery_after_server_forced_reconnect_and_server_publications() -> None:
    async def scenario(srv: RunningServer) -> None:
        async with sdk(srv.url) as clients:
            channel = "rec:forced"
            alice, alice_rec = await clients.connected("42")
            _, rec = await subscribed(alice, channel)
            await server_publish(srv, channel, {"n": 1})
            await rec.wait("publication", count=1)
            old_id = alice.client_id

            # The server drops the connection with a reconnect code (3011 force reconnect).
            def force_reconnect() -> None:
                srv.server.node.clients[old_id].close(Disconnect.FORCE_RECONNECT)

            await asyncio.to_thread(srv.call, force_reconnect)
            connecting: ConnectingContext = await alice_rec.one(
                "connecting", lambda c: c.code == 3011
            )
            assert connecting.reason == "force reconnect"
            for n in range(2, 6):
                await server_publish(srv, channel, {"n": n})
            await alice_rec.wait("connected", count=2)
            assert alice.client_id != old_id

            again: SubscribedContext = (await rec.wait("subscribed", count=2))[1]
            assert again.was_recovering
            assert again.recovered
            await rec.wait("publication", count=5)
            await asyncio.sleep(0.2)
            assert rec.offsets() == [1, 2, 3, 4, 5]
            assert rec.data() == [{"n": n} for n in range(1, 6)]
            assert all(ctx.pub.info is None for ctx in rec.of("publication"))  # API-style

    run(namespaces(REC), scenario)


def test_recovery_after_unsubscribe_and_resubscribe() -> None:
    async def scenario(srv: RunningServer) -> None:
        async with sdk(srv.url) as clients:
            channel = "rec:resub"
            alice, _ = await clients.connected("42")
            bob, _ = await clients.connected("43")
            sub, rec = await subscribed(alice, channel)
            await publish_all(bob, channel, [{"n": 1}, {"n": 2}])
            await rec.wait("publication", count=2)

            await sub.unsubscribe()
            assert rec.of("unsubscribed")[0].code == 0
            await publish_all(bob, channel, [{"n": n} for n in range(3, 6)])
            await sub.subscribe()
            again: SubscribedContext = (await rec.wait("subscribed", count=2))[1]
            assert again.was_recovering
            assert again.recovered
            await rec.wait("publication", count=5)
            await asyncio.sleep(0.2)
            assert rec.offsets() == [1, 2, 3, 4, 5]

    run(namespaces(REC), scenario)


def test_recoverable_on_request_when_allowed() -> None:
    # Channels without namespace: allow_recovery (not forced) -> recoverable only when asked.
    async def scenario(srv: RunningServer) -> None:
        async with sdk(srv.url) as clients:
            alice, _ = await clients.connected("42")
            _, plain = await subscribed(alice, "updates-plain")
            ctx: SubscribedContext = plain.of("subscribed")[0]
            assert not ctx.recoverable
            assert not ctx.positioned
            assert ctx.stream_position is None

            _, asked = await subscribed(alice, "updates", recoverable=True)
            ctx = asked.of("subscribed")[0]
            assert ctx.recoverable
            assert ctx.positioned
            await alice.publish("updates", {"n": 1})
            await asked.wait("publication", count=1)
            await alice.disconnect()
            await server_publish(srv, "updates", {"n": 2})
            await alice.connect()
            again: SubscribedContext = (await asked.wait("subscribed", count=2))[1]
            assert again.was_recovering
            assert again.recovered
            await asked.wait("publication", count=2)
            assert asked.offsets() == [1, 2]

            _, positioned = await subscribed(alice, "positioned", positioned=True)
            ctx = positioned.of("subscribed")[0]
            assert ctx.positioned
            assert not ctx.recoverable
            assert ctx.stream_position.epoch

    run(None, scenario)


def test_subscribe_and_recover_during_publication_storm() -> None:
    """Live publications racing a subscribe or a recovery are neither lost nor duplicated."""

    async def scenario(srv: RunningServer) -> None:
        async with sdk(srv.url) as clients:
            channel = "rec:storm"
            total = 300
            alice, _ = await clients.connected("42")
            bob, _ = await clients.connected("43")

            async def storm() -> None:
                for n in range(1, total + 1):
                    await bob.publish(channel, {"n": n})
                    if n % 5 == 0:
                        await asyncio.sleep(0.002)

            publisher = asyncio.create_task(storm())
            await asyncio.sleep(0.05)
            _, rec = await subscribed(alice, channel)
            start = rec.of("subscribed")[0].stream_position.offset
            for cycle in range(3):
                await asyncio.sleep(0.05)
                await alice.disconnect()
                await asyncio.sleep(0.03)
                await alice.connect()
                await rec.wait("subscribed", count=cycle + 2)
            await asyncio.wait_for(publisher, WAIT)
            await rec.wait("publication", lambda c: c.pub.offset == total)
            await asyncio.sleep(0.2)
            assert 0 < start < total, start  # the subscribe really raced the publications
            assert rec.offsets() == list(range(start + 1, total + 1))
            assert rec.data() == [{"n": n} for n in range(start + 1, total + 1)]
            assert all(ctx.recovered for ctx in rec.of("subscribed")[1:])

    run(namespaces(REC), scenario)


# --- 7. unrecoverable position ---


def test_unrecoverable_position_history_too_small() -> None:
    async def scenario(srv: RunningServer) -> None:
        async with sdk(srv.url) as clients:
            channel = "small:feed"
            alice, _ = await clients.connected("42")
            bob, _ = await clients.connected("43")
            _, rec = await subscribed(alice, channel)
            await bob.publish(channel, {"n": 1})
            await rec.wait("publication", count=1)

            await alice.disconnect()
            await publish_all(bob, channel, [{"n": n} for n in range(2, 7)])  # 5 missed, 2 kept
            await alice.connect()

            again: SubscribedContext = (await rec.wait("subscribed", count=2))[1]
            assert again.was_recovering is True
            assert again.recovered is False
            assert again.stream_position.offset == 6  # the current top
            await asyncio.sleep(0.2)
            assert rec.offsets() == [1]  # nothing replayed

            await bob.publish(channel, {"n": 7})
            await rec.wait("publication", count=2)
            assert rec.offsets() == [1, 7]

    run(namespaces(SMALL), scenario)


def test_unrecoverable_position_with_get_state_112_then_state_reloaded() -> None:
    async def scenario(srv: RunningServer) -> None:
        async with sdk(srv.url) as clients:
            channel = "small:state"
            alice, _ = await clients.connected("42")
            bob, _ = await clients.connected("43")
            state_calls: list[StreamPosition] = []

            async def get_state(ch: str) -> StreamPosition:
                top = await alice.history(ch, limit=0)
                position = StreamPosition(offset=top.offset, epoch=top.epoch)
                state_calls.append(position)
                return position

            _, rec = await subscribed(alice, channel, get_state=get_state)
            assert len(state_calls) == 1
            first: SubscribedContext = rec.of("subscribed")[0]
            assert first.was_recovering
            assert first.recovered

            await bob.publish(channel, {"n": 1})
            await rec.wait("publication", count=1)
            await alice.disconnect()
            await publish_all(bob, channel, [{"n": n} for n in range(2, 7)])
            await alice.connect()

            # flag 3 -> error 112 instead of recovered:false -> get_state again -> subscribed.
            again: SubscribedContext = (await rec.wait("subscribed", count=2))[1]
            assert len(state_calls) == 2
            assert state_calls[1].offset == 6
            assert again.recovered
            assert again.stream_position.offset == 6
            assert rec.offsets() == [1]

    run(namespaces(SMALL), scenario)


# --- 8. connection token refresh / expiry ---


def test_connection_token_refresh_keeps_connection_past_expiry() -> None:
    async def scenario(srv: RunningServer) -> None:
        async with sdk(srv.url) as clients:
            source = TokenSource(lambda: token("42", ttl=3))
            client, rec = clients.new(get_token=source)  # the first token comes from get_token
            await client.connect()
            await client.ready(timeout=WAIT)
            first_exp = token_exp(source.minted[0])
            _, sub_rec = await subscribed(client, "news")
            client_id = client.client_id
            # Without a refresh the server closes (3005) at exp + 1.5 s.
            await asyncio.sleep(first_exp + 1.5 - time.time() + 0.5)
            assert source.calls >= 2, source.calls  # connect + at least one refresh
            assert client.state == ClientState.CONNECTED
            assert client.client_id == client_id
            assert [c.code for c in rec.of("connecting")] == [0]
            assert not rec.of("disconnected")
            assert not rec.of("error")
            server_exp = await on_server(srv, lambda node: node.clients[client_id].expire_at)
            assert server_exp is not None
            assert server_exp > first_exp
            await client.publish("news", {"still": "connected"})
            await sub_rec.one("publication")

    # 1.5 s: the SDK refreshes at `ttl` whole seconds after connect, which may be up to a
    # second after `exp` when the server rounds ttl up.
    run({"client": {"expired_close_delay": 1.5}}, scenario)


def test_connection_expiry_without_refresh_closes_3005() -> None:
    async def scenario(srv: RunningServer) -> None:
        async with sdk(srv.url) as clients:
            client, rec = await clients.connected("42", tok=token("42", ttl=3))
            closed: ConnectingContext = await rec.one("connecting", lambda c: c.code == 3005)
            assert closed.reason == "connection expired"
            # It reconnects with the same (now expired) token: 109, and without get_token the
            # SDK gives up as unauthorized (code 1).
            gone: DisconnectedContext = await rec.one("disconnected")
            assert gone.code == 1
            replies = [e.error.code for e in rec.of("error") if isinstance(e.error, ReplyError)]
            assert replies == [109]
            assert client.state == ClientState.DISCONNECTED

    run({"client": {"expired_close_delay": 0.5}}, scenario)


def test_connection_expiry_then_get_token_reconnects() -> None:
    # get_token failing for refresh (raising) -> the server closes with 3005 -> the SDK
    # reconnects, gets 109 for the old token, calls get_token again and connects.
    async def scenario(srv: RunningServer) -> None:
        async with sdk(srv.url) as clients:
            calls = 0

            async def get_token() -> str:
                nonlocal calls
                calls += 1
                if calls == 1:
                    raise RuntimeError("token service down")  # the refresh attempt fails
                return token("42", ttl=3600)

            client, rec = await clients.connected("42", get_token=get_token, tok=token("42", ttl=3))
            await rec.one("connecting", lambda c: c.code == 3005)
            await rec.wait("connected", count=2)
            assert calls == 2
            assert client.state == ClientState.CONNECTED
            assert [e.error.code for e in rec.of("error") if isinstance(e.error, ReplyError)] == [
                109
            ]

    run({"client": {"expired_close_delay": 0.5}}, scenario)


def test_refresh_with_expired_token_closes_3005_then_reconnects() -> None:
    async def scenario(srv: RunningServer) -> None:
        async with sdk(srv.url) as clients:
            tokens = iter([token("42", ttl=-60), token("42", ttl=3600)])
            source = TokenSource(lambda: next(tokens))
            client, rec = await clients.connected("42", get_token=source, tok=token("42", ttl=3))
            # refresh with an expired token -> close 3005 -> reconnect with it -> 109 ->
            # get_token again -> connected.
            closed: ConnectingContext = await rec.one("connecting", lambda c: c.code == 3005)
            assert closed.reason == "connection expired"
            await rec.wait("connected", count=2)
            assert source.calls == 2
            assert client.state == ClientState.CONNECTED

    run({"client": {"expired_close_delay": 0.5}}, scenario)


def test_refresh_with_token_of_another_user_closes_3500() -> None:
    async def scenario(srv: RunningServer) -> None:
        async with sdk(srv.url) as clients:
            source = TokenSource(lambda: token("43", ttl=3600))
            client, rec = await clients.connected("42", get_token=source, tok=token("42", ttl=3))
            gone: DisconnectedContext = await rec.one("disconnected")
            assert (gone.code, gone.reason) == (3500, "invalid token")
            assert source.calls == 1
            await asyncio.sleep(QUIET)
            assert client.state == ClientState.DISCONNECTED
            assert len(rec.of("connected")) == 1

    run({"client": {"expired_close_delay": 1.5}}, scenario)


def test_connect_token_expiring_within_a_second_reports_ttl() -> None:
    """expires:true must always come with ttl (the SDK reads connect["ttl"]), even < 1 s left."""

    async def scenario(srv: RunningServer) -> None:
        async with sdk(srv.url) as clients:
            # Start just after a second boundary so that exp = next second is ~0.9 s away.
            await asyncio.sleep(1.02 - time.time() % 1)
            source = TokenSource(lambda: token("42", ttl=3600))
            client, rec = clients.new(
                token("42", ttl=None, exp=int(time.time()) + 1), get_token=source
            )
            await client.connect()
            await rec.one("connected")
            await asyncio.sleep(1.5)
            assert client.state == ClientState.CONNECTED, rec.items
            assert not rec.of("disconnected")
            assert source.calls >= 1  # refreshed right away

    run({"client": {"expired_close_delay": 0.5}}, scenario)


# --- 9. subscription tokens ---


def test_private_channel_needs_subscription_token() -> None:
    async def scenario(srv: RunningServer) -> None:
        async with sdk(srv.url) as clients:
            client, _ = await clients.connected("42")
            ctx = await subscribe_fails(client, "$secret")
            assert (ctx.code, ctx.reason) == (103, "permission denied")

            ctx = await subscribe_fails(client, "$garbage", token="not-a-jwt")
            assert ctx.code == 103
            wrong_secret = mint_token(
                "wrong-secret-0123456789abcdef0123456789abcdef",
                {"sub": "42", "channel": "$wrong"},
            )
            assert (await subscribe_fails(client, "$wrong", token=wrong_secret)).code == 103

            sub_token = token("42", channel="$vip", info={"role": "admin"}, data={"motd": "hi"})
            _, rec = await subscribed(client, "$vip", token=sub_token)
            assert rec.of("subscribed")[0].data == {"motd": "hi"}
            await client.publish("$vip", {"x": 1})
            pub: PublicationContext = await rec.one("publication")
            assert pub.pub.data == {"x": 1}
            assert pub.pub.info.chan_info == {"role": "admin"}
            assert client.state == ClientState.CONNECTED

    run(None, scenario)


def test_subscription_token_grants_namespace_without_permission() -> None:
    async def scenario(srv: RunningServer) -> None:
        async with sdk(srv.url) as clients:
            client, _ = await clients.connected("42")
            assert (await subscribe_fails(client, "locked:a")).code == 103
            await subscribed(client, "locked:b", token=token("42", channel="locked:b"))

    run(namespaces(LOCKED), scenario)


def test_subscription_token_from_get_token_and_expired_token() -> None:
    async def scenario(srv: RunningServer) -> None:
        async with sdk(srv.url) as clients:
            client, _ = await clients.connected("42")
            source = TokenSource(lambda: token("42", ttl=3600, channel="$fetched"))
            await subscribed(client, "$fetched", get_token=source)
            assert source.calls == 1

            # An expired token with get_token: 109 -> token fetched -> subscribed.
            source = TokenSource(lambda: token("42", ttl=3600, channel="$renewed"))
            _, rec = await subscribed(
                client, "$renewed", token=token("42", ttl=-60, channel="$renewed"), get_token=source
            )
            assert source.calls == 1
            assert [e.error.code for e in rec.of("error")] == [109]

            # An expired token without get_token: unauthorized (1).
            stale = token("42", ttl=-60, channel="$stale")
            assert (await subscribe_fails(client, "$stale", token=stale)).code == 1

            # get_token returning "" means "not allowed": unauthorized (1).
            async def empty(_channel: str) -> str:
                return ""

            assert (await subscribe_fails(client, "$empty", get_token=empty)).code == 1
            assert client.state == ClientState.CONNECTED

    run(None, scenario)


def test_subscription_token_for_another_channel_or_user_closes_3500() -> None:
    async def scenario(srv: RunningServer) -> None:
        async with sdk(srv.url) as clients:
            for channel, tok in (
                ("$mine", token("42", channel="$other")),
                ("$mine", token("43", channel="$mine")),
            ):
                client, rec = await clients.connected("42")
                sub = client.new_subscription(channel, token=tok)
                await sub.subscribe()
                ctx: DisconnectedContext = await rec.one("disconnected")
                assert (ctx.code, ctx.reason) == (3500, "invalid token")

    run(None, scenario)


def test_subscription_token_refresh_keeps_subscription() -> None:
    async def scenario(srv: RunningServer) -> None:
        async with sdk(srv.url) as clients:
            channel = "$refreshed"
            client, rec = await clients.connected("42")
            source = TokenSource(lambda: token("42", ttl=3, channel=channel))
            sub, sub_rec = await subscribed(client, channel, get_token=source)
            first_exp = token_exp(source.minted[0])
            # Without a sub_refresh the server unsubscribes (2501) at exp + 1.5 s.
            await asyncio.sleep(first_exp + 1.5 - time.time() + 0.5)
            assert source.calls >= 2, source.calls  # subscribe + at least one sub_refresh
            assert sub.state == SubscriptionState.SUBSCRIBED
            assert sub_rec.kinds() == ["subscribing", "subscribed"], sub_rec.items
            client_id = client.client_id
            server_exp = await on_server(
                srv, lambda node: node.clients[client_id].subscriptions[channel].expire_at
            )
            assert server_exp is not None
            assert server_exp > first_exp
            await client.publish(channel, {"still": "here"})
            assert (await sub_rec.one("publication")).pub.data == {"still": "here"}
            assert [c.code for c in rec.of("connecting")] == [0]

    run({"client": {"expired_sub_close_delay": 1.5}}, scenario)


def test_subscription_expiry_without_refresh_resubscribes_2501() -> None:
    async def scenario(srv: RunningServer) -> None:
        async with sdk(srv.url) as clients:
            channel = "$expiring"
            client, rec = await clients.connected("42")
            calls = 0

            async def get_token(_channel: str) -> str:
                nonlocal calls
                calls += 1
                if calls == 1:
                    raise RuntimeError("token service down")  # the sub_refresh attempt fails
                return token("42", ttl=3600, channel=channel)

            sub, sub_rec = await subscribed(
                client, channel, token=token("42", ttl=3, channel=channel), get_token=get_token
            )
            pushed: SubscribingContext = await sub_rec.one("subscribing", lambda c: c.code == 2501)
            assert pushed.reason == "subscription expired"
            await sub_rec.wait("subscribed", count=2)
            assert sub.state == SubscriptionState.SUBSCRIBED
            assert client.state == ClientState.CONNECTED
            assert [c.code for c in rec.of("connecting")] == [0]

    run({"client": {"expired_sub_close_delay": 0.5}}, scenario)


def test_subscription_token_expiring_within_a_second_reports_ttl() -> None:
    """expires:true in a subscribe result must come with ttl (the SDK reads subscribe["ttl"])."""

    async def scenario(srv: RunningServer) -> None:
        async with sdk(srv.url) as clients:
            channel = "$short"
            client, rec = await clients.connected("42")
            source = TokenSource(lambda: token("42", ttl=3600, channel=channel))
            await asyncio.sleep(1.02 - time.time() % 1)
            short = token("42", ttl=None, exp=int(time.time()) + 1, channel=channel)
            sub, _ = await subscribed(client, channel, token=short, get_token=source)
            await asyncio.sleep(1.5)
            assert client.state == ClientState.CONNECTED, rec.items
            assert sub.state == SubscriptionState.SUBSCRIBED
            assert source.calls >= 1

    run({"client": {"expired_sub_close_delay": 0.5}}, scenario)


# --- 10. server-side subscriptions ---


def test_server_side_subscription_from_token_channels() -> None:
    async def scenario(srv: RunningServer) -> None:
        async with sdk(srv.url) as clients:
            client, rec = await clients.connected("42", channels=["news", "chat:lobby"])
            subs = {ctx.channel: ctx for ctx in await rec.wait("subscribed", count=2)}
            # Only the token's channels: the operators' system channel is off by default.
            await asyncio.sleep(0.1)
            assert [ctx.channel for ctx in rec.of("subscribed")] == ["news", "chat:lobby"]
            assert set(subs) == {"news", "chat:lobby"}
            assert await num_subscribers(srv, "news") == 1

            bob, _ = await clients.connected("43")
            await bob.publish("news", {"headline": 1})
            await server_publish(srv, "news", {"headline": 2})
            pubs = await rec.wait("publication", lambda c: c.channel == "news", count=2)
            assert [p.pub.data for p in pubs] == [{"headline": 1}, {"headline": 2}]
            assert pubs[0].pub.info.user == "43"
            assert pubs[0].pub.offset == 1
            assert pubs[1].pub.offset == 2

            # Join/leave of a forced namespace reach server-side subscribers too.
            await subscribed(bob, "chat:lobby")
            join: ServerJoinContext = await rec.one("join", lambda c: c.info.user == "43")
            assert join.channel == "chat:lobby"
            await bob.disconnect()
            leave: ServerLeaveContext = await rec.one("leave")
            assert (leave.channel, leave.info.user) == ("chat:lobby", "43")

            # Presence counts the server-side subscriber.
            presence = await client.presence("chat:lobby")
            assert set(presence.clients) == {client.client_id}

    run(namespaces(CHAT), scenario)


def test_server_side_subscription_from_token_subs_with_data_and_info() -> None:
    async def scenario(srv: RunningServer) -> None:
        async with sdk(srv.url) as clients:
            subs = {"news": {"data": {"welcome": True}, "info": {"seat": 7}}}
            client, rec = await clients.connected("42", subs=subs, channels=["ignored"])
            ctx: ServerSubscribedContext = await rec.one("subscribed")
            assert (ctx.channel, ctx.data) == ("news", {"welcome": True})
            await asyncio.sleep(0.1)
            # `subs` wins over `channels`.
            assert [c.channel for c in rec.of("subscribed")] == ["news"]
            await client.publish("news", {"n": 1})
            pub: ServerPublicationContext = await rec.one("publication")
            assert pub.pub.info.chan_info == {"seat": 7}
            presence = await client.presence("news")
            assert presence.clients[client.client_id].chan_info == {"seat": 7}

    run(None, scenario)


def test_personal_channel_server_side_subscription() -> None:
    async def scenario(srv: RunningServer) -> None:
        async with sdk(srv.url) as clients:
            _client, rec = await clients.connected("42")
            sub: ServerSubscribedContext = await rec.one("subscribed")
            assert sub.channel == "#42"
            bob, bob_rec = await clients.connected("43")
            assert (await bob_rec.one("subscribed")).channel == "#43"

            await bob.publish("#42", {"dm": "hi 42"})
            await server_publish(srv, "#42", {"dm": "from server"})
            pubs = await rec.wait("publication", count=2)
            assert [(p.channel, p.pub.data) for p in pubs] == [
                ("#42", {"dm": "hi 42"}),
                ("#42", {"dm": "from server"}),
            ]
            await asyncio.sleep(0.2)
            assert not bob_rec.of("publication")  # #43 got nothing

    run({"client": {"personal_channel": {"enabled": True}}}, scenario)


def test_server_side_subscription_recovery_on_reconnect() -> None:
    async def scenario(srv: RunningServer) -> None:
        async with sdk(srv.url) as clients:
            channel = "rec:server"
            client, rec = await clients.connected("42", channels=[channel])
            first: ServerSubscribedContext = await rec.one("subscribed")
            assert first.recoverable
            assert first.stream_position.epoch
            for n in (1, 2):
                await server_publish(srv, channel, {"n": n})
            await rec.wait("publication", count=2)

            await client.disconnect()
            for n in (3, 4, 5):
                await server_publish(srv, channel, {"n": n})
            await client.connect()
            mine = await rec.wait("subscribed", lambda c: c.channel == channel, count=2)
            again: ServerSubscribedContext = mine[1]
            assert again.was_recovering
            assert again.recovered
            await rec.wait("publication", count=5)
            await asyncio.sleep(0.2)
            assert [p.pub.offset for p in rec.of("publication")] == [1, 2, 3, 4, 5]
            assert [p.pub.data for p in rec.of("publication")] == [{"n": n} for n in range(1, 6)]

    run(namespaces(REC), scenario)


# --- 11. unsubscribe ---


def test_no_publications_after_unsubscribe() -> None:
    async def scenario(srv: RunningServer) -> None:
        async with sdk(srv.url) as clients:
            channel = "chat:quiet"
            alice, alice_rec = await clients.connected("42")
            bob, _ = await clients.connected("43")
            sub, rec = await subscribed(alice, channel)
            _, bob_rec = await subscribed(bob, channel)
            await bob.publish(channel, {"n": 1})
            await rec.wait("publication", count=1)

            await sub.unsubscribe()
            assert sub.state == SubscriptionState.UNSUBSCRIBED
            assert rec.of("unsubscribed")[0].code == 0
            for _ in range(50):  # the unsubscribe command is in flight
                if await num_subscribers(srv, channel) == 1:
                    break
                await asyncio.sleep(0.05)
            assert await num_subscribers(srv, channel) == 1  # only bob is left on the server
            stats = await bob.presence_stats(channel)
            assert (stats.num_clients, stats.num_users) == (1, 1)

            await bob.publish(channel, {"n": 2})
            await bob_rec.wait("publication", count=2)
            await asyncio.sleep(0.3)
            assert rec.offsets() == [1]
            assert alice.state == ClientState.CONNECTED
            assert [c.code for c in alice_rec.of("connecting")] == [0]

    run(namespaces(CHAT), scenario)


def test_unsubscribe_of_channel_unknown_to_server_keeps_connection() -> None:
    async def scenario(srv: RunningServer) -> None:
        async with sdk(srv.url) as clients:
            client, rec = await clients.connected("42")
            client_id = client.client_id
            release = asyncio.Event()

            async def slow_token(channel: str) -> str:
                await release.wait()
                return token("42", channel=channel)

            # Subscriptions still waiting for their token: the server never saw a subscribe,
            # but the SDK sends `unsubscribe` for them anyway.
            subs = []
            for channel in ("$ghost", "nope:ghost"):
                sub = client.new_subscription(channel, get_token=slow_token)
                await sub.subscribe()
                subs.append(sub)
            await asyncio.sleep(0.1)
            for sub in subs:
                await sub.unsubscribe()
                assert sub.state == SubscriptionState.UNSUBSCRIBED
            # A later round trip: the unsubscribe replies were handled before it.
            await client.presence_stats("news")
            release.set()
            await asyncio.sleep(QUIET)
            assert client.state == ClientState.CONNECTED
            assert client.client_id == client_id
            assert [c.code for c in rec.of("connecting")] == [0]  # no "unsubscribe error" (4)

            # The connection still works normally.
            _, sub_rec = await subscribed(client, "news")
            await client.publish("news", {"ok": True})
            await sub_rec.one("publication")

    run(None, scenario)


# --- 12. subscribe errors ---


def test_subscribe_errors() -> None:
    async def scenario(srv: RunningServer) -> None:
        async with sdk(srv.url) as clients:
            client, rec = await clients.connected("42", channels=["news"])
            await rec.one("subscribed")
            cases = {
                "nope:x": (102, "unknown channel"),
                "locked:x": (103, "permission denied"),
                "x" * 256: (107, "bad request"),
                "caf\u00e9": (107, "bad request"),
                "news": (105, "already subscribed"),  # a server-side subscription already
            }
            for channel, expected in cases.items():
                ctx = await subscribe_fails(client, channel)
                assert (ctx.code, ctx.reason) == expected, channel
            # 255 characters is still fine.
            await subscribed(client, "y" * 255)
            assert client.state == ClientState.CONNECTED
            assert [c.code for c in rec.of("connecting")] == [0]

    run(namespaces(LOCKED), scenario)


def test_channel_limit_per_connection() -> None:
    async def scenario(srv: RunningServer) -> None:
        async with sdk(srv.url) as clients:
            client, _ = await clients.connected("42")
            await subscribed(client, "one")
            await subscribed(client, "two")
            assert (await subscribe_fails(client, "three")).code == 106
            assert client.state == ClientState.CONNECTED

    run({"client": {"channel_limit": 2}}, scenario)


def test_subscribe_to_user_limited_channel() -> None:
    dialog = {**PLAIN, "name": "dialog", "allow_user_limited_channels": True}

    async def scenario(srv: RunningServer) -> None:
        async with sdk(srv.url) as clients:
            alice, _ = await clients.connected("42")
            await subscribed(alice, "dialog:#42,43")
            assert (await subscribe_fails(alice, "dialog:#43,44")).code == 103

    run(namespaces(dialog), scenario)


# --- ping / pong ---


def test_pings_keep_a_busy_connection_alive() -> None:
    async def scenario(srv: RunningServer) -> None:
        async with sdk(srv.url) as clients:
            # The SDK drops a connection that saw no ping for ping + 1 s (it resets its watchdog
            # on pings only); the server closes with 3012 if the SDK's pongs are not accepted.
            client, rec = clients.new(token("42"), max_server_ping_delay=1.0)
            await client.connect()
            await client.ready(timeout=WAIT)
            client_id = client.client_id
            _, sub_rec = await subscribed(client, "news")
            for n in range(35):  # ~3.5 s of steady traffic
                await client.publish("news", {"n": n})
                await asyncio.sleep(0.1)
            await sub_rec.wait("publication", count=35)
            assert client.state == ClientState.CONNECTED
            assert client.client_id == client_id
            assert [c.code for c in rec.of("connecting")] == [0], rec.items

    run({"client": {"ping_interval": 1.0, "pong_timeout": 0.5}}, scenario)
