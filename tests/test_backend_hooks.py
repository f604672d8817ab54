"""In-process hooks (issue 15, item 2): the README's embedding example run as it is, then what a
hook may return (a dict, a result object, None) and raise (AppError, AppDisconnect, anything
else: contained), sync and async hooks, and a proxy taking precedence over a hook.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from conftest import RawClient, close_reason, make_config
from trio_websocket import ConnectionClosed, open_websocket_url

import aether_trio
from aether_trio.app import Server
from aether_trio.backend import ConnectEvent, ConnectResult, Hooks, RPCEvent

README = Path(__file__).resolve().parent.parent / "README.md"
MARKER = "<!-- embedding example: tests/test_backend_hooks.py runs this block as it is -->"


def readme_example() -> dict[str, Any]:
    """The README's embedding example, executed as a module not run as a script."""
    text = README.read_text()
    assert MARKER in text
    block = re.search(r"```python\n(.*?)```", text[text.index(MARKER) :], re.S)
    assert block is not None
    namespace: dict[str, Any] = {"__name__": "readme_example"}
    exec(compile(block.group(1), "README.md", "exec"), namespace)
    return namespace


@asynccontextmanager
async def raw_client(port: int, cookie: str = "") -> AsyncIterator[RawClient]:
    headers = [(b"cookie", cookie.encode())] if cookie else None
    url = f"ws://127.0.0.1:{port}/connection/websocket"
    async with open_websocket_url(url, extra_headers=headers) as ws:
        try:
            yield RawClient(ws)
        finally:
            await ws._stream.aclose()  # see conftest._RawContext


async def test_the_readme_embedding_example() -> None:
    example = readme_example()
    async with aether_trio.open_server(make_config(), hooks=example["hooks"]) as server:
        async with raw_client(server.port, "theme=dark; session=s3cret") as client:
            connected = await client.connect()
            assert "news" in connected["connect"]["subs"]
            reply = await client.command("publish", {"channel": "news", "data": {"text": "hi"}})
            assert reply["publish"] == {}
            push = await client.receive()
            assert push["push"]["pub"]["data"] == {"text": "hi", "by": "alice"}
            assert push["push"]["pub"]["info"]["conn_info"] == {"name": "Alice"}
            spam = await client.command("publish", {"channel": "news", "data": {"text": "spam"}})
            assert spam["error"] == {"code": 403, "message": "not published"}
            assert (await client.command("rpc", {"method": "whoami"}))["rpc"] == {
                "data": {"user": "alice"}
            }
            unknown = await client.command("rpc", {"method": "nope"})
            assert unknown["error"] == {"code": 404, "message": "unknown method"}
        async with raw_client(server.port, "session=wrong") as client:
            with pytest.raises(ConnectionClosed) as closed:
                await client.send_then_read_until_closed({"id": 1, "connect": {}})
            assert (close_reason(closed.value).code, close_reason(closed.value).reason) == (
                4403,
                "no session",
            )
        # Leaving the block shuts down as SIGTERM does: a client still connected gets 3001.
        closes: list[int] = []

        async def linger(*, task_status: trio.TaskStatus[None]) -> None:
            async with raw_client(server.port, "session=s3cret") as client:
                await client.connect()
                task_status.started()
                try:
                    await client.read_until_closed()
                except ConnectionClosed as exc:
                    closes.append(close_reason(exc).code)

        async with (
            trio.open_nursery() as lingering,
            aether_trio.open_server(make_config(), hooks=example["hooks"]) as server,
        ):
            await lingering.start(linger)
        assert closes == [3001]

    # `main` as the example runs it (in a nursery here, so that the test can stop it); what it
    # prints is caught by a `print` of the test's in the example's globals.
    printed: list[str] = []
    listening = trio.Event()

    def catch(text: str, **_kwargs: Any) -> None:
        printed.append(text)
        listening.set()

    example["print"] = catch
    async with trio.open_nursery() as nursery:
        nursery.start_soon(example["main"], make_config())
        with trio.fail_after(10):
            await listening.wait()
        port = int(re.search(r":(\d+)/", printed[0]).group(1))  # type: ignore[union-attr]
        async with raw_client(port, "session=s3cret") as client:
            assert "connect" in await client.connect()
        nursery.cancel_scope.cancel()


