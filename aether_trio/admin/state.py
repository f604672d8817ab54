"""`AccessState`: bans, revoked token ids and per-user token cut-offs, durable and O(1) to check.

Everything is loaded from the store when the server starts (expired entries pruned first) and
kept in dicts; `check` runs on every connect and refresh without touching the disk. Changes are
written through: the database first, then memory, so a change the operator saw acknowledged
survives a restart, and a failed write changes nothing. Expiry is by wall clock (the times are
stored); an expired entry is dropped from memory when it is next looked at and from the database
at the next start.

Refusals (`DisconnectError`, sent by the connect/refresh handler):
    banned user                        3507 permission denied (terminal: the SDK does not retry)
    revoked `jti`                      3500 invalid token
    `iat` before the user's cut-off    3500 invalid token (a token without `iat` counts as old)
"""

from __future__ import annotations

import time

import attrs

from ..hooks import NO_AUDIT, Auditor
from ..protocol.codes import Disconnect
from ..protocol.errors import DisconnectError
from .store import Store

__all__ = ["AccessState", "Ban"]


@attrs.frozen
class Ban:
    user: str
    expire_at: float | None
    reason: str

    def active(self, now: float) -> bool:
        return self.expire_at is None or self.expire_at > now


class AccessState:
    def __init__(self, store: Store, audit: Auditor = NO_AUDIT) -> None:
        self._store = store
        self._audit = audit
        self._bans: dict[str, Ban] = {}
        self._revoked: dict[str, float | None] = {}
        self._cutoffs: dict[str, int] = {}

    async def load(self) -> None:
        db = self._store.db
        await self._store.call(db.prune, time.time())
        bans = await self._store.call(db.bans)
        self._bans = {user: Ban(user, expire_at, reason) for user, expire_at, reason in bans}
        self._revoked = dict(await self._store.call(db.revoked))
        self._cutoffs = dict(await self._store.call(db.cutoffs))

    # --- the check (connect, refresh) ---

    def check(self, user: str, token_id: str, issued_at: int | None) -> None:
        if self.ban_of(user) is not None:
            self._refuse("banned", user, Disconnect.PERMISSION_DENIED)
        if token_id and self.is_revoked(token_id):
            self._refuse("revoked_token", user, Disconnect.INVALID_TOKEN, token_id)
        before = self._cutoffs.get(user) if user else None
        if before is not None and (issued_at is None or issued_at < before):
            self._refuse("token_before_cutoff", user, Disconnect.INVALID_TOKEN, token_id)

    def _refuse(self, kind: str, user: str, code: Disconnect, token_id: str = "") -> None:
        detail = f"{kind} (user {user!r}{f', jti {token_id!r}' if token_id else ''})"
        self._audit.auth_failure(kind, actor=f"user:{user}", detail=detail)
        raise DisconnectError(code, detail)

    def ban_of(self, user: str) -> Ban | None:
        ban = self._bans.get(user)
        if ban is not None and not ban.active(time.time()):
            del self._bans[user]
            return None
        return ban

    def is_revoked(self, token_id: str) -> bool:
        if token_id not in self._revoked:
            return False
        expire_at = self._revoked[token_id]
        if expire_at is not None and expire_at <= time.time():
            del self._revoked[token_id]
            return False
        return True

    def cutoff(self, user: str) -> int | None:
        return self._cutoffs.get(user)

    def bans(self) -> list[Ban]:
        now = time.time()
        return sorted((b for b in self._bans.values() if b.active(now)), key=lambda b: b.user)

    def counts(self) -> dict[str, int]:
        return {"bans": len(self.bans()), "revoked_tokens": len(self._revoked),
                "token_cutoffs": len(self._cutoffs)}  # fmt: skip

    # --- changes (written through) ---

    async def ban(self, user: str, expire_at: float | None, reason: str) -> Ban:
        await self._store.call(self._store.db.put_ban, user, expire_at, reason, time.time())
        ban = self._bans[user] = Ban(user, expire_at, reason)
        return ban

    async def unban(self, user: str) -> bool:
        await self._store.call(self._store.db.delete_ban, user)
        return self._bans.pop(user, None) is not None

    async def revoke(self, token_id: str, expire_at: float | None) -> None:
        await self._store.call(self._store.db.put_revoked, token_id, expire_at, time.time())
        self._revoked[token_id] = expire_at

    async def set_cutoff(self, user: str, before: int) -> None:
        await self._store.call(self._store.db.put_cutoff, user, before, time.time())
        self._cutoffs[user] = before
