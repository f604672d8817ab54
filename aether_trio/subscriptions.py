"""The two kinds of subscription a connection holds, siblings behind `peers.Subscription`.

`ChannelSubscription`: one connection's subscription to one channel, what the hub delivers to.
It starts *buffering*: it is in the hub before the stream position is read, so nothing published
in between is missed, but what arrives is held back. Once the subscribe (or connect) reply is
queued, `go_live` releases the buffer, skipping publications the reply already carried (offset <=
the position it reported), so a client sees the reply first, then every later publication once.
With Redis a publication can also reach the node *after* `go_live` although the reply covered it:
the publish script appends and publishes in one step, but the node reads the stream position on
a command connection and the publication on its PUB/SUB connection, and the history answer may
come first. Such late copies are dropped too, until the first publication past the reply's
position arrives (PUB/SUB delivers a channel's publications in offset order, so none can follow).
Found by tests/test_redis_faults.py (a repeated publication after a recovery).

Delta compression (`delta` set: fossil, negotiated at subscribe): the hub hands such a
subscription a `DeltaSource` instead of bytes, and it picks the full publication or the delta
against `delta_base`, the data of the last publication it sent, which is what the SDK patches.
While buffering it holds full publications only; `go_live` sets the base to the last one it
releases (or to the last publication the reply carried), so a delta is never sent against a
publication the client does not have.

`SystemSubscription`: the operators' system channel (system_channel.py), one object shared by
every connection that holds it. It never buffers and is never in the hub: the hub's group for its
channel delivers to the connections holding it, and a connection starts holding it only once the
reply that lists it is queued.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Protocol

from .protocol.codes import Disconnect
from .protocol.messages import NO_JSON, RawJSON
from .protocol.options import ChannelOptions

if TYPE_CHECKING:
    from .peers import Connection
    from .protocol.codec import Codec
    from .timers import Timer

__all__ = ["SYSTEM_OPTIONS", "ChannelSubscription", "SystemSubscription"]

TagsPredicate = Callable[[Mapping[str, str]], bool]


class DeltaSource(Protocol):
    """One publication for delta subscribers (the hub's), each form encoded once per codec."""

    def full(self, codec: Codec, channel_id: int = 0) -> bytes:
        """The publication with its data in full, as a delta subscription carries it."""

    def delta(self, codec: Codec, base: RawJSON, channel_id: int = 0) -> bytes:
        """The publication as a delta against `base` (in full when that is not shorter)."""


# The system channel's options whatever the channel rules say: no client may publish, no presence,
# join/leave or history (every connection is a subscriber), so a publication has no offset and a
# subscription no position; nothing here is per connection.
SYSTEM_OPTIONS = ChannelOptions()


class ChannelSubscription:
    __slots__ = (
        "_buffer",
        "_buffered_bytes",
        "_covered",
        "accepts",
        "chan_info",
        "channel",
        "channel_id",
        "codec",
        "compact",
        "connection",
        "delta",
        "delta_base",
        "expire_at",
        "expiry_timer",
        "max_buffer_bytes",
        "options",
        "push_join_leave",
        "route",
        "server_side",
    )

    shared = False

    def __init__(
        self,
        connection: Connection,
        channel: str,
        options: ChannelOptions,
        *,
        push_join_leave: bool,
        server_side: bool,
        max_buffer_bytes: int,
        chan_info: RawJSON = NO_JSON,
        expire_at: int | None = None,
        accepts: TagsPredicate | None = None,
        delta: bool = False,
        compact: bool = False,
    ) -> None:
        self.connection = connection
        # Channel compaction asked for and allowed; the node sets `channel_id` when it adds the
        # subscription to the hub, before anything is delivered to it.
        self.compact = compact
        self.channel_id = 0
        # The hub's (hub.py), set when it adds the subscription.
        self.route: tuple[Codec, int] | None = None
        # Fossil delta compression negotiated; the data the next delta is made against.
        self.delta = delta
        self.delta_base: RawJSON | None = None
        # The subscriber's tags filter: the hub skips publications whose tags it rejects.
        self.accepts = accepts
        # The connection's, fixed for its life: the hub encodes once per codec (hub.py).
        self.codec = connection.codec
        self.channel = channel
        self.options = options
        self.push_join_leave = push_join_leave
        self.server_side = server_side
        self.chan_info = chan_info
        self.expire_at = expire_at
        # Armed by the connection's timers while `expire_at` is set (sub_refresh re-arms it).
        self.expiry_timer: Timer | None = None
        # Held back until `go_live`: more than this is a client that cannot keep up (3008).
        self.max_buffer_bytes = max_buffer_bytes
        # (message, offset, data: the publication's, for a delta subscription's base)
        self._buffer: list[tuple[bytes, int, RawJSON | None]] | None = []
        self._buffered_bytes = 0
        # Once live: the offset the reply covered, until a publication past it arrives (0 then).
        self._covered = 0

    @property
    def client_id(self) -> str:
        return self.connection.client_id

    def deliver(self, message: bytes, offset: int, data: RawJSON | None = None) -> None:
        """The hub's call: queue `message` (encoded with `codec`) on the connection, or hold it
        while buffering."""
        buffer = self._buffer
        if buffer is None:
            if offset and self._covered:
                if offset <= self._covered:
                    return  # a late copy of what the reply carried (see the module docstring)
                self._covered = 0
            self.connection.send(message)
            return
        self._buffered_bytes += len(message)
        if self._buffered_bytes > self.max_buffer_bytes:
            self.connection.close(Disconnect.SLOW, flush=False)
            return
        buffer.append((message, offset, data))

    def deliver_delta(self, source: DeltaSource, data: RawJSON, offset: int) -> None:
        """The hub's call for a delta subscription: the publication whose data is `data`, as a
        delta against the last one sent when there is one, else in full."""
        codec, channel_id = self.codec, self.channel_id
        if self._buffer is not None:
            self.deliver(source.full(codec, channel_id), offset, data)
            return
        if offset and self._covered:
            if offset <= self._covered:
                return  # a late copy of what the reply carried (see the module docstring)
            self._covered = 0
        base = self.delta_base
        message = (
            source.full(codec, channel_id)
            if base is None
            else source.delta(codec, base, channel_id)
        )
        self.delta_base = data
        self.connection.send(message)

    def go_live(self, delivered_offset: int, base: RawJSON | None = None) -> None:
        """The reply is queued and covered the stream up to `delivered_offset` (its last
        publication's data: `base`): release what was held back that it did not carry, and
        deliver directly from now on."""
        buffer, self._buffer = self._buffer, None
        if buffer is None:
            return  # live already
        for message, offset, data in buffer:
            if offset and offset <= delivered_offset:
                continue  # already in the reply's recovered publications
            self.connection.send(message)
            base = data
        past = any(offset > delivered_offset for _message, offset, _data in buffer)
        self._covered = 0 if past else delivered_offset
        if self.delta:
            self.delta_base = base


class SystemSubscription:
    """The one subscription object of a system channel name, held by every subscribed
    connection: a server-side subscription without expiry, info or a position."""

    __slots__ = ("channel",)

    shared = True
    options = SYSTEM_OPTIONS
    server_side = True
    chan_info = NO_JSON
    expire_at = None

    def __init__(self, channel: str) -> None:
        self.channel = channel
