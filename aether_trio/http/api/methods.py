"""The server API methods that publish and read (reference 10.3), and what every method shares.

Every method checks all of its input first and raises `ApiError` before any effect, so a refused
call changed nothing. Methods acting on a user's connections live in `api_users`; `info` and the
cluster-wide versions of `channels` and of those in `cluster.py`.
"""

from __future__ import annotations

import base64
import binascii
from typing import TYPE_CHECKING, Any

import attrs
import orjson
import trio

from ...engines.base import HistoryQuery, UnrecoverablePosition
from ...guards.sanitize import format_problem, publication_payload
from ...protocol import messages as m
from ...protocol.channels import ResolvedChannel
from ...protocol.codec import raw_json, unstructure
from ...protocol.errors import ReplyError
from ...protocol.options import ChannelOptions
from . import requests as rq
from .errors import ApiError
from .errors import ApiErrorCode as Code
from .glob import compile_glob

if TYPE_CHECKING:
    from ...connection.client import Client
    from ...node import Node

__all__ = [
    "ApiContext",
    "Result",
    "broadcast",
    "channels",
    "error_body",
    "history",
    "history_remove",
    "json_value",
    "presence",
    "presence_stats",
    "publish",
    "resolve_channel",
]

Result = dict[str, Any]

# The `channels` method lets other tasks run after matching this many names.
CHANNELS_YIELD_EVERY = 1024


@attrs.define
class ApiContext:
    node: Node[Client]
    uid: str
    started: float  # time.time() at start, for `info.uptime`


# --- shared checks ---


def resolve_channel(ctx: ApiContext, name: str) -> ResolvedChannel:
    if not name:
        raise ApiError(Code.BAD_REQUEST, "channel required")
    try:
        return ctx.node.resolve(name)
    except ReplyError as exc:
        raise ApiError.from_reply_error(exc) from None


def _b64_json(encoded: str, field: str) -> Any:
    """`b64data`/`b64info` as a JSON value: a JSON client cannot be sent anything else."""
    try:
        raw = base64.b64decode(encoded, validate=True)
    except binascii.Error:
        raise ApiError(Code.BAD_REQUEST, f"{field} is not base64") from None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        # A JSON connection cannot carry anything else (upstream would close it with 3506).
        raise ApiError(Code.BAD_REQUEST, f"{field} does not decode to JSON") from None


def json_value(value: Any, b64: str, field: str) -> m.RawJSON:
    """A JSON value given as such (`data`) or base64-encoded (`b64data`, which wins)."""
    return raw_json(_b64_json(b64, field) if b64 else value)


def _check_data(options: ChannelOptions, data: Any) -> None:
    if problem := format_problem(options, data):  # shared with client publishes
        raise ApiError(Code.BAD_REQUEST, problem)


# --- publishing ---


async def _publish(
    ctx: ApiContext, ch: ResolvedChannel, data: Any, opts: rq.PublishOptions
) -> Result:
    if opts.skip_history:
        ch = attrs.evolve(ch, options=attrs.evolve(ch.options, history_size=0))
    node = ctx.node
    try:
        position = await node.publish(
            # Cleaned per channel (publication_html), from the caller's unchanged `data`.
            ch, publication_payload(ch.options, data), tags=opts.tags,
            # The broker keeps the results (in Redis for every node), not this node.
            idempotency_key=opts.idempotency_key,
        )  # fmt: skip
    except ReplyError as exc:  # [limits]: 107 data over max_publication_size, 111 too many
        raise ApiError.from_reply_error(exc) from None
    # Both omitted without history, as upstream's encoder omits zero values.
    result: Result = {}
    if position.offset:
        result["offset"] = position.offset
    if position.epoch:
        result["epoch"] = position.epoch
    return result


def _payload(opts: rq.PublishOptions) -> Any:
    return _b64_json(opts.b64data, "b64data") if opts.b64data else opts.data


async def publish(ctx: ApiContext, req: rq.Publish) -> Result:
    data = _payload(req.options)
    ch = resolve_channel(ctx, req.channel)
    _check_data(ch.options, data)
    return await _publish(ctx, ch, data, req.options)


async def broadcast(ctx: ApiContext, req: rq.Broadcast) -> Result:
    if not req.channels:
        raise ApiError(Code.BAD_REQUEST, "channels required")
    data = _payload(req.options)
    responses: list[Result] = []
    for name in req.channels:  # each channel succeeds or fails on its own, as upstream
        try:
            ch = resolve_channel(ctx, name)
            _check_data(ch.options, data)
            responses.append({"result": await _publish(ctx, ch, data, req.options)})
        except ApiError as exc:
            responses.append({"error": error_body(exc.code)})
    return {"responses": responses}


def error_body(code: Code) -> Result:
    return {"code": int(code), "message": code.message}


# --- reading ---


def _presence_channel(ctx: ApiContext, name: str) -> ResolvedChannel:
    ch = resolve_channel(ctx, name)
    if not ch.options.presence:
        raise ApiError(Code.NOT_AVAILABLE, "presence is off for this channel")
    return ch


async def presence(ctx: ApiContext, req: rq.ChannelRequest) -> Result:
    ch = _presence_channel(ctx, req.channel)
    result: Result = unstructure(m.PresenceResult(await ctx.node.presence_of(ch)))
    return result


async def presence_stats(ctx: ApiContext, req: rq.ChannelRequest) -> Result:
    ch = _presence_channel(ctx, req.channel)
    num_clients, num_users = await ctx.node.presence_stats(ch)
    return {"num_clients": num_clients, "num_users": num_users}


def _history_channel(ctx: ApiContext, name: str) -> ResolvedChannel:
    ch = resolve_channel(ctx, name)
    if not ch.options.history_enabled:
        raise ApiError(Code.NOT_AVAILABLE, "history is off for this channel")
    return ch


async def history(ctx: ApiContext, req: rq.History) -> Result:
    ch = _history_channel(ctx, req.channel)
    if req.since is not None and req.reverse and req.since.offset == 0:
        raise ApiError(Code.BAD_REQUEST, "reverse history needs since.offset > 0")
    try:
        pubs, top = await ctx.node.history(ch, HistoryQuery(req.since, req.limit, req.reverse))
    except UnrecoverablePosition:
        raise ApiError(Code.UNRECOVERABLE_POSITION) from None
    result: Result = unstructure(m.HistoryResult(tuple(pubs), top.epoch, top.offset))
    return result


async def history_remove(ctx: ApiContext, req: rq.ChannelRequest) -> Result:
    ch = _history_channel(ctx, req.channel)
    await ctx.node.remove_history(ch)
    return {}


async def channels(ctx: ApiContext, req: rq.Channels) -> Result:
    try:
        match = compile_glob(req.pattern or "*")
    except ValueError as exc:
        raise ApiError(Code.BAD_REQUEST, f"pattern: {exc}") from None
    found: dict[str, dict[str, int]] = {}
    for index, (name, subscribers) in enumerate(ctx.node.channel_subscribers().items()):
        if match(name):
            found[name] = {"num_clients": subscribers}
        if index % CHANNELS_YIELD_EVERY == CHANNELS_YIELD_EVERY - 1:
            await trio.lowlevel.checkpoint()  # a node with 100k channels: others run meanwhile
    return {"channels": found}
