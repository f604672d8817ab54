"""The engine's one PUB/SUB connection: channel subscriptions, the reader that hands events to the
node, the probe that proves the connection still delivers, and reconnection.

Theory of operation. `run` keeps a *session* going and starts a new one, after a capped backoff,
whenever one ends. A session connects, subscribes this engine's probe channel and every channel
the node wants (`wanted`), proves itself with a probe and marks the engine reachable; then three
tasks run until one fails: the reader (every message in arrival order, handed synchronously to
the node's handler), the writer (SUBSCRIBE/UNSUBSCRIBE commands queued in one round go out as one
write) and the prober (every `probe_interval`, or at once when a command found Redis silent, a
PUBLISH to the probe channel must come back within `io_timeout`, or the session is rebuilt: a
connection can be up and deliver nothing, centrifuge PR #594).

Each session first asks the client's topology where Redis is now (`refresh`), and so does every
probe: when a Sentinel names another master, the session ends and the next one connects to the
new master (and reports the gap below). A Redis Cluster delivers PUBLISH on every node, so a
session may go to any of them (the next configured one after a failure).

A new session after an earlier one means publications may have been missed in between: once it
is resubscribed, the channels that were subscribed are reported to `handler.handle_gap`, so their
subscribers can recover from history. A publication whose offset is not the next one after the
last this node delivered in its channel is a gap too (reported instead of delivered): one that
arrives on the new session before the session's own report, after others it never received,
would otherwise move its subscribers past those for good. Before the session's report, each
channel's stream top is checked against the highest offset this node delivered (`delivered`): a
server that lost delivered publications (failover to a replica that lacked them) gets a new epoch
for that stream (`_check_tops`).

`subscribe` returns once Redis confirmed it (so anything published afterwards reaches this node)
and fails with `EngineError` while no session is up; `unsubscribe` never waits for a dead
connection: a channel no longer wanted is simply not subscribed again.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import trio
from redis.asyncio.connection import AbstractConnection, Connection, parse_url

from ..base import BrokerEventHandler, EngineError
from .client import CONNECTION_ERRORS, RedisClient
from .codec import CodecError, decode_info, decode_publication
from .scripts import CHECK_TOP, Keys, new_epoch

__all__ = ["PubSub"]

log = logging.getLogger(__name__)

RECONNECT_FIRST = 0.05
RECONNECT_MAX = 2.0
# Messages taken off the connection per bridge crossing, at most.
READ_BATCH = 512


class _Pending:
    __slots__ = ("done", "ok")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.ok = False


class PubSub:
    def __init__(self, client: RedisClient, keys: Keys) -> None:
        self._client = client
        self._keys = keys
        self.wanted: set[str] = set()
        # Redis channel names subscribed in every session besides the node's channels, each
        # with what takes its messages (the control plane's, engines/redis/control.py).
        self.raw: dict[bytes, Callable[[bytes], None]] = {}
        self._conn: AbstractConnection | None = None
        # Per Redis channel name: (command, waiter) in the order the commands were sent; Redis
        # confirms each channel of each command in that order.
        self._confirm: dict[bytes, deque[tuple[bytes, _Pending]]] = {}
        self._outgoing: list[tuple[bytes, str]] = []
        self._outgoing_ready = trio.Event()
        self._probes: dict[bytes, trio.Event] = {}
        self._tokens = itertools.count()
        # The highest offset delivered per subscribed channel (checked after a gap).
        self.delivered: dict[str, int] = {}
        self.connected = trio.Event()  # set once the first session is up
        self.sessions = 0
        self._attempts = 0

    # --- what the broker asks ---

    async def subscribe(self, channel: str) -> None:
        self.wanted.add(channel)
        try:
            await self._change(b"subscribe", channel)
        except BaseException:
            self.wanted.discard(channel)
            raise

    async def unsubscribe(self, channel: str) -> None:
        self.wanted.discard(channel)
        self.delivered.pop(channel, None)
        if self._conn is not None:
            if self._client.topology.cluster:
                # What the channel's master published before must arrive first: it comes over
                # that master's bus link, not this connection, so wait for a probe sent the
                # same way (the contract: published before `unsubscribe` returns, delivered).
                await self.probe([self._keys.meta(channel)])
            await self._change(b"unsubscribe", channel)

    async def probe(self, routes: Sequence[str] = ()) -> None:
        """Publish to this connection's own channel and wait for it to come back: everything
        published before has been handed to the handler then. In a Redis Cluster one probe
        goes through each master (or the masters of `routes`' slots), as each has its own bus
        link to this connection's node. `EngineError` if one does not come back."""
        client = self._client
        with trio.move_on_after(client.config.io_timeout):
            backs = []
            try:
                async with trio.open_nursery() as nursery:
                    for route in routes or await client.probe_routes():
                        token = b"%d" % next(self._tokens)
                        back = self._probes[token] = trio.Event()
                        backs.append((token, back))
                        nursery.start_soon(self._send_probe, token, route)
                for _token, back in backs:
                    await back.wait()
                return
            finally:
                for token, _back in backs:
                    del self._probes[token]
        raise EngineError("the PUB/SUB probe did not come back in time")

    async def _send_probe(self, token: bytes, route: str) -> None:
        await self._client.publish(self._keys.probe, token, route, check=False)

    async def _change(self, command: bytes, channel: str) -> None:
        if self._conn is None:
            raise EngineError("redis PUB/SUB is not connected")
        pending = _Pending()
        name = self._keys.client(channel).encode()
        self._confirm.setdefault(name, deque()).append((command, pending))
        self._outgoing.append((command, channel))
        self._outgoing_ready.set()
        with trio.move_on_after(self._client.config.io_timeout):
            await pending.done.wait()
        if not pending.ok:
            raise EngineError(f"redis did not confirm {command.decode()} {channel}")

    # --- sessions ---

    async def run(
        self,
        handler: BrokerEventHandler,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        task_status.started()
        backoff = RECONNECT_FIRST
        while True:
            began = self.sessions
            try:
                await self._session(handler)
            except* (EngineError, trio.TooSlowError, *CONNECTION_ERRORS) as group:
                why = "; ".join(f"{type(e).__name__}: {e}" for e in group.exceptions)
                self._client.mark_unreachable(why)
                log.warning("redis PUB/SUB connection lost (%s); reconnecting in %.2f s", why,
                            backoff)  # fmt: skip
            if self.sessions > began:
                backoff = RECONNECT_FIRST  # it was up: start the backoff over
            await trio.sleep(backoff)
            backoff = min(backoff * 2, RECONNECT_MAX)

    def _new_connection(self) -> AbstractConnection:
        client, cfg = self._client, self._client.config
        assert client.address is not None  # refreshed before
        self._attempts += 1
        address = client.topology.pubsub_address(client.address, self._attempts)
        kwargs: dict[str, Any] = dict(parse_url(address))
        cls = kwargs.pop("connection_class", Connection)
        # No read timeout: a quiet channel is normal here, the prober finds a silent one.
        conn: AbstractConnection = cls(
            **kwargs,
            socket_timeout=None,
            socket_connect_timeout=cfg.connect_timeout,
            client_name="aether-pubsub",
            # RESP2: messages are plain replies read in order (with RESP3 redis-py routes
            # them to a push handler instead).
            protocol=2,
        )
        return conn

    async def _session(self, handler: BrokerEventHandler) -> None:
        client, cfg = self._client, self._client.config
        await client.refresh()
        conn = self._new_connection()
        try:
            with trio.fail_after(cfg.connect_timeout + cfg.io_timeout):
                await client.aio(conn.connect)
            channels = sorted(self.wanted)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._reader, conn, handler)
                nursery.start_soon(self._writer, conn)
                # The writer sends them: in chunks, as resubscribing many channels at once
                # should not make one enormous command.
                self._conn = conn
                await self._resubscribe(channels)
                await self.probe()
                if self.sessions:
                    await self._check_tops(channels)
                client.mark_reachable()
                self.sessions += 1
                if self.sessions > 1 and (lost := [c for c in channels if c in self.wanted]):
                    log.warning("redis PUB/SUB reconnected: %d channels may have missed "
                                "publications", len(lost))  # fmt: skip
                    handler.handle_gap(lost)
                self.connected.set()
                nursery.start_soon(self._prober)
        finally:
            self._conn = None
            for waiters in self._confirm.values():
                for _command, pending in waiters:
                    pending.done.set()  # ok stays False: the caller gets EngineError
            self._confirm.clear()
            self._outgoing.clear()
            with trio.CancelScope(shield=True), trio.move_on_after(cfg.io_timeout):
                await client.aio(conn.disconnect)

    async def _check_tops(self, channels: Sequence[str]) -> None:
        """After a gap: a stream whose top is below what this node delivered lost publications
        (a promoted replica lacked them, a restart from an older snapshot). Its epoch is
        replaced (scripts.CHECK_TOP), so clients holding positions in it are told
        `recovered: false` instead of recovering silently past publications the server no
        longer has once new ones reuse their offsets. Best effort: a publication through
        another node that already reused the offsets hides the loss (docs/redis.md)."""
        seen = [(c, self.delivered[c]) for c in channels if c in self.delivered]

        async def check(channel: str, offset: int) -> None:
            args = (offset, new_epoch())
            meta = (self._keys.meta(channel),)
            if await self._client.script(CHECK_TOP, meta, args, check=False):
                log.warning("redis lost publications of %s up to offset %d: new epoch",
                            channel, offset)  # fmt: skip
                self.delivered.pop(channel, None)

        async with trio.open_nursery() as nursery:
            for channel, offset in seen:
                nursery.start_soon(check, channel, offset)

    async def _resubscribe(self, channels: Sequence[str]) -> None:
        raw = [name.decode() for name in self.raw]
        names = [self._keys.probe, *raw, *(self._keys.client(c) for c in channels)]
        waiting = []
        for name in names:
            pending = _Pending()
            self._confirm.setdefault(name.encode(), deque()).append((b"subscribe", pending))
            waiting.append(pending)
        self._outgoing += [(b"subscribe-raw", name) for name in names]
        self._outgoing_ready.set()
        with trio.fail_after(self._client.config.io_timeout + len(names) / 10_000):
            for pending in waiting:
                await pending.done.wait()
        if not all(p.ok for p in waiting):
            raise EngineError("resubscribing failed")

    async def _writer(self, conn: AbstractConnection) -> None:
        while True:
            await self._outgoing_ready.wait()
            self._outgoing_ready = trio.Event()
            batch, self._outgoing = self._outgoing, []
            commands: list[tuple[str, ...]] = []
            for command, channel in batch:
                verb = "SUBSCRIBE" if command.startswith(b"subscribe") else "UNSUBSCRIBE"
                name = channel if command == b"subscribe-raw" else self._keys.client(channel)
                if commands and commands[-1][0] == verb and len(commands[-1]) <= 512:
                    commands[-1] += (name,)
                else:
                    commands.append((verb, name))
            await self._client.aio(conn.send_packed_command, conn.pack_commands(commands))

    async def _prober(self) -> None:
        client = self._client
        while True:
            with trio.move_on_after(client.config.probe_interval):
                await client.trouble.wait()
            client.trouble = trio.Event()
            if await client.refresh():
                # Another master (a Sentinel failover): this connection may be on a demoted
                # server that no longer sees the publications.
                raise EngineError(f"redis {client.topology.name} moved to another server")
            await self.probe()  # EngineError ends the session: it is rebuilt
            client.mark_reachable()

    async def _reader(self, conn: AbstractConnection, handler: BrokerEventHandler) -> None:
        while True:
            for message in await self._client.aio(_read_batch, conn):
                self._dispatch(message, handler)

    def _dispatch(self, message: Any, handler: BrokerEventHandler) -> None:
        kind, name, data = message[0], message[1], message[2]
        if kind == b"message":
            if name.startswith(self._keys.client_prefix.encode()):
                channel = name[len(self._keys.client_prefix) :].decode()
                try:
                    self._event(channel, data, handler)
                except (CodecError, ValueError):
                    log.warning("ignored a message in %s that is not Aether's", channel)
            elif (take := self.raw.get(name)) is not None:
                take(data)
            elif (back := self._probes.get(data)) is not None:
                back.set()
        elif kind in (b"subscribe", b"unsubscribe"):
            waiters = self._confirm.get(name)
            if waiters:
                _command, pending = waiters.popleft()
                if not waiters:
                    del self._confirm[name]
                pending.ok = True
                pending.done.set()

    def _event(self, channel: str, data: bytes, handler: BrokerEventHandler) -> None:
        kind, body = data[:1], data[1:]
        if kind == b"p":
            head, _, payload = body.partition(b":")
            offset = int(head)
            if offset:
                last = self.delivered.get(channel)
                self.delivered[channel] = offset
                if last is not None and offset > last + 1:
                    # Publications between them never reached this node (published while
                    # its PUB/SUB session was being rebuilt, and this one came before the
                    # session reported its gap): delivered, it would move subscribers past
                    # them for good. Instead they recover from history, which holds this one
                    # too (the publish script appends before it publishes).
                    log.info("redis PUB/SUB: offsets %d-%d of %s missed; subscribers recover",
                             last + 1, offset - 1, channel)  # fmt: skip
                    handler.handle_gap([channel])
                    return
            handler.handle_publication(channel, decode_publication(payload, offset))
        elif kind == b"j":
            handler.handle_join(channel, decode_info(body))
        elif kind == b"l":
            handler.handle_leave(channel, decode_info(body))
        else:
            raise CodecError("unknown message kind")


async def _read_batch(conn: AbstractConnection) -> list[Any]:
    """asyncio side: wait for one message, then take whatever else is already buffered."""
    messages = [await conn.read_response(timeout=math.inf)]
    while len(messages) < READ_BATCH and await conn.can_read():
        messages.append(await conn.read_response(timeout=math.inf))
    return messages
