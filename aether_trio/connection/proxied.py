"""Commands the application's backend decides (aether_trio/backend): a connect without a token,
a subscribe without a token, a client's publication, an RPC.

Where a decision goes is the backend's `target`: the proxy the config names for it (`[client]
connect_proxy_name`, a namespace's `subscribe_proxy_name`, ...), else the in-process hook for it,
else nobody, and the command handlers apply Aether's own rules. What the backend answered comes
back here typed (`backend.wire`) and is turned into what the handlers need: credentials, a
subscription grant, the data to publish, the RPC reply. An answered error or disconnect
(`AppError`, `AppDisconnect`) and a backend that did not answer (100, temporary) pass through to
the read loop, which sends them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs

from ..auth.tokens import ChannelOverride, ServerSubscription
from ..backend import wire
from ..protocol import messages as m
from ..protocol.channels import ResolvedChannel
from ..protocol.codec import raw_json
from ..protocol.codes import Disconnect, ErrorCode
from ..protocol.errors import DisconnectError, ReplyError
from .subscribe import Grant, apply_override

if TYPE_CHECKING:
    from ..backend.hooks import HookTarget
    from ..backend.http import HttpProxy
    from .client import Client

    Target = HttpProxy | HookTarget

__all__ = ["Credentials", "connect", "emulated_headers", "publish", "rpc", "subscribe_grant"]


@attrs.frozen
class Credentials:
    """Who a connect proxy says the connection is, and what it subscribes it to."""

    user: str
    info: m.RawJSON
    expire_at: int | None
    subs: dict[str, ServerSubscription]
    data: m.RawJSON


def emulated_headers(client: Client, headers: dict[str, str]) -> dict[str, str]:
    """What a connection keeps of the headers its connect command carries (SDK header
    emulation): those some proxy's `emulated_headers` lists, names lowercased."""
    kept = client.node.backend.emulated_headers
    if not kept:
        return {}
    lowered = {str(name).lower(): value for name, value in headers.items()}
    return {name: value for name, value in lowered.items() if name in kept}


def _event_base(client: Client, target: Target) -> dict[str, Any]:
    return {
        "client": client.client_id,
        "headers": target.headers(client.headers, client.emulated_headers),
    }


async def connect(client: Client, req: m.ConnectRequest, target: Target) -> Credentials:
    event = wire.ConnectEvent(
        **_event_base(client, target), data=req.data, name=req.name, version=req.version
    )
    result = await client.node.backend.call(target, "connect", event, wire.ConnectResult)
    if result is None:
        raise DisconnectError(Disconnect.BAD_REQUEST, "the connect proxy returned no result")
    subs = {channel: ServerSubscription() for channel in result.channels}
    for channel, options in result.subs.items():
        override = options.override.flags() if options.override is not None else {}
        subs[channel] = ServerSubscription(
            info=raw_json(options.info),
            data=raw_json(options.data),
            override=ChannelOverride(**override) if override else None,
        )
    return Credentials(
        user=result.user,
        info=raw_json(result.info),
        expire_at=result.expire_at or None,
        subs=subs,
        data=raw_json(result.data),
    )


async def subscribe_grant(
    client: Client, ch: ResolvedChannel, req: m.SubscribeRequest, target: Target
) -> Grant:
    event = wire.SubscribeEvent(
        **_event_base(client, target), user=client.user, channel=ch.name, data=req.data
    )
    result = await client.node.backend.call(target, "subscribe", event, wire.SubscribeResult)
    if result is None:
        return Grant(ch.options, server_side=False)
    override = result.override.flags() if result.override is not None else {}
    return Grant(
        apply_override(ch.options, ChannelOverride(**override)) if override else ch.options,
        server_side=False,
        chan_info=raw_json(result.info),
        data=raw_json(result.data),
        expire_at=result.expire_at or None,
    )


@attrs.frozen
class Publication:
    """What the publish proxy lets through: the data (perhaps rewritten), tags, history."""

    data: Any
    tags: dict[str, str] | None
    history: bool


async def publish(
    client: Client, ch: ResolvedChannel, req: m.PublishRequest, target: Target
) -> Publication:
    # A Protobuf client's JSON arrives wrapped with its bytes (m.JsonBytes): the backend is
    # given the JSON, as from any client.
    sent = req.data.value if isinstance(req.data, m.JsonBytes) else req.data
    event = wire.PublishEvent(
        **_event_base(client, target), user=client.user, channel=ch.name, data=sent
    )
    result = await client.node.backend.call(target, "publish", event, wire.PublishResult)
    if result is None:
        return Publication(req.data, None, True)
    data = req.data if result.data is None else result.data
    return Publication(data, result.tags or None, not result.skip_history)


async def rpc(client: Client, cmd_id: int, req: m.RPCRequest) -> None:
    node = client.node
    target = node.backend.target(node.config.client.rpc_proxy_name, "rpc")
    if target is None:
        raise ReplyError(ErrorCode.NOT_AVAILABLE, "no RPC proxy or hook")
    event = wire.RPCEvent(
        **_event_base(client, target), user=client.user, method=req.method, data=req.data
    )
    result = await node.backend.call(target, "rpc", event, wire.RPCResult)
    data = raw_json(result.data) if result is not None else m.NO_JSON
    client.reply(cmd_id, "rpc", m.RPCResult(data))
