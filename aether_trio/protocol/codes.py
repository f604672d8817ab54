"""Code tables of the Centrifugo client protocol v2 (reference sections 6 and 7).

Every error reply, close frame and unsubscribe push the server sends takes its code *and* text from
these tables, so a client never sees a message that was not written here (nothing internal leaks).
"""

from __future__ import annotations

import enum

__all__ = ["Disconnect", "ErrorCode", "Unsubscribe", "WebSocketClose"]


class ErrorCode(enum.IntEnum):
    """Error replies: `{"id": N, "error": {"code": C, "message": M}}`."""

    INTERNAL = 100
    UNAUTHORIZED = 101
    UNKNOWN_CHANNEL = 102
    PERMISSION_DENIED = 103
    METHOD_NOT_FOUND = 104
    ALREADY_SUBSCRIBED = 105
    LIMIT_EXCEEDED = 106
    BAD_REQUEST = 107
    NOT_AVAILABLE = 108
    TOKEN_EXPIRED = 109
    EXPIRED = 110
    TOO_MANY_REQUESTS = 111
    UNRECOVERABLE_POSITION = 112

    @property
    def message(self) -> str:
        return _ERROR_MESSAGES[self]

    @property
    def temporary(self) -> bool:
        # SDKs retry temporary errors with backoff instead of giving up.
        return self in (ErrorCode.INTERNAL, ErrorCode.TOO_MANY_REQUESTS)


_ERROR_MESSAGES = {
    ErrorCode.INTERNAL: "internal server error",
    ErrorCode.UNAUTHORIZED: "unauthorized",
    ErrorCode.UNKNOWN_CHANNEL: "unknown channel",
    ErrorCode.PERMISSION_DENIED: "permission denied",
    ErrorCode.METHOD_NOT_FOUND: "method not found",
    ErrorCode.ALREADY_SUBSCRIBED: "already subscribed",
    ErrorCode.LIMIT_EXCEEDED: "limit exceeded",
    ErrorCode.BAD_REQUEST: "bad request",
    ErrorCode.NOT_AVAILABLE: "not available",
    ErrorCode.TOKEN_EXPIRED: "token expired",
    ErrorCode.EXPIRED: "expired",
    ErrorCode.TOO_MANY_REQUESTS: "too many requests",
    ErrorCode.UNRECOVERABLE_POSITION: "unrecoverable position",
}


class Disconnect(enum.IntEnum):
    """Close frames: code = value, reason = `.reason` (never JSON-parsable, never empty)."""

    CONNECTION_CLOSED = 3000
    SHUTDOWN = 3001
    INTERNAL = 3004
    EXPIRED = 3005
    SUBSCRIPTION_EXPIRED = 3006
    SLOW = 3008
    WRITE_ERROR = 3009
    INSUFFICIENT_STATE = 3010
    FORCE_RECONNECT = 3011
    NO_PONG = 3012
    TOO_MANY_REQUESTS = 3013
    INVALID_TOKEN = 3500
    BAD_REQUEST = 3501
    STALE = 3502
    FORCE_NO_RECONNECT = 3503
    CONNECTION_LIMIT = 3504
    CHANNEL_LIMIT = 3505
    INAPPROPRIATE_PROTOCOL = 3506
    PERMISSION_DENIED = 3507
    NOT_AVAILABLE = 3508
    TOO_MANY_ERRORS = 3509

    @property
    def reason(self) -> str:
        return _DISCONNECT_REASONS[self]

    @property
    def reconnect(self) -> bool:
        """The SDKs' rule: 3000-3499, 4000-4499 and >= 5000 reconnect; the rest is terminal."""
        return should_reconnect(self.value)


def should_reconnect(code: int) -> bool:
    """Whether an SDK reconnects after a close with `code` (1009 aside: JS stops there)."""
    if code < 3000:
        return code != 1009
    return code < 3500 or 4000 <= code < 4500 or code >= 5000


_DISCONNECT_REASONS = {
    Disconnect.CONNECTION_CLOSED: "connection closed",
    Disconnect.SHUTDOWN: "shutdown",
    Disconnect.INTERNAL: "internal server error",
    Disconnect.EXPIRED: "connection expired",
    Disconnect.SUBSCRIPTION_EXPIRED: "subscription expired",
    Disconnect.SLOW: "slow",
    Disconnect.WRITE_ERROR: "write error",
    Disconnect.INSUFFICIENT_STATE: "insufficient state",
    Disconnect.FORCE_RECONNECT: "force reconnect",
    Disconnect.NO_PONG: "no pong",
    Disconnect.TOO_MANY_REQUESTS: "too many requests",
    Disconnect.INVALID_TOKEN: "invalid token",
    Disconnect.BAD_REQUEST: "bad request",
    Disconnect.STALE: "stale",
    Disconnect.FORCE_NO_RECONNECT: "force disconnect",
    Disconnect.CONNECTION_LIMIT: "connection limit",
    Disconnect.CHANNEL_LIMIT: "channel limit",
    Disconnect.INAPPROPRIATE_PROTOCOL: "inappropriate protocol",
    Disconnect.PERMISSION_DENIED: "permission denied",
    Disconnect.NOT_AVAILABLE: "not available",
    Disconnect.TOO_MANY_ERRORS: "too many errors",
}


class Unsubscribe(enum.IntEnum):
    """Codes of the `unsubscribe` push; >= 2500 makes the SDK resubscribe."""

    SERVER = 2000
    INSUFFICIENT_STATE = 2500
    EXPIRED = 2501

    @property
    def reason(self) -> str:
        return _UNSUBSCRIBE_REASONS[self]


_UNSUBSCRIBE_REASONS = {
    Unsubscribe.SERVER: "server unsubscribe",
    Unsubscribe.INSUFFICIENT_STATE: "insufficient state",
    Unsubscribe.EXPIRED: "subscription expired",
}


class WebSocketClose(enum.IntEnum):
    """WebSocket close codes (RFC 6455 7.4.1) sent when the peer broke the WebSocket protocol
    itself; their reasons are RFC 6455's names, never a parser's message."""

    PROTOCOL_ERROR = 1002
    INVALID_PAYLOAD = 1007
    MESSAGE_TOO_BIG = 1009

    @property
    def reason(self) -> str:
        return _WEBSOCKET_REASONS[self]


_WEBSOCKET_REASONS = {
    WebSocketClose.PROTOCOL_ERROR: "protocol error",
    WebSocketClose.INVALID_PAYLOAD: "invalid frame payload data",
    WebSocketClose.MESSAGE_TOO_BIG: "message too big",
}
