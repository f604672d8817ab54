"""In-memory engine for a single node: history streams, event delivery and presence.

Everything here is synchronous under the hood (Trio runs one task at a time), so `publish` appends
to the stream and hands the publication to the node's handler without a checkpoint in between: no
other task can observe the stream and the live delivery disagreeing.

Stream lifetime follows upstream's memory broker: the publications of a channel are dropped
`ttl` after its last publish; the top offset and epoch survive until `meta_ttl` after last use,
after which the stream is recreated with a new epoch (clients see their position unrecoverable).

A read (history, a positioned subscribe) of a channel that has no stream must still answer with
an epoch, so that a client recovering later can tell whether it missed anything; but reading
must not allocate long-lived state (5,000 channel names read kept 5,000 streams for the 30 days
of `meta_ttl`). A stream a read created lives `READ_CREATED_TTL` at most, however often it is
read, and at most `MAX_READ_CREATED` of them are kept (the oldest go first); its first
publication makes it an ordinary stream. A client whose read-created epoch was forgotten is told
its position is unrecoverable: never a wrong recovery.

Idempotency results (a publish's idempotency key, engines/base.py) are kept per (channel, key)
until their ttl passes, at most `MAX_IDEMPOTENT_RESULTS` of them (the oldest go first). Looking
one up, publishing and storing the result happen without a checkpoint in between, so concurrent
publishes with one key publish once. They are not saved across a restart.

`export_streams` and `import_streams` carry the streams across a restart (engines/persist.py):
the deadlines are kept by this broker's clock, which starts anew with each process, so they
leave and enter as wall-clock times, converted through the caller's `wall_now`.
"""

from __future__ import annotations

import random
import string
from collections import deque
from collections.abc import Callable, Iterable

import attrs
import trio

from ..protocol.messages import ClientInfo, Publication, StreamPosition
from .base import (
    IDEMPOTENT_RESULT_TTL,
    READ_CREATED_TTL,
    BrokerEventHandler,
    HistoryOptions,
    HistoryQuery,
    Published,
    UnrecoverablePosition,
)
from .snapshot import SavedStream

__all__ = ["MemoryBroker", "MemoryPresenceManager"]

_EPOCH_ALPHABET = string.ascii_letters
# Streams created by a read, not a publication: at most this many are kept (the oldest go first;
# how long each lives is the engines' common READ_CREATED_TTL). Redis keeps them by TTL alone.
MAX_READ_CREATED = 10_000
# Idempotency results kept at most (the oldest go first), whatever their ttl.
MAX_IDEMPOTENT_RESULTS = 100_000


def new_epoch() -> str:
    return "".join(random.choices(_EPOCH_ALPHABET, k=8))


@attrs.define(slots=True)
class _Stream:
    epoch: str
    meta_expires: float
    top: int = 0
    pubs: deque[Publication] = attrs.Factory(deque)
    pubs_expire: float = 0.0


