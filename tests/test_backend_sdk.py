"""The backend proxies with the real SDKs: centrifuge-python (asyncio) and centrifuge-js (Node)
connect without a token, authenticated by their cookie through the connect proxy of a real HTTP
backend (tests/backend_app.py), and make RPC calls the RPC proxy answers; the Python SDK also
subscribes and publishes through the subscribe and publish proxies (its data rewritten).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from backend_app import RunningBackend, running_backend
from centrifuge import Client, PublicationContext, SubscriptionEventHandler
from conftest import running_server
from sdk_helpers import disconnect_all
from test_backend_proxies import proxy_config
from test_sdk_js import event, node, run_scenario  # noqa: F401  (node: the fixture)

COOKIE = "session=s3cret"


def connect_route(body: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
    if headers.get("cookie") != COOKIE:
        return {"disconnect": {"code": 4403, "reason": "no session"}}
    return {"result": {"user": "sdk-user", "data": {"hello": "sdk"}}}


def rpc_route(body: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
    if body["method"] != "add":
        return {"error": {"code": 404, "message": "unknown method"}}
    return {"result": {"data": {"sum": sum(body["data"]["n"]), "user": body["user"]}}}


@pytest.fixture
def backend() -> Iterator[RunningBackend]:
    with running_backend() as running:
        app = running.app
        app.routes["/connect"] = connect_route
        app.routes["/rpc"] = rpc_route
        app.routes["/subscribe"] = lambda body, headers: {"result": {}}
        app.routes["/publish"] = lambda body, headers: {
            "result": {"data": {"text": body["data"]["text"] + "!"}}
        }
        yield running


class Publications(SubscriptionEventHandler):  # type: ignore[misc]
    def __init__(self) -> None:
        self.queue: asyncio.Queue[Any] = asyncio.Queue()

    async def on_publication(self, ctx: PublicationContext) -> None:
        await self.queue.put(ctx.pub.data)


def test_python_sdk_connect_subscribe_publish_and_rpc_through_the_proxies(
    backend: RunningBackend,
) -> None:
    with running_server(proxy_config(backend)) as server:

        async def scenario() -> None:
            client = Client(server.url, headers={"Cookie": COOKIE}, timeout=5.0)
            try:
                await client.connect()
                await client.ready(timeout=5.0)
                events = Publications()
                sub = client.new_subscription("proxied:sdk", events)
                await sub.subscribe()
                await sub.ready(timeout=5.0)
                await sub.publish({"text": "hi"})
                assert await asyncio.wait_for(events.queue.get(), 5.0) == {"text": "hi!"}
                result = await client.rpc("add", {"n": [2, 3]})
                assert result.data == {"sum": 5, "user": "sdk-user"}
            finally:
                await disconnect_all([client])

        asyncio.run(scenario())
    assert backend.app.recorded("/connect")[0].headers["cookie"] == COOKIE


def test_js_sdk_connects_by_cookie_and_makes_rpc_calls(
    node: str,  # noqa: F811
    backend: RunningBackend,
) -> None:
    with running_server(proxy_config(backend)) as server:
        events = run_scenario(node, server.url, "rpc", cookie=COOKIE)
    assert event(events, "connected")["data"] == {"hello": "sdk"}
    assert event(events, "rpc_result") == {"data": {"sum": 6, "user": "sdk-user"}}
    assert event(events, "rpc_error") == {"code": 404, "message": "unknown method"}
