"""ops/nginx/aether.conf in a real nginx (Debian's package; .ci/run installs it) in front of two
real `aether serve --instance N` processes configured by a real `aether init`, TLS from a
`trustme` CA. nginx runs in the foreground as the current user, with its pid, logs and
temporary files in the test's directory.

The shipped file is used as it is but for the replacements in `site()` (ports, certificate
paths, loopback-only listeners), each of which must match.

Routing: the file's upstream is `hash $remote_addr consistent` with no failover
(`max_fails=0`, `proxy_next_upstream off`): a client goes back to its own process, which is
what lets it recover after that process restarted (the memory engine's history lives in one
process and survives only its graceful restart). The SDK test below runs that file unchanged.
"""

from __future__ import annotations

import asyncio
import gc
import re
import socket
import ssl
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import httpx
import orjson
import pytest
import trio
import trustme
from centrifuge import Client
from ops_helpers import (
    AetherProcess,
    aether,
    aether_processes,
    free_base_port,
    init_config,
    nginx_main_config,
    nginx_test,
    render_nginx_site,
    running_nginx,
    secret,
)
from sdk_helpers import ClientRecorder, SubscriptionRecorder
from trio_websocket import wrap_client_stream

from aether_trio.auth.tokens import mint_token
from aether_trio.config import load_config

CHAT = """
[[channel.namespaces]]
name = "chat"
history_size = 100
history_ttl = 3600.0
force_recovery = true
allow_subscribe_for_client = true
"""
PATH = "/connection/websocket"
STEP = 10.0


@attrs.frozen
class Stack:
    directory: Path
    config: Path
    ca: trustme.CA
    https_port: int
    http_port: int
    processes: list[AetherProcess]
    internal_base: int

    def url(self) -> str:
        return f"wss://127.0.0.1:{self.https_port}{PATH}"

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        return context

    def token(self, user: str) -> str:
        return mint_token(secret(self.config, "hmac.secret"), {"sub": user})

    def internal(self, instance: int) -> str:
        return f"http://127.0.0.1:{self.internal_base + instance}"

    def admin(self, instance: int, command: str, body: dict[str, Any]) -> dict[str, Any]:
        key = secret(self.config, "api-ops.key")
        response = httpx.post(
            f"{self.internal(instance)}/api/admin/{command}", json=body,
            headers={"X-API-Key": key}, timeout=STEP,
        )  # fmt: skip
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result

    def publish(self, instance: int, channel: str, data: Any) -> None:
        key = secret(self.config, "api-backend.key")
        response = httpx.post(
            f"{self.internal(instance)}/api/publish", json={"channel": channel, "data": data},
            headers={"X-API-Key": key}, timeout=STEP,
        )  # fmt: skip
        assert response.status_code == 200, response.text
        assert "error" not in response.json(), response.text


def site(tmp: Path, ca: trustme.CA, https_port: int, http_port: int, base: int) -> str:
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    cert, key = tmp / "fullchain.pem", tmp / "privkey.pem"
    cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(key))
    return render_nginx_site(
        {
            "    listen 80;\n    listen [::]:80;\n": f"    listen 127.0.0.1:{http_port};\n",
            "    listen 443 ssl;\n    listen [::]:443 ssl;\n":
                f"    listen 127.0.0.1:{https_port} ssl;\n",
            "/etc/aether/tls/fullchain.pem": str(cert),
            "/etc/aether/tls/privkey.pem": str(key),
            "server 127.0.0.1:8001 ": f"server 127.0.0.1:{base + 1} ",
            "server 127.0.0.1:8002 ": f"server 127.0.0.1:{base + 2} ",
        }
    )  # fmt: skip


def test_nginx_accepts_the_shipped_file(tmp_path: Path) -> None:
    main = nginx_main_config(tmp_path, site(tmp_path, trustme.CA(), 18443, 18080, 18000))
    result = nginx_test(main)
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("nginx-stack")
    base, internal = free_base_port(2), free_base_port(2)
    https_port, http_port = free_base_port(1) + 1, free_base_port(1) + 1
    # Two connections per client address, so that the limit is reached by the tests below.
    config = init_config(tmp, base, internal, CHAT)
    text = config.read_text()
    config.write_text(text.replace("connections_per_ip = 1000", "connections_per_ip = 2"))
    ca = trustme.CA()
    main = nginx_main_config(tmp, site(tmp, ca, https_port, http_port, base))
    with aether_processes(config, 2, tmp) as processes, running_nginx(main, https_port):
        yield Stack(tmp, config, ca, https_port, http_port, processes, internal)


# --- the SDK over wss:// through nginx, across a graceful restart --------------------------------


def _holding(stack: Stack, user: str) -> int:
    """The process (1 or 2) that holds `user`'s connection."""
    totals = {n: stack.admin(n, "connections", {"user": user})["total"] for n in (1, 2)}
    holders = [n for n, total in totals.items() if total]
    assert len(holders) == 1, totals
    return holders[0]


