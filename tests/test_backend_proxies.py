"""The backend proxies (issue 15, item 1) against a real HTTP backend on loopback
(tests/backend_app.py: an ASGI app under Hypercorn): Centrifugo's request bodies exactly, each
proxy type allowing and refusing, cookies passed on and unlisted headers not, data rewritten by
the publish proxy, the RPC round trip, retries only where they are safe, the metrics, and the
config's checks.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
from backend_app import Reply, RunningBackend, running_backend
from conftest import RawClient, close_reason, make_config, serve_in, token, ws_url
from trio_websocket import ConnectionClosed, open_websocket_url

from aether_trio.app import Server
from aether_trio.config import Config, ConfigError

PROXIES = ("connect", "subscribe", "publish", "rpc")


@pytest.fixture
def backend() -> Iterator[RunningBackend]:
    with running_backend() as running:
        yield running


def proxy_config(backend: RunningBackend, **overrides: Any) -> Config:
    """Every proxy type at /<kind> of the test backend; the "proxied" namespace uses them."""
    proxies = [
        {
            "name": kind,
            "endpoint": backend.url(f"/{kind}"),
            "timeout": 2.0,
            "http_headers": ["Cookie", "X-Allowed"],
            "emulated_headers": ["X-Emulated"],
            "static_headers": {"X-Aether-Secret": "s3", "X-Allowed": "static"},
        }
        for kind in PROXIES
    ]
    return make_config(
        {
            "proxies": proxies,
            "client": {"connect_proxy_name": "connect", "rpc_proxy_name": "rpc"},
            "channel": {
                "namespaces": [
                    {
                        "name": "proxied",
                        "history_size": 10,
                        "history_ttl": 60.0,
                        "subscribe_proxy_name": "subscribe",
                        "publish_proxy_name": "publish",
                    }
                ]
            },
            **overrides,
        }
    )


@asynccontextmanager
async def raw_client(
    server: Server, headers: list[tuple[bytes, bytes]] | None = None
) -> AsyncIterator[RawClient]:
    async with open_websocket_url(ws_url(server), extra_headers=headers) as ws:
        try:
            yield RawClient(ws)
        finally:
            await ws._stream.aclose()  # see conftest._RawContext


def user(name: str, **extra: Any) -> Any:
    return lambda body, headers: {"result": {"user": name, **extra}}


def calls(server: Server, proxy: str, kind: str, result: str) -> float:
    value = server.node.metrics.registry.get_sample_value(
        "aether_proxy_calls_total", {"proxy": proxy, "kind": kind, "result": result}
    )
    return value or 0.0


# --- connect ---


async def test_connect_proxy_gets_centrifugos_request_and_its_answer_makes_the_connection(
    backend: RunningBackend, nursery: trio.Nursery
) -> None:
    backend.app.routes["/connect"] = lambda body, headers: {
        "result": {
            "user": "alice",
            "expire_at": 0,
            "info": {"name": "Alice"},
            "data": {"welcome": True},
            "channels": ["news"],
            "subs": {"proxied:room": {"info": {"role": "admin"}, "data": {"hello": 1}}},
        }
    }
    server = await serve_in(nursery, proxy_config(backend))
    headers = [(b"cookie", b"session=abc"), (b"x-allowed", b"yes"), (b"x-secret", b"no")]
    async with raw_client(server, headers) as client:
        reply = await client.connect(
            data={"app": 1},
            name="py",
            version="1.0",
            headers={"X-Emulated": "e", "X-Unlisted": "u"},
        )
        result = reply["connect"]
        assert result["data"] == {"welcome": True}
        assert set(result["subs"]) == {
            "news",
            "proxied:room",
        }  # the system channel is off by default
        assert result["subs"]["proxied:room"]["data"] == {"hello": 1}
        (request,) = backend.app.recorded("/connect")
        assert request.body == {
            "client": result["client"],
            "transport": "websocket",
            "protocol": "json",
            "encoding": "json",
            "data": {"app": 1},
            "name": "py",
            "version": "1.0",
        }
        # Cookies and listed headers are passed on; neither an unlisted header nor an
        # unlisted emulated one is.
        assert request.headers["cookie"] == "session=abc"
        assert request.headers["x-allowed"] == "yes"  # the client's wins over the static one
        assert request.headers["x-aether-secret"] == "s3"
        assert request.headers["x-emulated"] == "e"
        assert "x-secret" not in request.headers
        assert "x-unlisted" not in request.headers
        assert request.headers["content-type"] == "application/json"
        # The user and the info the backend gave are who this connection is.
        presence = await client.command("presence", {"channel": "news"})
        (entry,) = presence["presence"]["presence"].values()
        assert entry["user"] == "alice"
        assert entry["conn_info"] == {"name": "Alice"}
    assert calls(server, "connect", "connect", "ok") == 1


async def test_a_token_still_works_and_skips_the_connect_proxy(
    backend: RunningBackend, nursery: trio.Nursery
) -> None:
    server = await serve_in(nursery, proxy_config(backend))
    async with raw_client(server) as client:
        reply = await client.connect(token("42"))
        assert "connect" in reply
    assert backend.app.recorded("/connect") == []


async def test_connect_proxy_errors_and_disconnects_reach_the_client_as_written(
    backend: RunningBackend, nursery: trio.Nursery
) -> None:
    server = await serve_in(nursery, proxy_config(backend))
    backend.app.routes["/connect"] = lambda body, headers: {
        "error": {"code": 1000, "message": "who are you", "temporary": True}
    }
    async with raw_client(server) as client:
        reply = await client.connect()
        assert reply["error"] == {"code": 1000, "message": "who are you", "temporary": True}
    backend.app.routes["/connect"] = lambda body, headers: {
        "disconnect": {"code": 4501, "reason": "banned here"}
    }
    async with raw_client(server) as client:
        with pytest.raises(ConnectionClosed) as closed:
            await client.send_then_read_until_closed({"id": 1, "connect": {}})
        assert (close_reason(closed.value).code, close_reason(closed.value).reason) == (
            4501,
            "banned here",
        )
    assert calls(server, "connect", "connect", "error") == 1
    assert calls(server, "connect", "connect", "disconnect") == 1


async def test_connect_proxy_result_without_result_or_with_bad_channels_is_refused(
    backend: RunningBackend, nursery: trio.Nursery
) -> None:
    server = await serve_in(nursery, proxy_config(backend))
    backend.app.routes["/connect"] = lambda body, headers: {}
    async with raw_client(server) as client:
        with pytest.raises(ConnectionClosed) as closed:
            await client.send_then_read_until_closed({"id": 1, "connect": {}})
        assert close_reason(closed.value).code == 3501
    backend.app.routes["/connect"] = user("bob", channels=["unknown:x"])
    async with raw_client(server) as client:
        reply = await client.connect()
        assert reply["error"]["code"] == 102  # the namespace does not exist


# --- subscribe ---


async def test_subscribe_proxy_allows_with_info_data_and_override(
    backend: RunningBackend, nursery: trio.Nursery
) -> None:
    backend.app.routes["/connect"] = user("carol")
    backend.app.routes["/subscribe"] = lambda body, headers: {
        "result": {
            "info": {"seat": 3},
            "data": {"motd": "hi"},
            "override": {"presence": {"value": True}},
        }
    }
    server = await serve_in(nursery, proxy_config(backend))
    async with raw_client(server, [(b"cookie", b"s=1")]) as client:
        connected = await client.connect()
        reply = await client.command("subscribe", {"channel": "proxied:r1", "data": {"x": 1}})
        assert reply["subscribe"]["data"] == {"motd": "hi"}
        (request,) = backend.app.recorded("/subscribe")
        assert request.body == {
            "client": connected["connect"]["client"],
            "transport": "websocket",
            "protocol": "json",
            "encoding": "json",
            "user": "carol",
            "channel": "proxied:r1",
            "data": {"x": 1},
        }
        assert request.headers["cookie"] == "s=1"
        # The override turned presence on for this subscription (the namespace has it off, so
        # the presence command is not available), and the chan_info is the backend's.
        presence = await client.command("presence", {"channel": "proxied:r1"})
        assert presence["error"]["code"] == 108
        assert server.node.num_subscribers("proxied:r1") == 1
        info = await server.node.presence_of(server.node.resolve("proxied:r1"))
        (entry,) = info.values()
        assert entry.chan_info == b'{"seat":3}'


async def test_proxies_that_answer_no_result_allow_as_asked(
    backend: RunningBackend, nursery: trio.Nursery
) -> None:
    backend.app.routes["/connect"] = user("nora")
    backend.app.routes["/subscribe"] = lambda body, headers: {}
    backend.app.routes["/publish"] = lambda body, headers: {}
    server = await serve_in(nursery, proxy_config(backend))
    async with raw_client(server) as client:
        await client.connect()
        subscribed = await client.command("subscribe", {"channel": "proxied:n"})
        assert "expires" not in subscribed["subscribe"]
        await client.command("publish", {"channel": "proxied:n", "data": {"as": "sent"}})
        assert (await client.receive())["push"]["pub"]["data"] == {"as": "sent"}


async def test_subscribe_proxy_refuses_and_private_channels_still_need_a_token(
    backend: RunningBackend, nursery: trio.Nursery
) -> None:
    backend.app.routes["/connect"] = user("dave")
    backend.app.routes["/subscribe"] = lambda body, headers: {
        "error": {"code": 103, "message": "permission denied"}
    }
    server = await serve_in(nursery, proxy_config(backend))
    async with raw_client(server) as client:
        await client.connect()
        reply = await client.command("subscribe", {"channel": "proxied:r2"})
        assert reply["error"] == {"code": 103, "message": "permission denied"}
        private = await client.command("subscribe", {"channel": "$proxied:r2"})
        assert private["error"]["code"] == 103
    assert len(backend.app.recorded("/subscribe")) == 1  # the private one was not asked


# --- publish ---


async def test_publish_proxy_rewrites_data_adds_tags_and_may_skip_history(
    backend: RunningBackend, nursery: trio.Nursery
) -> None:
    backend.app.routes["/connect"] = user("erin")
    backend.app.routes["/subscribe"] = lambda body, headers: {"result": {}}

    def rewrite(body: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
        text = body["data"]["text"]
        return {
            "result": {
                "data": {"text": text.upper()},
                "tags": {"checked": "yes"},
                "skip_history": text == "secret",
            }
        }

    backend.app.routes["/publish"] = rewrite
    server = await serve_in(nursery, proxy_config(backend))
    async with raw_client(server) as client:
        connected = await client.connect()
        await client.command("subscribe", {"channel": "proxied:r3"})
        reply = await client.command("publish", {"channel": "proxied:r3", "data": {"text": "hi"}})
        assert reply["publish"] == {}
        push = await client.receive()
        pub = push["push"]["pub"]
        assert pub["data"] == {"text": "HI"}
        assert pub["tags"] == {"checked": "yes"}
        await client.command("publish", {"channel": "proxied:r3", "data": {"text": "secret"}})
        assert (await client.receive())["push"]["pub"]["data"] == {"text": "SECRET"}
        history = await client.command("history", {"channel": "proxied:r3", "limit": 10})
        assert history.get("error", {}).get("code") == 103  # history reads are not allowed
        pubs, _top = await server.node.history(server.node.resolve("proxied:r3"), _history_query())
        assert [p.data for p in pubs] == [b'{"text":"HI"}']  # the secret one skipped history
        (first, _second) = backend.app.recorded("/publish")
        assert first.body == {
            "client": connected["connect"]["client"],
            "transport": "websocket",
            "protocol": "json",
            "encoding": "json",
            "user": "erin",
            "channel": "proxied:r3",
            "data": {"text": "hi"},
        }


def _history_query() -> Any:
    from aether_trio.engines.base import HistoryQuery

    return HistoryQuery(limit=10)


async def test_publish_proxy_refuses_and_rewritten_data_is_checked_again(
    backend: RunningBackend, nursery: trio.Nursery
) -> None:
    backend.app.routes["/connect"] = user("fred")
    backend.app.routes["/publish"] = lambda body, headers: (
        {"error": {"code": 403, "message": "no swearing"}}
        if body["data"] == "bad"
        else {"result": {"data": 5}}
    )
    config = proxy_config(backend)
    namespaces = [
        ns.__class__(**{**_fields(ns), "publication_data_format": "json_object"})
        for ns in config.channel.namespaces
    ]
    server = await serve_in(nursery, _with_namespaces(config, namespaces))
    async with raw_client(server) as client:
        await client.connect()
        refused = await client.command("publish", {"channel": "proxied:r4", "data": "bad"})
        assert refused["error"] == {"code": 107, "message": "bad request"}  # format first
        refused = await client.command("publish", {"channel": "proxied:r4", "data": {"a": 1}})
        assert refused["error"] == {"code": 107, "message": "bad request"}  # 5 is no object
    server2 = await serve_in(nursery, proxy_config(backend))
    async with raw_client(server2) as client:
        await client.connect()
        refused = await client.command("publish", {"channel": "proxied:r4", "data": "bad"})
        assert refused["error"] == {"code": 403, "message": "no swearing"}


def _fields(obj: Any) -> dict[str, Any]:
    import attrs

    return attrs.asdict(obj, recurse=False)


def _with_namespaces(config: Config, namespaces: list[Any]) -> Config:
    import attrs

    return attrs.evolve(config, channel=attrs.evolve(config.channel, namespaces=tuple(namespaces)))


# --- rpc ---


async def test_rpc_round_trip_error_and_no_proxy(
    backend: RunningBackend, nursery: trio.Nursery
) -> None:
    backend.app.routes["/connect"] = user("gina")
    backend.app.routes["/rpc"] = lambda body, headers: (
        {"result": {"data": {"sum": sum(body["data"]["n"])}}}
        if body["method"] == "add"
        else {"error": {"code": 404, "message": "unknown method"}}
    )
    server = await serve_in(nursery, proxy_config(backend))
    async with raw_client(server) as client:
        connected = await client.connect()
        reply = await client.command("rpc", {"method": "add", "data": {"n": [1, 2, 3]}})
        assert reply["rpc"] == {"data": {"sum": 6}}
        reply = await client.command("rpc", {"method": "nope"})
        assert reply["error"] == {"code": 404, "message": "unknown method"}
        first = backend.app.recorded("/rpc")[0]
        assert first.body == {
            "client": connected["connect"]["client"],
            "transport": "websocket",
            "protocol": "json",
            "encoding": "json",
            "user": "gina",
            "method": "add",
            "data": {"n": [1, 2, 3]},
        }
    backend.app.routes["/rpc"] = lambda body, headers: {}
    async with raw_client(server) as client:
        await client.connect()
        assert (await client.command("rpc", {"method": "x"}))["rpc"] == {}
    plain = await serve_in(nursery)
    async with raw_client(plain) as client:
        await client.connect(token("1"))
        assert (await client.command("rpc", {"method": "x"}))["error"]["code"] == 108


# --- retries ---


async def test_idempotent_calls_are_retried_after_a_503_publish_and_rpc_are_not(
    backend: RunningBackend, nursery: trio.Nursery
) -> None:
    answers = iter([Reply(503), Reply(502)])
    backend.app.routes["/connect"] = lambda body, headers: next(
        answers, {"result": {"user": "hank"}}
    )
    backend.app.routes["/publish"] = lambda body, headers: Reply(503)
    backend.app.routes["/rpc"] = lambda body, headers: Reply(503)
    server = await serve_in(nursery, proxy_config(backend))
    async with raw_client(server) as client:
        reply = await client.connect()
        assert "connect" in reply
        assert len(backend.app.recorded("/connect")) == 3
        refused = await client.command("publish", {"channel": "proxied:r5", "data": {}})
        assert refused["error"] == {
            "code": 100,
            "message": "internal server error",
            "temporary": True,
        }
        refused = await client.command("rpc", {"method": "m"})
        assert refused["error"]["code"] == 100
    assert len(backend.app.recorded("/publish")) == 1
    assert len(backend.app.recorded("/rpc")) == 1
    assert calls(server, "publish", "publish", "status") == 1


async def test_retries_stop_at_max_retries(backend: RunningBackend, nursery: trio.Nursery) -> None:
    backend.app.routes["/connect"] = lambda body, headers: Reply(503)
    server = await serve_in(nursery, proxy_config(backend))
    async with raw_client(server) as client:
        reply = await client.connect()
        assert reply["error"]["code"] == 100
    assert len(backend.app.recorded("/connect")) == 3  # 1 + max_retries (2)


# --- config ---


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"client": {"connect_proxy_name": "missing"}},
            "client.connect_proxy_name: no [[proxies]]",
        ),
        (
            {"channel": {"without_namespace": {"publish_proxy_name": "missing"}}},
            "channel.without_namespace.publish_proxy_name: no [[proxies]]",
        ),
        (
            {"proxies": [{"name": "a", "endpoint": "http://x"}] * 2},
            "duplicate proxy name(s) ['a']",
        ),
        ({"proxies": [{"name": "a", "endpoint": "ftp://x"}]}, "expected an http:// or https://"),
        ({"proxies": [{"name": "a b", "endpoint": "http://x"}]}, "expected a name matching"),
        (
            {"proxies": [{"name": "a", "endpoint": "http://x", "http_headers": ["bad header"]}]},
            "is not an HTTP header name",
        ),
        (
            {"proxies": [{"name": "a", "endpoint": "http://x", "timeout": 0}]},
            "expected a number > 0",
        ),
        ({"proxies": [{"name": "a", "endpoint": "http://x", "extra": 1}]}, "proxies[0].extra"),
        (
            {"proxies": [{"name": "a", "endpoint": "http://x", "static_headers": {"a": 1}}]},
            "expected a table of strings",
        ),
        (
            {"proxies": [{"name": "a", "endpoint": "http://x", "static_headers": {"a": "x\ny"}}]},
            "holds a line break",
        ),
    ],
)
def test_bad_proxy_config_is_refused_with_its_key(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=_escape(message)):
        make_config(overrides)


def _escape(text: str) -> str:
    import re

    return re.escape(text)


def test_header_names_are_lowercased() -> None:
    config = make_config(
        {"proxies": [{"name": "a", "endpoint": "http://x", "http_headers": ["Cookie"]}]}
    )
    assert config.proxies[0].http_headers == ("cookie",)


async def test_a_token_connection_passes_its_emulated_headers_to_later_proxies(
    backend: RunningBackend, nursery: trio.Nursery
) -> None:
    backend.app.routes["/rpc"] = lambda body, headers: {"result": {}}
    server = await serve_in(nursery, proxy_config(backend))
    async with raw_client(server) as client:
        await client.connect(token("t"), headers={"X-Emulated": "from-sdk", "Cookie": "no"})
        await client.command("rpc", {"method": "m"})
    (request,) = backend.app.recorded("/rpc")
    assert request.headers["x-emulated"] == "from-sdk"
    # Cookie is listed in http_headers only: an emulated one is the client's claim, not sent.
    assert "cookie" not in request.headers


@pytest.mark.parametrize("rewritten", [True, False])
async def test_a_protobuf_clients_publication_through_the_publish_proxy(
    backend: RunningBackend, nursery: trio.Nursery, rewritten: bool
) -> None:
    """Data the backend rewrites is what subscribers get, for a Protobuf publisher too (its own
    bytes were published instead); data it leaves alone goes out as the client sent it."""
    from centrifuge.protocol import client_pb2 as sdk_pb
    from test_sdk_protobuf import _delimited, _protobuf_connected, _replies

    backend.app.routes["/subscribe"] = lambda body, headers: {"result": {}}
    backend.app.routes["/publish"] = lambda body, headers: {
        "result": {"data": {"text": body["data"]["text"].upper()}} if rewritten else {}
    }
    server = await serve_in(nursery, proxy_config(backend))
    async with _protobuf_connected(ws_url(server)) as ws:
        sent = b'{"text": "hi"}'  # with a space: the client's own bytes are recognisable
        await ws.send_message(
            _delimited(
                sdk_pb.Command(id=2, subscribe=sdk_pb.SubscribeRequest(channel="proxied:pb")),
                sdk_pb.Command(
                    id=3, publish=sdk_pb.PublishRequest(channel="proxied:pb", data=sent)
                ),
            )
        )
        seen: list[Any] = []
        with trio.fail_after(5):
            while not any(r.HasField("push") or r.HasField("error") for r in seen):
                frame = await ws.get_message()
                assert isinstance(frame, bytes)
                seen += _replies(frame)
        errors = [r.error for r in seen if r.HasField("error")]
        assert errors == []
        (push,) = [r.push for r in seen if r.HasField("push")]
        assert push.pub.data == (b'{"text":"HI"}' if rewritten else sent)
