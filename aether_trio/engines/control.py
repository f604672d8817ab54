"""The node-to-node control plane and the cluster-wide state, as small protocols with in-memory
twins (the Redis ones are `engines/redis/control.py`; docs/redis.md).

A `ControlPlane` carries opaque messages between the nodes sharing an engine: `broadcast` to
every other node, `send` to one node by id. A node never receives its own broadcast; delivery is
at most once and may be lost while a connection is down (the core repeats what matters:
heartbeats every few seconds, and shared state is re-read from `SharedState`). Messages reach the
handler in the order one sender sent them; what they mean is the core's business (cluster.py),
the engine only moves bytes.

`SharedState` keeps what every node must see: small tables of entries that expire (bans,
revoked tokens, token cut-offs), and each user's connections across the nodes (for the
per-user connection limit). The memory twin is one process's: correct for a single node.

The memory twin of the control plane is a `MemoryControlBus`: planes made from one bus see each
other, so the contract tests run two memory "nodes" in one process as they run two Redis ones.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from typing import Protocol

import trio

__all__ = [
    "ControlHandler",
    "ControlPlane",
    "MemoryControl",
    "MemoryControlBus",
    "MemorySharedState",
    "SharedState",
]

log = logging.getLogger(__name__)

# A memory plane's inbox: messages beyond it are dropped (and logged), as a lost PUB/SUB
# message would be; fan-out never waits for a slow receiver.
MEMORY_INBOX = 1024


class ControlHandler(Protocol):
    def handle_control(self, sender: str, message: bytes) -> None:
        """A message from node `sender` (never this node's own). Must not block or raise."""


class ControlPlane(Protocol):
    @property
    def node_id(self) -> str:
        """This node's id in the cluster (unique per process start)."""

    async def run(
        self, handler: ControlHandler, *, task_status: trio.TaskStatus[None] = ...
    ) -> None:
        """Deliver the other nodes' messages to `handler` until cancelled."""

    async def broadcast(self, message: bytes) -> None:
        """To every other node (`EngineError` if it could not be sent)."""

    async def send(self, node_id: str, message: bytes) -> None:
        """To node `node_id` only; nothing happens if no such node listens."""


class SharedState(Protocol):
    async def put(self, table: str, key: str, value: bytes) -> None: ...

    async def delete(self, table: str, key: str) -> None: ...

    async def load(self, table: str) -> dict[str, bytes]:
        """Every entry of `table` (the caller drops what has expired by its own rules)."""

    async def add_connection(self, user: str, client_id: str, limit: int, ttl: float) -> int | None:
        """Count `client_id` among `user`'s connections unless the user already has `limit`
        live ones (then: that number, and nothing is added). An entry lives `ttl` seconds
        unless added again (`refresh_connections`): a dead node's connections fade away."""

    async def remove_connection(self, user: str, client_id: str) -> None: ...

    async def refresh_connections(self, entries: list[tuple[str, str]], ttl: float) -> None:
        """Renew the (user, client id) entries of the connections still alive."""


# --- the memory twins ---


class MemoryControlBus:
    """What links memory planes: one process's "cluster"."""

    def __init__(self) -> None:
        self.planes: dict[str, MemoryControl] = {}

    def plane(self) -> MemoryControl:
        return MemoryControl(self)


class MemoryControl:
    def __init__(self, bus: MemoryControlBus | None = None) -> None:
        self.bus = bus if bus is not None else MemoryControlBus()
        self._id = uuid.uuid4().hex
        self._send, self._receive = trio.open_memory_channel[tuple[str, bytes]](MEMORY_INBOX)
        self.dropped = 0

    @property
    def node_id(self) -> str:
        return self._id

    async def run(
        self,
        handler: ControlHandler,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        self.bus.planes[self._id] = self
        try:
            task_status.started()
            async for sender, message in self._receive:
                handler.handle_control(sender, message)
        finally:
            del self.bus.planes[self._id]

    def _deliver(self, sender: str, message: bytes) -> None:
        try:
            self._send.send_nowait((sender, message))
        except trio.WouldBlock:
            self.dropped += 1
            log.warning("control message from %s dropped: inbox full", sender)

    async def broadcast(self, message: bytes) -> None:
        await trio.lowlevel.checkpoint()
        for node_id, plane in list(self.bus.planes.items()):
            if node_id != self._id:
                plane._deliver(self._id, message)

    async def send(self, node_id: str, message: bytes) -> None:
        await trio.lowlevel.checkpoint()
        if (plane := self.bus.planes.get(node_id)) is not None:
            plane._deliver(self._id, message)


class MemorySharedState:
    """One process's state: the tables, and live connections per user with their expiry."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._tables: dict[str, dict[str, bytes]] = {}
        self._connections: dict[str, dict[str, float]] = {}
        self._clock = clock

    async def put(self, table: str, key: str, value: bytes) -> None:
        await trio.lowlevel.checkpoint()
        self._tables.setdefault(table, {})[key] = value

    async def delete(self, table: str, key: str) -> None:
        await trio.lowlevel.checkpoint()
        self._tables.get(table, {}).pop(key, None)

    async def load(self, table: str) -> dict[str, bytes]:
        await trio.lowlevel.checkpoint()
        return dict(self._tables.get(table, {}))

    def _live(self, user: str) -> dict[str, float]:
        now = self._clock()
        entries = self._connections.get(user, {})
        for client_id in [c for c, expire_at in entries.items() if expire_at <= now]:
            del entries[client_id]
        return entries

    async def add_connection(self, user: str, client_id: str, limit: int, ttl: float) -> int | None:
        await trio.lowlevel.checkpoint()
        entries = self._live(user)
        if client_id not in entries and limit and len(entries) >= limit:
            return len(entries)
        self._connections.setdefault(user, entries)[client_id] = self._clock() + ttl
        return None

    async def remove_connection(self, user: str, client_id: str) -> None:
        await trio.lowlevel.checkpoint()
        entries = self._connections.get(user)
        if entries is not None:
            entries.pop(client_id, None)
            if not entries:
                del self._connections[user]

    async def refresh_connections(self, entries: list[tuple[str, str]], ttl: float) -> None:
        await trio.lowlevel.checkpoint()
        expire_at = self._clock() + ttl
        for user, client_id in entries:
            self._connections.setdefault(user, {})[client_id] = expire_at
