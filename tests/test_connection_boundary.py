"""A failure inside one connection's tasks ends that connection only."""

from __future__ import annotations

from typing import Any

import pytest
import trio
from conftest import make_config, open_raw, serve_in, token, ws_url
from trio_websocket import ConnectionClosed

from aether_trio.connection import serve
from aether_trio.connection.client import Client
from aether_trio.engines.memory import MemoryBroker, MemoryPresenceManager
from aether_trio.node import Node
from aether_trio.protocol.codes import Disconnect
from aether_trio.transport import TransportClosed


async def test_a_crashing_connection_task_does_not_take_the_server_down(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    original = serve.read_loop
    async with trio.open_nursery() as nursery:
        server = await serve_in(nursery, make_config())
        url = ws_url(server)
        async with open_raw(url) as good:
            await good.connect(token("1"))
            await good.command("subscribe", {"channel": "room"})

            # Make the next connection's reader crash.
            monkeypatch.setattr(serve, "read_loop", _crash_always)
            async with open_raw(url) as bad:
                # The server may drop it before the client's send (the crash is immediate).
                with trio.fail_after(5), pytest.raises(ConnectionClosed):
                    await bad.send_then_read_until_closed(
                        {"id": 1, "connect": {"token": token("2")}}
                    )
            monkeypatch.setattr(serve, "read_loop", original)

            # The server still accepts connections and the old one still gets publications.
            async with open_raw(url) as other:
                await other.connect(token("3"))
                reply = await other.command("publish", {"channel": "room", "data": {"n": 1}})
                assert reply == {"id": 2, "publish": {}}
            with trio.fail_after(5):
                push = await good.receive()
            assert push["push"]["pub"]["data"] == {"n": 1}
        nursery.cancel_scope.cancel()
    assert any("connection task failed" in r.getMessage() for r in caplog.records)


async def _crash_always(client: Any) -> None:
    raise RuntimeError("boom inside a connection")


class _PeerGone:
    """A transport whose peer is gone: `receive` says so (after telling the test it did)."""

    remote = "test"
    has_pending = False

    def __init__(self, gone: trio.Event) -> None:
        self._gone = gone

    async def receive(self) -> str | bytes:
        self._gone.set()
        raise TransportClosed

    def receive_nowait(self) -> str | bytes | None:
        return None

    def write_nowait(self, data: bytes) -> bool:
        return False

    async def write(self, data: bytes) -> None:
        raise TransportClosed

    async def close(self, code: int, reason: str, wait: float) -> bool:
        return False


async def test_closing_a_connection_whose_nursery_just_closed_is_harmless() -> None:
    """A task woken as the peer goes away may run while the connection's `run` leaves its nursery
    (trio's schedule point in `__aexit__`, the nursery already closed) or just after; which one
    depends on trio's randomised run order, so the race is run many times. A close asked for
    then, as a fan-out does for a slow subscriber, used to call `start_soon` on the closed
    nursery, and the RuntimeError aborted the whole fan-out."""
    node: Node[Client] = Node(make_config(), MemoryBroker(), MemoryPresenceManager())

    async def close_when_gone(client: Client, gone: trio.Event) -> None:
        await gone.wait()  # woken at the client task's next schedule point
        client.close(Disconnect.SLOW)  # raised here, it fails this nursery and the test

    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        for _ in range(40):
            gone = trio.Event()
            client = Client(node, _PeerGone(gone))
            async with trio.open_nursery() as race:
                race.start_soon(close_when_gone, client, gone)
                await trio.testing.wait_all_tasks_blocked()
                await serve.run(client)
            assert client.writer.close_request is not None  # the close was taken
        nursery.cancel_scope.cancel()
