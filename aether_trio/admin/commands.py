"""The operator commands: `async def name(ctx, params) -> result` (a JSON-able dict).

Each command receives its parameters decoded and checked (`params`: one attrs class per command,
a refusal is `BadParams` -> 400), then applies the change as a whole. `CommandError` carries any
other refusal with its HTTP status. Close codes (see README, "Operator commands and audit"):
ban 3507 "permission denied" (terminal), revoked or invalidated token 3500 "invalid token"
(terminal), drain 3011 "force reconnect"; maintenance refuses new connects with 3001 "shutdown".
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

import attrs
import trio

from ..config import ConfigError, load_config
from ..observe.logs import set_log_level
from ..protocol.codec import raw_json
from ..protocol.codes import Disconnect
from ..protocol.errors import ReplyError
from . import debug
from .drain import Drain, DrainRunning
from .params import (
    BanParams,
    BroadcastParams,
    ConnectionParams,
    ConnectionsParams,
    DrainParams,
    InvalidateParams,
    LogLevelParams,
    MaintenanceParams,
    NoParams,
    RevokeTokenParams,
    TasksParams,
    UserParams,
)

if TYPE_CHECKING:
    from ..connection.client import Client
    from ..node import Node
    from .audit import AuditLog
    from .state import AccessState

__all__ = ["COMMANDS", "AdminContext", "Command", "CommandError", "ConfigReload"]


class CommandError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class ConfigReload(Protocol):
    """How the running server re-reads its configuration file (the composition root's `Server`)."""

    @property
    def config_path(self) -> str | None:
        """The file it was started with; None: the embedded defaults."""

    def reload(self) -> bool:
        """Re-read and apply the file; False: rejected, the running configuration stays."""


@attrs.define
class AdminContext:
    node: Node[Client]
    config: ConfigReload
    state: AccessState
    audit: AuditLog
    drain: Drain
    nursery: trio.Nursery
    started_at: float


Result = dict[str, Any]
P = TypeVar("P")


@attrs.frozen
class Command(Generic[P]):
    run: Callable[[AdminContext, P], Awaitable[Result]]
    changes_state: bool
    params: type[P]  # what `run` takes, decoded from the request by `params.decode`


def _close(clients: list[Client], disconnect: Disconnect, detail: str) -> int:
    for client in clients:
        client.close(disconnect, detail=detail)  # a request: nothing is unregistered yet
    return len(clients)


# --- system channel, maintenance, drain ---


async def broadcast(ctx: AdminContext, p: BroadcastParams) -> Result:
    data = p.data
    channel = ctx.node.config.admin.system_channel
    if not channel:
        raise CommandError(409, "no system channel: [admin] system_channel is empty")
    recipients = ctx.node.num_subscribers(channel)
    try:
        await ctx.node.publish(ctx.node.resolve(channel), raw_json(data))
    except ReplyError as exc:  # [limits]: channel_publication_rate
        raise CommandError(429, f"system channel: {exc.detail}") from None
    return {"channel": channel, "recipients": recipients}


async def maintenance(ctx: AdminContext, p: MaintenanceParams) -> Result:
    enabled = p.enabled
    ctx.node.maintenance = enabled
    return {"maintenance": enabled, "clients": len(ctx.node.clients)}


async def drain(ctx: AdminContext, p: DrainParams) -> Result:
    rate = ctx.node.config.admin.drain_rate if p.rate is None else p.rate
    with_maintenance = p.maintenance
    try:
        return ctx.drain.start(ctx.nursery, rate, maintenance=with_maintenance)
    except DrainRunning as exc:
        raise CommandError(409, str(exc)) from None


async def drain_cancel(ctx: AdminContext, p: NoParams) -> Result:
    cancelled = await ctx.drain.cancel()
    return {"cancelled": cancelled, **ctx.drain.status()}


async def drain_status(ctx: AdminContext, p: NoParams) -> Result:
    return ctx.drain.status()


# --- bans and tokens ---


def _ban_view(user: str, expire_at: float | None, reason: str) -> Result:
    return {"user": user, "expire_at": expire_at, "reason": reason}


async def ban(ctx: AdminContext, p: BanParams) -> Result:
    user, duration, reason = p.user, p.duration, p.reason or ""
    expire_at = time.time() + duration if duration is not None else None
    await ctx.state.ban(user, expire_at, reason)
    closed = _close(ctx.node.user_clients(user), Disconnect.PERMISSION_DENIED, "banned")
    return {**_ban_view(user, expire_at, reason), "disconnected": closed}


async def unban(ctx: AdminContext, p: UserParams) -> Result:
    user = p.user
    return {"user": user, "removed": await ctx.state.unban(user)}


async def bans(ctx: AdminContext, p: NoParams) -> Result:
    return {"bans": [_ban_view(b.user, b.expire_at, b.reason) for b in ctx.state.bans()]}


async def revoke_token(ctx: AdminContext, p: RevokeTokenParams) -> Result:
    jti, expire_at = p.jti, p.expire_at
    await ctx.state.revoke(jti, expire_at)
    holders = [c for c in ctx.node.clients.values() if c.token_id == jti]
    return {"jti": jti, "expire_at": expire_at,
            "disconnected": _close(holders, Disconnect.INVALID_TOKEN, "token revoked")}  # fmt: skip


async def invalidate_user_tokens(ctx: AdminContext, p: InvalidateParams) -> Result:
    user, before = p.user, p.before  # default `before`: every token issued up to now
    await ctx.state.set_cutoff(user, before)
    old = [c for c in ctx.node.user_clients(user) if c.issued_at is None or c.issued_at < before]
    return {"user": user, "before": before,
            "disconnected": _close(old, Disconnect.INVALID_TOKEN, "token invalidated")}  # fmt: skip


# --- configuration and logging ---


async def reload(ctx: AdminContext, p: NoParams) -> Result:
    path = ctx.config.config_path
    if path is None:
        raise CommandError(409, "the server runs on the embedded defaults: no file to reload")
    try:
        await trio.to_thread.run_sync(load_config, path)  # for the error message
    except ConfigError as exc:
        raise CommandError(422, f"configuration rejected, the running one stays: {exc}") from None
    if not ctx.config.reload():
        raise CommandError(422, "configuration rejected, the running one stays (see the log)")
    return {"reloaded": True, "path": str(path)}


async def log_level(ctx: AdminContext, p: LogLevelParams) -> Result:
    level = p.level.lower()  # one of LEVELS, in any case
    set_log_level(level)  # the root logger, as [log] level sets it at start
    return {"level": level}


# --- debugging views ---


async def node(ctx: AdminContext, p: NoParams) -> Result:
    return {
        **debug.node_view(ctx.node, ctx.started_at),
        "access": ctx.state.counts(),
        "audit": attrs.asdict(ctx.audit.statistics()),
        "drain": ctx.drain.status(),
    }


async def tasks(ctx: AdminContext, p: TasksParams) -> Result:
    max_tasks = p.max_tasks
    return debug.task_tree(max_tasks)


async def connection(ctx: AdminContext, p: ConnectionParams) -> Result:
    client_id = p.client
    client = ctx.node.clients.get(client_id)
    if client is None:
        raise CommandError(404, f"no connection {client_id!r} on this node")
    return debug.connection_view(client, time.time())


async def connections(ctx: AdminContext, p: ConnectionsParams) -> Result:
    user, channel, limit = p.user, p.channel, p.limit
    found = debug.find_connections(ctx.node, user, channel)
    now = time.time()
    return {"total": len(found),
            "connections": [debug.connection_summary(c, now) for c in found[:limit]]}  # fmt: skip


COMMANDS: dict[str, Command[Any]] = {
    "broadcast": Command(broadcast, True, BroadcastParams),
    "maintenance": Command(maintenance, True, MaintenanceParams),
    "drain": Command(drain, True, DrainParams),
    "drain_cancel": Command(drain_cancel, True, NoParams),
    "drain_status": Command(drain_status, False, NoParams),
    "ban": Command(ban, True, BanParams),
    "unban": Command(unban, True, UserParams),
    "bans": Command(bans, False, NoParams),
    "revoke_token": Command(revoke_token, True, RevokeTokenParams),
    "invalidate_user_tokens": Command(invalidate_user_tokens, True, InvalidateParams),
    "reload": Command(reload, True, NoParams),
    "log_level": Command(log_level, True, LogLevelParams),
    "node": Command(node, False, NoParams),
    "tasks": Command(tasks, False, TasksParams),
    "connection": Command(connection, False, ConnectionParams),
    "connections": Command(connections, False, ConnectionsParams),
}
