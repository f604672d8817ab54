"""The operator commands: `async def name(ctx, params) -> result` (a JSON-able dict).

Each command reads and checks all of its parameters and calls `params.done()` before it changes
anything (`BadParams` -> 400), then applies the change as a whole. `CommandError` carries any
other refusal with its HTTP status. Close codes (see README, "Operator commands and audit"):
ban 3507 "permission denied" (terminal), revoked or invalidated token 3500 "invalid token"
(terminal), drain 3011 "force reconnect"; maintenance refuses new connects with 3001 "shutdown".
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

import attrs
import trio

from ..config import ConfigError, load_config
from ..observe.logs import LEVELS, set_log_level
from ..protocol.codec import raw_json
from ..protocol.codes import Disconnect
from ..protocol.errors import ReplyError
from . import debug
from .drain import Drain, DrainRunning
from .params import BadParams, Params

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
Handler = Callable[[AdminContext, Params], Awaitable[Result]]


@attrs.frozen
class Command:
    run: Handler
    changes_state: bool


def _close(clients: list[Client], disconnect: Disconnect, detail: str) -> int:
    for client in clients:
        client.close(disconnect, detail=detail)  # a request: nothing is unregistered yet
    return len(clients)


# --- system channel, maintenance, drain ---


async def broadcast(ctx: AdminContext, p: Params) -> Result:
    data = p.json("data")
    p.done()
    channel = ctx.node.config.admin.system_channel
    if not channel:
        raise CommandError(409, "no system channel: [admin] system_channel is empty")
    recipients = ctx.node.num_subscribers(channel)
    try:
        await ctx.node.publish(ctx.node.resolve(channel), raw_json(data))
    except ReplyError as exc:  # [limits]: channel_publication_rate
        raise CommandError(429, f"system channel: {exc.detail}") from None
    return {"channel": channel, "recipients": recipients}


async def maintenance(ctx: AdminContext, p: Params) -> Result:
    enabled = p.flag("enabled")
    p.done()
    ctx.node.maintenance = enabled
    return {"maintenance": enabled, "clients": len(ctx.node.clients)}


async def drain(ctx: AdminContext, p: Params) -> Result:
    rate = p.number("rate", ctx.node.config.admin.drain_rate, positive=True)
    with_maintenance = p.flag("maintenance", True)
    p.done()
    try:
        return ctx.drain.start(ctx.nursery, rate, maintenance=with_maintenance)
    except DrainRunning as exc:
        raise CommandError(409, str(exc)) from None


async def drain_cancel(ctx: AdminContext, p: Params) -> Result:
    p.done()
    cancelled = await ctx.drain.cancel()
    return {"cancelled": cancelled, **ctx.drain.status()}


async def drain_status(ctx: AdminContext, p: Params) -> Result:
    p.done()
    return ctx.drain.status()


# --- bans and tokens ---


def _ban_view(user: str, expire_at: float | None, reason: str) -> Result:
    return {"user": user, "expire_at": expire_at, "reason": reason}


async def ban(ctx: AdminContext, p: Params) -> Result:
    user = p.text("user")
    duration = p.number("duration", None, positive=True)
    reason = p.text("reason", "")
    p.done()
    expire_at = time.time() + duration if duration is not None else None
    await ctx.state.ban(user, expire_at, reason)
    closed = _close(ctx.node.user_clients(user), Disconnect.PERMISSION_DENIED, "banned")
    return {**_ban_view(user, expire_at, reason), "disconnected": closed}


async def unban(ctx: AdminContext, p: Params) -> Result:
    user = p.text("user")
    p.done()
    return {"user": user, "removed": await ctx.state.unban(user)}


async def bans(ctx: AdminContext, p: Params) -> Result:
    p.done()
    return {"bans": [_ban_view(b.user, b.expire_at, b.reason) for b in ctx.state.bans()]}


async def revoke_token(ctx: AdminContext, p: Params) -> Result:
    jti = p.text("jti")
    expire_at = p.number("expire_at", None, positive=True)
    p.done()
    await ctx.state.revoke(jti, expire_at)
    holders = [c for c in ctx.node.clients.values() if c.token_id == jti]
    return {"jti": jti, "expire_at": expire_at,
            "disconnected": _close(holders, Disconnect.INVALID_TOKEN, "token revoked")}  # fmt: skip


async def invalidate_user_tokens(ctx: AdminContext, p: Params) -> Result:
    user = p.text("user")
    # Default: every token issued up to now, the current second included (`iat` is whole
    # seconds, so a token of this very second cannot be told apart from an older one).
    before = p.integer("before", int(time.time()) + 1, minimum=1)
    p.done()
    await ctx.state.set_cutoff(user, before)
    old = [c for c in ctx.node.user_clients(user) if c.issued_at is None or c.issued_at < before]
    return {"user": user, "before": before,
            "disconnected": _close(old, Disconnect.INVALID_TOKEN, "token invalidated")}  # fmt: skip


# --- configuration and logging ---


async def reload(ctx: AdminContext, p: Params) -> Result:
    p.done()
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


async def log_level(ctx: AdminContext, p: Params) -> Result:
    level = p.text("level").lower()
    p.done()
    if level not in LEVELS:
        raise BadParams("level", f"expected one of {', '.join(LEVELS)}")
    set_log_level(level)  # the root logger, as [log] level sets it at start
    return {"level": level}


# --- debugging views ---


async def node(ctx: AdminContext, p: Params) -> Result:
    p.done()
    return {
        **debug.node_view(ctx.node, ctx.started_at),
        "access": ctx.state.counts(),
        "audit": attrs.asdict(ctx.audit.statistics()),
        "drain": ctx.drain.status(),
    }


async def tasks(ctx: AdminContext, p: Params) -> Result:
    max_tasks = p.integer("max_tasks", 1000, minimum=1)
    p.done()
    return debug.task_tree(max_tasks)


async def connection(ctx: AdminContext, p: Params) -> Result:
    client_id = p.text("client")
    p.done()
    client = ctx.node.clients.get(client_id)
    if client is None:
        raise CommandError(404, f"no connection {client_id!r} on this node")
    return debug.connection_view(client, time.time())


async def connections(ctx: AdminContext, p: Params) -> Result:
    user = p.text("user", None)
    channel = p.text("channel", None)
    limit = p.integer("limit", 100, minimum=1)
    p.done()
    found = debug.find_connections(ctx.node, user, channel)
    now = time.time()
    return {"total": len(found),
            "connections": [debug.connection_summary(c, now) for c in found[:limit]]}  # fmt: skip


COMMANDS: dict[str, Command] = {
    "broadcast": Command(broadcast, True),
    "maintenance": Command(maintenance, True),
    "drain": Command(drain, True),
    "drain_cancel": Command(drain_cancel, True),
    "drain_status": Command(drain_status, False),
    "ban": Command(ban, True),
    "unban": Command(unban, True),
    "bans": Command(bans, False),
    "revoke_token": Command(revoke_token, True),
    "invalidate_user_tokens": Command(invalidate_user_tokens, True),
    "reload": Command(reload, True),
    "log_level": Command(log_level, True),
    "node": Command(node, False),
    "tasks": Command(tasks, False),
    "connection": Command(connection, False),
    "connections": Command(connections, False),
}
