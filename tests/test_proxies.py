"""Trusted reverse proxies (`[server] trusted_proxies`, guards/proxies.py): the client address
behind a proxy, and forwarding headers from anyone else never believed.

The rule as a function first, then a real server on loopback: per-IP limits, the transport's
remote (logs, `aether admin connections`, audit actors) and the internal HTTP listener's actors.
Forwarded addresses in these tests come from 192.0.2.0/24 (TEST-NET-1, documentation only);
they appear in headers, no packet goes there. The same rule through a real nginx:
tests/test_ops_nginx.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import trio
from conftest import make_config, open_raw, serve_in, token
from trio_websocket import ConnectionClosed, open_websocket_url

from aether_trio.admin.store import Database, database_path
from aether_trio.app import Server
from aether_trio.config import ConfigError, parse_config
from aether_trio.guards.proxies import TrustedProxies, forwarded_remote, parse_address
from aether_trio.transport import Endpoint

STEP = 5.0
LOOPBACK = ["127.0.0.0/8"]


def headers(*pairs: tuple[str, str]) -> list[tuple[bytes, bytes]]:
    return [(name.encode(), value.encode()) for name, value in pairs]


XFF = "X-Forwarded-For"


# --- the rule --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("192.0.2.1", "192.0.2.1"),
        (" 192.0.2.1 ", "192.0.2.1"),
        ("192.0.2.1:4711", "192.0.2.1"),
        ('"192.0.2.1"', "192.0.2.1"),
        ("2001:db8::1", "2001:db8::1"),
        ("[2001:db8::1]:4711", "2001:db8::1"),
        ("::ffff:192.0.2.1", "192.0.2.1"),  # IPv4-mapped: one client, one key
        ("unknown", None),
        ("", None),
        ("192.0.2.300", None),
        ("[2001:db8::1", None),
    ],
)
def test_addresses_are_read_as_proxies_write_them(text: str, expected: str | None) -> None:
    address = parse_address(text)
    assert (str(address) if address is not None else None) == expected


@pytest.mark.parametrize(
    ("trusted", "peer", "sent", "client"),
    [
        # Nothing trusted (the default): the headers are never read.
        ([], "127.0.0.1", [(XFF, "192.0.2.1")], None),
        # An untrusted peer's headers are ignored, whatever they say.
        (["10.0.0.0/8"], "127.0.0.1", [(XFF, "192.0.2.1")], None),
        (["10.0.0.0/8"], "127.0.0.1", [("X-Real-IP", "192.0.2.1")], None),
        # A trusted peer: the right-most untrusted address.
        (LOOPBACK, "127.0.0.1", [(XFF, "192.0.2.1")], "192.0.2.1"),
        (LOOPBACK, "127.0.0.1", [(XFF, "192.0.2.9, 192.0.2.1")], "192.0.2.1"),
        # A chain of trusted proxies is skipped from the right.
        (["127.0.0.0/8", "10.0.0.0/8"], "127.0.0.1", [(XFF, "192.0.2.1, 10.1.2.3")], "192.0.2.1"),
        # Several headers are one list, in order.
        (LOOPBACK, "127.0.0.1", [(XFF, "192.0.2.9"), ("x-forwarded-for", "192.0.2.1")],
         "192.0.2.1"),
        # Every entry trusted: the left-most.
        (LOOPBACK, "127.0.0.1", [(XFF, "127.0.0.5, 127.0.0.6")], "127.0.0.5"),
        # Garbage ends the walk: the last hop a trusted proxy vouched for, else no answer.
        (LOOPBACK, "127.0.0.1", [(XFF, "192.0.2.1, garbage, 127.0.0.7")], "127.0.0.7"),
        (LOOPBACK, "127.0.0.1", [(XFF, "192.0.2.1, garbage")], None),
        # X-Real-IP only without X-Forwarded-For.
        (LOOPBACK, "127.0.0.1", [("X-Real-IP", "192.0.2.1")], "192.0.2.1"),
        (LOOPBACK, "127.0.0.1", [("X-Real-IP", "192.0.2.2"), (XFF, "192.0.2.1")], "192.0.2.1"),
        (LOOPBACK, "127.0.0.1", [("X-Real-IP", "nonsense")], None),
        # A trusted peer that forwards nothing is its own client.
        (LOOPBACK, "127.0.0.1", [("Origin", "https://example.com")], None),
        # A dual-stack listener sees IPv4 peers as IPv4-mapped IPv6.
        (["127.0.0.1/32"], "::ffff:127.0.0.1", [(XFF, "192.0.2.1")], "192.0.2.1"),
        (["2001:db8::/32"], "2001:db8::5", [(XFF, "[2001:db8:ffff::1]:80, 192.0.2.1")],
         "192.0.2.1"),
    ],
)  # fmt: skip
def test_the_client_is_the_right_most_address_no_trusted_proxy_wrote(
    trusted: list[str], peer: str, sent: list[tuple[str, str]], client: str | None
) -> None:
    assert TrustedProxies(trusted).client_of(peer, headers(*sent)) == client


def test_a_handshake_remote_becomes_the_forwarded_client_only_from_a_trusted_peer() -> None:
    proxies = TrustedProxies(["127.0.0.1/32"])
    forwarded = headers((XFF, "192.0.2.1"))
    assert forwarded_remote(Endpoint("127.0.0.1", 5000), forwarded, proxies) == "192.0.2.1"
    untrusted = Endpoint("127.0.0.2", 5000)
    assert forwarded_remote(untrusted, forwarded, proxies) is untrusted
    assert forwarded_remote("?", forwarded, proxies) == "?"  # not a socket
    peer = Endpoint("127.0.0.1", 5000)
    assert forwarded_remote(peer, forwarded, TrustedProxies()) is peer
    assert forwarded_remote(peer, [], proxies) is peer


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (["10.0.0.0/33"], "'10.0.0.0/33' does not appear to be an IPv4 or IPv6 network"),
        (["127.0.0.1/32", "10.1.2.3/8"], "10.1.2.3/8 has host bits set"),
        (["nginx"], "'nginx' does not appear to be an IPv4 or IPv6 network"),
    ],
)
def test_trusted_proxies_must_be_networks(value: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_config({"server": {"trusted_proxies": value}})
    assert "server.trusted_proxies: expected IP addresses or CIDR networks" in str(error.value)
    assert message in str(error.value)
    ok = parse_config({"server": {"trusted_proxies": ["127.0.0.1", "::1", "10.0.0.0/8"]}})
    assert ok.server.trusted_proxies == ("127.0.0.1", "::1", "10.0.0.0/8")


# --- a real server ------------------------------------------------------------------------------


@asynccontextmanager
async def serving(
    trusted: list[str], data_dir: Path | None = None, **limits: Any
) -> AsyncIterator[Server]:
    overrides: dict[str, Any] = {
        "server": {"trusted_proxies": trusted},
        "limits": limits,
        "api": {"keys": [{"name": "ops", "key": "ops-key-0123456789", "roles": ["admin"]}]},
    }
    if data_dir is not None:
        overrides["admin"] = {"data_dir": str(data_dir)}
    config = make_config(overrides)
    async with trio.open_nursery() as nursery:
        yield await serve_in(nursery, config)
        nursery.cancel_scope.cancel()


async def upgrade(
    server: Server, *sent: tuple[str, str], source: str = "127.0.0.1"
) -> tuple[int, trio.SocketStream]:
    """A raw upgrade request from `source` (a loopback address); the status and the open
    stream (the caller closes it: an accepted connection is counted until then)."""
    stream = await trio.open_tcp_stream("127.0.0.1", server.port, local_address=source)
    extra = "".join(f"{name}: {value}\r\n" for name, value in sent)
    await stream.send_all(
        "GET /connection/websocket HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        f"Sec-WebSocket-Version: 13\r\n{extra}\r\n".encode()
    )
    head = b""
    with trio.fail_after(STEP):
        while b"\r\n\r\n" not in head:
            chunk = await stream.receive_some(65536)
            assert chunk, "closed without an answer"
            head += chunk
    return int(head.split(b" ", 2)[1]), stream


async def test_per_ip_limits_count_the_client_a_trusted_proxy_names() -> None:
    async with serving(["127.0.0.1/32"], connections_per_ip=1) as server:
        limits = server.node.limits
        first, a = await upgrade(server, (XFF, "192.0.2.1"))
        second, b = await upgrade(server, (XFF, "192.0.2.2"))
        # One connection each: two clients behind the same proxy, not one address.
        assert (first, second) == (101, 101)
        assert (limits.connections_from("192.0.2.1"), limits.connections_from("192.0.2.2")) == (
            1,
            1,
        )
        assert limits.connections_from("127.0.0.1") == 0
        third, c = await upgrade(server, (XFF, "192.0.2.9, 192.0.2.1"))  # a forged left part
        assert third == 429
        for stream in (a, b, c):
            await stream.aclose()


async def test_forwarding_headers_from_an_untrusted_peer_are_ignored() -> None:
    # Only 127.0.0.2 is a trusted proxy; this peer is 127.0.0.3.
    async with serving(["127.0.0.2/32"], connections_per_ip=1) as server:
        first, a = await upgrade(server, (XFF, "192.0.2.1"), source="127.0.0.3")
        # A new made-up address per attempt does not get the peer a second connection.
        second, b = await upgrade(server, (XFF, "192.0.2.2"), source="127.0.0.3")
        third, c = await upgrade(server, ("X-Real-IP", "192.0.2.3"), source="127.0.0.3")
        assert (first, second, third) == (101, 429, 429)
        assert server.node.limits.connections_from("127.0.0.3") == 1
        assert server.node.limits.connections_from("192.0.2.1") == 0
        # The trusted proxy's forwarding works beside it.
        fourth, d = await upgrade(server, (XFF, "192.0.2.1"), source="127.0.0.2")
        assert fourth == 101
        assert server.node.limits.connections_from("192.0.2.1") == 1
        for stream in (a, b, c, d):
            await stream.aclose()


def audit_actors(data_dir: Path) -> list[str]:
    db = Database.open(database_path(data_dir), readonly=True)
    try:
        return [orjson.loads(text)["actor"] for _seq, text, _hash in db.audit_rows()]
    finally:
        db.close()


async def test_the_connection_and_its_audit_actor_name_the_forwarded_client(
    tmp_path: Path,
) -> None:
    async with serving(["127.0.0.1/32"], tmp_path) as server:
        url = f"ws://127.0.0.1:{server.port}/connection/websocket"
        async with open_websocket_url(url, extra_headers=headers((XFF, "192.0.2.44"))) as ws:
            await ws.send_message(f'{{"id": 1, "connect": {{"token": "{token("7")}"}}}}')
            assert '"connect"' in await ws.get_message()
            (client,) = server.node.clients.values()
            # What the logs, `aether admin connections` and audit actors show.
            assert client.transport.remote == "192.0.2.44"
        # A refused token is audited with the client's address as the actor.
        async with open_websocket_url(url, extra_headers=headers((XFF, "192.0.2.45"))) as ws:
            await ws.send_message('{"id": 1, "connect": {"token": "not-a-token"}}')
            with pytest.raises(ConnectionClosed):
                await ws.get_message()
            # trio-websocket 0.12 leaves its socket open when the server closed first.
            await ws._stream.aclose()
        async with open_raw(url) as direct:  # no header: the peer, with its port
            await direct.connect(token("8"))
            (client,) = server.node.clients.values()
            assert client.transport.remote.startswith("127.0.0.1:")
    assert "client:192.0.2.45" in audit_actors(tmp_path)


async def test_the_internal_listener_names_the_forwarded_client_only_from_a_trusted_peer(
    tmp_path: Path,
) -> None:
    async with serving(["127.0.0.1/32"], tmp_path) as server:
        url = f"http://127.0.0.1:{server.http_port}/api/admin/node"

        def post(forwarded: str, key: str) -> int:
            return httpx.post(
                url, json={}, headers={"X-API-Key": key, XFF: forwarded}, timeout=STEP
            ).status_code

        assert await trio.to_thread.run_sync(post, "192.0.2.60", "wrong-key") == 401
        server.trusted_proxies = TrustedProxies(["10.0.0.0/8"])  # as a reload would
        assert await trio.to_thread.run_sync(post, "192.0.2.61", "wrong-key-2") == 401
    actors = audit_actors(tmp_path)
    assert "http:192.0.2.60" in actors
    assert not [a for a in actors if "192.0.2.61" in a]
    assert [a for a in actors if a.startswith("http:127.0.0.1:")]