def test_an_sdk_client_through_nginx_recovers_after_its_process_restarts(stack: Stack) -> None:
    async def scenario() -> None:
        events, sub_events = ClientRecorder(), SubscriptionRecorder()
        client = Client(
            stack.url(), token=stack.token("sdk-user"), ssl_context=stack.client_context(),
            events=events,
        )  # fmt: skip
        sub = client.new_subscription("chat:room", events=sub_events)
        await client.connect()
        await sub.subscribe()
        await sub_events.wait("subscribed")
        holder = await asyncio.to_thread(_holding, stack, "sdk-user")
        await asyncio.to_thread(stack.publish, holder, "chat:room", {"n": 1})
        await sub_events.wait("publication", count=1)

        # A graceful restart of the client's process: 3001, history saved, then restored.
        def restart_and_publish() -> None:
            stack.processes[holder - 1].restart()
            stack.publish(holder, "chat:room", {"n": 2})  # most likely before the SDK is back

        await asyncio.to_thread(restart_and_publish)
        subscribed = await sub_events.wait("subscribed", count=2, within=STEP)
        assert subscribed[1].was_recovering is True
        assert subscribed[1].recovered is True
        await sub_events.wait("publication", count=2, within=STEP)
        await asyncio.to_thread(stack.publish, holder, "chat:room", {"n": 3})
        await sub_events.wait("publication", count=3, within=STEP)
        assert sub_events.data() == [{"n": 1}, {"n": 2}, {"n": 3}]
        assert sub_events.offsets() == [1, 2, 3]
        # Back on the same process, through nginx.
        assert await asyncio.to_thread(_holding, stack, "sdk-user") == holder
        await client.disconnect()

    asyncio.run(scenario())
    # centrifuge-python (on `websockets`) leaves the TLS transports of the reconnect attempts
    # nginx answered 502 to the garbage collector: collected here, their ResourceWarnings
    # ignored, rather than failing whichever test the collector happens to run in.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


# --- client addresses and limits through nginx ------------------------------------------------


async def tcp_from(stack: Stack, source: str, *, direct_to: int = 0) -> Any:
    """A stream from `source` (a loopback address): TLS to nginx, or plain TCP straight to
    Aether process `direct_to`."""
    if direct_to:
        port = load_config(stack.config, direct_to).server.port
        return await trio.open_tcp_stream("127.0.0.1", port, local_address=source)
    tcp = await trio.open_tcp_stream("127.0.0.1", stack.https_port, local_address=source)
    stream = trio.SSLStream(tcp, stack.client_context(), server_hostname="127.0.0.1")
    await stream.do_handshake()
    return stream


async def handshake(stream: Any, *extra: tuple[str, str]) -> tuple[int, bytes]:
    """Send an upgrade request on `stream`: (status, body). The stream stays open."""
    lines = "".join(f"{name}: {value}\r\n" for name, value in extra)
    await stream.send_all(
        f"GET {PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        f"Sec-WebSocket-Version: 13\r\n{lines}\r\n".encode()
    )
    answer = b""
    with trio.fail_after(STEP):
        while b"\r\n\r\n" not in answer:
            chunk = await stream.receive_some(65536)
            assert chunk, f"closed after {answer!r}"
            answer += chunk
        head, _, body = answer.partition(b"\r\n\r\n")
        length = re.search(rb"(?i)content-length: *(\d+)", head)
        while length and len(body) < int(length.group(1)):
            body += await stream.receive_some(65536)
    return int(head.split(b" ", 2)[1]), body


async def test_aether_sees_the_client_address_behind_nginx_and_limits_it(stack: Stack) -> None:
    streams: list[Any] = []
    async with trio.open_nursery() as nursery:
        # A client that connects: its connection's remote is its own address, not nginx's.
        first = await tcp_from(stack, "127.0.0.2")
        ws = await wrap_client_stream(nursery, first, "127.0.0.1", PATH)
        connect = {"id": 1, "connect": {"token": stack.token("ip-user")}}
        await ws.send_message(orjson.dumps(connect).decode())
        assert "connect" in orjson.loads(await ws.get_message())
        holder = await trio.to_thread.run_sync(_holding, stack, "ip-user")
        found = await trio.to_thread.run_sync(
            stack.admin, holder, "connections", {"user": "ip-user"}
        )
        assert [c["remote"] for c in found["connections"]] == ["127.0.0.2"]
        # connections_per_ip = 2: one more from 127.0.0.2 passes, the next is Aether's 429.
        for expected in (101, 429):
            streams.append(stream := await tcp_from(stack, "127.0.0.2"))
            status, body = await handshake(stream)
            assert status == expected
        assert body == b"too many requests\n"  # Aether's answer, passed on by nginx
        # A forged X-Forwarded-For through nginx: nginx appends the real address, Aether takes
        # the right-most one nginx wrote, so the forgery buys nothing.
        streams.append(forged := await tcp_from(stack, "127.0.0.2"))
        assert await handshake(forged, ("X-Forwarded-For", "192.0.2.50")) == (
            429, b"too many requests\n"
        )  # fmt: skip
        # Another client address is a count of its own.
        streams.append(other := await tcp_from(stack, "127.0.0.3"))
        assert (await handshake(other))[0] == 101
        await ws.aclose()
    for stream in streams:
        await stream.aclose()


