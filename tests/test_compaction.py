"""Channel compaction (subscribe flag 1, `allow_channel_compaction`): the subscribe reply carries
a numeric channel id and the channel's publication, join and leave pushes carry it instead of the
name, as Centrifugo does. centrifuge-python always asks for it, in JSON and Protobuf.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import trio
from conftest import RunningServer, make_config, open_raw, running_server, serve_in, token, ws_url
from test_sdk_python import namespaces, on_server, sdk, subscribed

from aether_trio.hub import Hub
from aether_trio.protocol.codec import JSON

COMPACT = {
    "name": "compact",
    "history_size": 10,
    "history_ttl": 300.0,
    "join_leave": True,
    "force_push_join_leave": True,
    "allow_channel_compaction": True,
    "allow_subscribe_for_client": True,
    "allow_publish_for_client": True,
}
PLAIN = {**COMPACT, "name": "plain", "allow_channel_compaction": False}


@pytest.mark.parametrize("use_protobuf", [False, True], ids=["json", "protobuf"])
def test_the_sdk_routes_compacted_pushes_by_id(use_protobuf: bool) -> None:
    async def scenario(srv: RunningServer) -> None:
        async with sdk(srv.url) as clients:
            client, _ = clients.new(token("42"), use_protobuf=use_protobuf)
            await client.connect()
            await client.ready(timeout=5.0)
            sub, rec = await subscribed(client, "compact:a")
            other_sub, other_rec = await subscribed(client, "compact:b")
            assert 0 < sub._push_id != other_sub._push_id > 0
            plain_sub, plain_rec = await subscribed(client, "plain:a")
            assert plain_sub._push_id == 0
            data = [1, 2] if not use_protobuf else b"[1,2]"
            for channel in ("compact:a", "compact:b", "plain:a"):
                await client.publish(channel, data)
            for r in (rec, other_rec, plain_rec):
                pubs = await r.wait("publication")
                value = pubs[0].pub.data
                assert (json.loads(value) if use_protobuf else value) == [1, 2]
            # Join pushes of another client go by id too.
            bob, _ = clients.new(token("43"), use_protobuf=use_protobuf)
            await bob.connect()
            await bob.ready(timeout=5.0)
            await subscribed(bob, "compact:a")
            join = await rec.one("join", lambda c: c.info.user == "43")
            assert join.info.client == bob.client_id
            assert not other_rec.of("join") or all(
                c.info.user != "43" for c in other_rec.of("join")
            )

    with running_server(make_config(namespaces(COMPACT, PLAIN))) as srv:

        async def main() -> None:
            async with asyncio.timeout(40.0):
                await scenario(srv)

        asyncio.run(main())


async def test_the_wire_carries_the_id_instead_of_the_channel(nursery: trio.Nursery) -> None:
    server = await serve_in(nursery, make_config(namespaces(COMPACT, PLAIN)))
    async with open_raw(ws_url(server)) as a, open_raw(ws_url(server)) as b:
        assert "connect" in await a.connect(token("42"))
        b_id = (await b.connect(token("43")))["connect"]["client"]
        reply = await a.command("subscribe", {"channel": "compact:x", "flag": 1})
        channel_id = reply["subscribe"]["id"]
        assert channel_id > 0
        # The same channel has the same id for everyone on the node; without the flag, none.
        again = await b.command("subscribe", {"channel": "compact:x", "flag": 3})
        assert again["subscribe"]["id"] == channel_id
        plain = await b.command("subscribe", {"channel": "plain:x", "flag": 1})
        assert "id" not in plain["subscribe"]

        await b.command("publish", {"channel": "compact:x", "data": {"n": 1}})
        with trio.fail_after(5):
            own, join, pub = [(await a.receive())["push"] for _ in range(3)]
        # Its own join and b's (forced join/leave), then b's publication: the id, no channel.
        assert own["id"] == channel_id
        assert join == {"id": channel_id, "join": {"info": {"user": "43", "client": b_id}}}
        assert pub == {
            "id": channel_id,
            "pub": {"data": {"n": 1}, "info": {"user": "43", "client": b_id}, "offset": 1},
        }


def test_ids_live_while_the_channel_has_subscribers_and_are_never_reused() -> None:
    hub = Hub()

    class Sub:
        accepts = None
        delta = False
        compact = True
        codec = JSON

        def __init__(self, client_id: str) -> None:
            self.client_id = client_id
            self.channel_id = 0
            self.route: Any = None

    hub.add("a", Sub("1"))  # type: ignore[arg-type]
    first = hub.channel_id("a")
    assert hub.channel_id("a") == first
    hub.add("b", Sub("1"))  # type: ignore[arg-type]
    assert hub.channel_id("b") != first
    hub.remove("a", "1")
    hub.add("a", Sub("2"))  # type: ignore[arg-type]
    assert hub.channel_id("a") not in (first, hub.channel_id("b"))


def test_json_and_protobuf_compacting_subscribers_share_encodings(
    encode_calls: list[tuple[str, str]],
) -> None:
    async def scenario(srv: RunningServer) -> None:
        async with sdk(srv.url) as clients:
            recs = []
            for n, use_protobuf in enumerate([False, False, True, True]):
                client, _ = clients.new(token(f"u{n}"), use_protobuf=use_protobuf)
                await client.connect()
                await client.ready(timeout=5.0)
                recs.append((await subscribed(client, "compact:s"))[1])
            encode_calls.clear()
            await clients.made[0].publish("compact:s", {"k": 1})
            for rec in recs:
                await rec.wait("publication")
            await on_server(srv, lambda node: None)
            # Four subscribers, two encodings, all compacting: two encodings of the push.
            assert [c for c in encode_calls if c[1] == "pub"] == [("compact:s", "pub")] * 2

    with running_server(make_config(namespaces(COMPACT))) as srv:

        async def main() -> None:
            async with asyncio.timeout(40.0):
                await scenario(srv)

        asyncio.run(main())
