"""What a hostile tester found (issue 14): inputs that reached error 100, work that stalled the
loop, a subscription a failed subscribe left behind. Each answer must be the protocol's answer for
bad input, never 100 and never a traceback in the log, and a bystander keeps being served.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import logging
import os
import re
import socket
import struct
import subprocess
import sys
import time
import tracemalloc
from typing import Any

import httpx
import orjson
import pytest
import trio
import trio.lowlevel
from conftest import SECRET, close_reason, make_config, open_raw, serve_in, token, ws_url
from hypothesis import given, settings
from hypothesis import strategies as st
from test_bad_input import Bystander, RawSocket, bystander, closed_by_server, open_connected
from trio_websocket import ConnectionClosed

from aether_trio.app import Server
from aether_trio.auth.tokens import TokenVerifier
from aether_trio.config import TokenConfig
from aether_trio.engines.base import EngineError, HistoryOptions, HistoryQuery
from aether_trio.engines.memory import MemoryBroker
from aether_trio.http.api.glob import compile_glob
from aether_trio.protocol.codec import JSON, encode_push, encode_reply, raw_json
from aether_trio.protocol.messages import Publication

__all__ = ["bystander"]  # the fixture, used here by name

API_KEY = "hostile-api-key-0123456789"
STEP = 5.0
FAR = 10**20  # seconds: far beyond any date, and beyond a 64-bit integer


@pytest.fixture
async def server(nursery: trio.Nursery) -> Server:
    keys = [{"name": "all", "key": API_KEY, "roles": ["admin"]}]
    config = make_config(
        {
            "api": {"keys": keys},
            "channel": {
                "namespaces": [
                    {"name": "clean", "publication_html": "escape"},
                    {
                        "name": "kept",
                        "history_size": 10,
                        "history_ttl": 60,
                        "allow_subscribe_for_client": True,
                    },
                    {
                        "name": "present",
                        "presence": True,
                        "allow_subscribe_for_client": True,
                        "allow_presence_for_subscriber": True,
                    },
                ]
            },
        }
    )
    return await serve_in(nursery, config)


def no_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert errors == [], [r.getMessage() for r in errors]


async def api(server: Server, method: str, body: Any, *, patience: float = STEP) -> httpx.Response:
    url = f"http://127.0.0.1:{server.http_port}/api/{method}"
    async with httpx.AsyncClient(timeout=patience) as http:
        return await http.post(url, json=body, headers={"X-API-Key": API_KEY})


def raw_token(claims_json: str) -> str:
    """An HS256 token over claims written as JSON text (numbers any JSON encoder would refuse)."""

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = b'{"alg":"HS256","typ":"JWT"}'
    signed = f"{b64(header)}.{b64(claims_json.encode())}"
    signature = hmac.new(SECRET.encode(), signed.encode(), hashlib.sha256).digest()
    return f"{signed}.{b64(signature)}"


def claims_with(claim: str, value: str, **extra: str) -> str:
    """Claims as JSON text: a user, an hour of validity, then `claim` set to the literal `value`."""
    fields = {"sub": '"42"', "exp": str(int(time.time()) + 3600), **extra, claim: value}
    return "{" + ",".join(f'"{k}":{v}' for k, v in fields.items()) + "}"


def nested(levels: int) -> Any:
    value: Any = "deep"
    for _ in range(levels):
        value = {"a": value}
    return value


# --- 3. numbers far out of range in tokens ------------------------------------------------------


@pytest.mark.parametrize("claim", ["exp", "nbf", "iat", "expire_at"])
@pytest.mark.parametrize("value", [str(FAR), "1e20", f"-{FAR}", "1e300"])
async def test_a_connection_token_time_out_of_range_is_an_invalid_token(
    server: Server, bystander: Bystander, caplog: pytest.LogCaptureFixture, claim: str, value: str
) -> None:
    async with open_raw(ws_url(server)) as client:
        await client.send({"id": 1, "connect": {"token": raw_token(claims_with(claim, value))}})
        close, frames = await closed_by_server(client)
    assert frames == []
    assert (close.code, close.reason) == (3500, "invalid token")
    no_tracebacks(caplog)
    await bystander.assert_still_served()


@pytest.mark.parametrize("claim", ["exp", "iat"])
async def test_a_subscription_token_time_out_of_range_is_refused_with_103(
    server: Server, caplog: pytest.LogCaptureFixture, claim: str
) -> None:
    sub_token = raw_token(claims_with(claim, str(FAR), channel='"kept:x"'))
    async with open_connected(ws_url(server)) as client:
        reply = await client.command("subscribe", {"channel": "kept:x", "token": sub_token})
        assert reply["error"]["code"] == 103, reply
        assert "subscribe" in await client.command("subscribe", {"channel": "news"})
    no_tracebacks(caplog)


async def test_a_refresh_token_time_out_of_range_is_an_invalid_token(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    async with open_connected(ws_url(server)) as client:
        await client.send({"id": 9, "refresh": {"token": raw_token(claims_with("exp", "1e20"))}})
        with pytest.raises(ConnectionClosed) as closed:
            await client.read_until_closed()
    reason = close_reason(closed.value)
    assert (reason.code, reason.reason) == (3500, "invalid token")
    no_tracebacks(caplog)


# --- 3. deep nesting through the server API ------------------------------------------------------


@pytest.mark.parametrize("channel", ["news", "clean:room"])
async def test_api_data_nested_too_deep_is_a_400_naming_the_field(
    server: Server, bystander: Bystander, caplog: pytest.LogCaptureFixture, channel: str
) -> None:
    response = await api(server, "publish", {"channel": channel, "data": nested(300)})
    assert response.status_code == 400, response.text
    assert response.json()["field"] == "data"
    assert "nested deeper than" in response.json()["detail"]
    # Deep but within the limit: published (and escaped in the `clean` namespace).
    response = await api(server, "publish", {"channel": channel, "data": nested(100)})
    assert "result" in response.json(), response.text
    no_tracebacks(caplog)
    await bystander.assert_still_served()


async def test_api_batch_with_data_nested_too_deep_names_the_command(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    commands = [
        {"publish": {"channel": "news", "data": {}}},
        {"broadcast": {"channels": ["news"], "data": nested(300)}},
    ]
    response = await api(server, "batch", {"commands": commands})
    assert response.status_code == 400, response.text
    assert response.json()["field"] == "commands[1].broadcast.data"
    no_tracebacks(caplog)


async def test_api_info_nested_too_deep_is_a_400(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    body = {"user": "42", "channel": "news", "info": nested(300)}
    response = await api(server, "subscribe", body)
    assert response.status_code == 400, response.text
    assert response.json()["field"] == "info"
    no_tracebacks(caplog)


# --- 3. huge numbers in operator parameters ------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "body", "field"),
    [
        ("invalidate_user_tokens", {"user": "1", "before": 2**63}, "before"),
        ("tasks", {"max_tasks": 2**63}, "max_tasks"),
        ("connections", {"limit": 2**63}, "limit"),
    ],
)
async def test_an_operator_integer_out_of_range_is_a_400_naming_it(
    server: Server, caplog: pytest.LogCaptureFixture, command: str, body: Any, field: str
) -> None:
    response = await api(server, f"admin/{command}", body)
    assert response.status_code == 400, response.text
    assert response.json()["field"] == field
    no_tracebacks(caplog)


# --- 2. a failed subscribe leaves nothing behind -----------------------------------------------


async def test_a_subscribe_whose_reply_fails_leaves_no_subscription_behind(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    failures: list[str] = []

    def failing_once(cmd_id: int, method: str, result: Any) -> bytes:
        if method == "subscribe" and not failures:
            failures.append(method)
            raise OverflowError("injected: the reply cannot be encoded")
        return encode_reply(cmd_id, method, result)

    monkeypatch.setattr(JSON, "encode_reply", failing_once)  # the connection's codec
    node = server.node
    async with open_connected(ws_url(server)) as client:
        reply = await client.command("subscribe", {"channel": "kept:room"})
        assert reply["error"]["code"] == 100
        [connection] = node.clients.values()
        assert "kept:room" not in connection.subscriptions
        assert node.num_subscribers("kept:room") == 0
        # The SDK's retry is a fresh subscribe, not 105 "already subscribed".
        assert "subscribe" in await client.command("subscribe", {"channel": "kept:room"})
        await node.publish(node.resolve("kept:room"), raw_json({"n": 1}))
        push = await client.receive()
        assert push["push"]["pub"]["data"] == {"n": 1}


async def test_a_join_that_fails_after_the_reply_makes_the_client_resubscribe(
    server: Server, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    node = server.node
    real = node.presence.add_presence
    failures: list[str] = []

    async def failing_once(channel: str, info: Any) -> None:
        if not failures:
            failures.append(channel)
            raise EngineError("injected: presence is unreachable")
        await real(channel, info)

    monkeypatch.setattr(node.presence, "add_presence", failing_once)
    async with open_connected(ws_url(server)) as client:
        assert "subscribe" in await client.command("subscribe", {"channel": "present:room"})
        push = await client.receive()
        assert push == {
            "push": {
                "channel": "present:room",
                "unsubscribe": {"code": 2500, "reason": "insufficient state"},
            }
        }
        [connection] = node.clients.values()
        assert "present:room" not in connection.subscriptions
        assert "subscribe" in await client.command("subscribe", {"channel": "present:room"})
        stats = await client.command("presence_stats", {"channel": "present:room"})
        assert stats["presence_stats"] == {"num_clients": 1, "num_users": 1}
    assert "join of" in caplog.text  # a warning, not an error: the engine failed, not we


# --- 4. work that stalls the event loop ----------------------------------------------------------


async def test_a_large_sequential_batch_lets_other_tasks_run(server: Server) -> None:
    """While a batch of publishes runs, another task gets to run between every 16 of them: each
    publish records how often a canary task has run so far. (Trio runs the tasks of a scheduling
    round in random order, so one canary run may fall before and the next after two stretches of
    16: at most 32 publishes see the same count. Without the checkpoints, all 1,000 do.)"""
    node = server.node
    canary = [0]
    seen: list[int] = []
    real_publish = node.broker.publish

    async def publish(channel: str, pub: Any, history: Any, **options: Any) -> Any:
        seen.append(canary[0])
        return await real_publish(channel, pub, history, **options)

    node.broker.publish = publish  # type: ignore[method-assign]
    done = trio.Event()

    async def run_canary() -> None:
        while not done.is_set():
            canary[0] += 1
            await trio.lowlevel.checkpoint()

    commands = [{"publish": {"channel": "news", "data": {"n": n}}} for n in range(1000)]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_canary)
        # What is asserted is the interleaving, not the speed: 1,000 publishes beside a canary that
        # never sleeps took 0.4 s alone but over 5 s once late in a loaded CI run (ReadTimeout).
        response = await api(server, "batch", {"commands": commands}, patience=120)
        done.set()
    assert response.status_code == 200
    assert len(seen) == 1000
    longest = max(len(list(run)) for _, run in itertools.groupby(seen))
    assert longest <= 32, longest


async def test_a_batch_over_the_limit_is_refused_whole(server: Server) -> None:
    commands = [{"publish": {"channel": "news", "data": {}}}] * 1001
    response = await api(server, "batch", {"commands": commands})
    assert response.status_code == 400
    assert response.json()["field"] == "commands"
    assert "1000" in response.json()["detail"]


async def test_a_backtracking_channels_pattern_is_answered_at_once(server: Server) -> None:
    """`*a*a*a*a*a*a*a*b` against long names of `a`s: a backtracking regex takes years (holding
    the GIL, so no timeout inside this process could stop it): the matcher runs in a child
    process here only so that such a regression fails instead of hanging."""
    code = (
        "from aether_trio.http.api.glob import compile_glob\n"
        "match = compile_glob('*a*a*a*a*a*a*a*b')\n"
        "print([match('a' * 3000), match('a' * 3000 + 'b')])\n"
    )
    result = await trio.to_thread.run_sync(
        lambda: subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
        )
    )
    assert result.stdout.strip() == "[False, True]"

    response = await api(server, "channels", {"pattern": "*a*a*a*a*a*a*a*b"})
    assert response.json() == {"result": {"channels": {}}}
    assert (await api(server, "channels", {"pattern": "x" * 257})).json()["error"]["code"] == 107
    too_many = "{a,b}" * 7  # 128 alternatives
    assert (await api(server, "channels", {"pattern": too_many})).json()["error"]["code"] == 107


def _reference_glob(pattern: str) -> re.Pattern[str]:
    """The glob as a plain (backtracking) regular expression: slow, but obviously right."""
    out, i, depth = [], 0, 0
    while i < len(pattern):
        char = pattern[i]
        if char == "*":
            out.append(".*")
        elif char == "?":
            out.append(".")
        elif char == "{":
            depth += 1
            out.append("(?:")
        elif char == "," and depth:
            out.append("|")
        elif char == "}" and depth:
            depth -= 1
            out.append(")")
        else:
            out.append(re.escape(char))
        i += 1
    return re.compile("".join(out), re.DOTALL)


@given(
    pattern=st.lists(
        st.sampled_from(["a", "b", ":", "*", "?", "{a,b*}", "{,a}", "[ab]"]), max_size=6
    ).map("".join),  # at most 6 groups of 2: within MAX_ALTERNATIVES (64)
    name=st.text(alphabet="ab:", max_size=10),
)
@settings(max_examples=400, deadline=None, derandomize=True)
def test_the_linear_glob_agrees_with_a_plain_regex(pattern: str, name: str) -> None:
    reference = _reference_glob(pattern.replace("[ab]", "\x00")).pattern.replace(
        re.escape("\x00"), "[ab]"
    )
    expected = re.fullmatch(reference, name, re.DOTALL) is not None
    assert compile_glob(pattern)(name) is expected, (pattern, name)


# --- 7. the upgrade path -----------------------------------------------------------------------


async def test_a_command_sent_in_the_same_write_as_the_upgrade_is_handled(server: Server) -> None:
    """centrifuge-js-like clients may write `connect` right behind the request, before the 101."""
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        f"GET /connection/websocket HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    command = orjson.dumps({"id": 1, "connect": {"token": token("42")}})
    mask = os.urandom(4)
    frame = bytes([0x81, 0x80 | 126]) + len(command).to_bytes(2, "big") + mask
    frame += bytes(b ^ mask[i % 4] for i, b in enumerate(command))
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    sock = RawSocket(stream)
    try:
        await stream.send_all(request + frame)
        with trio.fail_after(STEP):
            head = await sock._read_until(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 101"), head
            opcode, payload = await sock.read_frame()
        assert opcode == 0x1
        assert "connect" in orjson.loads(payload), payload
    finally:
        await stream.aclose()


async def test_a_reset_right_after_the_upgrade_request_is_counted_not_logged(
    server: Server, bystander: Bystander, caplog: pytest.LogCaptureFixture
) -> None:
    def peer_disconnects() -> float:
        """Counted as a handshake the peer left (the reset came before our 101 went out) or as
        a connection the peer closed (after it)."""
        registry = server.node.metrics.registry
        gone = registry.get_sample_value("aether_handshake_failures_total", {"reason": "peer_gone"})
        left = registry.get_sample_value("aether_disconnects_total", {"code": "peer"})
        return (gone or 0.0) + (left or 0.0)

    before = peer_disconnects()
    for _ in range(5):
        sock = socket.create_connection(("127.0.0.1", server.port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.sendall(
            b"GET /connection/websocket HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n"
        )
        sock.close()  # with SO_LINGER 0: a TCP reset
    for _ in range(500):  # the resets arrive through the kernel: poll, up to 5 s
        if peer_disconnects() >= before + 5:
            break
        await trio.sleep(0.01)
    assert peer_disconnects() == before + 5
    await bystander.assert_still_served()
    noisy = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert noisy == []


# --- 8. the internal listener --------------------------------------------------------------------


async def test_a_body_that_never_arrives_gets_408_after_the_read_timeout(
    nursery: trio.Nursery,
) -> None:
    keys = [{"name": "all", "key": API_KEY, "roles": ["admin"]}]
    config = make_config({"api": {"keys": keys}, "http": {"read_timeout": 0.5}})
    server = await serve_in(nursery, config)
    stream = await trio.open_tcp_stream("127.0.0.1", server.http_port)
    try:
        await stream.send_all(
            b"POST /api/publish HTTP/1.1\r\nHost: x\r\nX-API-Key: "
            + API_KEY.encode()
            + b'\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"chan'
        )
        answer = b""
        with trio.fail_after(STEP):
            while b"\r\n\r\n" not in answer:
                chunk = await stream.receive_some(4096)
                if not chunk:
                    break
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 408"), answer
    finally:
        await stream.aclose()
    # The listener still answers others.
    response = await api(server, "info", {})
    assert response.status_code == 200


# --- 6. memory the byte limits do not see ---------------------------------------------------------


def _allocated_per_item(make: Any, count: int) -> float:
    """Bytes Python allocated per item for `count` items made by `make` (kept alive meanwhile)."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = make(count)
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert len(kept) == count
    return (after - before) / count


