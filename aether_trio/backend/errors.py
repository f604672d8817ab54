"""Errors of the backend unit.

    CallFailed       the backend gave no usable answer (timed out, unreachable, a status other
                     than 200, a body that is not a proxy response, a hook that raised); `reason`
                     is one of FAILURES, a metric label. The client gets 100 (temporary: the SDKs
                     try again), the log and the error ring get the detail.

What the backend *answered* with (an error, a disconnect) is the protocol layer's `AppError`
and `AppDisconnect`, passed on to the client as the backend chose.
"""

from __future__ import annotations

from typing import Final

__all__ = ["FAILURES", "CallFailed"]

FAILURES: Final = ("timeout", "unreachable", "status", "bad_response", "hook_error")


class CallFailed(Exception):
    def __init__(self, reason: str, detail: str, *, status: int = 0) -> None:
        assert reason in FAILURES, reason
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.status = status  # the HTTP status of a "status" failure
