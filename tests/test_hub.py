"""Unit tests of the fan-out path: `Hub`, `ChannelSubscription`, and the `Scheduler` (the writer:
test_writer.py).

No sockets: subscribers and clients are small fakes. Timed tests use `autojump_clock`.
"""

from __future__ import annotations

import functools
import gc
import inspect
import logging
import weakref
from collections.abc import Callable, Mapping

import orjson
import pytest
import trio
import trio.testing

from aether_trio.hub import DeltaPush, Hub, HubStatistics, Route
from aether_trio.protocol.codec import JSON, Codec
from aether_trio.protocol.codes import Disconnect
from aether_trio.protocol.messages import ClientInfo, Publication, RawJSON
from aether_trio.protocol.options import ChannelOptions
from aether_trio.subscriptions import ChannelSubscription
from aether_trio.timers import Scheduler

# --- Hub -------------------------------------------------------------------------------------


class FakeSubscriber:
    def __init__(
        self,
        client_id: str,
        *,
        push_join_leave: bool = False,
        on_deliver: Callable[[FakeSubscriber], None] | None = None,
    ) -> None:
        self.client_id = client_id
        self.push_join_leave = push_join_leave
        self.codec: Codec = JSON
        self.accepts: Callable[[Mapping[str, str]], bool] | None = None
        self.delta = False
        self.compact = False
        self.channel_id = 0
        self.route: Route | None = None
        self.received: list[tuple[bytes, int]] = []
        self._on_deliver = on_deliver

    def deliver(self, message: bytes, offset: int) -> None:
        self.received.append((message, offset))
        if self._on_deliver is not None:
            self._on_deliver(self)

    def deliver_delta(self, source: DeltaPush, data: RawJSON, offset: int) -> None:
        raise AssertionError("not a delta subscriber")


def publication(offset: int = 7) -> Publication:
    return Publication(data=RawJSON(b'{"text":"hi"}'), info=ClientInfo("u1", "c1"), offset=offset)


def test_hub_add_reports_the_first_subscriber_and_remove_the_last() -> None:
    hub = Hub()
    assert hub.add("news", FakeSubscriber("a")) is True
    assert hub.add("news", FakeSubscriber("b")) is False
    assert hub.add("other", FakeSubscriber("a")) is True
    assert hub.num_subscribers("news") == 2
    assert sorted(hub.channels()) == ["news", "other"]
    assert hub.statistics() == HubStatistics(channels=2, subscriptions=3)

    assert hub.remove("news", "a") is False
    assert hub.remove("news", "b") is True
    assert hub.channels() == ["other"]
    assert hub.num_subscribers("news") == 0
    assert hub.subscribers("news") == []
    # After the last one left, the next one is the first again.
    assert hub.add("news", FakeSubscriber("c")) is True


def test_hub_remove_unknown_is_harmless() -> None:
    hub = Hub()
    assert hub.remove("nowhere", "a") is False
    hub.add("news", FakeSubscriber("a"))
    assert hub.remove("news", "zzz") is False
    assert hub.num_subscribers("news") == 1


def test_hub_adding_the_same_client_again_replaces_it() -> None:
    hub = Hub()
    old, new = FakeSubscriber("a"), FakeSubscriber("a")
    hub.add("news", old)
    assert hub.add("news", new) is False
    assert hub.subscribers("news") == [new]
    hub.broadcast_publication("news", publication())
    assert old.received == []
    assert len(new.received) == 1


def test_broadcast_publication_encodes_once_and_hands_out_the_same_bytes(
    encode_calls: list[tuple[str, str]],
) -> None:
    hub = Hub()
    subs = [FakeSubscriber(f"c{i}") for i in range(5)]
    for sub in subs:
        hub.add("news", sub)
    hub.add("other", FakeSubscriber("x"))

    assert hub.broadcast_publication("news", publication(offset=7)) == 5

    assert encode_calls == [("news", "pub")]
    message, offset = subs[0].received[0]
    assert offset == 7
    for sub in subs:
        assert len(sub.received) == 1
        assert sub.received[0][0] is message  # one bytes object, not equal copies
        assert sub.received[0][1] == 7
    assert orjson.loads(message) == {
        "push": {
            "channel": "news",
            "pub": {"data": {"text": "hi"}, "info": {"user": "u1", "client": "c1"}, "offset": 7},
        }
    }
    assert hub.subscribers("other")[0].received == []  # type: ignore[attr-defined]


