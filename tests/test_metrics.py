"""/metrics: a scripted session with the real centrifuge-python SDK (and one server API call), then
every counter checked to have moved by exactly what the session did, from two real scrapes parsed
with prometheus_client's own parser. Plus the units under it: the cheap fan-out accounting, the
write-latency probe of the writer (its unit tests: test_writer.py), bounded labels.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest
from centrifuge import (
    Client,
    ClientEventHandler,
    DisconnectedContext,
    PublicationContext,
    ReplyError,
    SubscribedContext,
    SubscriptionEventHandler,
)
from conftest import make_config, running_server, token
from prometheus_client.parser import text_string_to_metric_families

from aether_trio.hub import Hub
from aether_trio.observe.metrics import MAX_LABEL_VALUES, Metrics
from aether_trio.protocol.codec import JSON
from aether_trio.protocol.codes import Disconnect, ErrorCode
from aether_trio.protocol.messages import Publication, RawJSON

API_KEY = "metrics-test-key-0123456789"
CONFIG: dict[str, Any] = {
    "api": {"keys": [{"name": "ops", "key": API_KEY, "roles": ["admin"]}]},
}
WAIT = 5.0

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of a scrape; parsing at all proves the exposition is well-formed."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def scrape(base: str) -> tuple[str, Samples]:
    response = httpx.get(f"{base}/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    return response.text, parse(response.text)


class Events(ClientEventHandler):
    def __init__(self) -> None:
        self.disconnected: asyncio.Queue[DisconnectedContext] = asyncio.Queue()

    async def on_disconnected(self, ctx: DisconnectedContext) -> None:
        self.disconnected.put_nowait(ctx)


class SubEvents(SubscriptionEventHandler):
    def __init__(self) -> None:
        self.subscribed = asyncio.Event()
        self.publications: list[Any] = []
        self.changed = asyncio.Event()

    async def on_subscribed(self, ctx: SubscribedContext) -> None:
        self.subscribed.set()

    async def on_publication(self, ctx: PublicationContext) -> None:
        self.publications.append(ctx.pub.data)
        self.changed.set()

    async def received(self, count: int) -> None:
        async with asyncio.timeout(WAIT):
            while len(self.publications) < count:
                self.changed.clear()
                await self.changed.wait()


def test_a_scripted_session_moves_every_counter_by_what_it_did() -> None:
    with running_server(make_config(CONFIG)) as srv:
        base = f"http://127.0.0.1:{srv.server.http_port}"
        _text, before = scrape(base)
        during: dict[str, Any] = {}

        async def session() -> None:
            alice = Client(srv.url, token=token("1"), proxy=None)
            bob = Client(srv.url, token=token("2"), proxy=None)
            intruder_events = Events()
            intruder = Client(srv.url, token="not-a-jwt", events=intruder_events, proxy=None)
            try:
                await alice.connect()
                await bob.connect()
                await alice.ready(timeout=WAIT)
                await bob.ready(timeout=WAIT)
                subs = []
                for client in (alice, bob):
                    events = SubEvents()
                    sub = client.new_subscription("news", events=events)
                    await sub.subscribe()
                    async with asyncio.timeout(WAIT):
                        await events.subscribed.wait()
                    subs.append((sub, events))
                (alice_sub, _), (_, bob_events) = subs
                for n in range(3):
                    await alice_sub.publish({"n": n})
                await alice_sub.history(limit=10)
                await alice_sub.presence_stats()
                with pytest.raises(ReplyError) as refused:
                    await alice.publish("nowhere:x", {"n": -1})  # unknown namespace
                assert refused.value.code == ErrorCode.UNKNOWN_CHANNEL
                async with httpx.AsyncClient(base_url=base, timeout=WAIT) as http:
                    answer = await http.post(
                        "/api/publish",
                        headers={"X-API-Key": API_KEY},
                        json={"channel": "news", "data": {"n": 3}},
                    )
                    assert answer.status_code == 200, answer.text
                    await bob_events.received(4)
                    during["samples"] = parse((await http.get("/metrics")).text)
                    # (Other features may add server-side channels: compare with the hub.)
                    during["hub"] = srv.call(srv.server.node.hub.statistics)
                await intruder.connect()
                async with asyncio.timeout(WAIT):
                    gone = await intruder_events.disconnected.get()
                assert gone.code == Disconnect.INVALID_TOKEN
            finally:
                for client in (alice, bob, intruder):
                    await client.disconnect()
                # Let the SDK finish its close handshakes and background tasks.
                current = asyncio.current_task()
                pending = [t for t in asyncio.all_tasks() if t is not current]
                if pending:
                    await asyncio.wait(pending, timeout=2.0)

        asyncio.run(session())
        # Connections end asynchronously on the server: wait until both are unregistered.
        deadline = time.monotonic() + WAIT
        while srv.call(len, srv.server.node.clients) and time.monotonic() < deadline:
            time.sleep(0.02)
        text, after = scrape(base)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert all(name.startswith("aether_") for name, _labels in after)
    # connects and auth
    assert delta("aether_connects_total", result="ok") == 2
    assert delta("aether_connects_total", result="invalid_token") == 1
    assert delta("aether_auth_failures_total", method="connect", reason="invalid_token") == 1
    # commands by method and result, timed
    assert delta("aether_commands_total", method="connect", result="ok") == 2
    assert delta("aether_commands_total", method="connect", result="disconnect") == 1
    assert delta("aether_commands_total", method="subscribe", result="ok") == 2
    assert delta("aether_commands_total", method="publish", result="ok") == 3
    assert delta("aether_commands_total", method="publish", result="error") == 1
    assert delta("aether_commands_total", method="history", result="ok") == 1
    assert delta("aether_commands_total", method="presence_stats", result="ok") == 1
    assert delta("aether_command_duration_seconds_count", method="publish") == 4
    assert delta("aether_command_duration_seconds_sum", method="publish") > 0
    # publications, deliveries, fan-out, write latency
    assert delta("aether_publications_total", namespace="", source="client") == 3
    assert delta("aether_publications_total", namespace="", source="api") == 1
    assert delta("aether_deliveries_total", kind="publication") == 8  # 4 publications x 2
    assert delta("aether_broadcast_fanout_subscribers_count") == 4
    assert delta("aether_broadcast_fanout_subscribers_sum") == 8
    assert delta("aether_broadcast_fanout_subscribers_bucket", le="1.0") == 0
    assert delta("aether_broadcast_fanout_subscribers_bucket", le="2.0") == 4
    assert 1 <= delta("aether_publish_write_latency_seconds_count") <= 4
    # the server API
    assert delta("aether_api_requests_total", method="publish", status="200") == 1
    assert delta("aether_api_request_duration_seconds_count", method="publish") == 1
    # disconnects: the two SDK clients closed (peer), the intruder was closed with 3500
    assert delta("aether_disconnects_total", code="peer") == 2
    assert delta("aether_disconnects_total", code="3500") == 1
    assert delta("aether_slow_consumer_disconnects_total") == 0
    assert delta("aether_errors_total", kind="RuntimeError") == 0
    # gauges computed at scrape time
    mid = during["samples"]
    assert value(mid, "aether_connections") == 2
    assert value(mid, "aether_presence_entries") == 2
    hub = during["hub"]
    assert value(mid, "aether_hub_channels") == hub.channels >= 1
    assert value(mid, "aether_hub_subscriptions") == hub.subscriptions >= 2
    assert value(mid, "aether_history_streams") == 1
    assert value(mid, "aether_history_publications") == 4
    assert value(after, "aether_connections") == 0
    assert value(after, "aether_outbox_bytes") == 0
    assert value(after, "aether_trio_tasks") > 5
    assert value(after, "aether_ready") == 1
    assert value(after, "aether_readiness_check", check="maintenance") == 1
    assert value(after, "aether_event_loop_lag_seconds_count") >= 1
    # the process collector
    assert value(after, "aether_process_resident_memory_bytes") > 1 << 20
    assert value(after, "aether_process_cpu_seconds_total") > 0
    assert 0 < value(after, "aether_process_open_fds") < value(after, "aether_process_max_fds")
    assert len(text) < 32_000  # a scrape stays small: no per-channel or per-user series


def test_no_series_is_labelled_by_channel_or_user() -> None:
    metrics = Metrics()
    metrics.published("chat", "client")
    metrics.command("subscribe", "ok", 0.001)
    labels = {
        name
        for family in text_string_to_metric_families(metrics.exposition().decode())
        for sample in family.samples
        for name in sample.labels
    }
    assert labels <= {"method", "result", "reason", "namespace", "source", "kind", "code",
                      "status", "resource", "check", "version", "le"}  # fmt: skip


def test_open_ended_label_values_are_capped() -> None:
    metrics = Metrics()
    for n in range(MAX_LABEL_VALUES + 50):
        metrics.api_request(f"method{n}", 200)
        metrics.error(f"Error{n}")
    samples = parse(metrics.exposition().decode())
    methods = {
        dict(labels)["method"] for name, labels in samples if name == "aether_api_requests_total"
    }
    assert len(methods) == MAX_LABEL_VALUES + 1
    assert value(samples, "aether_api_requests_total", method="other", status="200") == 50
    assert value(samples, "aether_errors_total", kind="other") == 50


def test_slow_consumer_disconnects_are_counted_twice_over() -> None:
    metrics = Metrics()
    metrics.disconnected(Disconnect.SLOW)
    metrics.disconnected(Disconnect.SHUTDOWN)
    metrics.disconnected(None)
    samples = parse(metrics.exposition().decode())
    assert value(samples, "aether_slow_consumer_disconnects_total") == 1
    assert value(samples, "aether_disconnects_total", code="3008") == 1
    assert value(samples, "aether_disconnects_total", code="3001") == 1
    assert value(samples, "aether_disconnects_total", code="peer") == 1


def test_auth_failures_come_from_the_refusal_codes_of_auth_commands() -> None:
    metrics = Metrics()
    metrics.command("connect", ErrorCode.TOKEN_EXPIRED, 0.0)
    metrics.command("subscribe", ErrorCode.PERMISSION_DENIED, 0.0)
    metrics.command("refresh", Disconnect.EXPIRED, 0.0)
    metrics.command("publish", ErrorCode.PERMISSION_DENIED, 0.0)  # not an auth command
    metrics.command("subscribe", ErrorCode.UNKNOWN_CHANNEL, 0.0)  # not an auth code
    samples = parse(metrics.exposition().decode())
    failures = {
        tuple(sorted(dict(labels).items())): v
        for (name, labels), v in samples.items()
        if name == "aether_auth_failures_total"
    }
    assert failures == {
        (("method", "connect"), ("reason", "token_expired")): 1,
        (("method", "subscribe"), ("reason", "permission_denied")): 1,
        (("method", "refresh"), ("reason", "expired")): 1,
    }
    assert value(samples, "aether_connects_total", result="token_expired") == 1


# --- the hot path ------------------------------------------------------------------------------


class _Subscriber:
    push_join_leave = False
    codec = JSON
    accepts = None
    delta = False
    compact = False
    channel_id = 0
    route: Any = None

    def __init__(self, client_id: str) -> None:
        self.client_id = client_id
        self.received = 0

    def deliver(self, message: bytes, offset: int) -> None:
        self.received += 1

    def deliver_delta(self, source: Any, data: Any, offset: int) -> None:
        raise AssertionError("not a delta subscriber")


def test_a_broadcast_costs_one_metric_update_whatever_its_fan_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from aether_trio.engines.memory import MemoryBroker, MemoryPresenceManager
    from aether_trio.node import Node

    node: Node[Any] = Node(make_config(), MemoryBroker(), MemoryPresenceManager())
    calls: list[int] = []
    monkeypatch.setattr(node.metrics, "broadcast", calls.append)
    subscribers = [_Subscriber(str(n)) for n in range(1000)]
    for sub in subscribers:
        node.hub.add("news", sub)
    node.handle_publication("news", Publication(data=RawJSON(b"{}"), offset=1))
    assert calls == [1000]
    assert all(sub.received == 1 for sub in subscribers)


def test_hub_first_subscriber_is_the_longest_standing() -> None:
    hub = Hub()
    assert hub.first_subscriber("news") is None
    first, second = _Subscriber("a"), _Subscriber("b")
    hub.add("news", first)
    hub.add("news", second)
    assert hub.first_subscriber("news") is first
    hub.remove("news", "a")
    assert hub.first_subscriber("news") is second
