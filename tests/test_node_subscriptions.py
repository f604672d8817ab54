"""The node owns subscriptions (node.py, broker_channels.py): the broker is subscribed when the
first local subscriber arrives, with rollback when it fails; a subscriber arriving meanwhile waits
for that subscribe; the broker is unsubscribed lazily after the last one leaves, not at all when
someone subscribes again first, and retried with capped backoff when it fails.

The broker is the memory engine with its subscribe/unsubscribe scripted; connections are fakes.
The last tests go through a real server: a client's subscribe when the engine fails.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing
from conftest import make_config, open_raw, serve_in, token, ws_url

from aether_trio.engines.base import EngineError
from aether_trio.engines.memory import MemoryBroker, MemoryPresenceManager
from aether_trio.node import Node
from aether_trio.protocol.codec import JSON, Codec
from aether_trio.protocol.codes import Disconnect
from aether_trio.protocol.options import ChannelOptions
from aether_trio.subscriptions import ChannelSubscription


class ScriptedBroker(MemoryBroker):
    """Records subscribe/unsubscribe; `fail_*` makes the next N calls raise, `hold` makes calls
    wait for `release`."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, str]] = []
        self.times: list[float] = []  # trio.current_time() of each call
        self.fail_subscribe = 0
        self.fail_unsubscribe = 0
        self.hold = False
        self.entered = trio.Event()
        self.release = trio.Event()

    async def _call(self, what: str, channel: str) -> None:
        self.calls.append((what, channel))
        self.times.append(trio.current_time())
        if self.hold:
            self.entered.set()
            await self.release.wait()
        failures = f"fail_{what}"
        if getattr(self, failures):
            setattr(self, failures, getattr(self, failures) - 1)
            raise EngineError(f"{what} {channel} failed")

    async def subscribe(self, channel: str) -> None:
        await self._call("subscribe", channel)

    async def unsubscribe(self, channel: str) -> None:
        await self._call("unsubscribe", channel)


class FakeConnection:
    def __init__(self, client_id: str) -> None:
        self.client_id = client_id
        self.user = ""
        self.codec: Codec = JSON
        self.subscriptions: dict[str, Any] = {}
        self.sent: list[bytes] = []
        self.lost: list[str] = []

    @property
    def queued_bytes(self) -> int:
        return 0

    def send(self, message: bytes) -> None:
        self.sent.append(message)

    def close(self, disconnect: Disconnect, *, flush: bool = True, detail: str = "") -> None:
        pass

    def probe_write(self, report: Any) -> bool:
        return False

    def insufficient_state(self, channel: str) -> None:
        self.lost.append(channel)


def subscription(client_id: str, channel: str = "news") -> ChannelSubscription:
    return ChannelSubscription(
        FakeConnection(client_id), channel, ChannelOptions(), push_join_leave=False,
        server_side=False, max_buffer_bytes=1 << 20,
    )  # fmt: skip


@asynccontextmanager
async def running_node() -> AsyncIterator[tuple[Node[Any], ScriptedBroker]]:
    broker = ScriptedBroker()
    config = make_config({"admin": {"system_channel": "$aether.system"}})  # off by default
    node: Node[Any] = Node(config, broker, MemoryPresenceManager())
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        broker.calls.clear()  # the system channel's subscribe at start
        broker.times.clear()
        yield node, broker
        nursery.cancel_scope.cancel()


async def test_the_first_subscriber_subscribes_the_broker_and_the_last_unsubscribes_it_later() -> (
    None
):
    async with running_node() as (node, broker):
        a, b = subscription("a"), subscription("b")
        await node.subscribe(a)
        await node.subscribe(b)
        assert broker.calls == [("subscribe", "news")]
        node.unsubscribe(a)
        node.unsubscribe(b)  # synchronous: nothing reaches b from here on
        assert node.num_subscribers("news") == 0
        assert broker.calls == [("subscribe", "news")]  # not yet: in the background
        await trio.testing.wait_all_tasks_blocked()
        assert broker.calls == [("subscribe", "news"), ("unsubscribe", "news")]


async def test_a_quick_resubscribe_costs_no_broker_round_trip() -> None:
    async with running_node() as (node, broker):
        first = subscription("a")
        await node.subscribe(first)
        node.unsubscribe(first)
        await node.subscribe(subscription("b"))  # before the background unsubscribe ran
        await trio.testing.wait_all_tasks_blocked()
        assert broker.calls == [("subscribe", "news")]


