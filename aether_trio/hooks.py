"""What the node needs from the admin package, as small protocols with do-nothing twins.

The node holds an `AccessPolicy` (asked at connect and refresh) and an `Auditor` (told about
state changes and refused credentials). The server installs the real ones (`AccessState`,
`AuditLog`); a node built alone, as in unit tests, keeps these null objects. This module imports
nothing from aether_trio but the protocol layer, so the core can import it without a cycle.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

__all__ = ["NO_AUDIT", "OPEN_ACCESS", "AccessControl", "AccessPolicy", "Auditor"]


class AccessPolicy(Protocol):
    def check(self, user: str, token_id: str, issued_at: int | None) -> None:
        """Raise `DisconnectError` to refuse credentials (banned user, revoked token)."""


class AccessControl(Protocol):
    """Changes to the bans and revocations (the server API's block_user, unblock_user,
    revoke_token, invalidate_user_tokens); durable once the call returns. The admin package's
    `AccessState` is the one implementation; a node alone has none (`Node.access_control`)."""

    async def ban(self, user: str, expire_at: float | None, reason: str) -> object: ...

    async def unban(self, user: str) -> bool: ...

    async def revoke(self, token_id: str, expire_at: float | None) -> None: ...

    async def set_cutoff(self, user: str, before: int) -> None: ...


class Auditor(Protocol):
    def record(
        self,
        action: str,
        *,
        actor: str,
        params: Mapping[str, Any] | None = None,
        result: Any = None,
        ok: bool = True,
    ) -> None:
        """Append an entry for a state change; never blocks, never raises (an entry that does
        not fit the bounded queue is dropped and counted: for rare events only)."""

    async def append(
        self,
        action: str,
        *,
        actor: str,
        params: Mapping[str, Any] | None = None,
        result: Any = None,
        ok: bool = True,
    ) -> None:
        """Append an entry, waiting for room in the queue instead of dropping it (requests)."""

    async def flush(self) -> bool:
        """Wait until every entry appended so far is stored; False if storage took too long."""

    def auth_failure(self, kind: str, *, actor: str, detail: str) -> None:
        """A refused credential; sampled (at most N entries a minute)."""


class _OpenAccess:
    def check(self, user: str, token_id: str, issued_at: int | None) -> None:
        return None


class _NoAudit:
    def record(
        self,
        action: str,
        *,
        actor: str,
        params: Mapping[str, Any] | None = None,
        result: Any = None,
        ok: bool = True,
    ) -> None:
        return None

    async def append(
        self,
        action: str,
        *,
        actor: str,
        params: Mapping[str, Any] | None = None,
        result: Any = None,
        ok: bool = True,
    ) -> None:
        return None

    async def flush(self) -> bool:
        return True

    def auth_failure(self, kind: str, *, actor: str, detail: str) -> None:
        return None


OPEN_ACCESS: AccessPolicy = _OpenAccess()
NO_AUDIT: Auditor = _NoAudit()
