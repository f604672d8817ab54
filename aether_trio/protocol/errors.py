"""Errors of the protocol layer, raised by the session and by command handlers.

    ProtocolError            base; `detail` is for the server log only, never sent to a client
    ├── ReplyError           answer the command with an error reply (code from `ErrorCode`)
    └── DisconnectError      close the connection with a code from `Disconnect`

The client sees only the code and the fixed text of the code table.
"""

from __future__ import annotations

from .codes import Disconnect, ErrorCode

__all__ = ["DisconnectError", "ProtocolError", "ReplyError"]


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