def test_broadcast_to_a_channel_without_subscribers_encodes_nothing(
    encode_calls: list[tuple[str, str]],
) -> None:
    hub = Hub()
    assert hub.broadcast_publication("news", publication()) == 0
    assert hub.broadcast_join("news", ClientInfo("u", "c")) == 0
    assert encode_calls == []


def test_broadcast_is_synchronous() -> None:
    # Fan-out must never await: the methods are plain functions and run without an event loop
    # (this test is sync; a coroutine would not even start).
    for method in (Hub.broadcast_publication, Hub.broadcast_join, Hub.broadcast_leave):
        assert not inspect.iscoroutinefunction(method)
    hub = Hub()
    sub = FakeSubscriber("a", push_join_leave=True)
    hub.add("news", sub)
    result = hub.broadcast_publication("news", publication())
    hub.broadcast_join("news", ClientInfo("u", "c"))
    assert result == 1
    assert len(sub.received) == 2


def test_join_and_leave_go_only_to_subscribers_that_asked(
    encode_calls: list[tuple[str, str]],
) -> None:
    hub = Hub()
    wants = [FakeSubscriber("a", push_join_leave=True), FakeSubscriber("b", push_join_leave=True)]
    quiet = FakeSubscriber("c")
    for sub in [*wants, quiet]:
        hub.add("room", sub)
    info = ClientInfo("bob", "c9", conn_info=RawJSON(b'{"name":"Bob"}'))

    assert hub.broadcast_join("room", info) == 2
    assert hub.broadcast_leave("room", info) == 2

    assert encode_calls == [("room", "join"), ("room", "leave")]
    assert quiet.received == []
    join, leave = wants[0].received
    assert wants[1].received[0][0] is join[0]
    assert wants[1].received[1][0] is leave[0]
    assert join[1] == leave[1] == 0
    body = {"user": "bob", "client": "c9", "conn_info": {"name": "Bob"}}
    assert orjson.loads(join[0]) == {"push": {"channel": "room", "join": {"info": body}}}
    assert orjson.loads(leave[0]) == {"push": {"channel": "room", "leave": {"info": body}}}


def test_join_leave_with_nobody_interested_encodes_nothing(
    encode_calls: list[tuple[str, str]],
) -> None:
    hub = Hub()
    hub.add("room", FakeSubscriber("a"))
    assert hub.broadcast_join("room", ClientInfo("u", "c")) == 0
    assert encode_calls == []


def test_a_subscriber_leaving_during_delivery_does_not_break_the_loop() -> None:
    hub = Hub()

    def leave(sub: FakeSubscriber) -> None:
        hub.remove("news", sub.client_id)  # as a client closed for "slow" unregisters itself

    subs = [
        FakeSubscriber("a", on_deliver=leave),
        FakeSubscriber("b"),
        FakeSubscriber("c", on_deliver=leave),
        FakeSubscriber("d"),
    ]
    for sub in subs:
        hub.add("news", sub)

    hub.broadcast_publication("news", publication(offset=1))

    assert [len(sub.received) for sub in subs] == [1, 1, 1, 1]
    assert [s.client_id for s in hub.subscribers("news")] == ["b", "d"]
    hub.broadcast_publication("news", publication(offset=2))
    assert [len(sub.received) for sub in subs] == [1, 2, 1, 2]


