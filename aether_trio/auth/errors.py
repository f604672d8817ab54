"""Why a token was refused.

    TokenError          base; the message is short and safe for the server log (never the token)
    ├── TokenExpired    `exp` passed or `nbf` not reached, after leeway: protocol error 109
    └── TokenInvalid    everything else: signature, algorithm, malformed token, claim types, aud/iss

A module of their own so that `jws` (signatures) can raise them without importing `tokens`
(claims), which imports it.
"""

from __future__ import annotations

__all__ = ["TokenError", "TokenExpired", "TokenInvalid"]


class TokenError(Exception):
    """A token was refused; the message is for the server log."""


class TokenExpired(TokenError):
    """`exp` is in the past or `nbf` in the future (after leeway)."""


class TokenInvalid(TokenError):
    """The token cannot be trusted or does not have the expected shape."""
