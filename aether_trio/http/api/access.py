"""Server API methods Centrifugo offers in PRO, with its request and result shapes: `connections`
(a user's connections with their subscriptions and token), user status (`update_user_status`,
`get_user_status`, `delete_user_status`), and bans and revocations (`block_user`,
`unblock_user`, `revoke_token`, `invalidate_user_tokens`) mapped onto Aether's own (the admin
package's durable `AccessState`, which the operator commands `aether admin ban` ... change too).

What this node knows: `connections` lists this node's connections and user status is this
node's (docs: README, "Server HTTP API"). Bans and revocations are checked at every connect and
refresh of this node, and the user's connections here that they refuse are closed at once with
the codes the operator commands use: 3507 for a blocked user, 3500 for a revoked or invalidated
token.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import orjson

from ...protocol.codes import Disconnect
from . import requests as rq
from .errors import ApiError
from .errors import ApiErrorCode as Code
from .methods import ApiContext, Result

if TYPE_CHECKING:
    from ...connection.client import Client
    from ...hooks import AccessControl

__all__ = [
    "block_user",
    "connections",
    "delete_user_status",
    "get_user_status",
    "invalidate_user_tokens",
    "revoke_token",
    "unblock_user",
    "update_user_status",
]

# Users one user status call may name.
MAX_USERS_PER_CALL = 1000


# --- connections ---


async def connections(ctx: ApiContext, req: rq.Connections) -> Result:
    if req.expression:
        raise ApiError(Code.NOT_AVAILABLE, "connection expressions are not supported")
    node = ctx.node
    clients = node.user_clients(req.user) if req.user else list(node.clients.values())
    return {"connections": {c.client_id: _connection_info(c) for c in clients}}


def _connection_info(client: Client) -> dict[str, Any]:
    info: dict[str, Any] = {}
    if client.app_name:
        info["app_name"] = client.app_name
    if client.app_version:
        info["app_version"] = client.app_version
    info.update(transport="websocket", protocol="json")
    if client.user:
        info["user"] = client.user
    if client.conn_info:  # Aether's addition: the connection's info, as its token or proxy gave
        info["info"] = orjson.Fragment(client.conn_info)
    state: dict[str, Any] = {"channels": {channel: {} for channel in client.subscriptions}}
    if client.token_id or client.issued_at:
        token: dict[str, Any] = {}
        if client.token_id:
            token["uid"] = client.token_id
        if client.issued_at:
            token["issued_at"] = client.issued_at
        state["connection_token"] = token
    info["state"] = state
    info["connected_at_ms"] = int(client.connected_at * 1000)
    return info


# --- user status ---


def _users(users: tuple[str, ...]) -> tuple[str, ...]:
    if not users:
        raise ApiError(Code.BAD_REQUEST, "users: expected at least one user")
    if len(users) > MAX_USERS_PER_CALL:
        raise ApiError(Code.BAD_REQUEST, f"users: at most {MAX_USERS_PER_CALL} in one call")
    return users


async def update_user_status(ctx: ApiContext, req: rq.UpdateUserStatus) -> Result:
    ctx.node.user_status.update(_users(req.users), req.state)
    return {}


async def get_user_status(ctx: ApiContext, req: rq.Users) -> Result:
    node = ctx.node
    statuses = node.user_status.get(_users(req.users), lambda user: bool(node.users.get(user)))
    return {"statuses": statuses}


async def delete_user_status(ctx: ApiContext, req: rq.Users) -> Result:
    ctx.node.user_status.delete(_users(req.users))
    return {}


# --- bans and revocations ---


def _control(ctx: ApiContext) -> AccessControl:
    control = ctx.node.access_control
    if control is None:
        raise ApiError(Code.NOT_AVAILABLE, "bans and revocations are not loaded")
    return control


def _required(value: str, name: str) -> str:
    if not value:
        raise ApiError(Code.BAD_REQUEST, f"{name}: required")
    return value


def _until(expire_at: int) -> float | None:
    """An `expire_at` of a request: None for 0 (for good), refused when already past."""
    if expire_at < 0 or 0 < expire_at <= time.time():
        raise ApiError(Code.BAD_REQUEST, "expire_at: must be 0 or in the future")
    return float(expire_at) if expire_at else None


def _close(clients: list[Client], disconnect: Disconnect, detail: str) -> None:
    for client in clients:
        client.close(disconnect, detail=detail)


async def block_user(ctx: ApiContext, req: rq.BlockUser) -> Result:
    user = _required(req.user, "user")
    until = _until(req.expire_at)
    await _control(ctx).ban(user, until, "")
    _close(ctx.node.user_clients(user), Disconnect.PERMISSION_DENIED, "blocked (server API)")
    return {}


async def unblock_user(ctx: ApiContext, req: rq.UnblockUser) -> Result:
    await _control(ctx).unban(_required(req.user, "user"))
    return {}


async def revoke_token(ctx: ApiContext, req: rq.RevokeToken) -> Result:
    uid = _required(req.uid, "uid")
    until = _until(req.expire_at)
    await _control(ctx).revoke(uid, until)
    holders = [c for c in ctx.node.clients.values() if c.token_id == uid]
    _close(holders, Disconnect.INVALID_TOKEN, "token revoked (server API)")
    return {}


async def invalidate_user_tokens(ctx: ApiContext, req: rq.InvalidateUserTokens) -> Result:
    user = _required(req.user, "user")
    if req.channel:
        # Aether's cut-off applies to connection tokens; subscription tokens carry none.
        raise ApiError(Code.NOT_AVAILABLE, "invalidating subscription tokens is not supported")
    _until(req.expire_at)  # checked; a cut-off is kept until replaced
    before = req.issued_before or int(time.time())
    if before < 0:
        raise ApiError(Code.BAD_REQUEST, "issued_before: must be >= 0")
    await _control(ctx).set_cutoff(user, before)
    old = [c for c in ctx.node.user_clients(user) if c.issued_at is None or c.issued_at < before]
    _close(old, Disconnect.INVALID_TOKEN, "token invalidated (server API)")
    return {}