def test_every_subscriber_leaving_during_delivery_removes_the_channel() -> None:
    hub = Hub()

    def leave(sub: FakeSubscriber) -> None:
        hub.remove("news", sub.client_id)

    subs = [FakeSubscriber(f"c{i}", on_deliver=leave) for i in range(3)]
    for sub in subs:
        hub.add("news", sub)
    hub.broadcast_publication("news", publication())
    assert all(len(sub.received) == 1 for sub in subs)
    assert hub.channels() == []


def test_a_subscriber_leaving_during_join_delivery_does_not_break_the_loop() -> None:
    hub = Hub()

    def leave(sub: FakeSubscriber) -> None:
        hub.remove("room", sub.client_id)

    subs = [FakeSubscriber(f"c{i}", push_join_leave=True, on_deliver=leave) for i in range(3)]
    for sub in subs:
        hub.add("room", sub)
    assert hub.broadcast_join("room", ClientInfo("u", "c")) == 3
    assert all(len(sub.received) == 1 for sub in subs)


# --- ChannelSubscription ---------------------------------------------------------------------


class FakeClient:
    def __init__(self, max_bytes: int = 1000) -> None:
        self.client_id = "client-1"
        self.codec: Codec = JSON
        self.max_bytes = max_bytes
        self.sent: list[bytes] = []
        self.closed: list[tuple[Disconnect, bool]] = []

    def send(self, message: bytes) -> None:
        self.sent.append(message)

    def close(self, disconnect: Disconnect, *, flush: bool = True) -> None:
        self.closed.append((disconnect, flush))


def make_subscription(client: FakeClient) -> ChannelSubscription:
    return ChannelSubscription(
        client,  # type: ignore[arg-type]
        "news",
        ChannelOptions(),
        push_join_leave=True,
        server_side=False,
        max_buffer_bytes=client.max_bytes,
    )


def test_subscription_buffers_until_live_then_skips_what_the_reply_covered() -> None:
    client = FakeClient()
    sub = make_subscription(client)
    assert sub.client_id == "client-1"
    for message, offset in [(b"p1", 1), (b"p2", 2), (b"join", 0), (b"p3", 3), (b"p4", 4)]:
        sub.deliver(message, offset)
    assert client.sent == []  # nothing before the reply

    sub.go_live(2)  # the reply carried the stream up to offset 2

    assert client.sent == [b"join", b"p3", b"p4"]
    sub.deliver(b"p5", 5)
    sub.deliver(b"p2-again", 2)  # past the reply's position, nothing is filtered
    assert client.sent == [b"join", b"p3", b"p4", b"p5", b"p2-again"]
    assert client.closed == []


def test_subscription_drops_late_copies_of_what_the_reply_covered_until_one_past_it() -> None:
    """Redis: the stream position is read on one connection, publications come on the PUB/SUB
    connection, so one the reply covered can arrive after `go_live`: it is dropped. Once one past
    the reply arrived, nothing is filtered (PUB/SUB keeps a channel's order)."""
    client = FakeClient()
    sub = make_subscription(client)
    sub.deliver(b"p1", 1)
    sub.go_live(3)  # the reply carried the stream up to offset 3; 2 and 3 are still on their way
    for message, offset in [(b"p2", 2), (b"join", 0), (b"p3", 3), (b"p4", 4), (b"p1-again", 1)]:
        sub.deliver(message, offset)
    assert client.sent == [b"join", b"p4", b"p1-again"]


def test_subscription_never_skips_publications_without_offsets() -> None:
    client = FakeClient()
    sub = make_subscription(client)
    sub.deliver(b"a", 0)
    sub.deliver(b"b", 0)
    sub.go_live(10)
    assert client.sent == [b"a", b"b"]


def test_subscription_go_live_from_zero_releases_everything() -> None:
    client = FakeClient()
    sub = make_subscription(client)
    sub.deliver(b"p1", 1)
    sub.deliver(b"p2", 2)
    sub.go_live(0)
    assert client.sent == [b"p1", b"p2"]


def test_subscription_go_live_twice_sends_nothing_twice() -> None:
    client = FakeClient()
    sub = make_subscription(client)
    sub.deliver(b"p1", 1)
    sub.go_live(0)
    sub.go_live(0)
    assert client.sent == [b"p1"]


