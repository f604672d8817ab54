"""Errors of the protocol layer, raised by the session and by command handlers.

    ProtocolError            base; `detail` is for the server log only, never sent to a client
    ├── ReplyError           answer the command with an error reply (code from `ErrorCode`)
    ├── DisconnectError      close the connection with a code from `Disconnect`
    ├── AppError             an error reply the application chose (its backend or a hook)
    └── AppDisconnect        a close the application chose

The client sees only the code and the fixed text of the code table, or what the application
itself chose to send (`AppError`, `AppDisconnect`: never an exception's text of ours).
"""

from __future__ import annotations

from .codes import Disconnect, ErrorCode

__all__ = ["AppDisconnect", "AppError", "DisconnectError", "ProtocolError", "ReplyError"]

MAX_UINT32 = 2**32 - 1
# A close frame's reason: at most 123 bytes of UTF-8 (RFC 6455 5.5: 125 with the code).
MAX_REASON_BYTES = 123
# Longest error message passed on; a longer one is cut (a client needs no essay).
MAX_MESSAGE_CHARS = 512


class ProtocolError(Exception):
    def __init__(self, detail: str = "") -> None:
        super().__init__(detail)
        self.detail = detail


class ReplyError(ProtocolError):
    def __init__(self, code: ErrorCode, detail: str = "") -> None:
        super().__init__(detail or code.message)
        self.code = code


class DisconnectError(ProtocolError):
    def __init__(self, disconnect: Disconnect, detail: str = "") -> None:
        super().__init__(detail or disconnect.reason)
        self.disconnect = disconnect


class AppError(ProtocolError):
    """An error reply with the code, message and `temporary` flag the application chose (a
    proxy's `error`, or raised by an in-process hook), as Centrifugo passes them on. Any code
    1..2**32-1: a backend may answer with the protocol's own (103 permission denied) or with
    its own (Centrifugo recommends 400..1999). ValueError for a code out of range."""

    def __init__(self, code: int, message: str = "", temporary: bool = False) -> None:
        if type(code) is not int or not 0 < code <= MAX_UINT32:
            raise ValueError(f"error code: expected an integer 1..{MAX_UINT32}, got {code!r}")
        super().__init__(f"application error {code}: {message}")
        self.code = code
        self.message = str(message)[:MAX_MESSAGE_CHARS]
        self.temporary = bool(temporary)


class AppDisconnect(ProtocolError):
    """A close with the code and reason the application chose. Codes 3000..4999 (the range
    RFC 6455 leaves to applications; Centrifugo recommends 4000..4999 for custom ones: 4000..4499
    make the SDKs reconnect, 4500..4999 not). ValueError for a code out of range; a reason
    longer than a close frame holds is cut."""

    def __init__(self, code: int, reason: str = "") -> None:
        if type(code) is not int or not 3000 <= code <= 4999:
            raise ValueError(f"disconnect code: expected an integer 3000..4999, got {code!r}")
        super().__init__(f"application disconnect {code}: {reason}")
        self.code = code
        encoded = str(reason).encode()[:MAX_REASON_BYTES]
        self.reason = encoded.decode(errors="ignore") or "disconnect"
