"""Command handlers: one coroutine per client command, run in frame order by the connection's
read loop (serve.py).

Each handler validates its request, asks the node, and queues its reply through `client.reply`.
Refusals are raised as `ReplyError` (error reply) or `DisconnectError` (close), with codes from
the reference; the read loop turns them into frames. Decisions that need no I/O live in
`protocol.permissions`; the subscribe sequence that `connect` and `subscribe` share with the
server API lives in `subscribe`.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import attrs

from ..auth.tokens import ServerSubscription, TokenExpired, TokenInvalid
from ..engines.base import HistoryQuery, UnrecoverablePosition
from ..guards.sanitize import format_problem, publication_payload
from ..protocol import messages as m
from ..protocol import permissions
from ..protocol.channels import ResolvedChannel
from ..protocol.codes import Disconnect, ErrorCode
from ..protocol.errors import DisconnectError, ReplyError
from ..protocol.options import ChannelOptions
from ..protocol.tags_filter import TagsPredicate, compile_filter
from ..subscriptions import ChannelSubscription
from . import proxied
from .subscribe import (
    FLAG_CHANNEL_COMPACTION,
    Grant,
    Opened,
    Request,
    apply_override,
    require_channel,
    subscribe,
    ttl_seconds,
    verify_subscription_token,
)

if TYPE_CHECKING:
    from .client import Client

__all__ = ["HANDLERS", "Handler", "issue_publish"]

Handler = Callable[["Client", int, Any], Awaitable[None]]


# --- connect ---


async def connect(client: Client, cmd_id: int, req: m.ConnectRequest) -> None:
    node = client.node
    cfg = node.config.client
    # Kept for every later call to the backend (subscribe, publish, rpc, refresh proxies too).
    client.emulated_headers = proxied.emulated_headers(client, req.headers)
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
        # The user's connections on every node (3504 over the limit); undone at unregister.
        await node.count_connection(creds.user, client.client_id)
        # Maintenance, bans, revocations; no await from here to `authenticated`, so an operator's
        # ban either refuses this connection or finds it registered.
        node.admit(creds.user, creds.token_id, creds.issued_at)
        client.token_id, client.issued_at = creds.token_id, creds.issued_at
        user, info, expire_at, subs = creds.user, creds.info, creds.expire_at, dict(creds.subs)
        data = m.NO_JSON
    elif (target := node.backend.target(cfg.connect_proxy_name, "connect")) is not None:
        # No token: the application's backend says who this is (cookies, headers, data).
        backend = await proxied.connect(client, req, target)
        node.admit(backend.user, "", None)
        client.backend_connected = True
        user, info, expire_at, subs = backend.user, backend.info, backend.expire_at, backend.subs
        data = backend.data
    elif cfg.insecure or cfg.allow_anonymous_connect_without_token:
        node.admit("", "", None)
        user, info, expire_at, subs, data = "", m.NO_JSON, None, {}, m.NO_JSON
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
        subs.setdefault(system, ServerSubscription())  # fixed options: a token changes `data`
    requests = [  # 102/107 for a channel of the token's that does not resolve
        Request(
            ch,
            req.subs.get(channel, m.SubscribeRequest()),  # the client's recovery hints
            Grant(
                apply_override(ch.options, server_sub.override),
                server_side=True,
                chan_info=m.RawJSON(server_sub.info),
                data=m.RawJSON(server_sub.data),
            ),
        )
        for channel, server_sub in subs.items()
        for ch in (node.resolve(channel),)
    ]

    client.app_name, client.app_version = req.name, req.version
    client.authenticated(user, m.RawJSON(info), expire_at)

    # The client refreshes unless the server does it with the backend (refresh proxy or hook).
    client_refresh = expire_at is not None and not client.refreshes_itself()

    def reply(opened: list[Opened]) -> None:
        result = m.ConnectResult(
            client=client.client_id,
            version=node.version,
            expires=client_refresh,
            ttl=ttl_seconds(expire_at) if client_refresh else 0,
            data=data,
            subs={o.sub.channel: o.result for o in opened} or None,
            ping=int(cfg.ping_interval),
            pong=cfg.ping_interval > 0 and cfg.pong_timeout > 0,
        )
        client.reply(cmd_id, "connect", result)

    await subscribe(client, requests, reply)
    client.timers.start()


async def subscribe_command(client: Client, cmd_id: int, req: m.SubscribeRequest) -> None:
    require_channel(req.channel)
    if req.delta not in ("", "fossil"):
        raise DisconnectError(Disconnect.BAD_REQUEST, f"unknown delta type {req.delta[:16]!r}")
    node = client.node
    ch = node.resolve(req.channel)
    if req.channel in client.subscriptions:
        raise ReplyError(ErrorCode.ALREADY_SUBSCRIBED)
    limit = node.config.client.channel_limit
    if limit and client.counted_subscriptions() >= limit:
        raise ReplyError(ErrorCode.LIMIT_EXCEEDED, "channel limit per connection reached")

    grant = Grant(ch.options, server_side=False)
    if req.token:
        claims = await verify_subscription_token(client, req.token, req.channel)
        grant = Grant(
            apply_override(ch.options, claims.override), server_side=False,
            chan_info=m.RawJSON(claims.info), data=m.RawJSON(claims.data),
            expire_at=claims.expire_at,
        )  # fmt: skip
    elif not (ch.private or ch.user_limited) and (
        target := node.backend.target(ch.options.subscribe_proxy_name, "subscribe")
    ):
        # As Centrifugo: a private channel needs a token, a user-limited one its user.
        grant = await proxied.subscribe_grant(client, ch, req, target)
    else:
        permissions.check_subscribe_without_token(ch, client.user, node.config.client.insecure)
    if grant.expire_at is not None and grant.expire_at <= time.time():
        raise ReplyError(ErrorCode.EXPIRED, "subscription expire_at is in the past")
    if req.tf is not None:
        grant = attrs.evolve(grant, accepts=_tags_filter(grant.options, req))
    if req.delta and req.delta in grant.options.allowed_delta_types:
        # Not allowed in the channel: not negotiated (the reply says `delta: false`), as upstream.
        grant = attrs.evolve(grant, delta=True)
    if req.flag & FLAG_CHANNEL_COMPACTION and grant.options.allow_channel_compaction:
        grant = attrs.evolve(grant, compact=True)

    def reply(opened: list[Opened]) -> None:
        for o in opened:
            client.reply(cmd_id, "subscribe", o.result)

    await subscribe(client, [Request(ch, req, grant)], reply)


def _tags_filter(options: ChannelOptions, req: m.SubscribeRequest) -> TagsPredicate:
    """The subscription's tags filter, or 107: a filter is applied or refused, never ignored."""
    if not options.allow_tags_filter:
        raise ReplyError(ErrorCode.BAD_REQUEST, "tags filter not allowed in this channel")
    if req.delta:
        raise ReplyError(ErrorCode.BAD_REQUEST, "tags filter and delta cannot be combined")
    try:
        return compile_filter(req.tf)
    except ValueError as exc:
        raise ReplyError(ErrorCode.BAD_REQUEST, f"tags filter: {exc}") from None