async def test_a_stored_publication_costs_about_its_size() -> None:
    broker = MemoryBroker()
    history = HistoryOptions(size=1000, ttl=300)

    async def publish_many(count: int) -> list[Any]:
        for n in range(count):
            pub = Publication(data=raw_json({"n": n % 10}))  # 7 bytes of JSON
            await broker.publish("room", pub, history)
        pubs, _ = await broker.history("room", HistoryQuery(limit=-1), 3600.0)
        return pubs

    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        pubs = await publish_many(500)
        per_publication = (tracemalloc.get_traced_memory()[0] - before) / 500
    finally:
        tracemalloc.stop()
    assert len(pubs) == 500
    # orjson's 4 KiB of capacity per output made this about 4,200 bytes.
    assert per_publication < 600, per_publication


def test_a_queued_message_costs_about_its_size() -> None:
    def queue(count: int) -> list[bytes]:
        return [
            encode_push("room", "pub", Publication(data=raw_json({"n": n}))) for n in range(count)
        ]

    per_message = _allocated_per_item(queue, 1000)
    assert per_message < 400, per_message  # a 40-byte push; it was about 4,100


def test_token_info_kept_per_connection_costs_about_its_size() -> None:
    verifier = TokenVerifier(TokenConfig(hmac_secret=SECRET))

    def connect(count: int) -> list[Any]:
        return [verifier.verify_connect(token(str(n), info={"name": "Ann"})) for n in range(count)]

    per_credentials = _allocated_per_item(connect, 200)
    assert per_credentials < 2000, per_credentials


