"""One connection's subscription to one channel: what the hub delivers to.

A subscription starts *buffering*: it is registered in the hub before the stream position is read,
so nothing published in between is missed, but what arrives is held back. Once the subscribe (or
connect) reply is queued, `go_live` releases the buffer, skipping publications that the reply
already carried (offset <= the position it reported), so a client sees the reply first, then every
later publication exactly once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..protocol.codes import Disconnect
from ..protocol.messages import NO_JSON, RawJSON
from ..protocol.options import ChannelOptions

if TYPE_CHECKING:
    from ..timers import Timer
    from .client import Client

__all__ = ["ChannelSubscription"]


class ChannelSubscription:
    __slots__ = (
        "_buffer",
        "_buffered_bytes",
        "chan_info",
        "channel",
        "client",
        "expire_at",
        "expiry_timer",
        "last_on_node",
        "options",
        "push_join_leave",
        "server_side",
    )

    def __init__(
        self,
        client: Client,
        channel: str,
        options: ChannelOptions,
        *,
        push_join_leave: bool,
        server_side: bool,
        chan_info: RawJSON = NO_JSON,
        expire_at: int | None = None,
    ) -> None:
        self.client = client
        self.channel = channel
        self.options = options
        self.push_join_leave = push_join_leave
        self.server_side = server_side
        self.chan_info = chan_info
        self.expire_at = expire_at
        self.expiry_timer: Timer | None = None
        # Set by the client when it unsubscribes: whether the node's last subscriber just left.
        self.last_on_node = True
        self._buffer: list[tuple[bytes, int]] | None = []
        self._buffered_bytes = 0

    @property
    def client_id(self) -> str:
        return self.client.client_id

    def deliver(self, message: bytes, offset: int) -> None:
        buffer = self._buffer
        if buffer is None:
            self.client.send(message)
            return
        self._buffered_bytes += len(message)
        if self._buffered_bytes > self.client.outbox.max_bytes:
            self.client.close(Disconnect.SLOW, flush=False)
            return
        buffer.append((message, offset))

    def go_live(self, delivered_offset: int) -> None:
        buffer, self._buffer = self._buffer, None
        for message, offset in buffer or ():
            if offset and offset <= delivered_offset:
                continue  # already in the reply's recovered publications
            self.client.send(message)
