"""Errors of the server HTTP API and their code table (reference 10.2).

    ApiError        the command fails with `{"error": {"code": C, "message": M}}` (HTTP 200 in
                    result mode, the code's HTTP status in transport mode, per item in a batch)
    BadRequestBody  the body does not have the shape the method takes: HTTP 400 naming the field,
                    and nothing of the request was applied

Authentication failures (401/403) are `apiauth.ApiAuthError`. As in the client protocol, a caller
only ever sees the code and the fixed text of the table; `detail` goes to the server log.
"""

from __future__ import annotations

import enum

from ...protocol.errors import ReplyError

__all__ = ["ApiError", "ApiErrorCode", "BadRequestBody"]


class ApiErrorCode(enum.IntEnum):
    INTERNAL = 100
    UNKNOWN_CHANNEL = 102
    # Not an upstream API code: a batch item the key's roles do not cover.
    PERMISSION_DENIED = 103
    NOT_FOUND = 104
    BAD_REQUEST = 107
    NOT_AVAILABLE = 108
    # A channel over its publication rate ([limits] channel_publication_rate).
    TOO_MANY_REQUESTS = 111
    UNRECOVERABLE_POSITION = 112

    @property
    def message(self) -> str:
        return _MESSAGES[self]

    @property
    def http_status(self) -> int:
        """The status of this error in transport error mode."""
        return _HTTP_STATUS.get(self, 500)


_MESSAGES = {
    ApiErrorCode.INTERNAL: "internal server error",
    ApiErrorCode.UNKNOWN_CHANNEL: "unknown channel",
    ApiErrorCode.PERMISSION_DENIED: "permission denied",
    ApiErrorCode.NOT_FOUND: "not found",
    ApiErrorCode.BAD_REQUEST: "bad request",
    ApiErrorCode.NOT_AVAILABLE: "not available",
    ApiErrorCode.TOO_MANY_REQUESTS: "too many requests",
    ApiErrorCode.UNRECOVERABLE_POSITION: "unrecoverable position",
}

_HTTP_STATUS = {
    ApiErrorCode.UNKNOWN_CHANNEL: 404,
    ApiErrorCode.PERMISSION_DENIED: 403,
    ApiErrorCode.NOT_FOUND: 404,
    ApiErrorCode.BAD_REQUEST: 400,
    ApiErrorCode.NOT_AVAILABLE: 400,
    ApiErrorCode.TOO_MANY_REQUESTS: 429,
    ApiErrorCode.UNRECOVERABLE_POSITION: 416,
}


class ApiError(Exception):
    def __init__(self, code: ApiErrorCode, detail: str = "") -> None:
        super().__init__(detail or code.message)
        self.code = code
        self.detail = detail or code.message

    @classmethod
    def from_reply_error(cls, exc: ReplyError) -> ApiError:
        """The API twin of a protocol refusal (channel rules raise 102 and 107)."""
        try:
            code = ApiErrorCode(int(exc.code))
        except ValueError:
            code = ApiErrorCode.INTERNAL
        return cls(code, exc.detail)


class BadRequestBody(Exception):
    def __init__(self, field: str, detail: str) -> None:
        super().__init__(f"{field or '<body>'}: {detail}")
        self.field = field
        self.detail = detail