async def test_forwarding_headers_from_a_peer_that_is_not_nginx_are_ignored(stack: Stack) -> None:
    # Straight to Aether from 127.0.0.4, which is not in trusted_proxies (loopback 127.0.0.1 and
    # ::1 only): a new made-up address per attempt does not buy a third connection.
    streams = []
    answers = []
    for n, header in enumerate(("X-Forwarded-For", "X-Forwarded-For", "X-Real-IP")):
        streams.append(stream := await tcp_from(stack, "127.0.0.4", direct_to=1))
        answers.append((await handshake(stream, (header, f"192.0.2.{60 + n}")))[0])
    assert answers == [101, 101, 429]
    for stream in streams:
        await stream.aclose()


async def test_nginx_limits_new_connections_per_client_address(stack: Stack) -> None:
    # 20 a second with bursts of 100: 130 handshakes at once from one address meet nginx's 429
    # (its own page), before Aether sees them.
    statuses: list[tuple[int, bytes]] = []

    async def one() -> None:
        stream = await tcp_from(stack, "127.0.0.5")
        try:
            statuses.append(await handshake(stream))
        finally:
            await stream.aclose()

    async with trio.open_nursery() as nursery:
        for _ in range(130):
            nursery.start_soon(one)
    by_nginx = [body for status, body in statuses if status == 429 and b"nginx" in body]
    assert len(by_nginx) >= 20, sorted({s for s, _ in statuses})


def test_the_internal_listener_is_not_served_and_answers_carry_security_headers(
    stack: Stack,
) -> None:
    with httpx.Client(verify=stack.client_context(), timeout=STEP) as http:
        for path in ("/api/publish", "/api/admin/node", "/metrics", "/health", "/ready",
                     "/admin/errors"):  # fmt: skip
            response = http.post(f"https://127.0.0.1:{stack.https_port}{path}", json={})
            assert response.status_code == 404, path
            assert response.headers["strict-transport-security"].startswith("max-age=63072000")
            assert response.headers["x-content-type-options"] == "nosniff"
            assert response.headers["x-frame-options"] == "DENY"
            assert "nginx/" not in response.headers.get("server", "")  # server_tokens off
        plain = httpx.get(f"http://127.0.0.1:{stack.http_port}{PATH}", timeout=STEP)
        assert plain.status_code == 301
        assert plain.headers["location"].startswith("https://")


def test_tls_below_1_2_is_refused(stack: Stack) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLSVersion.TLSv1_1 itself
        context = stack.client_context()
        context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1_1
        # Security level 0 lets this OpenSSL offer TLS 1.1 at all: the refusal must be nginx's.
        context.set_ciphers("DEFAULT:@SECLEVEL=0")
    raw = socket.create_connection(("127.0.0.1", stack.https_port), timeout=STEP)
    with raw, pytest.raises(ssl.SSLError) as refused:
        context.wrap_socket(raw, server_hostname="127.0.0.1").close()
    assert refused.value.reason != "NO_PROTOCOLS_AVAILABLE", "this OpenSSL cannot offer TLS 1.1"
    # TLS 1.2 and 1.3 are served.
    for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        context = stack.client_context()
        context.minimum_version = context.maximum_version = version
        raw = socket.create_connection(("127.0.0.1", stack.https_port), timeout=STEP)
        with raw, context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            assert tls.version() == version.name.replace("v1_", "v1.")


def test_the_health_check_through_nginx_with_tls(stack: Stack) -> None:
    # ops/README.md's last step: the probe's WebSocket through nginx (wss://, the CA given),
    # its API call to the internal listener of the process nginx routes it to.
    cafile = stack.directory / "ca.pem"
    stack.ca.cert_pem.write_to_path(str(cafile))
    answers = {
        n: aether("healthcheck", "-c", str(stack.config), "--url", stack.url(), "--cafile",
                  str(cafile), "--http-url", stack.internal(n), "--timeout", "2")
        for n in (1, 2)
    }  # fmt: skip
    codes = sorted(a.returncode for a in answers.values())
    assert codes == [0, 2], {n: a.stdout for n, a in answers.items()}
    ok = next(a for a in answers.values() if a.returncode == 0)
    assert ok.stdout.startswith("AETHER OK - 7 steps OK")
    lost = next(a for a in answers.values() if a.returncode == 2)
    assert lost.stdout.startswith("AETHER CRITICAL - deliver:")
