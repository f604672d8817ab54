"""Per-connection protocol state machine (sans-IO: no sockets, no clock, no event loop).

Theory of operation. A connection starts AWAITING_CONNECT; the only command it may send is
`connect` (anything else, a pong included, is a 3501). `connected()` moves it to CONNECTED, after
which a second `connect` is a 3501. Commands are checked one by one in frame order, so a frame
carrying `connect` + `subscribe` (centrifuge-js does this) works: the caller finishes the connect
before it asks about the subscribe. Ping/pong: the caller reports each server ping with
`ping_sent()`; a pong clears it, a pong with no ping outstanding is a 3501, and `pong_missing` tells
the caller's timer whether to close with 3012. CLOSED absorbs everything.
"""

from __future__ import annotations

import enum

from .codec import PONG, Command
from .codes import Disconnect
from .errors import DisconnectError

__all__ = ["Session", "SessionState"]


class SessionState(enum.Enum):
    AWAITING_CONNECT = "awaiting_connect"
    CONNECTED = "connected"
    CLOSED = "closed"


class Session:
    __slots__ = ("client_id", "ping_outstanding", "state", "user")

    def __init__(self) -> None:
        self.state = SessionState.AWAITING_CONNECT
        self.client_id = ""
        self.user = ""
        self.ping_outstanding = False

    def check(self, command: Command) -> bool:
        """Raise DisconnectError if `command` is not allowed now; return False if it needs no
        handling (a valid pong), True if the caller should dispatch it."""
        if self.state is SessionState.CLOSED:
            return False
        if self.state is SessionState.AWAITING_CONNECT:
            if command.method != "connect":
                raise DisconnectError(Disconnect.BAD_REQUEST, f"{command.method} before connect")
            return True
        if command.method == "connect":
            raise DisconnectError(Disconnect.BAD_REQUEST, "second connect")
        if command.method == PONG:
            if not self.ping_outstanding:
                raise DisconnectError(Disconnect.BAD_REQUEST, "unexpected pong")
            self.ping_outstanding = False
            return False
        return True

    def connected(self, client_id: str, user: str) -> None:
        if self.state is not SessionState.AWAITING_CONNECT:
            raise RuntimeError(f"connected() in state {self.state}")
        self.state = SessionState.CONNECTED
        self.client_id = client_id
        self.user = user

    def ping_sent(self) -> None:
        self.ping_outstanding = True

    @property
    def pong_missing(self) -> bool:
        return self.ping_outstanding and self.state is SessionState.CONNECTED

    def close(self) -> None:
        self.state = SessionState.CLOSED

    @property
    def is_connected(self) -> bool:
        return self.state is SessionState.CONNECTED