async def test_a_second_subscriber_waits_for_the_first_ones_broker_subscribe() -> None:
    async with running_node() as (node, broker):
        broker.hold = True
        done: list[str] = []

        async def subscribe(client_id: str) -> None:
            await node.subscribe(subscription(client_id))
            done.append(client_id)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(subscribe, "a")
            await broker.entered.wait()
            nursery.start_soon(subscribe, "b")
            await trio.testing.wait_all_tasks_blocked()
            # b is in the hub, but must not read the stream before the broker delivers.
            assert done == []
            broker.release.set()
        assert sorted(done) == ["a", "b"]
        assert broker.calls == [("subscribe", "news")]


async def test_a_failed_broker_subscribe_takes_the_subscriber_out_again() -> None:
    async with running_node() as (node, broker):
        broker.fail_subscribe = 1
        with pytest.raises(EngineError):
            await node.subscribe(subscription("a"))
        assert node.num_subscribers("news") == 0
        await node.subscribe(subscription("b"))  # asks the broker again
        assert broker.calls == [("subscribe", "news"), ("subscribe", "news")]
        assert node.num_subscribers("news") == 1


async def test_a_subscriber_arriving_during_the_unsubscribe_subscribes_the_broker_again() -> None:
    async with running_node() as (node, broker):
        first = subscription("a")
        await node.subscribe(first)
        broker.hold = True
        node.unsubscribe(first)
        await broker.entered.wait()  # the background unsubscribe is on its way
        async with trio.open_nursery() as nursery:
            nursery.start_soon(node.subscribe, subscription("b"))
            await trio.testing.wait_all_tasks_blocked()
            broker.release.set()
        assert broker.calls == [
            ("subscribe", "news"),
            ("unsubscribe", "news"),
            ("subscribe", "news"),
        ]


async def test_a_failed_unsubscribe_is_retried_with_growing_backoff(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running_node() as (node, broker):
        sub = subscription("a")
        await node.subscribe(sub)
        broker.fail_unsubscribe = 2
        started = trio.current_time()
        node.unsubscribe(sub)
        await trio.sleep(60)
        assert broker.calls[1:] == [("unsubscribe", "news")] * 3  # then it worked: no more
        assert [t - started for t in broker.times[1:]] == [0, 0.5, 1.5]  # +0.5 s, then +1 s
        assert node.errors.total == 2


async def test_a_channel_used_again_before_the_retry_is_not_unsubscribed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running_node() as (node, broker):
        sub = subscription("a")
        await node.subscribe(sub)
        broker.fail_unsubscribe = 1
        node.unsubscribe(sub)
        await trio.testing.wait_all_tasks_blocked()
        await node.subscribe(subscription("b"))
        await trio.sleep(30)
        assert broker.calls == [("subscribe", "news"), ("unsubscribe", "news")]


async def test_the_shared_system_subscription_never_touches_the_hub_or_the_broker() -> None:
    async with running_node() as (node, broker):
        system = node.system_subscription(node.config.admin.system_channel)
        assert system is not None
        assert system.shared
        before = node.num_subscribers(system.channel)
        await node.subscribe(system)
        node.unsubscribe(system)
        await trio.testing.wait_all_tasks_blocked()
        assert broker.calls == []
        assert node.num_subscribers(system.channel) == before
        assert node.system_subscription("news") is None


# --- through a real server ------------------------------------------------------------------


async def test_a_clients_subscribe_when_the_engine_fails_gets_100_and_keeps_nothing() -> None:
    async with trio.open_nursery() as nursery:
        server = await serve_in(nursery, make_config())
        node = server.node
        failing = {"on": True}
        real_subscribe = node.broker.subscribe

        async def subscribe(channel: str) -> None:
            if failing["on"]:
                raise EngineError("redis is down")
            await real_subscribe(channel)

        node.broker.subscribe = subscribe  # type: ignore[method-assign]
        async with open_raw(ws_url(server)) as client:
            await client.connect(token("1"))
            reply = await client.command("subscribe", {"channel": "news"})
            assert reply["error"]["code"] == 100
            [connection] = node.clients.values()
            assert "news" not in connection.subscriptions
            assert node.num_subscribers("news") == 0
            failing["on"] = False
            assert "subscribe" in await client.command("subscribe", {"channel": "news"})
            await node.publish(node.resolve("news"), b'{"n":1}')  # type: ignore[arg-type]
            push = await client.receive()
            assert push["push"]["pub"]["data"] == {"n": 1}
        nursery.cancel_scope.cancel()
