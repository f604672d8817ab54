"""Event recorders for tests that drive the real centrifuge-python SDK (asyncio).

The SDK reports what happens through callbacks (`on_connected`, `on_publication`, `on_join`,
...). The recorders here keep every such event, in order, as `(kind, context)` so a scenario can
wait for one (bounded: a missing event fails the test with everything recorded so far) and then
assert on what arrived and what did not. They are shared by the SDK, server API and admin tests.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Any

from centrifuge import (
    Client,
    ClientEventHandler,
    ConnectedContext,
    ConnectingContext,
    DisconnectedContext,
    ErrorContext,
    JoinContext,
    LeaveContext,
    PublicationContext,
    ServerJoinContext,
    ServerLeaveContext,
    ServerPublicationContext,
    ServerSubscribedContext,
    ServerSubscribingContext,
    ServerUnsubscribedContext,
    SubscribedContext,
    SubscribingContext,
    SubscriptionErrorContext,
    SubscriptionEventHandler,
    UnsubscribedContext,
)

EVENT_WAIT = 5.0  # longest single wait for an expected event


class EventRecorder:
    """Keeps every event as (kind, context) and lets a scenario wait for one, bounded."""

    def __init__(self) -> None:
        self.items: list[tuple[str, Any]] = []
        self._changed = asyncio.Event()

    def record(self, kind: str, ctx: Any) -> None:
        self.items.append((kind, ctx))
        self._changed.set()

    def of(self, kind: str) -> list[Any]:
        return [ctx for k, ctx in self.items if k == kind]

    def kinds(self) -> list[str]:
        return [k for k, _ in self.items]

    async def wait(
        self,
        kind: str,
        pred: Callable[[Any], bool] = lambda _ctx: True,
        *,
        count: int = 1,
        within: float = EVENT_WAIT,
    ) -> list[Any]:
        """Wait until `count` events of `kind` matching `pred` were recorded; return them all."""

        async def poll() -> list[Any]:
            while True:
                found = [ctx for ctx in self.of(kind) if pred(ctx)]
                if len(found) >= count:
                    return found
                self._changed.clear()
                await self._changed.wait()

        try:
            return await asyncio.wait_for(poll(), within)
        except TimeoutError:
            raise AssertionError(
                f"timed out after {within}s waiting for {count} {kind!r} event(s); "
                f"recorded: {self.items!r}"
            ) from None

    async def one(self, kind: str, pred: Callable[[Any], bool] = lambda _ctx: True) -> Any:
        return (await self.wait(kind, pred))[0]


class ClientRecorder(EventRecorder, ClientEventHandler):
    """Every client-level event, server-side subscriptions' included.

    With `skip_private_channels`, events of private `$` channels (like the system channel every
    connection may be given) are left out, for tests that count subscriptions and use none.
    """

    def __init__(self, *, skip_private_channels: bool = False) -> None:
        super().__init__()
        self.skip_private_channels = skip_private_channels

    def record(self, kind: str, ctx: Any) -> None:
        if self.skip_private_channels and getattr(ctx, "channel", "").startswith("$"):
            return
        super().record(kind, ctx)

    async def on_connecting(self, ctx: ConnectingContext) -> None:
        self.record("connecting", ctx)

    async def on_connected(self, ctx: ConnectedContext) -> None:
        self.record("connected", ctx)

    async def on_disconnected(self, ctx: DisconnectedContext) -> None:
        self.record("disconnected", ctx)

    async def on_error(self, ctx: ErrorContext) -> None:
        self.record("error", ctx)

    async def on_subscribed(self, ctx: ServerSubscribedContext) -> None:
        self.record("subscribed", ctx)

    async def on_subscribing(self, ctx: ServerSubscribingContext) -> None:
        self.record("subscribing", ctx)

    async def on_unsubscribed(self, ctx: ServerUnsubscribedContext) -> None:
        self.record("unsubscribed", ctx)

    async def on_publication(self, ctx: ServerPublicationContext) -> None:
        self.record("publication", ctx)

    async def on_join(self, ctx: ServerJoinContext) -> None:
        self.record("join", ctx)

    async def on_leave(self, ctx: ServerLeaveContext) -> None:
        self.record("leave", ctx)


class SubscriptionRecorder(EventRecorder, SubscriptionEventHandler):
    """Every event of one client-side subscription."""

    async def on_subscribing(self, ctx: SubscribingContext) -> None:
        self.record("subscribing", ctx)

    async def on_subscribed(self, ctx: SubscribedContext) -> None:
        self.record("subscribed", ctx)

    async def on_unsubscribed(self, ctx: UnsubscribedContext) -> None:
        self.record("unsubscribed", ctx)

    async def on_publication(self, ctx: PublicationContext) -> None:
        self.record("publication", ctx)

    async def on_join(self, ctx: JoinContext) -> None:
        self.record("join", ctx)

    async def on_leave(self, ctx: LeaveContext) -> None:
        self.record("leave", ctx)

    async def on_error(self, ctx: SubscriptionErrorContext) -> None:
        self.record("error", ctx)

    def offsets(self) -> list[int]:
        """Offsets of the publications received, in order."""
        return [ctx.pub.offset for ctx in self.of("publication")]

    def data(self) -> list[Any]:
        """Data of the publications received, in order."""
        return [ctx.pub.data for ctx in self.of("publication")]


async def disconnect_all(clients: Iterable[Client]) -> None:
    """Disconnect every SDK client, then let the SDK finish its close handshakes and background
    tasks: a transport left to the garbage collector warns about its unclosed socket later, in
    whichever test happens to collect it (and warnings are errors here)."""
    for client in clients:
        await client.disconnect()
    current = asyncio.current_task()
    pending = [t for t in asyncio.all_tasks() if t is not current]
    if pending:
        await asyncio.wait(pending, timeout=2.0)