# --- 10. a slow consumer learns why ------------------------------------------------------------


async def _slow_client(port: int) -> RawSocket:
    """A raw WebSocket client with a tiny receive buffer, connected and subscribed to `slow`."""
    sock = trio.socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    await sock.connect(("127.0.0.1", port))
    raw = RawSocket(trio.SocketStream(sock))
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        "GET /connection/websocket HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    await raw.stream.send_all(request.encode())
    with trio.fail_after(STEP):
        assert (await raw._read_until(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
        commands = [
            {"id": 1, "connect": {"token": token("slow")}},
            {"id": 2, "subscribe": {"channel": "slow"}},
        ]
        await raw.send_frame(0x1, b"\n".join(orjson.dumps(c) for c in commands))
        replies = b""
        while b'"id":2' not in replies:
            replies += (await raw.read_frame())[1]
    return raw


async def _overflow(server: Server) -> None:
    """Publish 8 KB messages into `slow` until the server asks to close the slow client (3008)."""
    node = server.node
    [connection] = node.clients.values()
    channel = node.resolve("slow")
    payload = raw_json({"pad": "x" * 8000})
    for _ in range(5000):
        if connection.writer.close_request is not None:
            assert connection.writer.close_request.code == 3008
            return
        await node.publish(channel, payload)
        await trio.lowlevel.checkpoint()  # the flusher writes what the socket takes
    raise AssertionError("the client was never too slow")


def _slow_closes(server: Server, outcome: str) -> float:
    value = server.node.metrics.registry.get_sample_value(
        "aether_slow_consumer_close_frames_total", {"outcome": outcome}
    )
    return value or 0.0


async def test_a_slow_consumer_that_reads_again_gets_its_3008(nursery: trio.Nursery) -> None:
    config = make_config(
        {"client": {"outbox_max_bytes": 65536}, "server": {"close_wait_seconds": 5.0}}
    )
    server = await serve_in(nursery, config)
    raw = await _slow_client(server.port)
    try:
        await _overflow(server)
        # It reads again, within close_wait_seconds: behind what it had left unread, the close
        # frame says why (it used to see the TCP connection dropped: 1006).
        code, reason, _before = await raw.close_frame()
        assert (code, reason) == (3008, "slow")
    finally:
        await raw.stream.aclose()
    for _ in range(500):
        if _slow_closes(server, "sent"):
            break
        await trio.sleep(0.01)
    assert (_slow_closes(server, "sent"), _slow_closes(server, "dropped")) == (1, 0)


async def test_a_slow_consumer_that_never_reads_is_dropped_and_counted(
    nursery: trio.Nursery,
) -> None:
    config = make_config(
        {"client": {"outbox_max_bytes": 65536}, "server": {"close_wait_seconds": 0.5}}
    )
    server = await serve_in(nursery, config)
    raw = await _slow_client(server.port)
    try:
        await _overflow(server)
        # The count comes when the close is given up; the connection goes a moment later.
        for _ in range(500):
            if _slow_closes(server, "dropped") and not server.node.clients:
                break
            await trio.sleep(0.01)
        assert (_slow_closes(server, "sent"), _slow_closes(server, "dropped")) == (0, 1)
        assert server.node.clients == {}  # and the connection is gone
    finally:
        await raw.stream.aclose()
