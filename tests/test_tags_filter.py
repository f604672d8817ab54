"""Publication tags filters (`tf`): applied as upstream's `filter.Match` does, or refused with
107, never accepted and ignored.

The filters are built with centrifuge-python's own `Filter` helpers (what an application sends);
the expectations are upstream's semantics (centrifugal/centrifuge internal/filter/filter.go).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest
import trio
from centrifuge import Filter
from conftest import RunningServer, make_config, open_raw, serve_in, token, ws_url
from test_sdk_python import namespaces, sdk, subscribed

from aether_trio.protocol.codec import raw_json
from aether_trio.protocol.tags_filter import MAX_NODES, compile_filter

TAGS = {"ticker": "AAPL", "price": "101.5", "source": "NASDAQ", "empty": ""}


@pytest.mark.parametrize(
    ("node", "matches"),
    [
        (Filter.eq("ticker", "AAPL"), True),
        (Filter.eq("ticker", "MSFT"), False),
        (Filter.eq("missing", "x"), False),
        (Filter.neq("ticker", "MSFT"), True),
        (Filter.neq("missing", "x"), True),
        (Filter.is_in("source", ["NYSE", "NASDAQ"]), True),
        (Filter.is_in("source", ["NYSE"]), False),
        (Filter.is_in("missing", ["", "x"]), True),  # a missing tag is "" for in / nin
        (Filter.not_in("source", ["NYSE"]), True),
        (Filter.not_in("missing", ["x"]), True),
        (Filter.exists("empty"), True),
        (Filter.exists("missing"), False),
        (Filter.not_exists("missing"), True),
        (Filter.starts_with("ticker", "AA"), True),
        (Filter.starts_with("missing", "AA"), False),
        (Filter.ends_with("ticker", "PL"), True),
        (Filter.contains("source", "SDA"), True),
        (Filter.contains("source", "X"), False),
        (Filter.gt("price", "100"), True),
        (Filter.gt("price", "101.5"), False),
        (Filter.gte("price", "101.50"), True),
        (Filter.lt("price", "1e3"), False),  # not a decimal: no numeric comparison holds
        (Filter.lt("ticker", "5"), False),  # a tag that is not a number
        (Filter.lte("price", "101.5"), True),
        (Filter.lt("missing", "5"), False),
        (Filter.all(Filter.eq("ticker", "AAPL"), Filter.gte("price", "100")), True),
        (Filter.all(Filter.eq("ticker", "AAPL"), Filter.gte("price", "200")), False),
        (Filter.any(Filter.eq("ticker", "MSFT"), Filter.gte("price", "100")), True),
        (Filter.any(Filter.eq("ticker", "MSFT"), Filter.gte("price", "200")), False),
        (Filter.negate(Filter.eq("source", "NYSE")), True),
        (Filter.negate(Filter.eq("source", "NASDAQ")), False),
    ],
)
def test_filters_match_as_upstream(node: Any, matches: bool) -> None:
    assert compile_filter(node.node)(TAGS) is matches


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ("eq", "must be an object"),
        ({"key": "k"}, "must have cmp"),
        ({"key": "k", "cmp": "like", "val": "x"}, "unknown comparison"),
        ({"key": "k", "cmp": "eq"}, "requires val"),
        ({"key": "k", "cmp": "eq", "val": "x", "vals": ["y"]}, "must not use vals"),
        ({"key": "k", "cmp": "in"}, "requires non-empty vals"),
        ({"key": "k", "cmp": "in", "vals": ["a"], "val": "b"}, "must not use val"),
        ({"key": "k", "cmp": "in", "vals": [1]}, "must be strings"),
        ({"key": "k", "cmp": "ex", "val": "b"}, "must not use val or vals"),
        ({"cmp": "eq", "val": "b"}, "requires key"),
        ({"op": "and"}, "at least one child"),
        ({"op": "not", "nodes": []}, "exactly one child"),
        ({"op": "xor", "nodes": []}, "invalid filter op"),
        ({"key": 1, "cmp": "eq", "val": "x"}, "key must be a string"),
        ({"op": "and", "nodes": {"a": 1}}, "nodes must be a list"),
        ({"op": "or", "nodes": [{"key": "k", "cmp": "ex"}] * MAX_NODES}, f"more than {MAX_NODES}"),
    ],
)
def test_malformed_filters_are_refused(raw: Any, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        compile_filter(raw)


def test_absent_fields_and_nulls_are_empty() -> None:
    assert compile_filter({"key": "k", "cmp": "ex", "val": None, "nodes": None})({"k": "1"})
    assert compile_filter({"op": "or", "nodes": [{"cmp": "nex", "key": ""}]})({})


# --- end to end ---

FILTERED = {
    "name": "quotes",
    "history_size": 100,
    "history_ttl": 300.0,
    "force_recovery": True,
    "allow_tags_filter": True,
    "allow_subscribe_for_client": True,
    "allow_history_for_client": True,
}
UNFILTERED = {**FILTERED, "name": "plain", "allow_tags_filter": False}


async def publish_tagged(srv: RunningServer, channel: str, data: Any, tags: dict[str, str]) -> None:
    node = srv.server.node

    async def publish() -> None:
        await node.publish(node.resolve(channel), raw_json(data), tags=tags)

    await asyncio.to_thread(srv.acall, publish)


@pytest.mark.parametrize("use_protobuf", [False, True], ids=["json", "protobuf"])
def test_a_subscriber_gets_only_matching_publications_live_and_recovered(
    use_protobuf: bool,
) -> None:
    def data_of(values: list[Any]) -> list[Any]:
        return [json.loads(v) for v in values] if use_protobuf else values

    async def scenario(srv: RunningServer) -> None:
        async with sdk(srv.url) as clients:
            client, _ = clients.new(token("42"), use_protobuf=use_protobuf)
            await client.connect()
            await client.ready(timeout=5.0)
            tags_filter = Filter.all(Filter.eq("ticker", "AAPL"), Filter.gte("price", "100"))
            _, rec = await subscribed(client, "quotes:x", tags_filter=tags_filter)
            everyone, _ = await clients.connected("43")
            _, unfiltered_rec = await subscribed(everyone, "quotes:x")
            await publish_tagged(srv, "quotes:x", 1, {"ticker": "AAPL", "price": "99"})
            await publish_tagged(srv, "quotes:x", 2, {"ticker": "AAPL", "price": "120"})
            await publish_tagged(srv, "quotes:x", 3, {"ticker": "MSFT", "price": "300"})
            await publish_tagged(srv, "quotes:x", 4, {"ticker": "AAPL", "price": "100"})
            await unfiltered_rec.wait("publication", count=4)
            await rec.wait("publication", count=2)
            await asyncio.sleep(0.2)
            assert data_of(rec.data()) == [2, 4]
            assert rec.offsets() == [2, 4]
            assert unfiltered_rec.data() == [1, 2, 3, 4]

            # Recovery after a reconnect passes the publications through the same filter.
            await client.disconnect()
            await publish_tagged(srv, "quotes:x", 5, {"ticker": "AAPL", "price": "500"})
            await publish_tagged(srv, "quotes:x", 6, {"ticker": "GOOG", "price": "500"})
            await client.connect()
            resubscribed = await rec.wait("subscribed", count=2)
            assert resubscribed[1].recovered is True
            await rec.wait("publication", count=3)
            await asyncio.sleep(0.2)
            assert data_of(rec.data()) == [2, 4, 5]

    with_server(namespaces(FILTERED), scenario)


def with_server(overrides: dict[str, Any], scenario: Any) -> None:
    from conftest import running_server

    with running_server(make_config(overrides)) as srv:

        async def main() -> None:
            async with asyncio.timeout(40.0):
                await scenario(srv)

        asyncio.run(main())


@pytest.mark.parametrize(
    ("channel", "body", "detail"),
    [
        ("plain:x", {"tf": {"key": "k", "cmp": "ex"}}, "not allowed"),
        ("quotes:x", {"tf": {"key": "k", "cmp": "like", "val": "v"}}, "unknown comparison"),
        ("quotes:x", {"tf": {"key": "k", "cmp": "ex"}, "delta": "fossil"}, "delta"),
    ],
)
async def test_a_filter_that_cannot_be_applied_is_refused_with_107(
    nursery: trio.Nursery,
    caplog: pytest.LogCaptureFixture,
    channel: str,
    body: dict[str, Any],
    detail: str,
) -> None:
    caplog.set_level(logging.INFO, logger="aether_trio.connection.serve")
    server = await serve_in(nursery, make_config(namespaces(FILTERED, UNFILTERED)))
    async with open_raw(ws_url(server)) as client:
        assert "connect" in await client.connect(token("42"))
        reply = await client.command("subscribe", {"channel": channel, **body})
        assert reply == {"id": 2, "error": {"code": 107, "message": "bad request"}}
        # Nothing was subscribed, and the connection goes on.
        assert server.node.num_subscribers(channel) == 0
        reply = await client.command("subscribe", {"channel": channel})
        assert reply["subscribe"]["recoverable"] is True
    # The reason stays in the server's log.
    assert any(detail in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("tf", ["eq", 1, [], True])
async def test_a_filter_that_is_not_an_object_is_refused(nursery: trio.Nursery, tf: Any) -> None:
    server = await serve_in(nursery, make_config(namespaces(FILTERED)))
    async with open_raw(ws_url(server)) as client:
        assert "connect" in await client.connect(token("42"))
        reply = await client.command("subscribe", {"channel": "quotes:x", "tf": tf})
        assert reply["error"]["code"] == 107
