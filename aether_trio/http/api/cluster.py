"""The server API across the cluster: methods acting on connections reach every node, and
`channels`/`info` gather every node's answer (the node's `Cluster`, cluster.py).

    subscribe, unsubscribe,     run here first (which checks the input: a refused call changes
    disconnect, refresh         nothing anywhere), then broadcast as a control command that every
                                other node runs against its own connections. The answer does not
                                wait for the other nodes (as upstream's): their connections are
                                acted on a round trip later. If the broadcast fails
                                (Redis down) the call answers an internal error: this node's
                                connections were acted on, the others' were not.
    channels, info, connections a survey: this node's answer and every live node's that came
                                within `[cluster] survey_timeout`; `info` lists a live node that
                                did not answer with its last heartbeat's counts.

A command from another node is decoded into the same request class and run by the same method;
one that does not decode, or that the method refuses, is logged and ignored.
"""

from __future__ import annotations

import logging
from typing import Any

import cattrs

from . import access as api_access
from . import methods as api_methods
from . import requests as rq
from . import users as api_users
from .errors import ApiError
from .methods import ApiContext, Result

__all__ = ["CLUSTER_METHODS", "channels", "connections", "everywhere", "info", "install"]

log = logging.getLogger(__name__)

# Request classes are plain attrs classes: this converter moves them between nodes as they are.
_CONVERTER = cattrs.Converter(forbid_extra_keys=True)

CLUSTER_METHODS: dict[str, tuple[type, Any]] = {
    "subscribe": (rq.Subscribe, api_users.subscribe),
    "unsubscribe": (rq.Unsubscribe, api_users.unsubscribe),
    "disconnect": (rq.Disconnect, api_users.disconnect),
    "refresh": (rq.Refresh, api_users.refresh),
}


def everywhere(method: str) -> Any:
    """`method` of CLUSTER_METHODS, applied here and then on every other node."""
    _cls, local = CLUSTER_METHODS[method]

    async def run(ctx: ApiContext, req: Any) -> Result:
        result: Result = await local(ctx, req)
        await ctx.node.cluster.broadcast(f"api.{method}", _CONVERTER.unstructure(req))
        return result

    return run


def install(ctx: ApiContext) -> None:
    """Let the other nodes' commands and surveys reach this node's connections."""
    cluster = ctx.node.cluster
    for method, (cls, local) in CLUSTER_METHODS.items():
        cluster.commands[f"api.{method}"] = _remote(ctx, method, cls, local)

    async def channels_here(body: dict[str, Any]) -> dict[str, Any]:
        pattern = body.get("pattern")
        if not isinstance(pattern, str):
            return {"error": "pattern must be a string"}
        try:
            return await api_methods.channels(ctx, rq.Channels(pattern))
        except ApiError as exc:
            return {"error": exc.detail or exc.code.message}

    async def info_here(_body: dict[str, Any]) -> dict[str, Any]:
        return {"uid": cluster.node_id, **ctx.node.describe()}

    async def connections_here(body: dict[str, Any]) -> dict[str, Any]:
        user = body.get("user")
        if not isinstance(user, str):
            return {"error": "user must be a string"}
        return await api_access.connections(ctx, rq.Connections(user=user))

    cluster.surveys["channels"] = channels_here
    cluster.surveys["info"] = info_here
    cluster.surveys["connections"] = connections_here


def _remote(ctx: ApiContext, method: str, cls: type, local: Any) -> Any:
    async def handle(body: dict[str, Any]) -> None:
        try:
            req: Any = _CONVERTER.structure(body, cls)
        except (cattrs.BaseValidationError, ValueError, TypeError) as exc:
            log.warning("ignored a cluster %s that does not decode: %s", method, exc)
            return
        try:
            await local(ctx, req)
        except ApiError as exc:
            log.info("cluster %s refused here: %s %s", method, exc.code.message, exc.detail)

    return handle


async def channels(ctx: ApiContext, req: rq.Channels) -> Result:
    own = await api_methods.channels(ctx, req)  # checks the pattern first
    replies = await ctx.node.cluster.survey("channels", {"pattern": req.pattern}, own)
    found: dict[str, dict[str, int]] = {}
    for reply in replies.values():
        for name, counts in _channel_counts(reply).items():
            entry = found.setdefault(name, {"num_clients": 0})
            entry["num_clients"] += counts
    return {"channels": found}


def _channel_counts(reply: dict[str, Any]) -> dict[str, int]:
    """A node's `channels` reply, with anything malformed left out (another node is not
    trusted to send what it should)."""
    listed = reply.get("channels")
    if not isinstance(listed, dict):
        return {}
    counts = {}
    for name, entry in listed.items():
        count = entry.get("num_clients") if isinstance(entry, dict) else None
        if isinstance(name, str) and isinstance(count, int) and not isinstance(count, bool):
            counts[name] = count
    return counts


async def connections(ctx: ApiContext, req: rq.Connections) -> Result:
    """Every node's connections (of `req.user`, or all), by client id."""
    own = await api_access.connections(ctx, req)  # refuses what it cannot do first
    replies = await ctx.node.cluster.survey("connections", {"user": req.user}, own)
    found: dict[str, Any] = {}
    for reply in replies.values():
        listed = reply.get("connections")
        if isinstance(listed, dict):  # another node is not trusted to send what it should
            found.update(
                (k, v) for k, v in listed.items() if isinstance(k, str) and isinstance(v, dict)
            )
    return {"connections": found}


_INFO_FIELDS = ("name", "version", "num_clients", "num_users", "num_channels", "num_subs",
                "uptime")  # fmt: skip


async def info(ctx: ApiContext, req: rq.Info) -> Result:
    cluster = ctx.node.cluster
    replies = await cluster.survey("info", {})
    heard = cluster.nodes()  # live nodes, with their last heartbeat's info
    nodes = []
    for node_id in sorted(heard.keys() | replies.keys()):
        reply = replies.get(node_id)
        if reply is None or "error" in reply:
            reply = heard.get(node_id, {})
        nodes.append(_node_entry(node_id, reply))
    return {"nodes": nodes}


def _node_entry(node_id: str, info: dict[str, Any]) -> dict[str, Any]:
    entry: dict[str, Any] = {"uid": node_id}
    for name in _INFO_FIELDS:
        value = info.get(name)
        if name in ("name", "version"):
            entry[name] = value if isinstance(value, str) else ""
        else:
            entry[name] = value if isinstance(value, int) and not isinstance(value, bool) else 0
    return entry