def test_subscription_buffer_overflow_closes_the_client_as_slow() -> None:
    client = FakeClient(max_bytes=10)
    sub = make_subscription(client)
    sub.deliver(b"12345", 1)
    sub.deliver(b"12345", 2)  # exactly the limit: still fine
    assert client.closed == []
    sub.deliver(b"1", 3)
    assert client.closed == [(Disconnect.SLOW, False)]
    assert client.sent == []


# --- Scheduler -------------------------------------------------------------------------------


async def run_scheduler(nursery: trio.Nursery) -> Scheduler:
    scheduler = Scheduler()
    await nursery.start(scheduler.run)
    return scheduler


async def test_scheduler_calls_in_deadline_order_at_the_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    calls: list[tuple[str, float]] = []
    async with trio.open_nursery() as nursery:
        scheduler = await run_scheduler(nursery)
        start = trio.current_time()

        def record(name: str) -> Callable[[], None]:
            return lambda: calls.append((name, trio.current_time() - start))

        scheduler.call_later(3, record("c"))
        scheduler.call_later(1, record("a"))
        scheduler.call_later(2, record("b"))
        scheduler.call_later(2, record("b2"))  # same deadline: in the order added
        assert len(scheduler) == 4
        await trio.sleep(10)
        assert calls == [("a", 1), ("b", 2), ("b2", 2), ("c", 3)]
        assert len(scheduler) == 0
        nursery.cancel_scope.cancel()


