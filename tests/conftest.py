"""Shared test helpers: configs, tokens, and real servers on 127.0.0.1 port 0.

Two ways to run a server:
- `running_server(config)`: a context manager that runs the real `Server` in its own thread with
  its own Trio loop, for tests driving asyncio SDKs (centrifuge-python) from a sync test.
- `serve_in(nursery, config)`: starts the server inside the test's own Trio run, for trio tests
  using raw WebSocket clients (`ws_connect`).
"""

from __future__ import annotations

import asyncio
import atexit
import copy
import shutil
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar, TypeVarTuple

import attrs
import orjson
import pytest
import trio
from redis_server import RedisServer, running_redis
from trio_websocket import CloseReason, ConnectionClosed, WebSocketConnection, open_websocket_url

from aether_trio.app import Server
from aether_trio.auth.tokens import mint_token
from aether_trio.config import Config, parse_config
from aether_trio.protocol.codec import JSON
from aether_trio.protocol.protobuf import PROTOBUF

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

# centrifuge-python's own suite (tests/compat) runs with unittest, its runner, in a subprocess of
# tests/test_compat.py against a server started there; pytest must not collect it itself.
collect_ignore = ["compat"]

# trio-asyncio (the Redis engine's bridge) makes every asyncio loop created outside Trio one of
# its own Trio-backed loops once imported, unless a thread asked for a policy of its own. The SDK
# tests drive plain asyncio (`asyncio.run`) in this, the main thread: ask for asyncio's own.
import trio_asyncio  # noqa: E402, F401  (imported first, so that the setting below is its)

asyncio.set_event_loop_policy(asyncio.DefaultEventLoopPolicy())

SECRET = "test-secret-0123456789abcdef0123456789abcdef"

# Test servers keep their durable admin state (bans, audit log) here, not in ./data; tests of
# that state give each server a directory of its own.
ADMIN_DATA_DIR = tempfile.mkdtemp(prefix="aether-test-admin-")
atexit.register(shutil.rmtree, ADMIN_DATA_DIR, ignore_errors=True)

BASE_CONFIG: dict[str, Any] = {
    "server": {"port": 0, "close_wait_seconds": 1.0, "shutdown_drain_seconds": 2.0},
    "http": {"port": 0},
    "admin": {"data_dir": ADMIN_DATA_DIR},
    # Test servers share ADMIN_DATA_DIR: a history snapshot would carry one test's streams into
    # the next. tests/test_durable_history.py turns it on with a directory of its own.
    "engine": {"persist_history": False},
    "token": {"hmac_secret": SECRET},
    # Tests drive load from one loopback address and publish as fast as replies come back: the
    # rate limits stay on (their code runs) but far above that. tests/test_limits.py sets its own.
    "limits": {
        "command_rate": 100_000.0,
        "command_burst": 100_000,
        "user_command_rate": 100_000.0,
        "user_command_burst": 100_000,
        "connection_rate_per_ip": 100_000.0,
        "connection_burst_per_ip": 100_000,
        "channel_publication_rate": 100_000.0,
        "channel_publication_burst": 100_000,
    },
    "channel": {
        "without_namespace": {
            "presence": True,
            "join_leave": True,
            "history_size": 100,
            "history_ttl": 300.0,
            "allow_recovery": True,
            "allow_positioning": True,
            "allow_subscribe_for_client": True,
            "allow_publish_for_client": True,
            "allow_history_for_client": True,
            "allow_presence_for_client": True,
        },
    },
}


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def make_config(overrides: dict[str, Any] | None = None) -> Config:
    """The test base config (HMAC secret, permissive channels, port 0) deep-merged with overrides.
    Lists (e.g. channel.namespaces) replace, they do not merge."""
    return parse_config(_merge(BASE_CONFIG, overrides or {}))


def token(user: str = "42", ttl: float | None = 3600, **claims: Any) -> str:
    """A connection token (or, with channel=..., a subscription token) signed with SECRET."""
    body: dict[str, Any] = {"sub": user, **claims}
    if ttl is not None and "exp" not in claims:
        body["exp"] = int(time.time() + ttl)
    return mint_token(SECRET, body)


@attrs.frozen
class RunningServer:
    server: Server
    url: str
    trio_token: trio.lowlevel.TrioToken

    def call(self, fn: Callable[[*Ts], T], *args: *Ts) -> T:
        """Run a sync function inside the server's Trio thread (e.g. a node method)."""
        return trio.from_thread.run_sync(fn, *args, trio_token=self.trio_token)

    def acall(self, fn: Callable[[*Ts], Awaitable[T]], *args: *Ts) -> T:
        """Run an async function inside the server's Trio thread."""
        return trio.from_thread.run(fn, *args, trio_token=self.trio_token)


