"""The `subscribe` command and what every subscription goes through: checks, then recovery.

`subscribe_channel` registers a buffering `ChannelSubscription` and computes its result (stream
position, recovered publications); the `subscribe` handler, `connect` (server-side subscriptions)
and the server API's subscribe all call it. The small helpers the other handlers share (channel
check, token TTL, token overrides, subscription-token checks) live here too: `commands` imports
this module, so keeping them here keeps the import one-way.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import attrs

from ..auth.tokens import SubscribeClaims, TokenExpired, TokenInvalid
from ..protocol import messages as m
from ..protocol import permissions
from ..protocol.channels import ResolvedChannel
from ..protocol.codes import Disconnect, ErrorCode
from ..protocol.errors import DisconnectError, ReplyError
from ..protocol.options import ChannelOptions
from .subscription import ChannelSubscription

if TYPE_CHECKING:
    from ..auth.tokens import ChannelOverride
    from .client import Client

__all__ = [
    "apply_override",
    "require_channel",
    "subscribe",
    "subscribe_channel",
    "ttl_seconds",
    "verify_subscription_token",
]

# Bit of SubscribeRequest.flag asking for error 112 instead of `recovered: false`.
FLAG_REJECT_UNRECOVERED = 2


def ttl_seconds(expire_at: int | None) -> int:
    # Whole seconds like upstream, and never 0 with `expires: true` (0 would be omitted on the
    # wire, and the SDKs index `ttl` whenever `expires` is set).
    return max(1, expire_at - int(time.time())) if expire_at else 0


def require_channel(channel: str) -> None:
    if not channel:
        raise DisconnectError(Disconnect.BAD_REQUEST, "empty channel")


def apply_override(options: ChannelOptions, override: ChannelOverride | None) -> ChannelOptions:
    if override is None:
        return options
    # ChannelOverride's fields are named after the ChannelOptions they override.
    changes = {
        field.name: value
        for field in attrs.fields(type(override))
        if (value := getattr(override, field.name)) is not None
    }
    return attrs.evolve(options, **changes) if changes else options


# --- subscribe ---


async def subscribe(client: Client, cmd_id: int, req: m.SubscribeRequest) -> None:
    require_channel(req.channel)
    if req.delta not in ("", "fossil"):
        raise DisconnectError(Disconnect.BAD_REQUEST, f"unknown delta type {req.delta[:16]!r}")
    node = client.node
    ch = node.resolve(req.channel)
    if req.channel in client.subscriptions:
        raise ReplyError(ErrorCode.ALREADY_SUBSCRIBED)
    limit = node.config.client.channel_limit
    # The system channel is not counted (as at connect).
    taken = len(client.subscriptions) - (node.config.admin.system_channel in client.subscriptions)
    if limit and taken >= limit:
        raise ReplyError(ErrorCode.LIMIT_EXCEEDED, "channel limit per connection reached")

    options, chan_info, data, expire_at = ch.options, m.NO_JSON, m.NO_JSON, None
    if req.token:
        claims = await verify_subscription_token(client, req.token, req.channel)
        options = apply_override(options, claims.override)
        chan_info, data, expire_at = (
            m.RawJSON(claims.info),
            m.RawJSON(claims.data),
            claims.expire_at,
        )
    else:
        permissions.check_subscribe_without_token(ch, client.user, node.config.client.insecure)
    if expire_at is not None and expire_at <= time.time():
        raise ReplyError(ErrorCode.EXPIRED, "subscription expire_at is in the past")

    sub, result, delivered = await subscribe_channel(
        client, ch, req, options=options, server_side=False, chan_info=chan_info, data=data,
        expire_at=expire_at,
    )  # fmt: skip
    client.reply(cmd_id, "subscribe", result)
    sub.go_live(delivered)
    await client.announce_join(sub)


async def verify_subscription_token(client: Client, token: str, channel: str) -> SubscribeClaims:
    await client.node.verifier.prepare(token, subscription=True)
    try:
        claims = client.node.verifier.verify_subscribe(token)
    except TokenExpired:
        raise ReplyError(ErrorCode.TOKEN_EXPIRED, "subscription token expired") from None
    except TokenInvalid as exc:
        raise ReplyError(ErrorCode.PERMISSION_DENIED, f"subscription token: {exc}") from None
    if claims.channel != channel:
        raise DisconnectError(Disconnect.INVALID_TOKEN, "subscription token for another channel")
    if claims.user != client.user:
        raise DisconnectError(Disconnect.INVALID_TOKEN, "subscription token for another user")
    if claims.client and claims.client != client.client_id:
        raise DisconnectError(Disconnect.INVALID_TOKEN, "subscription token for another client")
    return claims


async def subscribe_channel(
    client: Client,
    ch: ResolvedChannel,
    req: m.SubscribeRequest,
    *,
    options: ChannelOptions,
    server_side: bool,
    chan_info: m.RawJSON,
    data: m.RawJSON,
    expire_at: int | None,
) -> tuple[ChannelSubscription, m.SubscribeResult, int]:
    """Register a buffering subscription and compute its result (recovery included).

    Returns the subscription, its result, and the offset up to which the result covers the stream;
    the caller queues the reply, then calls `sub.go_live(offset)`.
    """
    node = client.node
    insecure = node.config.client.insecure
    user = client.user
    history_on = options.history_enabled
    recoverable = history_on and permissions.grant_recoverable(
        options, user, req.recoverable or req.recover, insecure
    )
    positioned = recoverable or (
        history_on and permissions.grant_positioned(options, user, req.positioned, insecure)
    )
    push_join_leave = permissions.grant_join_leave(options, user, req.join_leave, insecure)
    sub = ChannelSubscription(
        client, ch.name, options, push_join_leave=push_join_leave, server_side=server_side,
        chan_info=chan_info, expire_at=expire_at,
    )  # fmt: skip
    await client.add_subscription(sub)
    try:
        result, delivered = await _position(client, ch, req, recoverable, positioned)
    except BaseException:
        await client.remove_subscription(ch.name, announce=False)
        raise
    result = attrs.evolve(
        result, expires=expire_at is not None, ttl=ttl_seconds(expire_at), data=data,
        was_recovering=req.recover,
    )  # fmt: skip
    client.watch_expiry(sub)
    return sub, result, delivered


async def _position(
    client: Client,
    ch: ResolvedChannel,
    req: m.SubscribeRequest,
    recoverable: bool,
    positioned: bool,
) -> tuple[m.SubscribeResult, int]:
    if not positioned:
        return m.SubscribeResult(), 0
    node = client.node
    if req.recover and recoverable:
        position = m.StreamPosition(req.offset, req.epoch)
        limit = node.config.client.recovery_max_publication_limit
        pubs, top, recovered = await node.recover(ch, position, limit)
        if recovered:
            result = m.SubscribeResult(
                recoverable=True, positioned=True, epoch=top.epoch, offset=req.offset,
                publications=tuple(pubs), recovered=True,
            )  # fmt: skip
            return result, top.offset
        if req.flag & FLAG_REJECT_UNRECOVERED:
            raise ReplyError(ErrorCode.UNRECOVERABLE_POSITION)
    else:
        top = await node.stream_top(ch)
    result = m.SubscribeResult(
        recoverable=recoverable, positioned=True, epoch=top.epoch, offset=top.offset
    )
    return result, top.offset
