"""A failure inside one connection's tasks ends that connection only."""

from __future__ import annotations

from typing import Any

import pytest
import trio
from conftest import make_config, open_raw, serve_in, token, ws_url
from trio_websocket import ConnectionClosed

from aether_trio.client import Client


async def test_a_crashing_connection_task_does_not_take_the_server_down(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    original = Client._read_loop
    async with trio.open_nursery() as nursery:
        server = await serve_in(nursery, make_config())
        url = ws_url(server)
        async with open_raw(url) as good:
            await good.connect(token("1"))
            await good.command("subscribe", {"channel": "room"})

            # Make the next connection's reader crash.
            monkeypatch.setattr(Client, "_read_loop", _crash_always)
            async with open_raw(url) as bad:
                await bad.send({"id": 1, "connect": {"token": token("2")}})
                with trio.fail_after(5), pytest.raises(ConnectionClosed):
                    await bad.receive()
            monkeypatch.setattr(Client, "_read_loop", original)

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


async def _crash_always(self: Any) -> None:
    raise RuntimeError("boom inside a connection")