@contextmanager
def running_server(config: Config | None = None) -> Iterator[RunningServer]:
    config = config or make_config()
    ready = threading.Event()
    state: dict[str, Any] = {}

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            server = await nursery.start(Server(config).run)
            state["running"] = RunningServer(
                server,
                f"ws://127.0.0.1:{server.port}{config.server.websocket_path}",
                trio.lowlevel.current_trio_token(),
            )
            state["stop"] = nursery.cancel_scope
            ready.set()

    def thread_main() -> None:
        try:
            trio.run(main)
        except BaseException as exc:  # surfaced by the test thread below
            state["error"] = exc
            ready.set()

    thread = threading.Thread(target=thread_main, name="aether-test-server", daemon=True)
    thread.start()
    if not ready.wait(10) or "error" in state:
        raise RuntimeError(f"test server did not start: {state.get('error')!r}")
    running: RunningServer = state["running"]
    try:
        yield running
    finally:
        trio.from_thread.run_sync(state["stop"].cancel, trio_token=running.trio_token)
        thread.join(10)
        if "error" in state:
            raise state["error"]


async def serve_in(nursery: trio.Nursery, config: Config | None = None) -> Server:
    """Start a server in the caller's Trio run; it stops when the nursery is cancelled."""
    server: Server = await nursery.start(Server(config or make_config()).run)
    return server


def ws_url(server: Server) -> str:
    return f"ws://127.0.0.1:{server.port}{server.config.server.websocket_path}"


async def get_text(ws: WebSocketConnection) -> str:
    """The next message, which must be text: the server sends its JSON frames as text frames
    (trio-websocket types a message `str | bytes`)."""
    message = await ws.get_message()
    assert isinstance(message, str), message
    return message


def close_reason(closed: ConnectionClosed) -> CloseReason:
    """The close code and reason the server sent. trio-websocket types `ConnectionClosed.reason`
    optional; the tests that read it expect the server's close frame."""
    assert closed.reason is not None, "closed without a close reason"
    return closed.reason


class RawClient:
    """A bare protocol client for tests: send JSON commands, read decoded lines."""

    def __init__(self, ws: WebSocketConnection) -> None:
        self.ws = ws
        self.next_id = 1
        self.pending: list[dict[str, Any]] = []

    async def send(self, *commands: dict[str, Any]) -> None:
        await self.ws.send_message("\n".join(orjson.dumps(c).decode() for c in commands))

    async def command(self, method: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """Send one command with a fresh id and return its reply; pushes that arrive first are
        kept for `receive`, in order."""
        cmd_id = self.next_id
        self.next_id += 1
        await self.send({"id": cmd_id, method: body or {}})
        for index, msg in enumerate(self.pending):
            if msg.get("id") == cmd_id:
                return self.pending.pop(index)
        while True:
            lines = await self._read_lines()
            for index, msg in enumerate(lines):
                if msg.get("id") == cmd_id:
                    self.pending.extend(lines[index + 1 :])
                    return msg
                self.pending.append(msg)

    async def receive(self) -> dict[str, Any]:
        """The next message: kept ones first, then new frames."""
        if not self.pending:
            self.pending.extend(await self._read_lines())
        return self.pending.pop(0)

    async def read_until_closed(self) -> None:
        """Read (and drop) messages until the server closes: raises trio-websocket's
        `ConnectionClosed`, which carries the close frame."""
        while True:
            await self.receive()

    async def send_then_read_until_closed(self, *messages: dict[str, Any]) -> None:
        """For a server that may close before the send arrives: either way, `ConnectionClosed`."""
        await self.send(*messages)
        await self.read_until_closed()

    async def _read_lines(self) -> list[dict[str, Any]]:
        frame = await get_text(self.ws)
        return [orjson.loads(line) for line in frame.split("\n")]

    async def connect(self, tok: str | None = None, **body: Any) -> dict[str, Any]:
        if tok is not None:
            body["token"] = tok
        return await self.command("connect", body)


def open_raw(url: str) -> _RawContext:
    """`async with open_raw(url) as client:` a RawClient over a real WebSocket."""
    return _RawContext(url)


class _RawContext:
    def __init__(self, url: str) -> None:
        self._ctx = open_websocket_url(url)

    async def __aenter__(self) -> RawClient:
        self._ws = await self._ctx.__aenter__()
        return RawClient(self._ws)

    async def __aexit__(self, *exc: Any) -> Any:
        try:
            return await self._ctx.__aexit__(*exc)
        finally:
            # trio-websocket 0.12's client leaves its socket open when the server closed first
            # (it waits for the TCP close, then never closes its own end): close it here.
            await self._ws._stream.aclose()


@pytest.fixture
def encode_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Count calls of the hub's encoder (a publication must be encoded once, whatever the
    fan-out)."""
    calls: list[tuple[str, str]] = []
    for codec in (JSON, PROTOBUF):

        def counting(
            channel: str, kind: str, body: Any, channel_id: int = 0, *, codec: Any = codec
        ) -> bytes:
            calls.append((channel, kind))
            encode = type(codec).encode_push
            return encode(codec, channel, kind, body, channel_id)  # type: ignore[no-any-return]

        monkeypatch.setattr(codec, "encode_push", counting)
    return calls


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One private redis-server for the whole run (tests use prefixes of their own); tests that
    stop, pause or kill it start their own with `running_redis()`."""
    with running_redis() as server:
        yield server
