"""Command handlers: one coroutine per client command, run in frame order by `Client`.

Each handler validates its request, asks the node, and queues its reply through `client.reply`
(so subscribe can release buffered publications right after its reply). Refusals are raised as
`ReplyError` (error reply) or `DisconnectError` (close), with codes from the reference; the client
turns them into frames. Decisions that need no I/O live in `protocol.permissions`. Subscribe and
recovery (and the helpers every handler shares) live in `commands_subscribe`; this module holds
the other handlers and the `HANDLERS` table.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ..auth.tokens import ServerSubscription, TokenExpired, TokenInvalid
from ..engines.base import HistoryQuery, UnrecoverablePosition
from ..guards.sanitize import format_problem, publication_payload
from ..protocol import messages as m
from ..protocol import permissions
from ..protocol.channels import ResolvedChannel
from ..protocol.codes import Disconnect, ErrorCode
from ..protocol.errors import DisconnectError, ReplyError
from ..protocol.options import ChannelOptions
from ..system_channel import SystemSubscription
from .subscribe import (
    apply_override,
    require_channel,
    subscribe,
    subscribe_channel,
    ttl_seconds,
    verify_subscription_token,
)
from .subscription import ChannelSubscription

if TYPE_CHECKING:
    from .client import Client

# apply_override, subscribe_channel and ttl_seconds are re-exported: the server API imports them
# from here.
__all__ = ["HANDLERS", "apply_override", "subscribe_channel", "ttl_seconds"]

Handler = Callable[["Client", int, Any], Awaitable[None]]


# --- connect ---


async def connect(client: Client, cmd_id: int, req: m.ConnectRequest) -> None:
    node = client.node
    cfg = node.config.client
    if req.token:
        if not node.verifier.enabled:
            raise DisconnectError(Disconnect.INVALID_TOKEN, "no key configured for tokens")
        try:
            await node.verifier.prepare(req.token)
            creds = node.verifier.verify_connect(req.token)
        except TokenExpired:
            raise ReplyError(ErrorCode.TOKEN_EXPIRED, "connection token expired") from None
        except TokenInvalid as exc:
            remote = f"client:{client.transport.remote}"
            node.audit.auth_failure("connection_token", actor=remote, detail=str(exc))  # sampled
            raise DisconnectError(Disconnect.INVALID_TOKEN, f"connection token: {exc}") from None
        if not creds.user and cfg.disallow_anonymous_connection_tokens:
            raise DisconnectError(Disconnect.PERMISSION_DENIED, "anonymous token disallowed")
        # Maintenance, bans, revocations; no await from here to `authenticated`, so an operator's
        # ban either refuses this connection or finds it registered.
        node.admit(creds.user, creds.token_id, creds.issued_at)
        client.token_id, client.issued_at = creds.token_id, creds.issued_at
        user, info, expire_at, subs = creds.user, creds.info, creds.expire_at, dict(creds.subs)
    elif cfg.insecure or cfg.allow_anonymous_connect_without_token:
        node.admit("", "", None)
        user, info, expire_at, subs = "", m.NO_JSON, None, {}
    else:
        raise DisconnectError(Disconnect.BAD_REQUEST, "client credentials not found")
    if expire_at is not None and expire_at <= time.time():
        raise ReplyError(ErrorCode.EXPIRED, "connection expire_at is in the past")

    personal = cfg.personal_channel
    if personal.enabled and user:
        subs.setdefault(node.rules.personal_channel(personal.namespace, user), ServerSubscription())
    if cfg.channel_limit and len(subs) > cfg.channel_limit:
        raise DisconnectError(Disconnect.CHANNEL_LIMIT, "too many server-side channels")
    if system := node.config.admin.system_channel:  # not counted against the limit
        subs.setdefault(system, ServerSubscription())
    resolved = [  # 102/107; the system channel (fixed options) needs no resolving
        (node.resolve(channel) if channel != system else None, channel, sub)
        for channel, sub in subs.items()
    ]

    client.authenticated(user, m.RawJSON(info), expire_at)
    results: dict[str, m.SubscribeResult] = {}
    live: list[tuple[ChannelSubscription, int]] = []
    for ch, channel, server_sub in resolved:
        hint = req.subs.get(channel, m.SubscribeRequest())
        if ch is None:
            # What a hub subscription with the system options would answer: no position, no
            # expiry. A token listing the channel changes only `data`: its options are fixed.
            results[channel] = m.SubscribeResult(
                data=m.RawJSON(server_sub.data), was_recovering=hint.recover
            )
            continue
        sub, result, delivered = await subscribe_channel(
            client,
            ch,
            hint,
            options=apply_override(ch.options, server_sub.override),
            server_side=True,
            chan_info=m.RawJSON(server_sub.info),
            data=m.RawJSON(server_sub.data),
            expire_at=None,
        )
        results[ch.name] = result
        live.append((sub, delivered))

    client.reply(
        cmd_id,
        "connect",
        m.ConnectResult(
            client=client.client_id,
            version=node.version,
            expires=expire_at is not None,
            ttl=ttl_seconds(expire_at),
            subs=results or None,
            ping=int(cfg.ping_interval),
            pong=cfg.ping_interval > 0 and cfg.pong_timeout > 0,
        ),
    )
    if system:
        # Only now, with no checkpoint since the reply: a broadcast handled while this connect
        # was still awaiting is not this connection's (it has no buffer to hold it back).
        node.attach_system_channel(client, system)
    for sub, delivered in live:
        sub.go_live(delivered)
    for sub, _ in live:
        await client.announce_join(sub)
    client.start_timers()


# --- the rest ---


async def unsubscribe(client: Client, cmd_id: int, req: m.UnsubscribeRequest) -> None:
    require_channel(req.channel)
    await client.remove_subscription(req.channel, announce=True)
    client.reply(cmd_id, "unsubscribe", m.EmptyResult())


async def publish(client: Client, cmd_id: int, req: m.PublishRequest) -> None:
    require_channel(req.channel)
    node = client.node
    ch = node.resolve(req.channel)
    _check_data_format(ch.options, req.data)
    sub = client.subscriptions.get(req.channel)
    permissions.check_publish(ch, client.user, sub is not None, node.config.client.insecure)
    info = client.info(sub.chan_info if sub else m.NO_JSON)
    payload = publication_payload(ch.options, req.data)  # the channel's publication_html
    await node.publish(ch, payload, info, source="client")
    client.reply(cmd_id, "publish", m.EmptyResult())


def _check_data_format(options: ChannelOptions, data: Any) -> None:
    if problem := format_problem(options, data):  # shared with the server API
        raise ReplyError(ErrorCode.BAD_REQUEST, problem)


async def presence(client: Client, cmd_id: int, req: m.PresenceRequest) -> None:
    ch = _readable_channel(client, req.channel, permissions.check_presence)
    clients = await client.node.presence.presence(ch.name)
    client.reply(cmd_id, "presence", m.PresenceResult(clients))


async def presence_stats(client: Client, cmd_id: int, req: m.PresenceStatsRequest) -> None:
    ch = _readable_channel(client, req.channel, permissions.check_presence)
    num_clients, num_users = await client.node.presence.presence_stats(ch.name)
    client.reply(cmd_id, "presence_stats", m.PresenceStatsResult(num_clients, num_users))


async def history(client: Client, cmd_id: int, req: m.HistoryRequest) -> None:
    ch = _readable_channel(client, req.channel, permissions.check_history)
    maximum = client.node.config.client.history_max_publication_limit
    limit = req.limit
    if maximum and (limit < 0 or limit > maximum):
        limit = maximum
    if req.since is not None and req.reverse and req.since.offset == 0:
        raise ReplyError(ErrorCode.BAD_REQUEST, "reverse history needs since.offset > 0")
    try:
        pubs, top = await client.node.history(ch, HistoryQuery(req.since, limit, req.reverse))
    except UnrecoverablePosition:
        raise ReplyError(ErrorCode.UNRECOVERABLE_POSITION) from None
    client.reply(cmd_id, "history", m.HistoryResult(tuple(pubs), top.epoch, top.offset))


def _readable_channel(
    client: Client, channel: str, check: Callable[[ResolvedChannel, str, bool, bool], None]
) -> ResolvedChannel:
    require_channel(channel)
    ch = client.node.resolve(channel)
    check(ch, client.user, channel in client.subscriptions, client.node.config.client.insecure)
    return ch


async def refresh(client: Client, cmd_id: int, req: m.RefreshRequest) -> None:
    if not req.token:
        raise DisconnectError(Disconnect.BAD_REQUEST, "empty refresh token")
    try:
        await client.node.verifier.prepare(req.token)
        creds = client.node.verifier.verify_connect(req.token)
    except TokenExpired:
        raise DisconnectError(Disconnect.EXPIRED, "refresh token expired") from None
    except TokenInvalid as exc:
        raise DisconnectError(Disconnect.INVALID_TOKEN, f"refresh token: {exc}") from None
    if creds.user != client.user:
        raise DisconnectError(Disconnect.INVALID_TOKEN, "refresh token for another user")
    client.node.access.check(creds.user, creds.token_id, creds.issued_at)  # bans, revocations
    if creds.expire_at is not None and creds.expire_at <= time.time():
        raise ReplyError(ErrorCode.EXPIRED, "refresh expire_at is in the past")
    client.refreshed(creds.expire_at, m.RawJSON(creds.info) if creds.info else None)
    client.token_id, client.issued_at = creds.token_id, creds.issued_at
    client.reply(
        cmd_id,
        "refresh",
        m.RefreshResult(
            client=client.client_id,
            version=client.node.version,
            expires=creds.expire_at is not None,
            ttl=ttl_seconds(creds.expire_at),
        ),
    )


async def sub_refresh(client: Client, cmd_id: int, req: m.SubRefreshRequest) -> None:
    require_channel(req.channel)
    sub = client.subscriptions.get(req.channel)
    if sub is None:
        raise ReplyError(ErrorCode.PERMISSION_DENIED, "not subscribed")
    if isinstance(sub, SystemSubscription):
        # Shared by every connection: an expiry or info set here would be everyone's.
        raise ReplyError(ErrorCode.NOT_AVAILABLE, "the system channel subscription never expires")
    if not req.token:
        raise ReplyError(ErrorCode.BAD_REQUEST, "empty subscription token")
    claims = await verify_subscription_token(client, req.token, req.channel)
    if claims.expire_at is not None and claims.expire_at <= time.time():
        raise ReplyError(ErrorCode.EXPIRED, "subscription expire_at is in the past")
    sub.expire_at = claims.expire_at
    if claims.info:
        sub.chan_info = m.RawJSON(claims.info)
    client.watch_expiry(sub)
    result = m.SubRefreshResult(
        expires=claims.expire_at is not None, ttl=ttl_seconds(claims.expire_at)
    )
    client.reply(cmd_id, "sub_refresh", result)


async def not_available(client: Client, cmd_id: int, req: Any) -> None:
    # ping (removed in protocol v2) and rpc (no RPC handler is configured) are answered 108.
    raise ReplyError(ErrorCode.NOT_AVAILABLE)


async def send(client: Client, cmd_id: int, req: m.SendRequest) -> None:
    # No message handler: upstream's terminal answer to an asynchronous message.
    raise DisconnectError(Disconnect.NOT_AVAILABLE, "send without a message handler")


HANDLERS: dict[str, Handler] = {
    "connect": connect,
    "subscribe": subscribe,
    "unsubscribe": unsubscribe,
    "publish": publish,
    "presence": presence,
    "presence_stats": presence_stats,
    "history": history,
    "refresh": refresh,
    "sub_refresh": sub_refresh,
    "rpc": not_available,
    "ping": not_available,
    "send": send,
}
