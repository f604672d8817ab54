"""`Drain`: close every connection gradually with 3011 "force reconnect", for rolling deploys.

A drain takes a snapshot of the registered connections and asks `rate` of them per second to
reconnect (in ticks of at least 50 ms, so a high rate closes a few per tick instead of sleeping
per connection). 3011 makes every SDK reconnect with backoff: behind a load balancer that has
taken this node out (`/ready` reports `draining`/`maintenance`), they land on another node. By
default a drain first switches maintenance mode on, so the clients it closes are not accepted
again here; with `maintenance=False` they may come back (re-balancing). Connections made during
the drain are not in the snapshot.

The task is started in the admin service's nursery and owns `node.draining` while it runs; cancel
it with `await cancel()` (closed connections stay closed, maintenance stays as it is).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import trio

from ..protocol.codes import Disconnect

if TYPE_CHECKING:
    from ..connection.client import Client
    from ..node import Node

__all__ = ["Drain", "DrainRunning"]

MIN_TICK = 0.05


class DrainRunning(Exception):
    """A drain is already running."""


class Drain:
    def __init__(self, node: Node[Client]) -> None:
        self.node = node
        self.state = "idle"  # idle | running | done | cancelled
        self.rate = 0.0
        self._client_ids: list[str] = []  # the snapshot, by id: closed clients are not kept
        self._closed = 0
        self._started_at: float | None = None
        self._finished_at: float | None = None
        self._scope: trio.CancelScope | None = None
        self._stopped = trio.Event()

    def start(self, nursery: trio.Nursery, rate: float, *, maintenance: bool) -> dict[str, Any]:
        if self.state == "running":
            raise DrainRunning("a drain is already running")
        if maintenance:
            self.node.maintenance = True
        self.state, self.rate = "running", rate
        clients = list(self.node.clients.values())
        self._client_ids = [client.client_id for client in clients]
        self._closed, self._started_at, self._finished_at = 0, time.time(), None
        self._scope = trio.CancelScope()
        self._stopped = trio.Event()
        # Set before the task first runs, so a reader right after the command sees it.
        self.node.draining = True
        nursery.start_soon(self._run, clients, self._scope, name="aether-drain")
        return self.status()

    async def cancel(self) -> bool:
        """Stop a running drain and wait until it has stopped; False if none was running."""
        if self.state != "running" or self._scope is None:
            return False
        self._scope.cancel()
        await self._stopped.wait()
        return True

    def status(self) -> dict[str, Any]:
        total = len(self._client_ids)
        connected = sum(1 for client_id in self._client_ids if client_id in self.node.clients)
        return {
            "state": self.state,
            "rate": self.rate,
            "total": total,
            "closed": self._closed,
            "remaining": total - self._closed,
            "still_connected": connected,
            "started_at": self._started_at,
            "finished_at": self._finished_at,
            "maintenance": self.node.maintenance,
        }

    async def _run(self, clients: list[Client], scope: trio.CancelScope) -> None:
        tick = max(1.0 / self.rate, MIN_TICK)
        per_tick = max(1, round(self.rate * tick))
        completed = False
        try:
            with scope:
                for start in range(0, len(clients), per_tick):
                    if start:
                        await trio.sleep(tick)
                    for client in clients[start : start + per_tick]:
                        # A no-op for a connection that is already closing.
                        client.close(Disconnect.FORCE_RECONNECT, detail="drain")
                        self._closed += 1
                completed = True
        finally:
            self.state = "done" if completed else "cancelled"
            self._finished_at = time.time()
            self.node.draining = False
            self._stopped.set()
