"""Bans, revocations and token cut-offs across the nodes sharing an engine (docs/redis.md).

A change made on one node (admin/commands.py through `AccessState`) is in the engine's shared
tables before it is acknowledged, and told to the other nodes as the control command `access`;
`ClusterAccess` is the receiving side: it applies the change to this node's state and closes this
node's connections it refuses, within a control message's round trip. Every
`[cluster] state_resync_interval` it re-reads the shared tables as well, so a node that missed a
message (its PUB/SUB connection was down) catches up, and closes what it should have then.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import trio

from ..engines.base import EngineError
from ..protocol.codes import Disconnect
from .state import TABLES, AccessState

if TYPE_CHECKING:
    from ..connection.client import Client
    from ..node import Node

__all__ = ["ClusterAccess", "close_refused"]

log = logging.getLogger(__name__)


def close_refused(node: Node[Client], table: str, key: str, value: dict[str, Any] | None) -> int:
    """Close this node's connections that the change (`table`, `key`, `value`) refuses."""
    if value is None:  # an unban refuses no one
        return 0
    if table == "bans":
        clients = node.user_clients(key)
        disconnect, detail = Disconnect.PERMISSION_DENIED, "banned"
    elif table == "revoked":
        clients = [c for c in node.clients.values() if c.token_id == key]
        disconnect, detail = Disconnect.INVALID_TOKEN, "token revoked"
    else:
        before = value["before"]
        clients = [c for c in node.user_clients(key) if c.issued_at is None or c.issued_at < before]
        disconnect, detail = Disconnect.INVALID_TOKEN, "token invalidated"
    for client in clients:
        client.close(disconnect, detail=detail)
    return len(clients)


class ClusterAccess:
    def __init__(self, node: Node[Client], state: AccessState) -> None:
        self.node = node
        self.state = state
        node.cluster.commands["access"] = self._access

    async def _access(self, body: dict[str, Any]) -> None:
        table, key, value = body.get("t"), body.get("k"), body.get("v")
        if table not in TABLES or not isinstance(key, str) or not isinstance(value, dict | None):
            log.warning("ignored an access change from another node that is not one")
            return

        def close() -> None:
            closed = close_refused(self.node, table, key, value)
            log.info("%s %s from another node: %d connections closed", table, key, closed)

        try:
            await self.state.apply(table, key, value, then=close)
        except ValueError as exc:
            log.warning("ignored an access change from another node: %s", exc)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Upload what only this node knows, then re-read the shared tables periodically."""
        try:
            if added := await self.state.upload():
                log.info("%d access entries of this node added to the shared state", added)
        except EngineError:
            log.warning("adding this node's access entries to the shared state failed",
                        exc_info=True)  # fmt: skip
        await self.resync()  # the cluster's bans hold before this node admits anyone
        task_status.started()
        while True:
            await trio.sleep(self.node.config.cluster.state_resync_interval)
            await self.resync()

    async def resync(self) -> None:
        try:
            new = await self.state.resync()
        except EngineError:
            log.warning("re-reading the shared access state failed", exc_info=True)
            return
        for table, key in new:
            value: dict[str, Any] = {}
            if table == "cutoffs":
                value = {"before": self.state.cutoff(key)}
            if closed := close_refused(self.node, table, key, value):
                log.info("%s %s found at resync: %d connections closed", table, key, closed)
