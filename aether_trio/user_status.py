"""User status (the server API's `update_user_status`, `get_user_status`, `delete_user_status`,
in Centrifugo PRO's shapes): when a user was last active in the application (`active`, set by
the application), when it was last connected (`online`, kept by the node), and a free-form
`state` the application sets.

Kept in memory on this node, bounded: at most `max_users` users (the least recently touched go
first) and forgotten `ttl` seconds after they were last touched. `online` is the node's own
knowledge (a user with a connection here is online now; otherwise the last time one of its
connections here was seen): a cluster-wide status needs a shared store, which this is not.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any, Final

import attrs

__all__ = ["MAX_USERS", "TTL", "UserStatuses"]

MAX_USERS: Final = 100_000
TTL: Final = 7 * 24 * 3600.0  # as Centrifugo PRO's default status expiry: a week


@attrs.define
class _Status:
    active: int = 0
    online: int = 0
    state: str = ""
    touched: float = 0.0


class UserStatuses:
    def __init__(self, max_users: int = MAX_USERS, ttl: float = TTL) -> None:
        self._statuses: OrderedDict[str, _Status] = OrderedDict()
        self._max = max_users
        self._ttl = ttl

    def _touch(self, user: str, now: float) -> _Status:
        status = self._statuses.pop(user, None) or _Status()
        status.touched = now
        self._statuses[user] = status  # the most recently touched last
        while len(self._statuses) > self._max:
            self._statuses.popitem(last=False)
        return status

    def update(self, users: Iterable[str], state: str, now: float | None = None) -> None:
        """The application says `users` are active now (and in `state`)."""
        now = time.time() if now is None else now
        for user in users:
            status = self._touch(user, now)
            status.active = int(now)
            status.state = state

    def seen(self, user: str, now: float | None = None) -> None:
        """A connection of `user` connected or left (anonymous connections have no status)."""
        if user:
            now = time.time() if now is None else now
            self._touch(user, now).online = int(now)

    def get(
        self, users: Iterable[str], connected: Callable[[str], bool], now: float | None = None
    ) -> list[dict[str, Any]]:
        """One status per user asked, zero fields left out (as Centrifugo's JSON does)."""
        now = time.time() if now is None else now
        statuses = []
        for user in users:
            status = self._statuses.get(user)
            if status is not None and now - status.touched > self._ttl:
                del self._statuses[user]
                status = None
            entry: dict[str, Any] = {"user": user}
            online = int(now) if connected(user) else (status.online if status else 0)
            if status is not None and status.active:
                entry["active"] = status.active
            if online:
                entry["online"] = online
            if status is not None and status.state:
                entry["state"] = status.state
            statuses.append(entry)
        return statuses

    def delete(self, users: Iterable[str]) -> None:
        for user in users:
            self._statuses.pop(user, None)

    def statistics(self) -> dict[str, int]:
        return {"users": len(self._statuses)}
