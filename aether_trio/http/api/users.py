"""Server API methods acting on a user's connections: subscribe, unsubscribe, disconnect,
refresh (reference 10.3; pushes of section 4, codes of section 7).

Server-side `subscribe` goes the way every subscription goes (connection/subscribe.py: a
buffering subscription and its result, then the `subscribe` push, `go_live`, presence and join),
so ordering and recovery hold exactly as for clients.

Concurrency hazard: a call runs in the HTTP request's task, not in the connection's, so the
connection may close while the call awaits. The subscribe sequence checks that the subscription
is still the connection's before it announces it, and undoes a join that raced the connection's
cleanup.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import orjson

from ...connection.subscribe import Grant, Opened, Request, apply_override, ttl_seconds
from ...connection.subscribe import subscribe as subscribe_sequence
from ...protocol import messages as m
from ...protocol.codec import raw_json
from ...protocol.codes import Disconnect, Unsubscribe
from . import requests as rq
from .errors import ApiError
from .errors import ApiErrorCode as Code
from .methods import ApiContext, Result, json_value, resolve_channel

if TYPE_CHECKING:
    from ...connection.client import Client

__all__ = ["disconnect", "refresh", "subscribe", "unsubscribe"]

# A close reason must fit a WebSocket control frame (reference 7.1).
MAX_REASON_BYTES = 123


def _targets(ctx: ApiContext, user: str, client_id: str, session: str) -> list[Client]:
    # Connections have no session ids here: a session filter matches none, as upstream's would.
    if session:
        return []
    return [c for c in ctx.node.user_clients(user) if not client_id or c.client_id == client_id]


async def subscribe(ctx: ApiContext, req: rq.Subscribe) -> Result:
    ch = resolve_channel(ctx, req.channel)
    chan_info = json_value(req.info, req.b64info, "b64info")
    data = json_value(req.data, req.b64data, "b64data")
    if 0 < req.expire_at <= time.time():
        raise ApiError(Code.BAD_REQUEST, "expire_at is in the past")
    expire_at = req.expire_at if req.expire_at > 0 else None
    options = apply_override(ch.options, req.override)
    since = req.recover_since
    hint = m.SubscribeRequest(
        channel=ch.name, recover=since is not None,
        offset=since.offset if since else 0, epoch=since.epoch if since else "",
    )  # fmt: skip
    grant = Grant(options, server_side=True, chan_info=chan_info, data=data, expire_at=expire_at)
    for client in _targets(ctx, req.user, req.client, req.session):
        if client.closing or ch.name in client.subscriptions:
            continue  # going away, or already subscribed (this call is idempotent)
        limit = ctx.node.config.client.channel_limit
        if limit and client.counted_subscriptions() >= limit:
            client.close(Disconnect.CHANNEL_LIMIT, detail="server API subscribe over the limit")
            continue
        await subscribe_sequence(client, [Request(ch, hint, grant)], _push_to(client))
    return {}


def _push_to(client: Client) -> Callable[[list[Opened]], None]:
    def push(opened: list[Opened]) -> None:
        for o in opened:
            result = o.result
            body = m.SubscribePush(
                result.recoverable, result.epoch, result.offset, result.positioned, result.data
            )
            client.push(o.sub.channel, "subscribe", body)
            # The push carries no publications: recovered ones follow it as ordinary `pub`
            # pushes.
            for pub in result.publications:
                client.push(o.sub.channel, "pub", pub)

    return push


async def unsubscribe(ctx: ApiContext, req: rq.Unsubscribe) -> Result:
    ch = resolve_channel(ctx, req.channel)
    code = Unsubscribe.SERVER
    body = m.UnsubscribePush(code, code.reason)
    for client in _targets(ctx, req.user, req.client, req.session):
        if ch.name in client.subscriptions:
            # No checkpoint between the push and the detach inside `unsubscribe`: nothing of
            # the channel can reach the client after its unsubscribe push.
            client.push(ch.name, "unsubscribe", body)
            await client.unsubscribe(ch.name)
    return {}


def _close_reason(code: int, reason: str) -> tuple[int, str]:
    if code == 0:
        return Disconnect.FORCE_NO_RECONNECT, Disconnect.FORCE_NO_RECONNECT.reason
    if not 3000 <= code <= 4999:
        raise ApiError(Code.BAD_REQUEST, "disconnect code must be 3000..4999")
    if len(reason.encode()) > MAX_REASON_BYTES:
        raise ApiError(Code.BAD_REQUEST, f"disconnect reason over {MAX_REASON_BYTES} bytes")
    try:
        orjson.loads(reason)
    except orjson.JSONDecodeError:
        pass
    else:  # centrifuge-js would read it as a legacy JSON reason (reference 7.2)
        raise ApiError(Code.BAD_REQUEST, "disconnect reason must not be valid JSON")
    if not reason and code in _KNOWN_CODES:
        reason = Disconnect(code).reason  # an empty reason makes centrifuge-js reconnect
    return code, reason


_KNOWN_CODES = frozenset(int(d) for d in Disconnect)


async def disconnect(ctx: ApiContext, req: rq.Disconnect) -> Result:
    code, reason = _close_reason(req.code, req.reason)
    for client in _targets(ctx, req.user, req.client, req.session):
        if client.client_id not in req.whitelist:
            client.close_with(code, reason, detail="server API disconnect")
    return {}


async def refresh(ctx: ApiContext, req: rq.Refresh) -> Result:
    info = None if req.info is None else raw_json(req.info)
    expired = req.expired or 0 < req.expire_at <= time.time()
    expire_at = req.expire_at if req.expire_at > 0 else None
    for client in _targets(ctx, req.user, req.client, req.session):
        if expired:
            client.close(Disconnect.EXPIRED, detail="server API refresh")
            continue
        client.refreshed(expire_at, info)
        # The `refresh` push body is {expires, ttl}: the shape of a sub_refresh result.
        body = (
            m.SubRefreshResult(True, ttl_seconds(expire_at)) if expire_at else m.SubRefreshResult()
        )
        client.push("", "refresh", body)
    return {}