# --- the rest ---


async def unsubscribe(client: Client, cmd_id: int, req: m.UnsubscribeRequest) -> None:
    require_channel(req.channel)
    await client.unsubscribe(req.channel)
    client.reply(cmd_id, "unsubscribe", m.EmptyResult())


async def publish(client: Client, cmd_id: int, req: m.PublishRequest) -> None:
    issued = issue_publish(client, cmd_id, req)
    if issued is not None:
        await issued()
        return
    node = client.node
    ch = node.resolve(req.channel)
    target = node.backend.target(ch.options.publish_proxy_name, "publish")
    assert target is not None  # what made `issue_publish` leave it here
    # The application's backend decides instead of the allow_publish_* rules, and may
    # change the data (checked again), add tags, keep it out of history.
    allowed = await proxied.publish(client, ch, req, target)
    data, raw = allowed.data, None
    if isinstance(data, m.JsonBytes):  # a Protobuf client's data, left as it was by the backend
        data, raw = data.value, data.raw
    _check_data_format(ch.options, data)
    sub = client.subscriptions.get(req.channel)
    info = client.info(sub.chan_info if sub else m.NO_JSON)
    payload = publication_payload(ch.options, data, raw)  # the channel's publication_html
    await node.publish(ch, payload, info, allowed.tags, source="client", history=allowed.history)
    client.reply(cmd_id, "publish", m.EmptyResult())


