"""Refresh and sub_refresh proxies (issue 15, item 1, the server-side refreshes), against a real
HTTP backend on loopback: a connection the connect proxy made, or a subscription in a namespace
with a sub_refresh proxy, is not told to refresh itself (no `expires` in its reply); at its
expiry the server asks the backend, which prolongs it (new expiry, new info), ends it (expired:
3005 / unsubscribe 2501), closes it (its own disconnect), or cannot answer (it lives
REFRESH_RETRY_SECONDS more and the backend is asked again, as Centrifugo does).

Real sockets, real time: expiries one or two seconds ahead, waits bounded generously.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import attrs
import pytest
import trio
from backend_app import Reply, RunningBackend, running_backend
from conftest import close_reason, serve_in
from test_backend_proxies import proxy_config, raw_client
from trio_websocket import ConnectionClosed

from aether_trio.backend.http import HttpProxy
from aether_trio.config import Config, ProxyConfig
from aether_trio.connection import client as client_module


@pytest.fixture
def backend() -> Iterator[RunningBackend]:
    with running_backend() as running:
        yield running


def refresh_config(backend: RunningBackend) -> Config:
    config = proxy_config(backend)
    extra = tuple(
        ProxyConfig(name=kind, endpoint=backend.url(f"/{kind}"), timeout=2.0)
        for kind in ("refresh", "sub_refresh")
    )
    namespaces = tuple(
        attrs.evolve(ns, sub_refresh_proxy_name="sub_refresh") for ns in config.channel.namespaces
    )
    return attrs.evolve(
        config,
        proxies=config.proxies + extra,
        client=attrs.evolve(config.client, refresh_proxy_name="refresh"),
        channel=attrs.evolve(config.channel, namespaces=namespaces),
    )


def soon(seconds: int = 1) -> int:
    return int(time.time()) + seconds


def answers(*replies: Any) -> Any:
    """A route answering `replies` in turn (each a dict, a Reply, or a function of nothing)."""
    queue = list(replies)

    def route(body: dict[str, Any], headers: dict[str, str]) -> Any:
        reply = queue.pop(0) if len(queue) > 1 else queue[0]
        return reply() if callable(reply) else reply

    return route


async def test_the_refresh_proxy_prolongs_then_expires_a_connection(
    backend: RunningBackend, nursery: trio.Nursery
) -> None:
    backend.app.routes["/connect"] = lambda body, headers: {
        "result": {"user": "r1", "expire_at": soon()}
    }
    backend.app.routes["/refresh"] = answers(
        lambda: {"result": {"expire_at": soon(), "info": {"v": 2}}}, {"result": {"expired": True}}
    )
    server = await serve_in(nursery, refresh_config(backend))
    async with raw_client(server, [(b"cookie", b"c=1")]) as client:
        connected = await client.connect()
        assert "expires" not in connected["connect"]  # the server refreshes, not the client
        with trio.fail_after(15), pytest.raises(ConnectionClosed) as closed:
            await client.read_until_closed()
        assert close_reason(closed.value).code == 3005
    first, second = backend.app.recorded("/refresh")
    assert first.body == {
        "client": connected["connect"]["client"],
        "transport": "websocket",
        "protocol": "json",
        "encoding": "json",
        "user": "r1",
    }
    assert first.headers.get("cookie") is None  # the refresh proxy lists no header
    assert second.body == first.body


async def test_a_refreshed_connection_gets_the_new_info(
    backend: RunningBackend, nursery: trio.Nursery
) -> None:
    backend.app.routes["/connect"] = lambda body, headers: {
        "result": {"user": "r2", "expire_at": soon(), "info": {"v": 1}}
    }
    backend.app.routes["/refresh"] = answers({"result": {"info": {"v": 2}}})  # no expiry now
    server = await serve_in(nursery, refresh_config(backend))
    arrived = backend.app.arrival("/refresh")
    async with raw_client(server) as client:
        connected = await client.connect()
        client_id = connected["connect"]["client"]
        with trio.fail_after(15):
            await arrived.wait()
            # The answer is applied once it is back: polled, nothing signals it.
            while server.node.clients[client_id].conn_info != b'{"v":2}':  # noqa: ASYNC110
                await trio.sleep(0.05)
        assert server.node.clients[client_id].expire_at is None
        assert "presence_stats" in await client.command("presence_stats", {"channel": "x"})


async def test_a_refresh_the_backend_cannot_answer_is_asked_again_later(
    backend: RunningBackend, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client_module, "REFRESH_RETRY_SECONDS", 1.0)
    backend.app.routes["/connect"] = lambda body, headers: {
        "result": {"user": "r3", "expire_at": soon()}
    }
    backend.app.routes["/refresh"] = answers(
        Reply(500),
        {"error": {"code": 1000, "message": "later"}},
        {"disconnect": {"code": 4100, "reason": "bye"}},
    )
    server = await serve_in(nursery, refresh_config(backend))
    async with raw_client(server) as client:
        await client.connect()
        with trio.fail_after(20), pytest.raises(ConnectionClosed) as closed:
            await client.read_until_closed()
        reason = close_reason(closed.value)
        assert (reason.code, reason.reason) == (4100, "bye")
    assert len(backend.app.recorded("/refresh")) == 3


async def test_a_token_connection_still_refreshes_itself(
    backend: RunningBackend, nursery: trio.Nursery
) -> None:
    from conftest import token

    server = await serve_in(nursery, refresh_config(backend))
    async with raw_client(server) as client:
        connected = await client.connect(token("t", ttl=60))
        assert connected["connect"]["expires"] is True
    assert backend.app.recorded("/refresh") == []


async def test_the_sub_refresh_proxy_prolongs_then_expires_a_subscription(
    backend: RunningBackend, nursery: trio.Nursery
) -> None:
    backend.app.routes["/connect"] = lambda body, headers: {"result": {"user": "s1"}}
    backend.app.routes["/subscribe"] = lambda body, headers: {
        "result": {"expire_at": soon(), "info": {"seat": 1}}
    }
    backend.app.routes["/sub_refresh"] = answers(
        lambda: {"result": {"expire_at": soon(), "info": {"seat": 2}}},
        {"result": {"expired": True}},
    )
    server = await serve_in(nursery, refresh_config(backend))
    async with raw_client(server) as client:
        connected = await client.connect()
        subscribed = await client.command("subscribe", {"channel": "proxied:s"})
        assert "expires" not in subscribed["subscribe"]
        with trio.fail_after(15):
            push = await client.receive()
        assert push["push"] == {
            "channel": "proxied:s",
            "unsubscribe": {"code": 2501, "reason": "subscription expired"},
        }
        # The connection goes on.
        assert "presence_stats" in await client.command("presence_stats", {"channel": "x"})
    first, second = backend.app.recorded("/sub_refresh")
    assert first.body == {
        "client": connected["connect"]["client"],
        "transport": "websocket",
        "protocol": "json",
        "encoding": "json",
        "user": "s1",
        "channel": "proxied:s",
    }
    assert second.body == first.body


async def test_a_reload_that_takes_the_refresh_proxy_away_expires_as_without_one(
    backend: RunningBackend, nursery: trio.Nursery
) -> None:
    backend.app.routes["/connect"] = lambda body, headers: {
        "result": {"user": "r4", "expire_at": soon(2)}
    }
    config = refresh_config(backend)
    server = await serve_in(nursery, config)
    old_proxy = server.node.backend.target("refresh", "refresh")
    async with raw_client(server) as client:
        await client.connect()
        # The refresh proxy's entry changes (replaced, its pool closed) and no longer refreshes.
        changed = tuple(
            attrs.evolve(p, timeout=3.0) if p.name == "refresh" else p for p in config.proxies
        )
        server.node.reload(
            attrs.evolve(
                config,
                proxies=changed,
                client=attrs.evolve(config.client, refresh_proxy_name=""),
            )
        )
        with trio.fail_after(15), pytest.raises(ConnectionClosed) as closed:
            await client.read_until_closed()
        assert close_reason(closed.value).code == 3005
    assert backend.app.recorded("/refresh") == []
    assert isinstance(old_proxy, HttpProxy)
    assert old_proxy._client.is_closed


async def test_a_sub_refresh_without_info_keeps_the_info_and_a_gone_subscription_is_left(
    backend: RunningBackend, nursery: trio.Nursery
) -> None:
    backend.app.routes["/connect"] = lambda body, headers: {"result": {"user": "s2"}}
    backend.app.routes["/subscribe"] = lambda body, headers: {
        "result": {"expire_at": soon(), "info": {"seat": 1}}
    }
    backend.app.routes["/sub_refresh"] = answers(
        lambda: {"result": {"expire_at": soon()}},
        Reply(body=b'{"result": {"expired": true}}', delay=1.5),
    )
    server = await serve_in(nursery, refresh_config(backend))
    async with raw_client(server) as client:
        connected = await client.connect()
        await client.command("subscribe", {"channel": "proxied:k"})
        arrived = backend.app.arrival("/sub_refresh")
        with trio.fail_after(15):
            await arrived.wait()  # the first refresh
            arrived = backend.app.arrival("/sub_refresh")
            await arrived.wait()  # the second, answered late
        ours = server.node.clients[connected["connect"]["client"]]
        assert ours.subscriptions["proxied:k"].chan_info == b'{"seat":1}'
        # Unsubscribed while the backend thinks: its late "expired" has nothing to end.
        await client.command("unsubscribe", {"channel": "proxied:k"})
        await trio.sleep(2.0)
        assert "presence_stats" in await client.command("presence_stats", {"channel": "x"})
        assert all("push" not in m for m in client.pending)