class MemoryBroker:
    def __init__(
        self, clock: Callable[[], float] = trio.current_time, sweep_interval: float = 60.0
    ) -> None:
        self._clock = clock
        self._sweep_interval = sweep_interval
        self._streams: dict[str, _Stream] = {}
        # Channels whose stream a read created and no publication has used yet, oldest first.
        self._read_created: dict[str, None] = {}
        # (channel, idempotency key) -> (expires at, result), in insertion order.
        self._results: dict[tuple[str, str], tuple[float, StreamPosition]] = {}
        self._handler: BrokerEventHandler | None = None

    async def run(
        self,
        handler: BrokerEventHandler,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        self._handler = handler
        task_status.started()
        try:
            while True:
                await trio.sleep(self._sweep_interval)
                self.sweep()
        finally:
            self._handler = None

    def sweep(self) -> None:
        """Free expired publications and forget streams whose metadata expired."""
        now = self._clock()
        for channel in list(self._streams):
            stream = self._streams[channel]
            if now >= stream.meta_expires:
                del self._streams[channel]
                self._read_created.pop(channel, None)
            elif stream.pubs and now >= stream.pubs_expire:
                stream.pubs.clear()
        # A full pass: results of different ttls do not expire in insertion order.
        for entry in [e for e, (expires, _) in self._results.items() if now >= expires]:
            del self._results[entry]

    def statistics(self) -> dict[str, int]:
        return {
            "streams": len(self._streams),
            "publications": sum(len(s.pubs) for s in self._streams.values()),
        }

    def export_streams(self, wall_now: float) -> list[SavedStream]:
        """Every live stream, expiry times as wall-clock deadlines (`wall_now` is this instant's
        wall-clock time); expired streams and publications are left out. Synchronous, so the
        streams are taken at one instant; publications are immutable and shared, not copied."""
        now = self._clock()
        to_wall = wall_now - now
        saved = []
        for channel, stream in self._streams.items():
            if now >= stream.meta_expires:
                continue
            pubs = tuple(stream.pubs) if now < stream.pubs_expire else ()
            saved.append(
                SavedStream(
                    channel,
                    stream.epoch,
                    stream.top,
                    stream.meta_expires + to_wall,
                    stream.pubs_expire + to_wall,
                    pubs,
                )
            )
        return saved

    def import_streams(self, streams: Iterable[SavedStream], wall_now: float) -> tuple[int, int]:
        """Put saved streams back with their epochs and offsets, deadlines converted to this
        broker's clock; what expired meanwhile is dropped. Returns (streams, publications) kept."""
        now = self._clock()
        to_broker = now - wall_now
        kept_streams = kept_pubs = 0
        for saved in streams:
            if wall_now >= saved.meta_expires_at:
                continue
            stream = _Stream(saved.epoch, saved.meta_expires_at + to_broker, saved.top)
            if saved.publications and wall_now < saved.pubs_expire_at:
                stream.pubs.extend(saved.publications)
                stream.pubs_expire = saved.pubs_expire_at + to_broker
            self._streams[saved.channel] = stream
            kept_streams += 1
            kept_pubs += len(stream.pubs)
        return kept_streams, kept_pubs

    async def subscribe(self, channel: str) -> None:
        pass  # one node: every publication reaches the handler anyway

    async def unsubscribe(self, channel: str) -> None:
        pass

    async def publish(
        self,
        channel: str,
        pub: Publication,
        history: HistoryOptions,
        *,
        idempotency_key: str = "",
        result_ttl: float = IDEMPOTENT_RESULT_TTL,
    ) -> StreamPosition:
        return self._publish(channel, pub, history, idempotency_key, result_ttl)

    def publish_nowait(
        self,
        channel: str,
        pub: Publication,
        history: HistoryOptions,
        *,
        idempotency_key: str = "",
        result_ttl: float = IDEMPOTENT_RESULT_TTL,
    ) -> Published:
        return Published(self._publish(channel, pub, history, idempotency_key, result_ttl))

    def _publish(
        self,
        channel: str,
        pub: Publication,
        history: HistoryOptions,
        idempotency_key: str,
        result_ttl: float,
    ) -> StreamPosition:
        now = self._clock()
        entry = (channel, idempotency_key)
        if idempotency_key and (found := self._results.get(entry)) is not None:
            if now < found[0]:
                return found[1]  # a repeat: the first result, nothing appended or delivered
            del self._results[entry]
        position = StreamPosition()
        if history.enabled:
            stream = self._stream(channel, history.meta_ttl, now)
            self._read_created.pop(channel, None)  # an ordinary stream from now on
            stream.top += 1
            pub = attrs.evolve(pub, offset=stream.top)
            stream.pubs.append(pub)
            while len(stream.pubs) > history.size:
                stream.pubs.popleft()
            stream.pubs_expire = now + history.ttl
            position = StreamPosition(stream.top, stream.epoch)
        if self._handler is not None:
            self._handler.handle_publication(channel, pub)
        if idempotency_key:
            self._results[entry] = (now + result_ttl, position)
            while len(self._results) > MAX_IDEMPOTENT_RESULTS:
                del self._results[next(iter(self._results))]
        return position

    async def publish_join(self, channel: str, info: ClientInfo) -> None:
        if self._handler is not None:
            self._handler.handle_join(channel, info)

    async def publish_leave(self, channel: str, info: ClientInfo) -> None:
        if self._handler is not None:
            self._handler.handle_leave(channel, info)

    async def history(
        self, channel: str, query: HistoryQuery, meta_ttl: float
    ) -> tuple[list[Publication], StreamPosition]:
        stream = self._read(channel, meta_ttl, self._clock())
        top = StreamPosition(stream.top, stream.epoch)
        since = query.since
        if since is not None and since.epoch and since.epoch != stream.epoch:
            raise UnrecoverablePosition(f"epoch {since.epoch!r} is not the stream's")
        if query.limit == 0 or not stream.pubs:
            return [], top
        pubs: list[Publication]
        if since is None:
            pubs = list(reversed(stream.pubs)) if query.reverse else list(stream.pubs)
        elif query.reverse:
            pubs = [p for p in reversed(stream.pubs) if p.offset < since.offset]
            if pubs and pubs[0].offset != since.offset - 1:
                pubs = []  # the page would not start right before `since`
        else:
            pubs = [p for p in stream.pubs if p.offset > since.offset]
        if query.limit > 0:
            del pubs[query.limit :]
        return pubs, top

    async def remove_history(self, channel: str) -> None:
        stream = self._streams.get(channel)
        if stream is not None:
            stream.pubs.clear()

    def _read(self, channel: str, meta_ttl: float, now: float) -> _Stream:
        """The stream a read answers from: created briefly and within bounds if it is missing."""
        stream = self._streams.get(channel)
        if stream is not None and now < stream.meta_expires and channel not in self._read_created:
            return self._stream(channel, meta_ttl, now)  # an ordinary stream: a use renews it
        if stream is None or now >= stream.meta_expires:
            # Not renewed by later reads: it lives READ_CREATED_TTL from the first one.
            expires = now + min(meta_ttl, READ_CREATED_TTL)
            stream = self._streams[channel] = _Stream(new_epoch(), expires)
            self._read_created.pop(channel, None)
            self._read_created[channel] = None
            while len(self._read_created) > MAX_READ_CREATED:
                oldest = next(iter(self._read_created))
                del self._read_created[oldest]
                del self._streams[oldest]
        return stream

    def _stream(self, channel: str, meta_ttl: float, now: float) -> _Stream:
        stream = self._streams.get(channel)
        if stream is None or now >= stream.meta_expires:
            stream = self._streams[channel] = _Stream(new_epoch(), now + meta_ttl)
        else:
            stream.meta_expires = now + meta_ttl
            if stream.pubs and now >= stream.pubs_expire:
                stream.pubs.clear()
        return stream


class MemoryPresenceManager:
    def __init__(self) -> None:
        self._channels: dict[str, dict[str, ClientInfo]] = {}

    async def add_presence(self, channel: str, info: ClientInfo) -> None:
        self._channels.setdefault(channel, {})[info.client] = info

    async def remove_presence(self, channel: str, client_id: str) -> None:
        clients = self._channels.get(channel)
        if clients is not None:
            clients.pop(client_id, None)
            if not clients:
                del self._channels[channel]

    async def presence(self, channel: str) -> dict[str, ClientInfo]:
        return dict(self._channels.get(channel, {}))

    async def presence_stats(self, channel: str) -> tuple[int, int]:
        clients = self._channels.get(channel, {})
        return len(clients), len({info.user for info in clients.values()})

    def statistics(self) -> dict[str, int]:
        return {"entries": sum(len(c) for c in self._channels.values())}
