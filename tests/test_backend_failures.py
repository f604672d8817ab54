"""Failure behaviour of the backend proxies (issue 15, item 3), against a real HTTP backend on
loopback that is slowed, stopped mid-test, stopped in the middle of a call, or answers garbage:
the client that asked gets 100 with `temporary: true` (the SDKs try again), every other
connection goes on meanwhile, the failure shows in the metrics and the error ring, and once the
backend is back the same connection (or the SDK's next attempt) succeeds.

Real sockets and a real backend thread: real time, generous bounds, nothing asserted on speed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
import trio
from backend_app import Reply, RunningBackend, running_backend
from centrifuge import Client
from conftest import close_reason, running_server, serve_in, token
from sdk_helpers import ClientRecorder, disconnect_all
from test_backend_proxies import calls, proxy_config, raw_client, user
from trio_websocket import ConnectionClosed

from aether_trio.app import Server

TEMPORARY = {"code": 100, "message": "internal server error", "temporary": True}


@pytest.fixture
def backend() -> Iterator[RunningBackend]:
    with running_backend() as running:
        running.app.routes["/connect"] = user("u1")
        running.app.routes["/subscribe"] = lambda body, headers: {"result": {}}
        yield running


def short_timeouts(backend: RunningBackend, timeout: float = 0.5) -> Any:
    config = proxy_config(backend)
    import attrs

    proxies = tuple(attrs.evolve(p, timeout=timeout) for p in config.proxies)
    return attrs.evolve(config, proxies=proxies)


def errors_where(server: Server, where: str) -> list[Any]:
    return [r for r in server.node.errors.recent() if r.where == where]


async def test_a_slow_backend_times_out_and_other_connections_go_on(
    backend: RunningBackend, nursery: trio.Nursery
) -> None:
    # The subscribe proxy takes 3 s, the proxy gives up after 1 s.
    backend.app.routes["/subscribe"] = lambda body, headers: Reply(body=b"{}", delay=3.0)
    server = await serve_in(nursery, short_timeouts(backend, timeout=1.0))
    slow_reply: list[dict[str, Any]] = []
    other_done = trio.Event()

    async def slow_client() -> None:
        async with raw_client(server) as client:
            await client.connect()
            slow_reply.append(await client.command("subscribe", {"channel": "proxied:slow"}))

    async def other_client() -> None:
        async with raw_client(server) as client:
            await client.connect(token("other"))
            await client.command("subscribe", {"channel": "plain"})
            await client.command("publish", {"channel": "plain", "data": {"n": 1}})
            assert (await client.receive())["push"]["pub"]["data"] == {"n": 1}
        other_done.set()

    arrived = backend.app.arrival("/subscribe")
    async with trio.open_nursery() as clients:
        clients.start_soon(slow_client)
        # Once the slow subscribe is at the backend, another connection does a whole round.
        with trio.fail_after(10):
            await arrived.wait()
        clients.start_soon(other_client)
        with trio.fail_after(10):
            await other_done.wait()
        assert slow_reply == []  # the other connection did not wait for the slow one
    assert slow_reply == [{"id": 2, "error": TEMPORARY}]
    assert calls(server, "subscribe", "subscribe", "timeout") == 1
    (record,) = errors_where(server, "subscribe proxy subscribe")
    assert record.type == "CallFailed"
    assert "no answer within 1.0 s" in record.message


async def test_a_backend_that_is_down_then_back(
    backend: RunningBackend, nursery: trio.Nursery
) -> None:
    server = await serve_in(nursery, short_timeouts(backend))
    async with raw_client(server) as client:
        await client.connect()
        await trio.to_thread.run_sync(backend.stop)
        down = await client.command("subscribe", {"channel": "proxied:a"})
        assert down["error"] == TEMPORARY
        await trio.to_thread.run_sync(backend.start)
        up = await client.command("subscribe", {"channel": "proxied:a"})
        assert "subscribe" in up  # the same connection, once the backend is back
    # Connection refused is retried (subscribe has no side effects) within the timeout.
    assert calls(server, "subscribe", "subscribe", "unreachable") == 1
    assert calls(server, "subscribe", "subscribe", "ok") == 1


async def test_a_backend_stopped_in_the_middle_of_a_call(
    backend: RunningBackend, nursery: trio.Nursery
) -> None:
    backend.app.routes["/rpc"] = lambda body, headers: Reply(body=b"{}", delay=5.0)
    server = await serve_in(nursery, short_timeouts(backend, timeout=4.0))
    async with raw_client(server) as client:
        await client.connect()
        replies: list[dict[str, Any]] = []

        async def call() -> None:
            replies.append(await client.command("rpc", {"method": "m"}))

        arrived = backend.app.arrival("/rpc")
        async with trio.open_nursery() as calls_nursery:
            calls_nursery.start_soon(call)
            with trio.fail_after(10):
                await arrived.wait()
            await trio.to_thread.run_sync(backend.stop)  # the connection to it is cut
        assert replies[0]["error"] == TEMPORARY
    assert len(backend.app.recorded("/rpc")) == 1  # an RPC is never sent twice


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        (Reply(500, b"oops"), "status"),
        (Reply(body=b"<html>not json</html>"), "bad_response"),
        (Reply(body=b"[1, 2]"), "bad_response"),
        (Reply(body=b'{"result": {"user": 42}}'), "bad_response"),
        (Reply(body=b'{"result": {"user": "u", "b64info": "%%%"}}'), "bad_response"),
        (Reply(body=b'{"disconnect": {"code": 1000, "reason": "x"}}'), "bad_response"),
        (Reply(body=b'{"error": {"code": "103"}}'), "bad_response"),
        (Reply(body=b'{"error": {"code": 0, "message": "no"}}'), "bad_response"),
        (Reply(body=b"{" * 200 + b"}" * 200), "bad_response"),
        (Reply(body=b'{"result": {"user": "u"}}' + b" " * (1 << 20)), "bad_response"),
    ],
)
async def test_garbage_from_the_backend_is_a_temporary_error(
    backend: RunningBackend, nursery: trio.Nursery, answer: Reply, why: str
) -> None:
    backend.app.routes["/connect"] = lambda body, headers: answer
    server = await serve_in(nursery, short_timeouts(backend, timeout=5.0))
    async with raw_client(server) as client:
        assert (await client.connect())["error"] == TEMPORARY
    assert calls(server, "connect", "connect", why) == 1
    assert errors_where(server, "connect proxy connect")


async def test_a_garbage_answer_does_not_close_the_connection(
    backend: RunningBackend, nursery: trio.Nursery
) -> None:
    backend.app.routes["/rpc"] = lambda body, headers: Reply(body=b"nonsense")
    server = await serve_in(nursery, short_timeouts(backend))
    async with raw_client(server) as client:
        await client.connect()
        for _ in range(3):
            assert (await client.command("rpc", {"method": "m"}))["error"] == TEMPORARY
        assert "presence_stats" in await client.command("presence_stats", {"channel": "x"})


async def test_a_disconnect_answer_closes_only_that_connection(
    backend: RunningBackend, nursery: trio.Nursery
) -> None:
    backend.app.routes["/rpc"] = lambda body, headers: {
        "disconnect": {"code": 4000, "reason": "r" * 300}
    }
    server = await serve_in(nursery, short_timeouts(backend))
    async with raw_client(server) as bystander, raw_client(server) as client:
        await bystander.connect(token("b"))
        await client.connect()
        with pytest.raises(ConnectionClosed) as closed:
            await client.send_then_read_until_closed({"id": 9, "rpc": {"method": "m"}})
        reason = close_reason(closed.value)
        assert (reason.code, reason.reason) == (4000, "r" * 123)  # cut to fit a close frame
        assert "presence_stats" in await bystander.command("presence_stats", {"channel": "x"})


def test_the_python_sdk_retries_a_connect_while_the_backend_is_down(
    backend: RunningBackend,
) -> None:
    """100 is temporary: centrifuge-python keeps trying, and connects once the backend is up."""
    backend.stop()
    with running_server(short_timeouts(backend, timeout=0.5)) as server:

        async def scenario() -> None:
            events = ClientRecorder()
            client = Client(server.url, events=events, min_reconnect_delay=0.1, timeout=5.0)
            try:
                await client.connect()
                # Connect replies with the temporary 100, each followed by another attempt.
                await events.wait("error", lambda ctx: ctx.error.code == 100, count=2, within=10)
                assert not events.of("connected")
                await asyncio.to_thread(backend.start)
                await events.wait("connected", within=10)
            finally:
                await disconnect_all([client])

        asyncio.run(scenario())
    assert len(backend.app.recorded("/connect")) == 1  # the one after the backend came back
