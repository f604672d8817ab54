"""Events the backend is told (issue 15, item 4): disconnects (user, client, code, reason) to the
disconnect proxy or hook; channels occupied (first subscriber anywhere in the cluster) and
vacated (last one gone for `state_delay`), to the state proxy or hook: on one node, across two
nodes sharing a private Redis, and without flapping when a subscriber comes back in time.

Real sockets and real time: the waits are bounded generously, nothing is asserted on speed.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import trio
from backend_app import RunningBackend, running_backend
from conftest import make_config, serve_in, token
from redis_server import RedisServer, new_prefix
from test_backend_proxies import raw_client
from trio_websocket import ConnectionClosed

from aether_trio.app import Server
from aether_trio.backend import ChannelEvent, DisconnectEvent, Hooks
from aether_trio.config import Config


@pytest.fixture
def backend() -> Iterator[RunningBackend]:
    with running_backend() as running:
        running.app.routes["/disconnect"] = lambda body, headers: {}
        running.app.routes["/state"] = lambda body, headers: {}
        yield running


class Events:
    """What the hooks were told, with a way to wait for the next one."""

    def __init__(self) -> None:
        self.seen: list[Any] = []
        self._changed = trio.Event()

    def __call__(self, event: Any) -> None:
        self.seen.append(event)
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, count: int, within: float = 10.0) -> list[Any]:
        with trio.fail_after(within):
            while len(self.seen) < count:
                await self._changed.wait()
        return self.seen

    def states(self) -> list[tuple[str, str]]:
        return [(e.channel, e.type) for e in self.seen if isinstance(e, ChannelEvent)]


def hooked(events: Events, **overrides: Any) -> tuple[Config, Hooks]:
    config = make_config({"channel": {"state_delay": 0.5}, **overrides})
    return config, Hooks(on_disconnect=events, on_channel_event=events)


# --- disconnect ---


async def test_disconnect_proxy_gets_who_left_and_how(
    backend: RunningBackend, nursery: trio.Nursery
) -> None:
    config = make_config(
        {
            "proxies": [{"name": "gone", "endpoint": backend.url("/disconnect")}],
            "client": {"disconnect_proxy_name": "gone"},
        }
    )
    server = await serve_in(nursery, config)
    arrived = backend.app.arrival("/disconnect")
    async with raw_client(server) as client:
        connected = await client.connect(token("leaver"))
    with trio.fail_after(10):
        await arrived.wait()
    (request,) = backend.app.recorded("/disconnect")
    assert request.body == {
        "client": connected["connect"]["client"],
        "transport": "websocket",
        "protocol": "json",
        "encoding": "json",
        "user": "leaver",
        "code": 3000,
        "reason": "connection closed",
    }


async def test_disconnect_hook_gets_the_close_the_server_sent(nursery: trio.Nursery) -> None:
    events = Events()
    config, hooks = hooked(events)
    server = await nursery.start(Server(config, hooks=hooks).run)
    async with raw_client(server) as client:
        connected = await client.connect(token("bad"))
        await client.send({"id": 2, "subscribe": {"channel": ""}})  # closed with 3501
        (event,) = await events.wait_for(1)
    assert isinstance(event, DisconnectEvent)
    assert (event.client, event.user, event.code, event.reason) == (
        connected["connect"]["client"],
        "bad",
        3501,
        "bad request",
    )


async def test_a_refused_connect_is_no_disconnect(nursery: trio.Nursery) -> None:
    events = Events()
    config, hooks = hooked(events)
    server = await nursery.start(Server(config, hooks=hooks).run)
    async with raw_client(server) as client:
        with pytest.raises(ConnectionClosed):  # refused (3500): never connected
            await client.send_then_read_until_closed({"id": 1, "connect": {"token": "bad"}})
    async with raw_client(server) as client:
        await client.connect(token("ok"))
    await events.wait_for(1)
    await trio.sleep(0.2)  # nothing else arrives
    assert [e.user for e in events.seen] == ["ok"]


# --- occupied / vacated on one node ---


async def test_occupied_once_vacated_after_the_delay_and_no_flap(nursery: trio.Nursery) -> None:
    events = Events()
    config, hooks = hooked(events)
    server = await nursery.start(Server(config, hooks=hooks).run)
    async with raw_client(server) as a, raw_client(server) as b:
        await a.connect(token("a"))
        await b.connect(token("b"))
        await a.command("subscribe", {"channel": "room"})
        await events.wait_for(1)
        await b.command("subscribe", {"channel": "room"})
        await a.command("unsubscribe", {"channel": "room"})
        # b left and came back within the delay: the channel never looked empty to anyone.
        await b.command("unsubscribe", {"channel": "room"})
        await b.command("subscribe", {"channel": "room"})
        await trio.sleep(1.0)
        assert events.states() == [("room", "occupied")]
        await b.command("unsubscribe", {"channel": "room"})
        await events.wait_for(2)
    assert events.states() == [("room", "occupied"), ("room", "vacated")]
    occupied, vacated = (e for e in events.seen if isinstance(e, ChannelEvent))
    assert occupied.time_ms <= vacated.time_ms


async def test_a_server_side_subscription_and_a_closed_connection_count(
    nursery: trio.Nursery,
) -> None:
    events = Events()
    config, hooks = hooked(events)
    server = await nursery.start(Server(config, hooks=hooks).run)
    async with raw_client(server) as client:
        await client.connect(token("c", channels=["feed"]))
        await events.wait_for(1)
    # The connection's cleanup unsubscribed it.
    states = await events.wait_for(3)  # the disconnect too
    assert [s for s in events.states()] == [("feed", "occupied"), ("feed", "vacated")]
    assert len(states) == 3


async def test_state_proxy_gets_centrifugo_pros_request(
    backend: RunningBackend, nursery: trio.Nursery
) -> None:
    config = make_config(
        {
            "proxies": [{"name": "state", "endpoint": backend.url("/state")}],
            "channel": {"state_proxy_name": "state", "state_delay": 0.0},
        }
    )
    server = await serve_in(nursery, config)
    arrived = backend.app.arrival("/state")
    async with raw_client(server) as client:
        await client.connect(token("p"))
        await client.command("subscribe", {"channel": "news"})
        with trio.fail_after(10):
            await arrived.wait()
    (request,) = backend.app.recorded("/state")
    (event,) = request.body["events"]
    assert (event["channel"], event["type"]) == ("news", "occupied")
    assert isinstance(event["time_ms"], int)


# --- across two nodes ---


async def test_occupied_and_vacated_across_two_nodes_on_one_redis(
    redis_server: RedisServer, nursery: trio.Nursery
) -> None:
    events = Events()
    engine = {"type": "redis", "redis": {"address": redis_server.address, "prefix": new_prefix()}}
    config, hooks = hooked(events, engine=engine)
    node_a = await nursery.start(Server(config, hooks=hooks).run)
    node_b = await nursery.start(Server(config, hooks=hooks).run)
    async with raw_client(node_a) as a, raw_client(node_b) as b:
        await a.connect(token("a"))
        await b.connect(token("b"))
        await a.command("subscribe", {"channel": "shared"})
        await events.wait_for(1)
        await b.command("subscribe", {"channel": "shared"})  # occupied already, on node A
        await a.command("unsubscribe", {"channel": "shared"})  # node B still has one
        await trio.sleep(1.5)
        assert events.states() == [("shared", "occupied")]
        await b.command("unsubscribe", {"channel": "shared"})
        await events.wait_for(2)
    assert events.states() == [("shared", "occupied"), ("shared", "vacated")]
