"""The operators' system channel: every connection is subscribed to it, none through the hub.

Theory of operation. A hub subscription costs a `ChannelSubscription`, its options and a hub
entry per connection, and the connect an extra resolve and subscribe; for a channel that every
connection has, that is most of what an idle connection costs. Instead, each name the system
channel has had gets one `SystemSubscription`, shared by all connections, and a connection is
subscribed by holding it in `client.subscriptions[name]`, put there by the connect handler right
after the connect reply is queued (so nothing of the channel can reach the client before the
reply). Everything that asks "is this connection subscribed to X" (unsubscribe, the server API,
the limit accounting, cleanup, the debug views) keeps working on that dict unchanged; an
unsubscribe pops the shared object like any other, and the connection stops receiving.

Delivery: the hub knows each name as a `hub.Group` (`Receivers`), encodes a publication once and
hands it here; the loop sends the same bytes to every connection holding the shared object,
synchronously, never awaiting one of them. A connection that subscribed to the channel the
ordinary way (after unsubscribing from it, with a token or through the server API) has its own
hub subscription instead, so it is served by the hub and skipped here: never twice.

A reload that renames the channel leaves connections with the name they were told about, as they
were before: they keep the old name's shared object, which stays registered.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, NoReturn

from .connection.subscription import ChannelSubscription
from .protocol.messages import NO_JSON
from .protocol.options import ChannelOptions

if TYPE_CHECKING:
    from .connection.client import Client

__all__ = ["SYSTEM_OPTIONS", "Receivers", "SystemSubscription"]

# Whatever the channel rules say: no client may publish, no presence, join/leave or history
# (every connection is a subscriber), so a publication has no offset and a subscription no
# position; nothing here is per connection.
SYSTEM_OPTIONS = ChannelOptions()


class SystemSubscription(ChannelSubscription):
    """The one subscription object of a system channel name, held by every subscribed connection.

    It is never in the hub, so nothing is delivered through it; it has no client. Its fields are
    what code reading `client.subscriptions` expects of a server-side subscription without
    expiry; nothing may set them for one connection (`commands.sub_refresh` refuses it).
    """

    __slots__ = ()

    def __init__(self, channel: str) -> None:  # no super().__init__: there is no one client
        self.channel = channel
        self.options = SYSTEM_OPTIONS
        self.push_join_leave = False
        self.server_side = True
        self.chan_info = NO_JSON
        self.expire_at = None
        self.expiry_timer = None
        # A connection detaching it must never unsubscribe the broker: the channel stays
        # subscribed on this node (the hub counts the group as a subscriber).
        self.last_on_node = False
        self._buffer = None
        self._buffered_bytes = 0

    @property
    def client_id(self) -> NoReturn:
        raise TypeError("a system subscription belongs to no one client")

    def deliver(self, message: bytes, offset: int) -> NoReturn:
        raise TypeError("a system channel is delivered by its Receivers, not through the hub")

    def go_live(self, delivered_offset: int) -> NoReturn:
        raise TypeError("a system subscription never buffers")


class Receivers:
    """The connections holding one name's `SystemSubscription`: the hub's group for that name."""

    __slots__ = ("_clients", "subscription")

    def __init__(self, clients: Mapping[str, Client], subscription: SystemSubscription) -> None:
        self._clients = clients
        self.subscription = subscription

    def holds(self, client: Client) -> bool:
        return client.subscriptions.get(self.subscription.channel) is self.subscription

    def deliver(self, message: bytes) -> int:
        # Picked before any send: a send may close a slow client, which must not change the loop.
        receivers = [c for c in self._clients.values() if self.holds(c)]
        for client in receivers:
            client.send(message)
        return len(receivers)

    def count(self) -> int:
        return sum(1 for c in self._clients.values() if self.holds(c))

    def first(self) -> Client | None:
        """The longest-registered receiver (latency sampling): usually the first one looked at."""
        return next((c for c in self._clients.values() if self.holds(c)), None)
