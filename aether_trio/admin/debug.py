"""Read-only views for operators: the live Trio task tree, connections, the node (JSON-able)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import attrs
import trio

if TYPE_CHECKING:
    from ..connection.client import Client
    from ..node import Node

__all__ = ["connection_summary", "connection_view", "find_connections", "node_view", "task_tree"]


def task_tree(max_tasks: int) -> dict[str, Any]:
    """Every task from the root down: `{"name", "nurseries": [{"tasks": [...]}]}`; after
    `max_tasks` tasks the rest are only counted (a node with many connections has many)."""
    shown = 0
    left_out = 0

    def walk(task: trio.lowlevel.Task) -> dict[str, Any]:
        nonlocal shown, left_out
        shown += 1
        view: dict[str, Any] = {"name": task.name}
        nurseries = []
        for nursery in task.child_nurseries:
            children = []
            for child in nursery.child_tasks:
                if shown >= max_tasks:
                    left_out += _count(child)
                else:
                    children.append(walk(child))
            nurseries.append({"tasks": children})
        if nurseries:
            view["nurseries"] = nurseries
        return view

    root_task = trio.lowlevel.current_root_task()
    assert root_task is not None  # we are running inside Trio
    root = walk(root_task)
    return {"tasks": shown + left_out, "shown": shown, "left_out": left_out, "root": root}


def _count(task: trio.lowlevel.Task) -> int:
    return 1 + sum(_count(c) for n in task.child_nurseries for c in n.child_tasks)


def connection_summary(client: Client, now: float) -> dict[str, Any]:
    return {
        "client": client.client_id,
        "user": client.user,
        "remote": client.transport.remote,
        "channels": len(client.subscriptions),
        "idle_seconds": round(now - client.last_activity, 3),
    }


def connection_view(client: Client, now: float) -> dict[str, Any]:
    return {
        "client": client.client_id,
        "user": client.user,
        "remote": client.transport.remote,
        "channels": sorted(client.subscriptions),
        "outbox": attrs.asdict(client.writer.statistics()),
        "last_activity": client.last_activity,
        "idle_seconds": round(now - client.last_activity, 3),
        "expire_at": client.expire_at,
        "token_id": client.token_id,
        "issued_at": client.issued_at,
    }


def find_connections(node: Node[Client], user: str | None, channel: str | None) -> list[Client]:
    return [
        c
        for c in node.clients.values()
        if (user is None or c.user == user) and (channel is None or channel in c.subscriptions)
    ]


def node_view(node: Node[Client], started_at: float) -> dict[str, Any]:
    now = time.time()
    hub = node.hub_statistics()
    return {
        "name": node.config.server.node_name,
        "version": node.version,
        "uptime_seconds": round(now - started_at, 3),
        "clients": len(node.clients),
        "users": len({c.user for c in node.clients.values()}),
        "channels": hub.channels,
        "subscriptions": hub.subscriptions,
        "maintenance": node.maintenance,
        "draining": node.draining,
        "system_channel": node.config.admin.system_channel,
        **{name: report() for name, report in node.reports.items()},
    }
