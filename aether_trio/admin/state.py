"""`AccessState`: bans, revoked token ids and per-user token cut-offs, durable and O(1) to check.

Everything is loaded from the store when the server starts (expired entries pruned first) and
kept in dicts; `check` runs on every connect and refresh without touching the disk. Changes are
written through: the database first, then memory, so a change the operator saw acknowledged
survives a restart, and a failed write changes nothing. Expiry is by wall clock (the times are
stored); an expired entry is dropped from memory when it is next looked at and from the database
at the next start.

Across nodes (a shared engine, docs/redis.md): every change is also written to the engine's
shared tables (`bans`, `revoked`, `cutoffs`; before the database, so a failed write changes
nothing) and told to the other nodes as a control command, which apply it to their memory and
database at once (`apply`, admin/cluster.py closes their connections). `resync` replaces the
memory with the shared tables every `[cluster] state_resync_interval`, for a node that missed a
message; `upload` adds this node's entries the shared tables lack when the node starts.

Refusals (`DisconnectError`, sent by the connect/refresh handler):
    banned user                        3507 permission denied (terminal: the SDK does not retry)
    revoked `jti`                      3500 invalid token
    `iat` before the user's cut-off    3500 invalid token (a token without `iat` counts as old)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import orjson

from ..cluster import Cluster
from ..engines.base import EngineError
from ..engines.control import MemorySharedState, SharedState
from ..hooks import NO_AUDIT, Auditor
from ..protocol.codes import Disconnect
from ..protocol.errors import DisconnectError
from .store import Store

__all__ = ["TABLES", "AccessState", "Ban"]

log = logging.getLogger(__name__)

TABLES = ("bans", "revoked", "cutoffs")


@attrs.frozen
class Ban:
    user: str
    expire_at: float | None
    reason: str

    def active(self, now: float) -> bool:
        return self.expire_at is None or self.expire_at > now


class AccessState:
    def __init__(
        self,
        store: Store,
        audit: Auditor = NO_AUDIT,
        shared: SharedState | None = None,
        cluster: Cluster | None = None,
    ) -> None:
        self._store = store
        self._audit = audit
        self._shared = shared or MemorySharedState()
        self._cluster = cluster
        self._reported: set[tuple[str, str]] = set()  # bad shared entries already logged
        self._changes = 0  # changes applied here: a resync reading meanwhile is stale
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
        await self._change("bans", user, {"expire_at": expire_at, "reason": reason})
        return Ban(user, expire_at, reason)

    async def unban(self, user: str) -> bool:
        known = user in self._bans
        await self._change("bans", user, None)
        return known

    async def revoke(self, token_id: str, expire_at: float | None) -> None:
        await self._change("revoked", token_id, {"expire_at": expire_at})

    async def set_cutoff(self, user: str, before: int) -> None:
        await self._change("cutoffs", user, {"before": before})

    async def _change(self, table: str, key: str, value: dict[str, Any] | None) -> None:
        """Shared table, database, memory, then the other nodes (EngineError: nothing done)."""
        if value is None:
            await self._shared.delete(table, key)
        else:
            await self._shared.put(table, key, orjson.dumps(value))
        await self.apply(table, key, value)
        if self._cluster is not None:
            try:
                await self._cluster.broadcast("access", {"t": table, "k": key, "v": value})
            except EngineError:  # the other nodes catch up at their next resync
                log.warning("telling the other nodes about %s %s failed", table, key)

    # --- the cluster ---

    async def apply(
        self,
        table: str,
        key: str,
        value: dict[str, Any] | None,
        *,
        then: Callable[[], object] | None = None,
    ) -> None:
        """A change of `table` (TABLES) here. `ValueError` for a value that is not one (from
        another node: checked before anything is written). Without `then`: database, then
        memory (an acknowledged change survives a restart). With `then` (a change another node
        made and the shared tables already hold): memory, `then()` (close the connections it
        refuses), then the database: the refusal does not wait for the disk."""
        write, remember = self._change_of(table, key, value)
        self._changes += 1
        if then is None:
            await write()
            remember()
        else:
            remember()
            then()
            await write()

    def _change_of(
        self, table: str, key: str, value: dict[str, Any] | None
    ) -> tuple[Callable[[], Awaitable[None]], Callable[[], None]]:
        store, db, now = self._store, self._store.db, time.time()
        if table == "bans" and value is None:

            def forget_ban() -> None:
                self._bans.pop(key, None)

            return (lambda: store.call(db.delete_ban, key)), forget_ban
        if table == "bans" and value is not None:
            ban = Ban(key, _expire_at(value), _text(value, "reason"))

            def remember_ban() -> None:
                self._bans[key] = ban

            return (
                lambda: store.call(db.put_ban, key, ban.expire_at, ban.reason, now)
            ), remember_ban
        if table == "revoked" and value is not None:
            expire_at = _expire_at(value)

            def remember_revoked() -> None:
                self._revoked[key] = expire_at

            return (lambda: store.call(db.put_revoked, key, expire_at, now)), remember_revoked
        if table == "cutoffs" and value is not None:
            before = _before(value)

            def remember_cutoff() -> None:
                self._cutoffs[key] = before

            return (lambda: store.call(db.put_cutoff, key, before, now)), remember_cutoff
        raise ValueError(f"no change {table!r} with {value!r}")

    async def upload(self) -> int:
        """Add this node's entries that the shared tables lack (at start); how many."""
        local: dict[str, dict[str, dict[str, Any]]] = {
            "bans": {b.user: {"expire_at": b.expire_at, "reason": b.reason} for b in self.bans()},
            "revoked": {jti: {"expire_at": at} for jti, at in self._revoked.items()},
            "cutoffs": {user: {"before": before} for user, before in self._cutoffs.items()},
        }
        added = 0
        for table, entries in local.items():
            present = await self._shared.load(table)
            for key, value in entries.items():
                if key not in present:
                    await self._shared.put(table, key, orjson.dumps(value))
                    added += 1
        return added

    async def resync(self) -> list[tuple[str, str]]:
        """Make memory what the shared tables hold (expired entries dropped, and deleted
        there); the (table, key) entries that are new here, whose holders must go."""
        now, changes = time.time(), self._changes
        bans: dict[str, Ban] = {}
        revoked: dict[str, float | None] = {}
        cutoffs: dict[str, int] = {}
        for table in TABLES:
            for key, raw in (await self._shared.load(table)).items():
                try:
                    value = _decode(raw)
                    if table == "cutoffs":
                        cutoffs[key] = _before(value)
                        continue
                    expire_at = _expire_at(value)
                    if expire_at is not None and expire_at <= now:
                        await self._shared.delete(table, key)
                    elif table == "bans":
                        bans[key] = Ban(key, expire_at, _text(value, "reason"))
                    else:
                        revoked[key] = expire_at
                except ValueError as exc:
                    if (table, key) not in self._reported:  # once, not at every resync
                        self._reported.add((table, key))
                        log.warning("ignored a shared %s entry that is not Aether's: %s", table,
                                    exc)  # fmt: skip
        if self._changes != changes:
            # A change was applied while the tables were read: what was read may predate it
            # (it would be undone here until the next resync). The next resync reads it.
            return []
        new = [("bans", u) for u, b in bans.items() if self._bans.get(u) != b]
        new += [("revoked", jti) for jti in revoked if jti not in self._revoked]
        new += [("cutoffs", u) for u, b in cutoffs.items() if self._cutoffs.get(u) != b]
        self._bans, self._revoked, self._cutoffs = bans, revoked, cutoffs
        return new


def _decode(raw: bytes) -> dict[str, Any]:
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ValueError("not JSON") from None
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


def _before(value: dict[str, Any]) -> int:
    before = value.get("before")
    if not isinstance(before, int) or isinstance(before, bool):
        raise ValueError("before must be an integer")
    return before


def _expire_at(value: dict[str, Any]) -> float | None:
    expire_at = value.get("expire_at")
    if expire_at is None:
        return None
    if not isinstance(expire_at, (int, float)) or isinstance(expire_at, bool):
        raise ValueError("expire_at must be a number or null")
    return float(expire_at)


def _text(value: dict[str, Any], name: str) -> str:
    text = value.get(name, "")
    if not isinstance(text, str):
        raise ValueError(f"{name} must be a string")
    return text
