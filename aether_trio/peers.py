"""What the node knows of the connections it serves and of what they are subscribed to.

The node (node.py) sits below the connection layer (connection/), so it knows a connection only
through `Connection`, and a connection's subscriptions only through `Subscription`; the connection
layer's `Client` implements the first, and the two kinds of subscription (subscriptions.py) the
second. The layers above the connection layer (the server API, the admin commands) see the
connection layer's own type, because `Node` is generic in its connection type.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .protocol.codec import Codec
    from .protocol.codes import Disconnect
    from .protocol.messages import RawJSON
    from .protocol.options import ChannelOptions

__all__ = ["Connection", "Subscription"]


class Subscription(Protocol):
    """What a connection holds for one channel it is subscribed to (`Connection.subscriptions`).

    Two kinds, siblings (subscriptions.py): a `ChannelSubscription` of one connection, which the
    hub delivers to, and the `SystemSubscription` of the operators' channel, one object shared by
    every connection that holds it (`shared`), which the hub's group for that channel delivers to.
    """

    @property
    def channel(self) -> str: ...

    @property
    def options(self) -> ChannelOptions: ...

    @property
    def shared(self) -> bool:
        """One object for many connections: nothing of it may be set for one connection."""

    @property
    def server_side(self) -> bool: ...

    @property
    def chan_info(self) -> RawJSON: ...

    @property
    def expire_at(self) -> int | None: ...


class Connection(Protocol):
    """A live, authenticated connection, as the node sees it."""

    @property
    def client_id(self) -> str: ...

    @property
    def user(self) -> str: ...

    @property
    def subscriptions(self) -> Mapping[str, Subscription]: ...

    @property
    def codec(self) -> Codec:
        """Its wire format: what it is sent must be encoded with it."""

    @property
    def queued_bytes(self) -> int:
        """Bytes waiting in its outgoing queue."""

    def send(self, message: bytes) -> None:
        """Queue an encoded message, never waiting (a client too slow for it is closed)."""

    def close(self, disconnect: Disconnect, *, flush: bool = True, detail: str = "") -> None:
        """Ask the connection to close with `disconnect` (`detail` is only logged)."""

    def insufficient_state(self, channel: str) -> None:
        """Its subscription of `channel` may have missed publications: make the client
        resubscribe and recover (unsubscribe push 2500, or close 3010 for a server-side one)."""

    def probe_write(self, report: Callable[[float], object]) -> bool:
        """Time its newest queued message until it is written (`report(seconds)`); False when
        nothing is queued or a probe is pending."""
