"""API keys and roles for the internal HTTP listener: the server API and operator commands.

A request names its key in `X-API-Key: <key>` or, failing that, `Authorization: apikey <key>` (the
scheme is case-insensitive). Keys come from `[[api.keys]]` and are looked up on every request, so
a SIGHUP reload applies at once. The presented key is compared with every configured key, in
constant time and without an early exit (`hmac.compare_digest` over SHA-256 digests, which also
hides the keys' lengths), so response times tell nothing about which key nearly matched.

Roles: `publisher` (publish, broadcast), `reader` (presence, presence_stats, history, channels,
info) and `admin` (everything, operator commands included). No key or a wrong one is 401, a key
without the role 403, both with an empty body. A route that needs a role:

    async def ban(request: Request) -> Response:
        try:
            key = auth.require_role(request, "admin")
        except ApiAuthError as exc:
            return exc.response
        ...

or, for the whole route: `http_app.route("/api/admin/ban", auth.protect("admin", ban))`.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Callable, Sequence
from typing import Literal

from ..config import ApiKey
from .asgi import Request, Response, Route

__all__ = ["ApiAuth", "ApiAuthError", "Role", "has_role", "presented_key"]

log = logging.getLogger(__name__)

Role = Literal["publisher", "reader", "admin"]

_SCHEME = "apikey"


class ApiAuthError(Exception):
    """The request may not proceed: `status` is 401 (who are you?) or 403 (not with this key)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status

    @property
    def response(self) -> Response:
        # Empty body, as upstream: nothing about keys or roles is revealed.
        return Response(self.status, b"", "text/plain")


def has_role(key: ApiKey, role: Role) -> bool:
    """Whether `key` may do what `role` may; `admin` may do everything."""
    return role in key.roles or "admin" in key.roles


def presented_key(headers: dict[str, str]) -> str | None:
    """The key a request presents (`headers` with lower-cased names), or None."""
    key = headers.get("x-api-key", "").strip()
    if key:
        return key
    scheme, _, value = headers.get("authorization", "").strip().partition(" ")
    if scheme.lower() == _SCHEME and value.strip():
        return value.strip()
    return None


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


class ApiAuth:
    def __init__(self, keys: Callable[[], Sequence[ApiKey]]) -> None:
        # A callable, not a list: the keys of the running configuration, reload included.
        self._keys = keys

    def authenticate(self, request: Request) -> ApiKey:
        """The configured key the request presents; ApiAuthError(401) otherwise."""
        presented = presented_key(request.headers)
        if presented is None:
            raise ApiAuthError(401, "no API key presented")
        candidate = _digest(presented)
        found: ApiKey | None = None
        for key in self._keys():
            # Every key is compared, whether or not one matched already.
            if hmac.compare_digest(candidate, _digest(key.key)) and found is None:
                found = key
        if found is None:
            log.info("HTTP %s %s from %s: unknown API key", request.method, request.path,
                     request.client)  # fmt: skip
            raise ApiAuthError(401, "unknown API key")
        return found

    def require_role(self, request: Request, role: Role) -> ApiKey:
        """The request's key if it has `role`: ApiAuthError(401) or (403) otherwise."""
        key = self.authenticate(request)
        if not has_role(key, role):
            log.info("HTTP %s %s: API key %r lacks role %r", request.method, request.path,
                     key.name, role)  # fmt: skip
            raise ApiAuthError(403, f"key {key.name!r} lacks role {role!r}")
        return key

    def protect(self, role: Role, route: Route) -> Route:
        """`route`, answered with 401/403 unless the request's key has `role`."""

        async def protected(request: Request) -> Response:
            try:
                self.require_role(request, role)
            except ApiAuthError as exc:
                return exc.response
            return await route(request)

        return protected