async def test_scheduler_call_at_uses_absolute_deadlines(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fired: list[float] = []
    async with trio.open_nursery() as nursery:
        scheduler = await run_scheduler(nursery)
        deadline = trio.current_time() + 5
        scheduler.call_at(deadline, lambda: fired.append(trio.current_time()))
        await trio.sleep(10)
        assert fired == [deadline]
        nursery.cancel_scope.cancel()


async def test_scheduler_cancelled_timer_is_not_called(
    autojump_clock: trio.testing.MockClock,
) -> None:
    calls: list[str] = []
    async with trio.open_nursery() as nursery:
        scheduler = await run_scheduler(nursery)
        first = scheduler.call_later(1, lambda: calls.append("first"))
        scheduler.call_later(2, lambda: calls.append("second"))
        first.cancel()
        await trio.sleep(5)
        assert calls == ["second"]
        nursery.cancel_scope.cancel()


async def test_scheduler_cancelled_timer_releases_its_callback(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A cancelled timer must not keep what its callback refers to alive until its deadline.

    Connections arm timers for their token's expiry, which may be days away; when a connection
    ends it cancels them, and from then on they must not hold the connection in memory.
    """

    class Connection:
        def expire(self) -> None:
            raise AssertionError("cancelled")

    async with trio.open_nursery() as nursery:
        scheduler = await run_scheduler(nursery)
        connection = Connection()
        alive = weakref.ref(connection)
        timer = scheduler.call_later(30 * 24 * 3600, connection.expire)
        await trio.sleep(1)
        timer.cancel()
        del connection
        gc.collect()
        assert alive() is None
        nursery.cancel_scope.cancel()


async def test_scheduler_drops_cancelled_timers_long_before_their_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Each connection cancels its stale-connection timer at connect; a heap of 10,000 idle
    connections must not keep those entries until their deadlines. The live timers still fire,
    in order, after a compaction."""
    fired: list[int] = []
    async with trio.open_nursery() as nursery:
        scheduler = await run_scheduler(nursery)
        live = [
            scheduler.call_later(100 + n, functools.partial(fired.append, n)) for n in range(300)
        ]
        doomed = [scheduler.call_later(10_000, lambda: fired.append(-1)) for _ in range(1000)]
        for timer in doomed:
            timer.cancel()
        assert len(scheduler._heap) < 300 + 1000 // 2  # compacted along the way
        assert len(scheduler) == 300
        live[0].cancel()  # cancelled after a compaction: still never called
        await trio.sleep(20_000)
        assert fired == list(range(1, 300))
        nursery.cancel_scope.cancel()


async def test_scheduler_drops_the_stale_timers_of_idle_connections(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """An idle connection keeps three timers (ping, presence, expiry) and cancelled one (the
    stale close) at connect: a quarter of the heap. Those cancelled entries must not stay."""
    async with trio.open_nursery() as nursery:
        scheduler = await run_scheduler(nursery)
        for _ in range(2000):
            stale = scheduler.call_later(10, lambda: None)
            for delay in (25, 27, 3600):
                scheduler.call_later(delay, lambda: None)
            stale.cancel()
        assert len(scheduler) == 6000
        # At most an eighth of the heap is cancelled entries, not a quarter.
        assert len(scheduler._heap) <= 6000 * 8 // 7 + 1
        nursery.cancel_scope.cancel()


async def test_scheduler_earlier_timer_added_while_sleeping_wakes_the_loop(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fired: list[tuple[str, float]] = []
    async with trio.open_nursery() as nursery:
        scheduler = await run_scheduler(nursery)
        start = trio.current_time()
        scheduler.call_later(100, lambda: fired.append(("late", trio.current_time() - start)))
        await trio.sleep(1)  # the loop now sleeps until +100
        scheduler.call_later(4, lambda: fired.append(("early", trio.current_time() - start)))
        await trio.sleep(10)
        assert fired == [("early", 5)]
        await trio.sleep(100)
        assert fired == [("early", 5), ("late", 100)]
        nursery.cancel_scope.cancel()


async def test_scheduler_first_timer_added_to_an_idle_loop_fires(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fired: list[float] = []
    async with trio.open_nursery() as nursery:
        scheduler = await run_scheduler(nursery)
        await trio.sleep(50)  # nothing scheduled: the loop waits without a deadline
        start = trio.current_time()
        scheduler.call_later(3, lambda: fired.append(trio.current_time() - start))
        await trio.sleep(10)
        assert fired == [3]
        nursery.cancel_scope.cancel()


async def test_scheduler_callbacks_can_reschedule(autojump_clock: trio.testing.MockClock) -> None:
    ticks: list[float] = []
    immediate: list[float] = []
    async with trio.open_nursery() as nursery:
        scheduler = await run_scheduler(nursery)
        start = trio.current_time()

        def tick() -> None:
            ticks.append(trio.current_time() - start)
            if len(ticks) < 4:
                scheduler.call_later(2, tick)

        scheduler.call_later(2, tick)

        # A zero delay scheduled from a callback runs in the same round, without a clock jump.
        def schedule_immediately() -> None:
            scheduler.call_later(0, lambda: immediate.append(trio.current_time() - start))

        scheduler.call_later(0, schedule_immediately)
        await trio.sleep(20)
        assert ticks == [2, 4, 6, 8]
        assert immediate == [0]
        nursery.cancel_scope.cancel()


async def test_scheduler_logs_a_failing_callback_and_goes_on(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[str] = []

    def boom() -> None:
        raise RuntimeError("boom")

    caplog.set_level(logging.ERROR, logger="aether_trio.timers")
    async with trio.open_nursery() as nursery:
        scheduler = await run_scheduler(nursery)
        scheduler.call_later(1, boom)
        scheduler.call_later(1, lambda: calls.append("same deadline"))
        scheduler.call_later(2, lambda: calls.append("later"))
        await trio.sleep(5)
        assert calls == ["same deadline", "later"]
        # Still running: a new timer fires.
        scheduler.call_later(1, lambda: calls.append("after"))
        await trio.sleep(5)
        assert calls == ["same deadline", "later", "after"]
        nursery.cancel_scope.cancel()
    failures = [r for r in caplog.records if r.name == "aether_trio.timers"]
    assert len(failures) == 1
    assert failures[0].levelno == logging.ERROR
    assert failures[0].exc_info is not None
    assert isinstance(failures[0].exc_info[1], RuntimeError)