async def test_a_hook_may_return_a_result_object_and_be_sync(nursery: trio.Nursery) -> None:
    seen: list[ConnectEvent] = []

    def on_connecting(event: ConnectEvent) -> ConnectResult:
        seen.append(event)
        return ConnectResult(user="obj", data={"from": "object"})

    server = await nursery.start(
        Server(make_config(), hooks=Hooks(on_connecting=on_connecting)).run
    )
    async with raw_client(server.port, "session=x") as client:
        reply = await client.connect(data={"d": 1}, name="n")
        assert reply["connect"]["data"] == {"from": "object"}
    (event,) = seen
    assert (event.data, event.name, event.client) == ({"d": 1}, "n", reply["connect"]["client"])
    assert event.headers == {}  # no header listed for the hooks


async def test_a_hook_returning_none_or_nothing_usable(nursery: trio.Nursery) -> None:
    answers: list[Any] = [None, {"user": 5}, {"user": "u", "info": b"raw"}]

    def on_connecting(event: ConnectEvent) -> Any:
        return answers.pop(0)

    async def on_rpc(event: RPCEvent) -> None:
        return None

    hooks = Hooks(on_connecting=on_connecting, on_rpc=on_rpc)
    server = await nursery.start(Server(make_config(), hooks=hooks).run)
    async with raw_client(server.port) as client:  # None: no credentials
        with pytest.raises(ConnectionClosed) as closed:
            await client.send_then_read_until_closed({"id": 1, "connect": {}})
        assert close_reason(closed.value).code == 3501
    async with raw_client(server.port) as client:  # a user that is no string
        assert (await client.connect())["error"]["code"] == 100
    async with raw_client(server.port) as client:  # info that is no JSON
        assert (await client.connect())["error"]["code"] == 100
    metrics = server.node.metrics.registry
    assert (
        metrics.get_sample_value(
            "aether_proxy_calls_total",
            {"proxy": "hook", "kind": "connect", "result": "bad_response"},
        )
        == 2
    )


async def test_a_hook_that_raises_is_contained(nursery: trio.Nursery) -> None:
    def on_connecting(event: ConnectEvent) -> dict[str, Any]:
        return {"user": "u"}

    async def on_rpc(event: RPCEvent) -> None:
        if event.method == "bad-code":
            raise aether_trio.AppError(0, "zero is no code")
        raise RuntimeError("the application's bug")

    hooks = Hooks(on_connecting=on_connecting, on_rpc=on_rpc)
    server = await nursery.start(Server(make_config(), hooks=hooks).run)
    async with raw_client(server.port) as client:
        await client.connect()
        reply = await client.command("rpc", {"method": "x"})
        assert reply["error"] == {
            "code": 100,
            "message": "internal server error",
            "temporary": True,
        }
        reply = await client.command("rpc", {"method": "bad-code"})
        assert reply["error"]["code"] == 100
        # The connection goes on.
        assert "presence_stats" in await client.command("presence_stats", {"channel": "c"})
    recorded = server.node.errors.recent()
    assert [(r.type, r.where) for r in recorded[:2]] == [
        ("ValueError", "rpc hook"),
        ("RuntimeError", "rpc hook"),
    ]
    assert "the application's bug" in recorded[1].message


async def test_a_configured_proxy_is_asked_before_the_hook(nursery: trio.Nursery) -> None:
    # The proxy points at a port nobody listens on: it is asked (and fails), the hook is not.
    called: list[str] = []
    config = make_config(
        {
            "proxies": [{"name": "down", "endpoint": "http://127.0.0.1:9/", "max_retries": 0}],
            "client": {"rpc_proxy_name": "down"},
        }
    )

    def on_rpc(event: RPCEvent) -> dict[str, Any]:
        called.append(event.method)
        return {}

    server = await nursery.start(Server(config, hooks=Hooks(on_rpc=on_rpc)).run)
    async with raw_client(server.port) as client:
        from conftest import token

        await client.connect(token("1"))
        assert (await client.command("rpc", {"method": "m"}))["error"]["code"] == 100
    assert called == []


async def test_no_hook_opens_the_system_channel_to_clients(nursery: trio.Nursery) -> None:
    def allow(event: Any) -> dict[str, Any]:
        return {}

    hooks = Hooks(on_publish=allow, on_subscribe=allow)
    config = make_config({"admin": {"system_channel": "$aether.system"}})  # off by default
    server = await nursery.start(Server(config, hooks=hooks).run)
    async with raw_client(server.port) as client:
        from conftest import token

        await client.connect(token("1"))
        reply = await client.command("publish", {"channel": "$aether.system", "data": {}})
        assert reply["error"]["code"] == 103
        # Any other channel: the hook decides (no allow_publish_* needed).
        assert "publish" in await client.command("publish", {"channel": "$other", "data": {}})
