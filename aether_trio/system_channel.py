"""The operators' system channel: every connection is subscribed to it, none through the hub.

Theory of operation. A hub subscription costs a `ChannelSubscription`, its options and a hub
entry per connection, and the connect an extra resolve and subscribe; for a channel that every
connection has, that is most of what an idle connection costs. Instead, each name the system
channel has had gets one `SystemSubscription` (subscriptions.py), shared by all connections, and
a connection is subscribed by holding it in `client.subscriptions[name]`, put there by the one
subscribe path (connection/subscribe.py) once the reply listing it is queued (so nothing of the
channel can reach the client before the reply). Everything that asks "is this connection
subscribed to X" (unsubscribe, the server API, the limit accounting, cleanup, the debug views)
works on that dict unchanged; an unsubscribe pops the shared object like any other, and the
connection stops receiving. Subscribing to the channel again (with a token, through the server
API) gives the shared object again: a connection is never served twice.

Delivery: the hub knows each name as a `hub.Group` (`Receivers`), encodes a publication once per
codec in use and hands it here; the loop sends the same bytes to every connection of a codec
holding the shared object, synchronously, never awaiting one of them.

A reload that renames the channel leaves connections with the name they were told about, as they
were before: they keep the old name's shared object, which stays registered.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from .subscriptions import SystemSubscription

if TYPE_CHECKING:
    from .peers import Connection
    from .protocol.codec import Codec

__all__ = ["Receivers"]


class Receivers:
    """The connections holding one name's `SystemSubscription`: the hub's group for that name."""

    __slots__ = ("_connections", "subscription")

    def __init__(
        self, connections: Mapping[str, Connection], subscription: SystemSubscription
    ) -> None:
        self._connections = connections
        self.subscription = subscription

    def holds(self, connection: Connection) -> bool:
        return connection.subscriptions.get(self.subscription.channel) is self.subscription

    def deliver(self, encoded: Callable[[Codec], bytes]) -> int:
        # Picked before any send: a send may close a slow client, which must not change the loop.
        receivers = [c for c in self._connections.values() if self.holds(c)]
        for connection in receivers:
            connection.send(encoded(connection.codec))
        return len(receivers)

    def count(self) -> int:
        return sum(1 for c in self._connections.values() if self.holds(c))

    def first(self) -> Connection | None:
        """The longest-registered receiver (latency sampling): usually the first one looked at."""
        return next((c for c in self._connections.values() if self.holds(c)), None)
