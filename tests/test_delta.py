"""Fossil delta compression (`delta: "fossil"`, `allowed_delta_types`) with centrifuge-python,
whose own fossil decoder applies what Aether sends, in JSON and in Protobuf: every publication
arrives exact, live and recovered, while subscribing during a storm too, and most arrive as
deltas. The hub computes each delta once per base and encodes each form once per codec.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from centrifuge import DeltaType
from conftest import RunningServer, make_config, running_server, token
from test_sdk_python import Clients, namespaces, on_server, sdk, subscribed

from aether_trio.hub import DeltaPush, Encoded
from aether_trio.protocol import fossil
from aether_trio.protocol.codec import JSON
from aether_trio.protocol.messages import Publication, RawJSON
from aether_trio.protocol.protobuf import PROTOBUF

DELTA = {
    "name": "delta",
    "history_size": 100,
    "history_ttl": 300.0,
    "force_recovery": True,
    "allowed_delta_types": ["fossil"],
    "allow_subscribe_for_client": True,
    "allow_publish_for_client": True,
}
NO_DELTA = {**DELTA, "name": "nodelta", "allowed_delta_types": []}
ENCODINGS = pytest.mark.parametrize("use_protobuf", [False, True], ids=["json", "protobuf"])


def doc(n: int) -> dict[str, Any]:
    """Publications that differ in a field: what delta compression is for."""
    return {"seq": n, "ticker": "AAPL", "history": list(range(60)), "note": "x" * 100}


def run(scenario: Any) -> None:
    with running_server(make_config(namespaces(DELTA, NO_DELTA))) as srv:

        async def main() -> None:
            async with asyncio.timeout(40.0):
                await scenario(srv)

        asyncio.run(main())


async def connected(clients: Clients, use_protobuf: bool, user: str = "42") -> Any:
    client, _ = clients.new(token(user), use_protobuf=use_protobuf)
    await client.connect()
    await client.ready(timeout=5.0)
    return client


def payloads(rec: Any, use_protobuf: bool) -> list[Any]:
    return [json.loads(d) for d in rec.data()] if use_protobuf else rec.data()


def published(client: Any, use_protobuf: bool, value: Any) -> Any:
    return client.publish("delta:x", json.dumps(value).encode() if use_protobuf else value)


@ENCODINGS
def test_publications_arrive_exact_and_mostly_as_deltas(use_protobuf: bool) -> None:
    async def scenario(srv: RunningServer) -> None:
        async with sdk(srv.url) as clients:
            client = await connected(clients, use_protobuf)
            sub, rec = await subscribed(client, "delta:x", delta=DeltaType.FOSSIL)
            assert sub._delta_negotiated is True
            for n in range(10):
                await published(client, use_protobuf, doc(n))
            await rec.wait("publication", count=10)
            assert payloads(rec, use_protobuf) == [doc(n) for n in range(10)]
            flags = [ctx.pub.delta for ctx in rec.of("publication")]
            assert flags == [False] + [True] * 9
            assert rec.offsets() == list(range(1, 11))

    run(scenario)


@ENCODINGS
def test_delta_not_allowed_in_the_channel_is_not_negotiated(use_protobuf: bool) -> None:
    async def scenario(srv: RunningServer) -> None:
        async with sdk(srv.url) as clients:
            client = await connected(clients, use_protobuf)
            sub, rec = await subscribed(client, "nodelta:x", delta=DeltaType.FOSSIL)
            assert sub._delta_negotiated is False
            data = doc(1)
            await client.publish("nodelta:x", json.dumps(data).encode() if use_protobuf else data)
            await rec.wait("publication")
            assert payloads(rec, use_protobuf) == [data]
            assert rec.of("publication")[0].pub.delta is False

    run(scenario)


@ENCODINGS
def test_recovery_with_delta_is_exact_and_deltas_resume(use_protobuf: bool) -> None:
    async def scenario(srv: RunningServer) -> None:
        async with sdk(srv.url) as clients:
            client = await connected(clients, use_protobuf)
            publisher = await connected(clients, use_protobuf, "43")
            _, rec = await subscribed(client, "delta:x", delta=DeltaType.FOSSIL)
            await published(publisher, use_protobuf, doc(0))
            await rec.wait("publication")
            await client.disconnect()
            for n in (1, 2, 3):
                await published(publisher, use_protobuf, doc(n))
            await client.connect()
            resubscribed = await rec.wait("subscribed", count=2)
            assert resubscribed[1].recovered is True
            await rec.wait("publication", count=4)
            for n in (4, 5):
                await published(publisher, use_protobuf, doc(n))
            await rec.wait("publication", count=6)
            assert payloads(rec, use_protobuf) == [doc(n) for n in range(6)]
            assert rec.offsets() == list(range(1, 7))
            # Recovered ones in full; the live ones after them as deltas against the last.
            assert [ctx.pub.delta for ctx in rec.of("publication")] == [
                False, False, False, False, True, True,
            ]  # fmt: skip

    run(scenario)


@ENCODINGS
def test_subscribing_during_a_storm_with_delta_is_exact(use_protobuf: bool) -> None:
    async def scenario(srv: RunningServer) -> None:
        async with sdk(srv.url) as clients:
            publisher = await connected(clients, use_protobuf, "43")
            stop = asyncio.Event()
            sent: list[int] = []

            async def storm() -> None:
                n = 0
                while not stop.is_set():
                    await published(publisher, use_protobuf, doc(n))
                    sent.append(n)
                    n += 1

            task = asyncio.create_task(storm())
            try:
                await asyncio.sleep(0.05)
                recs = []
                for user in ("a", "b", "c"):
                    client = await connected(clients, use_protobuf, user)
                    recs.append((await subscribed(client, "delta:x", delta=DeltaType.FOSSIL))[1])
                    await asyncio.sleep(0.02)
                await asyncio.sleep(0.2)
            finally:
                stop.set()
                await task
            total = len(sent)
            for rec in recs:
                await rec.wait("publication", lambda c: c.pub.offset == total)
                offsets = rec.offsets()
                # Consecutive from wherever it joined, each one exact.
                assert offsets == list(range(offsets[0], total + 1))
                assert payloads(rec, use_protobuf) == [doc(o - 1) for o in offsets]
                assert any(ctx.pub.delta for ctx in rec.of("publication"))

    run(scenario)


def test_json_and_protobuf_delta_subscribers_share_the_work(
    monkeypatch: pytest.MonkeyPatch, encode_calls: list[tuple[str, str]]
) -> None:
    patches: list[int] = []
    create = fossil.create

    def counting(source: bytes, target: bytes) -> bytes:
        patches.append(len(target))
        return create(source, target)

    monkeypatch.setattr(fossil, "create", counting)  # the hub calls it through the module

    async def scenario(srv: RunningServer) -> None:
        async with sdk(srv.url) as clients:
            recs = []
            for n, use_protobuf in enumerate([False, False, True, True]):
                client = await connected(clients, use_protobuf, f"u{n}")
                recs.append((await subscribed(client, "delta:x", delta=DeltaType.FOSSIL))[1])
            plain = await connected(clients, False, "plain")
            plain_rec = (await subscribed(plain, "delta:x"))[1]
            for n in range(3):
                await plain.publish("delta:x", doc(n))
            for rec in [*recs, plain_rec]:
                await rec.wait("publication", count=3)
            await on_server(srv, lambda node: None)  # the server's loop is past the fan-outs
            # Publication 1: plain JSON, the full form for JSON delta subscribers, and plain
            # Protobuf (the Protobuf full form). Then plain JSON and one delta per codec, from
            # one patch. Three encodings each, for five subscribers.
            assert [c for c in encode_calls if c[1] == "pub"] == [("delta:x", "pub")] * 9
            assert len(patches) == 2
            for rec, use_protobuf in zip(recs, [False, False, True, True], strict=True):
                assert payloads(rec, use_protobuf) == [doc(n) for n in range(3)]

    run(scenario)


# --- the hub's DeltaPush, sans-IO ---


def test_a_delta_that_is_not_shorter_or_not_utf8_goes_in_full() -> None:
    pub = Publication(data=RawJSON(b'"\xc3\xa9"'), offset=2)
    push = DeltaPush("c", pub, Encoded("c", "pub", pub))
    # A base sharing the first byte of "é": the delta would split the character (not UTF-8).
    base = RawJSON(b'"\xc3\xa8" and a long shared tail to make copying worthwhile')
    assert push.delta(JSON, base) == push.full(JSON)
    assert b'"delta":true' not in push.full(JSON)
    assert push.full(PROTOBUF) == Encoded("c", "pub", pub)(PROTOBUF)


def test_the_full_form_of_json_carries_the_data_as_a_string() -> None:
    pub = Publication(data=RawJSON(b'{"a":1}'), offset=1)
    push = DeltaPush("c", pub, Encoded("c", "pub", pub))
    assert push.full(JSON) == b'{"push":{"channel":"c","pub":{"data":"{\\"a\\":1}","offset":1}}}'


def test_json_cannot_carry_a_delta_that_is_not_utf8_protobuf_can() -> None:
    assert JSON.delta_payload(b'"\xc3') is None
    assert JSON.delta_payload(b'{"a":1}') == b'"{\\"a\\":1}"'
    assert PROTOBUF.delta_payload(b"\xc3\x00") == b"\xc3\x00"
    # A delta that splits "é" (its first byte copied from the base, the second inserted) goes
    # to JSON subscribers in full, to Protobuf ones as the delta.
    tail = b"x" * 60
    base = RawJSON(b'"' + tail + b'\xc3\xa8"')
    pub = Publication(data=RawJSON(b'"' + tail + b'\xc3\xa9"'), offset=2)
    push = DeltaPush("c", pub, Encoded("c", "pub", pub))
    assert push.delta(JSON, base) == push.full(JSON)
    assert b'"delta":true' not in push.delta(JSON, base)
    assert push.delta(PROTOBUF, base) != push.full(PROTOBUF)


class _Connection:
    client_id = "c1"
    codec = JSON

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send(self, message: bytes) -> None:
        self.sent.append(message)


def test_a_buffering_delta_subscription_holds_full_publications_then_deltas_from_the_last() -> None:
    from aether_trio.protocol.options import ChannelOptions
    from aether_trio.subscriptions import ChannelSubscription

    connection = _Connection()
    sub = ChannelSubscription(
        connection,  # type: ignore[arg-type]
        "c", ChannelOptions(), push_join_leave=False, server_side=False,
        max_buffer_bytes=10_000, delta=True,
    )  # fmt: skip
    pubs = [Publication(data=RawJSON(json.dumps(doc(n)).encode()), offset=n + 1) for n in range(3)]
    pushes = [DeltaPush("c", p, Encoded("c", "pub", p)) for p in pubs]
    sub.deliver_delta(pushes[0], pubs[0].data, 1)  # covered by the reply: skipped
    sub.deliver_delta(pushes[1], pubs[1].data, 2)  # held, in full
    assert connection.sent == []
    sub.go_live(delivered_offset=1, base=pubs[0].data)
    assert connection.sent == [pushes[1].full(JSON)]
    assert sub.delta_base is pubs[1].data  # the last one released, not the reply's
    sub.deliver_delta(pushes[2], pubs[2].data, 3)
    assert connection.sent[-1] == pushes[2].delta(JSON, pubs[1].data)
    assert b'"delta":true' in connection.sent[-1]