def issue_publish(
    client: Client, cmd_id: int, req: m.PublishRequest
) -> Callable[[], Awaitable[None]] | None:
    """`publish` in two steps: checked and issued to the node now (the publication's place in
    the channel's order is taken), and the returned function waits for the broker and replies.
    None when the application's backend decides (the channel's publish proxy or hook): `publish`
    does that, its calls in command order. Refusals are raised as `publish` raises them."""
    require_channel(req.channel)
    node = client.node
    ch = node.resolve(req.channel)
    data, raw = req.data, None
    if isinstance(data, m.Binary):
        # Channels carry JSON, which every subscriber can be given, whatever it speaks.
        raise ReplyError(ErrorCode.BAD_REQUEST, "publication data is not JSON")
    if isinstance(data, m.JsonBytes):  # a Protobuf client's: published as sent if it may be
        data, raw = data.value, data.raw
    _check_data_format(ch.options, data)
    # Never the operators' system channel: no hook or proxy may open it to clients.
    system = node.system_subscription(ch.name) is not None
    if not system and node.backend.target(ch.options.publish_proxy_name, "publish"):
        return None
    sub = client.subscriptions.get(req.channel)
    permissions.check_publish(ch, client.user, sub is not None, node.config.client.insecure)
    info = client.info(sub.chan_info if sub else m.NO_JSON)
    payload = publication_payload(ch.options, data, raw)  # the channel's publication_html
    issued = node.publish_nowait(ch, payload, info, source="client")

    async def reply() -> None:
        await issued.wait()
        client.reply(cmd_id, "publish", m.EmptyResult())

    return reply


def _check_data_format(options: ChannelOptions, data: Any) -> None:
    if problem := format_problem(options, data):  # shared with the server API
        raise ReplyError(ErrorCode.BAD_REQUEST, problem)


async def presence(client: Client, cmd_id: int, req: m.PresenceRequest) -> None:
    ch = _readable_channel(client, req.channel, permissions.check_presence)
    clients = await client.node.presence_of(ch)
    client.reply(cmd_id, "presence", m.PresenceResult(clients))


async def presence_stats(client: Client, cmd_id: int, req: m.PresenceStatsRequest) -> None:
    ch = _readable_channel(client, req.channel, permissions.check_presence)
    num_clients, num_users = await client.node.presence_stats(ch)
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
    if not isinstance(sub, ChannelSubscription):
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
    client.timers.watch_subscription(sub)
    result = m.SubRefreshResult(
        expires=claims.expire_at is not None, ttl=ttl_seconds(claims.expire_at)
    )
    client.reply(cmd_id, "sub_refresh", result)


async def not_available(client: Client, cmd_id: int, req: Any) -> None:
    # ping (removed in protocol v2) is answered 108.
    raise ReplyError(ErrorCode.NOT_AVAILABLE)


async def send(client: Client, cmd_id: int, req: m.SendRequest) -> None:
    # No message handler: upstream's terminal answer to an asynchronous message.
    raise DisconnectError(Disconnect.NOT_AVAILABLE, "send without a message handler")


HANDLERS: dict[str, Handler] = {
    "connect": connect,
    "subscribe": subscribe_command,
    "unsubscribe": unsubscribe,
    "publish": publish,
    "presence": presence,
    "presence_stats": presence_stats,
    "history": history,
    "refresh": refresh,
    "sub_refresh": sub_refresh,
    # 108 without an RPC proxy or hook.
    "rpc": proxied.rpc,
    "ping": not_available,
    "send": send,
}
