"""The one sequence every subscription goes through, whoever asked for it: the `subscribe`
command, the server-side channels of a connect (token `channels`/`subs`, the personal channel,
the operators' system channel) and the server API's `subscribe`.

    open_subscription   the node delivers to a new (buffering) subscription; its result is
                        computed: stream position, recovered publications
    subscribe           opens each requested subscription, lets the caller queue what announces
                        them (a reply, a push), then releases each buffer (`go_live`) and announces
                        presence and joins

so ordering (the reply first, then every later publication exactly once) and recovery hold the
same way for every origin. The system channel's one shared subscription goes the same way: it
has no position, and a connection starts holding it only once its announcement is queued.

Also here, shared by the command handlers and the server API: the channel check, token TTLs,
token overrides and the subscription-token checks.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import attrs

from ..auth.tokens import SubscribeClaims, TokenExpired, TokenInvalid
from ..engines.base import EngineError
from ..protocol import messages as m
from ..protocol import permissions
from ..protocol.channels import ResolvedChannel
from ..protocol.codes import Disconnect, ErrorCode
from ..protocol.errors import DisconnectError, ReplyError
from ..protocol.options import ChannelOptions
from ..protocol.tags_filter import TagsPredicate
from ..subscriptions import ChannelSubscription

if TYPE_CHECKING:
    from ..auth.tokens import ChannelOverride
    from .client import Client, Subscription

__all__ = [
    "FLAG_CHANNEL_COMPACTION",
    "FLAG_REJECT_UNRECOVERED",
    "Grant",
    "Opened",
    "apply_override",
    "open_subscription",
    "require_channel",
    "subscribe",
    "ttl_seconds",
    "verify_subscription_token",
]

log = logging.getLogger(__name__)

# Bits of SubscribeRequest.flag: channel compaction (an id in pushes instead of the channel),
# error 112 instead of `recovered: false`.
FLAG_CHANNEL_COMPACTION = 1
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


@attrs.frozen
class Grant:
    """What a subscription gets besides the channel: its options (the channel's, perhaps with a
    token's override) and what its origin grants (a token's info, data and expiry)."""

    options: ChannelOptions
    server_side: bool
    chan_info: m.RawJSON = m.NO_JSON
    data: m.RawJSON = m.NO_JSON
    expire_at: int | None = None
    # The subscriber's publication tags filter (`tf`), compiled.
    accepts: TagsPredicate | None = None
    # Fossil delta compression, negotiated (asked for, and in the channel's allowed_delta_types).
    delta: bool = False
    # Channel compaction, negotiated (flag 1, and the channel's allow_channel_compaction).
    compact: bool = False


@attrs.frozen
class Request:
    """One subscription to open: the resolved channel, the client's hints (recover, offset,
    epoch, flags; an empty request for a server-side one) and the grant."""

    channel: ResolvedChannel
    hints: m.SubscribeRequest
    grant: Grant


class Opened:
    """A subscription the node delivers to, whose announcement is not queued yet."""

    __slots__ = ("base", "delivered", "result", "sub")

    def __init__(
        self,
        sub: Subscription,
        result: m.SubscribeResult,
        delivered: int,
        base: m.RawJSON | None = None,
    ) -> None:
        self.sub = sub
        self.result = result
        # The offset up to which the result covers the stream (go_live skips what it carried).
        self.delivered = delivered
        # The data of the last publication the result carries (a delta subscription's base).
        self.base = base


async def subscribe(
    client: Client,
    requests: Sequence[Request],
    announce: Callable[[list[Opened]], object],
) -> list[Opened]:
    """Open every subscription of `requests`, call `announce` with them (it queues the reply or
    push that announces them, synchronously), then release their buffers and announce presence
    and joins. Returns what was announced: a subscription the connection no longer holds when
    its turn comes (it closed meanwhile; the server API runs outside the connection's task) is
    dropped quietly instead, since the connection's cleanup would never undo its join."""
    opened: list[Opened] = []
    try:
        for r in requests:
            opened.append(await open_subscription(client, r.channel, r.hints, r.grant))
        live = [o for o in opened if _still_wanted(client, o)]
        announce(live)
    except BaseException:
        # Nothing announced them (a later subscription failed, or the reply could not be
        # encoded): take every one back, or it would buffer unseen and the client's retry would
        # get 105 "already subscribed".
        for o in opened:
            _take_back(client, o)
        raise
    for o in live:
        if isinstance(o.sub, ChannelSubscription):
            o.sub.go_live(o.delivered, o.base)
        else:
            # The shared system subscription: held from now on, right after the announcement.
            client.subscriptions[o.sub.channel] = o.sub
    if client.session.is_connected:  # else `connect` starts the timers once it has
        client.timers.watch_presence()
    node = client.node
    for o in live:
        try:
            await node.join(o.sub, client.info(o.sub.chan_info))
        except EngineError:
            # Announced, but without its presence or join: the client subscribes again (2500
            # makes the SDK resubscribe; a server-side subscription's connection closes with
            # 3010, and the SDK reconnects), which redoes the whole sequence.
            log.warning("join of %s in %s failed", client, o.sub.channel, exc_info=True)
            client.insufficient_state(o.sub.channel)
            continue
        if client.subscriptions.get(o.sub.channel) is not o.sub:
            # The connection's cleanup took it while the join was on its way: undo the join.
            await node.leave(o.sub, client.info(o.sub.chan_info))
    return live


def _take_back(client: Client, opened: Opened) -> None:
    """Undo `open_subscription` for a subscription that was never announced (so never joined)."""
    if client.subscriptions.get(opened.sub.channel) is opened.sub:
        client.detach(opened.sub.channel)


def _still_wanted(client: Client, opened: Opened) -> bool:
    sub = opened.sub
    if isinstance(sub, ChannelSubscription):
        if client.subscriptions.get(sub.channel) is not sub:
            return False  # the cleanup took it
        if client.closing:
            client.detach(sub.channel)  # never announced: nothing to leave
            return False
        return True
    return not client.closing


async def open_subscription(
    client: Client, ch: ResolvedChannel, req: m.SubscribeRequest, grant: Grant
) -> Opened:
    """A subscription of `client` to `ch` that the node delivers to (holding publications back
    until `go_live`), with its result computed (recovery included)."""
    shared = client.node.system_subscription(ch.name)
    if shared is not None:
        # One object for every connection: no position, no expiry, no info of one token.
        return Opened(shared, m.SubscribeResult(data=grant.data, was_recovering=req.recover), 0)
    node = client.node
    insecure = node.config.client.insecure
    user, options = client.user, grant.options
    history_on = options.history_enabled
    recoverable = history_on and permissions.grant_recoverable(
        options, user, req.recoverable or req.recover, insecure
    )
    positioned = recoverable or (
        history_on and permissions.grant_positioned(options, user, req.positioned, insecure)
    )
    sub = ChannelSubscription(
        client, ch.name, options,
        push_join_leave=permissions.grant_join_leave(options, user, req.join_leave, insecure),
        server_side=grant.server_side, max_buffer_bytes=client.writer.max_bytes,
        chan_info=grant.chan_info, expire_at=grant.expire_at, accepts=grant.accepts,
        delta=grant.delta, compact=grant.compact,
    )  # fmt: skip
    # Held before anything is awaited, so the connection's cleanup finds it whatever happens.
    client.subscriptions[ch.name] = sub
    try:
        await node.subscribe(sub)
        result, delivered = await _position(client, ch, req, recoverable, positioned)
        if grant.accepts is not None and result.publications:
            # Recovered publications pass the same filter as live ones (upstream too).
            accepts = grant.accepts
            kept = tuple(p for p in result.publications if accepts(p.tags or {}))
            result = attrs.evolve(result, publications=kept)
    except BaseException:
        if client.subscriptions.get(ch.name) is sub:
            client.detach(ch.name)
        raise
    # The client refreshes unless the server does it with the backend (sub_refresh proxy, hook).
    client_refresh = grant.expire_at is not None and not client.refreshes_itself(sub)
    result = attrs.evolve(
        result, expires=client_refresh, ttl=ttl_seconds(grant.expire_at) if client_refresh else 0,
        data=grant.data, was_recovering=req.recover, id=sub.channel_id,
    )  # fmt: skip
    base = None
    if grant.delta:
        # The recovered publications go in full, in the form of a delta subscription (JSON: the
        # data as a string); the last one is the base of the first delta.
        codec, pubs = client.codec, result.publications
        base = pubs[-1].data if pubs else None
        full = tuple(attrs.evolve(p, data=codec.delta_payload(p.data) or p.data) for p in pubs)
        result = attrs.evolve(result, delta=True, publications=full)
    client.timers.watch_subscription(sub)
    return Opened(sub, result, delivered, base)


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
