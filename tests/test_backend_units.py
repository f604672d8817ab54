"""The backend's parts on their own, where no socket is needed (autojump clock): the channel
state machine (occupied, vacated after the delay, the delay cancelled, entries refreshed, an
engine that fails), the notifier's bounded queue and its contained failures, a hook over its
timeout, the proxies a reload replaces, the user status store's bounds, the wire decoding.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio

from aether_trio.backend import (
    AppError,
    Backend,
    ChannelEvent,
    ConnectResult,
    DisconnectEvent,
    Hooks,
    Notifier,
)
from aether_trio.backend.hooks import HookTarget
from aether_trio.backend.wire import decode_response, decode_result, request_body
from aether_trio.channel_states import OCCUPANCY_PREFIX, ChannelStates
from aether_trio.config import ProxyConfig
from aether_trio.engines.base import EngineError
from aether_trio.engines.memory import MemoryPresenceManager
from aether_trio.protocol.decoding import DecodeError
from aether_trio.protocol.errors import ReplyError
from aether_trio.protocol.messages import ClientInfo
from aether_trio.timers import Scheduler
from aether_trio.user_status import UserStatuses

Observed = list[tuple[str, str, str]]


def backend_with(hooks: Hooks | None = None, proxies: tuple[ProxyConfig, ...] = ()) -> Any:
    observed: Observed = []
    captured: list[tuple[BaseException, str]] = []

    def observe(proxy: str, kind: str, result: str, _seconds: float) -> None:
        observed.append((proxy, kind, result))

    backend = Backend(proxies, hooks, observe, lambda exc, where: captured.append((exc, where)))
    return backend, observed, captured


# --- channel states ---


class States:
    def __init__(self, presence: Any, node_id: str = "n1") -> None:
        self.events: list[tuple[str, str]] = []
        self.subscribers: set[str] = set()
        self.captured: list[str] = []
        self.scheduler = Scheduler()
        self.states = ChannelStates(
            presence, self.scheduler, node_id, lambda ch: ch in self.subscribers,
            lambda ch, kind, _ms: self.events.append((ch, kind)),
            lambda _exc, where: self.captured.append(where),
        )  # fmt: skip
        self.states.delay = 2.0
        self.states.refresh_interval = 10.0

    async def start(self, nursery: trio.Nursery) -> None:
        await nursery.start(self.scheduler.run)
        await nursery.start(self.states.run)


async def test_channel_states_occupied_vacated_and_the_delay(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    presence = MemoryPresenceManager()
    s = States(presence)
    await s.start(nursery)
    s.states.local_vacated("never-held")  # nothing to do
    s.states.local_occupied("c")
    s.states.local_occupied("c")  # held already
    await trio.sleep(0.1)
    assert s.events == [("c", "occupied")]
    assert s.states.statistics() == {"held": 1, "pending": 0}
    s.states.local_vacated("c")
    await trio.sleep(1.0)
    s.states.local_occupied("c")  # back within the delay
    await trio.sleep(5.0)
    assert s.events == [("c", "occupied")]
    # A subscriber present when the delay ends (its occupied call raced the timer): held on.
    s.states.local_vacated("c")
    s.states.local_vacated("c")  # a second vacate re-arms the one timer
    s.subscribers.add("c")
    await trio.sleep(5.0)
    assert s.events == [("c", "occupied")]
    s.subscribers.clear()
    s.states.local_vacated("c")
    await trio.sleep(5.0)
    assert s.events == [("c", "occupied"), ("c", "vacated")]
    assert await presence.presence_stats(OCCUPANCY_PREFIX + "c") == (0, 0)


async def test_channel_states_are_refreshed_and_counted_across_nodes(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    presence = MemoryPresenceManager()
    a, b = States(presence, "a"), States(presence, "b")
    await a.start(nursery)
    await b.start(nursery)
    a.states.local_occupied("x")
    await trio.sleep(0.1)
    b.states.local_occupied("x")
    await trio.sleep(0.1)
    assert (a.events, b.events) == ([("x", "occupied")], [])
    # The entry of a node that stopped refreshing would expire in an engine with TTLs; here a
    # removed entry comes back at the next refresh.
    await presence.remove_presence(OCCUPANCY_PREFIX + "x", "a")
    await trio.sleep(11.0)
    assert (await presence.presence(OCCUPANCY_PREFIX + "x")).keys() == {"a", "b"}
    a.states.local_vacated("x")
    await trio.sleep(3.0)
    b.states.local_vacated("x")
    await trio.sleep(3.0)
    assert (a.events, b.events) == ([("x", "occupied")], [("x", "vacated")])


class FailingPresence(MemoryPresenceManager):
    async def presence_stats(self, channel: str) -> tuple[int, int]:
        raise EngineError("presence down")

    async def add_presence(self, channel: str, info: ClientInfo) -> None:
        raise EngineError("presence down")


class FlakyPresence(MemoryPresenceManager):
    down = False

    async def add_presence(self, channel: str, info: ClientInfo) -> None:
        if self.down:
            raise EngineError("presence down")
        await super().add_presence(channel, info)


async def test_channel_states_with_a_failing_engine_tell_nothing_and_go_on(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    s = States(FailingPresence())
    await s.start(nursery)
    s.states.local_occupied("y")
    await trio.sleep(1.0)
    assert s.events == []
    assert s.captured == ["channel state occupied"]
    flaky = FlakyPresence()
    f = States(flaky)
    await f.start(nursery)
    f.states.local_occupied("z")
    await trio.sleep(1.0)
    flaky.down = True
    await trio.sleep(11.0)  # the refresh fails (logged), the state machine goes on
    flaky.down = False
    f.states.local_vacated("z")
    await trio.sleep(3.0)
    assert f.events == [("z", "occupied"), ("z", "vacated")]


# --- the notifier ---


async def test_the_notifier_drops_when_full_and_contains_failures(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    told: list[Any] = []

    def on_disconnect(event: DisconnectEvent) -> None:
        if event.code == 4000:
            raise AppError(400, "no")
        if event.code == 4001:
            raise RuntimeError("hook bug")
        told.append(event.code)

    backend, observed, captured = backend_with(Hooks(on_disconnect=on_disconnect))
    monkeypatch.setattr("aether_trio.backend.notifier.QUEUE_SIZE", 2)
    notifier = Notifier(backend)
    target = backend.target("", "disconnect")
    assert isinstance(target, HookTarget)

    def event(code: int) -> DisconnectEvent:
        return DisconnectEvent(client="c", user="u", code=code, reason="r")

    for code in (4000, 4001, 4002):  # the third does not fit
        notifier.tell(target, "disconnect", event(code))
    assert notifier.statistics() == {"queued": 2, "dropped": 1}
    await nursery.start(notifier.run)
    await trio.testing.wait_all_tasks_blocked()  # the workers emptied the queue
    assert notifier.statistics() == {"queued": 0, "dropped": 1}
    notifier.tell(target, "disconnect", event(3000))
    # An event the backend cannot even be sent (no JSON): a bug of ours, contained.
    proxy_backend, _, proxy_captured = backend_with(
        proxies=(ProxyConfig(name="p", endpoint="http://127.0.0.1:9/"),)
    )
    proxy_notifier = Notifier(proxy_backend)
    await nursery.start(proxy_notifier.run)
    bad = DisconnectEvent(client="c", user="u", code=3000, reason="r", headers={})
    object.__setattr__(bad, "reason", object())
    proxy_notifier.tell(proxy_backend.target("p", "disconnect"), "disconnect", bad)
    with trio.move_on_after(5):
        while not (told and proxy_captured):  # noqa: ASYNC110 (no event to wait on)
            await trio.sleep(0.01)
    assert told, (observed, captured)
    assert proxy_captured
    assert told == [3000]
    assert ("hook", "disconnect", "dropped") in observed
    assert ("hook", "disconnect", "error") in observed
    assert ("hook", "disconnect", "hook_error") in observed
    assert [where for _exc, where in captured] == ["disconnect hook"]
    assert proxy_captured[0][1] == "disconnect event"
    await proxy_backend.aclose()


# --- hooks ---


async def test_a_coroutine_hook_over_its_timeout(autojump_clock: trio.testing.MockClock) -> None:
    async def on_rpc(event: Any) -> dict[str, Any]:
        await trio.sleep(10)
        return {}

    backend, observed, _ = backend_with(Hooks(on_rpc=on_rpc, timeout=1.0))
    with pytest.raises(ReplyError) as failed:
        await backend.call(backend.target("", "rpc"), "rpc", object(), None)
    assert int(failed.value.code) == 100
    assert observed == [("hook", "rpc", "timeout")]


# --- reload ---


async def test_configure_keeps_unchanged_proxies_and_retires_the_others() -> None:
    one = ProxyConfig(name="one", endpoint="http://127.0.0.1:1/")
    two = ProxyConfig(name="two", endpoint="http://127.0.0.1:2/")
    backend, _, _ = backend_with(proxies=(one, two))
    first_one, first_two = backend.target("one", "rpc"), backend.target("two", "rpc")
    moved = ProxyConfig(name="two", endpoint="http://127.0.0.1:3/", http_headers=("cookie",))
    retired = backend.configure((one, moved))
    assert retired == [first_two]
    assert backend.target("one", "rpc") is first_one
    assert backend.target("two", "rpc").config == moved
    assert backend.transport_headers == frozenset({"cookie"})
    second = backend.target("two", "rpc")
    retired += backend.configure(())
    assert retired == [first_two, first_one, second]
    for proxy in retired:
        await proxy.aclose()


# --- the user status store ---


def test_user_status_is_bounded_and_forgets() -> None:
    statuses = UserStatuses(max_users=2, ttl=100.0)
    statuses.update(["a"], "s", now=1000.0)
    statuses.update(["b"], "", now=1001.0)
    statuses.seen("c", now=1002.0)  # "a", the least recently touched, goes
    statuses.seen("", now=1002.0)  # anonymous: no status
    assert statuses.statistics() == {"users": 2}
    never = lambda _user: False  # noqa: E731
    assert statuses.get(["a", "b", "c"], never, now=1003.0) == [
        {"user": "a"},
        {"user": "b", "active": 1001},
        {"user": "c", "online": 1002},
    ]
    assert statuses.get(["b"], never, now=1200.0) == [{"user": "b"}]  # forgotten after the TTL
    assert statuses.statistics() == {"users": 1}


# --- wire ---


def test_wire_decoding_and_bodies() -> None:
    with pytest.raises(DecodeError, match="not JSON"):
        decode_response(b"\xff")
    result = decode_result(
        {"user": "u", "b64info": "eyJhIjoxfQ==", "subs": {"c": {"b64data": "WzFd"}}},
        ConnectResult,
    )
    assert (result.info, result.subs["c"].data) == ({"a": 1}, [1])
    with pytest.raises(DecodeError, match="info"):
        decode_result(ConnectResult(user="u", info=object()), ConnectResult)
    assert request_body(ChannelEvent(channel="c", type="vacated", time_ms=5)) == (
        b'{"events":[{"channel":"c","type":"vacated","time_ms":5}]}'
    )
