"""The soak's clients: many cheap load clients speaking the Centrifugo JSON protocol over
wss:// through nginx, and exact accounting of what each subscription received.

A `LoadClient` is what an SDK does, reduced to what the soak measures: connect with a token,
subscribe to its channels asking to recover from its last position, answer pings, reconnect with
the SDKs' backoff (full jitter, doubling from `backoff_min` to `backoff_max`) whenever the
connection ends, and now and then publish to its room or ask for history and presence. Every
subscription keeps the set of offsets it received (`Ledger`): a second arrival of an offset is a
duplicate, an offset below the highest applied one that was not seen yet is out of order, and at
the end every offset between the subscription's first position and the channel's final top that
never arrived is lost. A recovery counts as successful only when the server said `recovered` and
the recovered publications continue exactly where the subscription stood.

Each client binds its TCP connection to one of several 127.0.0.x source addresses, so nginx's and
Aether's per-address limits see a crowd rather than one address (the load of an office, not of a
single abusive host).
"""

from __future__ import annotations

import random
import ssl
import time
from array import array
from collections import Counter
from typing import Any

import attrs
import orjson
import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    HandshakeError,
    WebSocketConnection,
    wrap_client_stream,
)

__all__ = ["Ledger", "LoadClient", "Stats"]

LATENCY_SAMPLES = 2_000_000
OPERATION_TIMEOUT = 10.0


@attrs.define
class Ledger:
    """What one subscription received, by offset."""

    channel: str
    first: int | None = None  # the stream top when the subscription first stood somewhere
    epoch: str = ""
    last: int = 0  # highest offset applied
    received: set[int] = attrs.field(factory=set)
    duplicates: int = 0
    out_of_order: int = 0
    resets: int = 0  # positions lost (epoch changed or not recovered): counted, then re-based
    # Auditors only (a few clients): the publications' own ids, to catch one publish applied
    # twice (two offsets, one id), which offsets alone cannot see.
    ids: set[str] | None = None
    double_published: int = 0
    duplicate_paths: dict[str, int] = attrs.field(factory=dict)  # "live" / "recovered"

    def stand(self, epoch: str, offset: int) -> None:
        if self.first is None:
            self.first, self.epoch, self.last = offset, epoch, offset

    def apply(self, offset: int, data: Any = None, path: str = "live") -> None:
        if self.ids is not None and offset not in self.received and isinstance(data, dict):
            ident = str(data.get("i"))
            if ident in self.ids:
                self.double_published += 1
            self.ids.add(ident)
        if offset in self.received:
            self.duplicates += 1
            self.duplicate_paths[path] = self.duplicate_paths.get(path, 0) + 1
            return
        if offset < self.last:
            self.out_of_order += 1
        self.received.add(offset)
        self.last = max(self.last, offset)

    def missing(self, top: int) -> int:
        return len(self.missing_offsets(top))

    def missing_offsets(self, top: int) -> list[int]:
        if self.first is None:
            return []
        return [offset for offset in range(self.first + 1, top + 1) if offset not in self.received]


@attrs.define
class Stats:
    """Counters shared by every client of the run (one Trio thread: no locks)."""

    connects_attempted: int = 0
    connects_succeeded: int = 0
    recoveries_attempted: int = 0
    recoveries_succeeded: int = 0
    operations: int = 0
    errors: Counter[str] = attrs.field(factory=Counter)
    error_times: list[float] = attrs.field(factory=list)
    closes: Counter[str] = attrs.field(factory=Counter)
    deliveries: int = 0
    latencies_ms: array[float] = attrs.field(factory=lambda: array("f"))
    latency_seen: int = 0
    # Per second of the run: deliveries, latency sum and max (for the plot).
    timeline: dict[int, list[float]] = attrs.field(factory=dict)
    started: float = attrs.field(factory=time.monotonic)

    def latency(self, ms: float) -> None:
        self.latency_seen += 1
        if len(self.latencies_ms) < LATENCY_SAMPLES:
            self.latencies_ms.append(ms)
        else:  # reservoir sampling keeps an unbiased sample of a long run
            slot = random.randrange(self.latency_seen)
            if slot < LATENCY_SAMPLES:
                self.latencies_ms[slot] = ms
        second = int(time.monotonic() - self.started)
        row = self.timeline.setdefault(second, [0, 0.0, 0.0])
        row[0] += 1
        row[1] += ms
        row[2] = max(row[2], ms)

    def error(self, kind: str) -> None:
        self.errors[kind] += 1
        self.error_times.append(time.monotonic() - self.started)


@attrs.define
class Backoff:
    minimum: float
    maximum: float
    attempt: int = 0

    def next(self) -> float:
        # centrifuge-js / centrifuge-python: full jitter over an exponentially growing cap.
        cap = min(self.maximum, self.minimum * 2**self.attempt)
        self.attempt += 1
        return random.uniform(self.minimum, cap)

    def reset(self) -> None:
        self.attempt = 0


@attrs.define(eq=False)
class LoadClient:
    index: int
    user: str
    token: str
    channels: list[str]
    room: str
    source: str
    stats: Stats
    backoff: Backoff
    publish_every: float = 0.0  # seconds between own publications to the room (0: never)
    query_every: float = 0.0  # seconds between history / presence calls (0: never)
    auditor: bool = False
    ledgers: dict[str, Ledger] = attrs.field(factory=dict)
    connected: bool = False
    stopping: bool = False
    _next_id: int = 0
    _pending: dict[int, tuple[str, str]] = attrs.field(factory=dict)
    _subscribed: set[str] = attrs.field(factory=set)
    _published: int = 0
    _resubscribe: list[str] = attrs.field(factory=list)

    def __attrs_post_init__(self) -> None:
        self.ledgers = {channel: Ledger(channel, ids=set() if self.auditor else None)
                        for channel in self.channels}  # fmt: skip

    async def run(self, host: str, port: int, context: ssl.SSLContext) -> None:
        """Connect, hold and reconnect until `stopping`."""
        while not self.stopping:
            self.stats.connects_attempted += 1
            try:
                async with trio.open_nursery() as nursery:
                    ws = await self._open(nursery, host, port, context)
                    try:
                        await self._session(ws, nursery)
                    finally:
                        nursery.cancel_scope.cancel()
                        with trio.move_on_after(1) as cleanup:
                            cleanup.shield = True
                            await ws.aclose()
            except BaseExceptionGroup as group:
                self._count_ending(_first_leaf(group))
            except Exception as exc:
                self._count_ending(exc)
            self.connected = False
            if not self.stopping:
                await trio.sleep(self.backoff.next())

    def _count_ending(self, exc: BaseException) -> None:
        if isinstance(exc, ConnectionClosed):
            reason = exc.reason
            self.stats.closes[str(reason.code if reason else "none")] += 1
        elif isinstance(exc, ConnectionRejected):  # the HTTP status says who refused, and why
            self.stats.error(f"handshake: rejected {exc.status_code}")
        elif isinstance(exc, HandshakeError):
            self.stats.error(f"handshake: {type(exc).__name__}")
        elif isinstance(exc, ProtocolTrouble):
            self.stats.error(str(exc))
        elif isinstance(exc, (OSError, trio.BrokenResourceError, ssl.SSLError, trio.TooSlowError)):
            self.stats.error(f"connect: {type(exc).__name__}")
        else:
            raise exc

    async def _open(self, nursery: trio.Nursery, host: str, port: int,
                    context: ssl.SSLContext) -> WebSocketConnection:  # fmt: skip
        sock = trio.socket.socket()
        await sock.bind((self.source, 0))
        with trio.fail_after(OPERATION_TIMEOUT):
            await sock.connect((host, port))
            tls = trio.SSLStream(trio.SocketStream(sock), context, server_hostname=host,
                                 https_compatible=True)  # fmt: skip
            return await wrap_client_stream(nursery, tls, host, "/connection/websocket")

    def _command(self, kind: str, body: dict[str, Any], channel: str = "") -> str:
        self._next_id += 1
        self._pending[self._next_id] = (kind, channel)
        self.stats.operations += 1
        return orjson.dumps({"id": self._next_id, kind: body}).decode()

    async def _session(self, ws: WebSocketConnection, nursery: trio.Nursery) -> None:
        self._pending.clear()
        self._subscribed.clear()
        self._resubscribe.clear()
        await ws.send_message(self._command("connect", {"token": self.token, "name": "soak"}))
        with trio.fail_after(OPERATION_TIMEOUT):
            while "connect" in (kind for kind, _ in self._pending.values()):
                await self._handle(ws, await ws.get_message())
        if not self.connected:
            return
        await ws.send_message("\n".join(self._subscribe(ch) for ch in self.ledgers))
        if self.publish_every or self.query_every:
            nursery.start_soon(self._chatter, ws)
        while True:
            await self._handle(ws, await ws.get_message())
            if self._resubscribe:
                # A subscribe refused with a temporary error: again after a backoff, as the
                # SDKs do (their subscription backoff), without dropping the connection.
                channels, self._resubscribe = self._resubscribe, []
                nursery.start_soon(self._subscribe_later, ws, channels)

    def _subscribe(self, channel: str) -> str:
        ledger = self.ledgers[channel]
        body: dict[str, Any] = {"channel": channel}
        if ledger.first is not None:
            body |= {"recover": True, "epoch": ledger.epoch, "offset": ledger.last}
        return self._command("subscribe", body, channel)

    async def _subscribe_later(self, ws: WebSocketConnection, channels: list[str]) -> None:
        await trio.sleep(random.uniform(*self.backoff_window()))
        await ws.send_message("\n".join(self._subscribe(ch) for ch in channels))

    def backoff_window(self) -> tuple[float, float]:
        return self.backoff.minimum, self.backoff.minimum * 4

    async def _chatter(self, ws: WebSocketConnection) -> None:
        """Own publications to the room and history/presence calls, at their rates, once every
        subscribe was answered (before that the room may refuse them: not subscribed yet)."""
        while self.room not in self._subscribed:  # noqa: ASYNC110  (a set, not an event)
            await trio.sleep(0.1)
        publish_at = query_at = trio.current_time() + random.uniform(0, 2)
        while True:
            now = trio.current_time()
            if self.publish_every and now >= publish_at:
                self._published += 1
                data = {"i": f"c{self.index}.{self._published}", "t": time.time_ns()}
                await ws.send_message(
                    self._command("publish", {"channel": self.room, "data": data})
                )
                publish_at = now + self.publish_every
            if self.query_every and now >= query_at:
                kind = random.choice(("history", "presence_stats"))
                body: dict[str, Any] = {"channel": self.room}
                if kind == "history":
                    body["limit"] = 10
                await ws.send_message(self._command(kind, body, self.room))
                query_at = now + self.query_every
            await trio.sleep(0.2)

    async def _handle(self, ws: WebSocketConnection, message: str | bytes) -> None:
        raw = message.encode() if isinstance(message, str) else message
        for line in raw.split(b"\n"):
            if not line:
                continue
            try:
                reply = orjson.loads(line)
            except orjson.JSONDecodeError:
                raise ProtocolTrouble("unparsable frame from the server") from None
            if not reply:
                await ws.send_message("{}")  # ping -> pong
            elif "push" in reply:
                await self._push(ws, reply["push"])
            elif "id" in reply:
                self._reply(reply)

    def _reply(self, reply: dict[str, Any]) -> None:
        kind, channel = self._pending.pop(reply["id"], ("", ""))
        if "error" in reply:
            error = reply["error"]
            self.stats.error(f"{kind or 'reply'} {error.get('code')} {error.get('message', '')}")
            if kind == "connect":
                raise ProtocolTrouble(f"connect refused {error.get('code')}")
            if kind == "subscribe" and error.get("temporary", error.get("code") == 100):
                self._resubscribe.append(channel)
            return
        if kind == "connect":
            self.connected = True
            self.stats.connects_succeeded += 1
            self.backoff.reset()
        elif kind == "subscribe":
            self._subscribed.add(channel)
            self._on_subscribed(channel, reply.get("subscribe", {}))

    def _on_subscribed(self, channel: str, result: dict[str, Any]) -> None:
        ledger = self.ledgers[channel]
        epoch, offset = result.get("epoch", ""), int(result.get("offset", 0))
        if not result.get("was_recovering"):
            ledger.stand(epoch, offset)
            return
        self.stats.recoveries_attempted += 1
        pubs = result.get("publications", [])
        offsets = [int(pub.get("offset", 0)) for pub in pubs]
        continuous = offsets == list(range(ledger.last + 1, ledger.last + 1 + len(offsets)))
        if result.get("recovered") and continuous and epoch == ledger.epoch:
            self.stats.recoveries_succeeded += 1
        else:
            self.stats.error("recovery failed")
            ledger.resets += 1
        for pub in pubs:
            self._publication(ledger, pub, live=False)
        if not result.get("recovered"):
            # Re-based: the gap stays missing in the ledger (counted as lost at the end).
            ledger.epoch, ledger.last = epoch, max(ledger.last, offset)

    async def _push(self, ws: WebSocketConnection, push: dict[str, Any]) -> None:
        channel = push.get("channel", "")
        if "pub" in push and channel in self.ledgers:
            self._publication(self.ledgers[channel], push["pub"], live=True)
        elif "disconnect" in push:
            self.stats.closes[f"push {push['disconnect'].get('code')}"] += 1
        elif "unsubscribe" in push and channel in self.ledgers:
            # 2500 "insufficient state" (the server may have missed events): subscribe again,
            # recovering from the position, as the SDKs do.
            self.stats.closes[f"unsubscribe {push['unsubscribe'].get('code')}"] += 1
            self._subscribed.discard(channel)
            await ws.send_message(self._subscribe(channel))

    def _publication(self, ledger: Ledger, pub: dict[str, Any], live: bool) -> None:
        data = pub.get("data")
        ledger.apply(int(pub.get("offset", 0)), data, "live" if live else "recovered")
        self.stats.deliveries += 1
        if live and isinstance(data, dict) and "t" in data:
            self.stats.latency((time.time_ns() - int(data["t"])) / 1e6)


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        if any(isinstance(e, trio.Cancelled) for e in exc.exceptions):
            raise group  # cancellation goes on up
        exc = exc.exceptions[0]
    return exc


class ProtocolTrouble(Exception):
    """The session cannot go on (counted as an error; the client reconnects)."""
