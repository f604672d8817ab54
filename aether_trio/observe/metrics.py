"""Prometheus metrics of one node, in a registry of its own, rendered in-process for `/metrics`.

Each `Metrics` owns a `CollectorRegistry` (no process-global default registry, no exporter thread):
two servers in one process, as in the tests, never share a counter, and `/metrics` is a plain route
that calls `generate_latest` inside the Trio run.

Two kinds of metric:
- events (counters, histograms) are updated where they happen. The hot path pays once per event it
  already handles: a broadcast counts its deliveries with one `inc(n)` and one `observe(n)`, never
  per subscriber. Labelled children are looked up once and cached, because `labels()` costs about
  three times an `inc`.
- levels (connections, queued outbox bytes, history, presence, Trio tasks, readiness) are gauges
  computed at scrape time by `NodeCollector` from a small view the node hands it (`NodeLevels`
  and its readiness checks), so keeping them current costs nothing between scrapes.

Labels are bounded: method, result, close or error code, namespace (configured), never a channel
or a user. Values that come from outside the code's own tables (API method names, exception type
names) are capped at `MAX_LABEL_VALUES` distinct values; the rest are counted as "other".
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import attrs
import trio
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .._version import __version__
from ..protocol.codes import Disconnect, ErrorCode
from .readiness import ReadinessCheck, evaluate

__all__ = ["MAX_LABEL_VALUES", "Metrics", "NodeCollector", "NodeLevels", "Outcome", "count_tasks"]

# `*_created` series double the exposition and nothing here uses them. (A process-wide switch of
# prometheus_client; Aether is its only user in the server process.)
disable_created_metrics()  # type: ignore[no-untyped-call]

LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
)  # fmt: skip
FANOUT_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 25000, 100000)
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
MAX_LABEL_VALUES = 64
OTHER = "other"

# What a command ended with: "ok", a refusal (ErrorCode: error reply; Disconnect: close),
# "internal" (an unexpected exception) or "cancelled".
Outcome = str | ErrorCode | Disconnect

# Refusals of these commands with these codes are authentication/authorization failures.
AUTH_METHODS = frozenset({"connect", "refresh", "subscribe", "sub_refresh"})
AUTH_CODES: frozenset[ErrorCode | Disconnect] = frozenset(
    {
        ErrorCode.UNAUTHORIZED,
        ErrorCode.PERMISSION_DENIED,
        ErrorCode.TOKEN_EXPIRED,
        Disconnect.INVALID_TOKEN,
        Disconnect.PERMISSION_DENIED,
        Disconnect.EXPIRED,
    }
)


def _result(outcome: Outcome) -> str:
    if isinstance(outcome, ErrorCode):
        return "error"
    if isinstance(outcome, Disconnect):
        return "disconnect"
    return outcome


def _reason(outcome: Outcome) -> str:
    """A bounded, readable label: "ok", "token_expired", "invalid_token", "internal", ..."""
    return outcome.name.lower() if isinstance(outcome, ErrorCode | Disconnect) else outcome


class Metrics:
    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        # RSS, virtual memory, CPU seconds, open files and their limit, start time: read from /proc
        # at scrape time (on Linux; elsewhere it yields nothing).
        ProcessCollector(namespace="aether", registry=registry)

        def counter(name: str, doc: str, labels: Iterable[str] = ()) -> Counter:
            return Counter(name, doc, list(labels), registry=registry)

        def histogram(
            name: str, doc: str, buckets: Iterable[float], labels: Iterable[str] = ()
        ) -> Histogram:
            return Histogram(name, doc, list(labels), registry=registry, buckets=tuple(buckets))

        self.connects = counter(
            "aether_connects", "Connect commands by result (ok or the refusal)", ["result"]
        )
        self.disconnects = counter(
            "aether_disconnects",
            'Closed connections by the close code the server sent ("peer": the client closed)',
            ["code"],
        )
        self.slow_consumer_disconnects = counter(
            "aether_slow_consumer_disconnects",
            "Connections closed with 3008 because their outbox overflowed",
        )
        self.commands = counter(
            "aether_commands",
            "Client commands by method and result (ok, error, disconnect, internal, cancelled)",
            ["method", "result"],
        )
        self.command_duration = histogram(
            "aether_command_duration_seconds",
            "Time to handle a client command",
            LATENCY_BUCKETS,
            ["method"],
        )
        self.auth_failures = counter(
            "aether_auth_failures",
            "Refused authentication or authorization, by command and reason",
            ["method", "reason"],
        )
        self.publications = counter(
            "aether_publications",
            "Publications by channel namespace and source (client, api)",
            ["namespace", "source"],
        )
        self.deliveries = counter(
            "aether_deliveries",
            "Pushes handed to subscribers' outboxes by fan-out (publication, join, leave)",
            ["kind"],
        )
        self.fanout = histogram(
            "aether_broadcast_fanout_subscribers",
            "Subscribers on this node reached by one publication",
            FANOUT_BUCKETS,
        )
        self.publish_write_latency = histogram(
            "aether_publish_write_latency_seconds",
            "From a publication's fan-out to the write of the frame carrying it, sampled on one "
            "subscriber per broadcast",
            LATENCY_BUCKETS,
        )
        self.api_requests = counter(
            "aether_api_requests",
            "Server API requests by method and HTTP status",
            ["method", "status"],
        )
        self.api_request_duration = histogram(
            "aether_api_request_duration_seconds",
            "Time to handle a server API request",
            LATENCY_BUCKETS,
            ["method"],
        )
        self.errors = counter(
            "aether_errors", "Unexpected exceptions caught at a task boundary, by type", ["kind"]
        )
        self.refusals = counter(
            "aether_refusals",
            "Refused by a [limits] limit or the origin check (rate_limited, connection_limit, "
            "origin, too_large)",
            ["reason"],
        )
        self.slow_close_frames = counter(
            "aether_slow_consumer_close_frames",
            "Close frames (3008) to slow consumers: sent, or dropped when the socket did not take "
            "it within close_wait_seconds",
            ["outcome"],
        )
        self.handshake_failures = counter(
            "aether_handshake_failures",
            "WebSocket handshakes that did not complete, by reason (peer_gone, bad_request, "
            "too_large, timeout, tls, subprotocol)",
            ["reason"],
        )
        self.loop_lag = histogram(
            "aether_event_loop_lag_seconds",
            "How late the monitor's timer woke up (time the event loop was busy elsewhere)",
            LAG_BUCKETS,
        )
        self.proxy_calls = counter(
            "aether_proxy_calls",
            'Calls to the application\'s backend by proxy name ("hook": in-process), kind '
            "(connect, refresh, subscribe, publish, sub_refresh, rpc) and result (ok, error, "
            "disconnect, timeout, unreachable, status, bad_response, hook_error, cancelled)",
            ["proxy", "kind", "result"],
        )
        self.proxy_call_duration = histogram(
            "aether_proxy_call_duration_seconds",
            "Time a call to the application's backend took, retries included",
            LATENCY_BUCKETS,
            ["proxy", "kind"],
        )
        self.threshold_exceeded = Gauge(
            "aether_resource_threshold_exceeded",
            "1 while a [monitor] threshold is exceeded",
            ["resource"],
            registry=registry,
        )
        self._commands: dict[tuple[str, Outcome], tuple[Any, ...]] = {}
        self._disconnects: dict[int | None, Any] = {}
        self._publications: dict[tuple[str, str], Any] = {}
        self._deliveries = {
            kind: self.deliveries.labels(kind) for kind in ("publication", "join", "leave")
        }
        self._capped: dict[tuple[int, tuple[str, ...]], Any] = {}
        self._capped_seen: dict[int, set[str]] = {}
        self._fanout_observe = self.fanout.observe
        self._publication_deliveries = self._deliveries["publication"].inc

    # --- events ---

    def command(self, method: str, outcome: Outcome, seconds: float) -> None:
        children = self._commands.get((method, outcome))
        if children is None:
            children = self._commands[(method, outcome)] = self._command_children(method, outcome)
        count, duration, *extra = children
        count.inc()
        duration.observe(seconds)
        for child in extra:
            child.inc()

    def _command_children(self, method: str, outcome: Outcome) -> tuple[Any, ...]:
        children = [
            self.commands.labels(method, _result(outcome)),
            self.command_duration.labels(method),
        ]
        if method == "connect":
            children.append(self.connects.labels(_reason(outcome)))
        if method in AUTH_METHODS and outcome in AUTH_CODES:
            children.append(self.auth_failures.labels(method, _reason(outcome)))
        return tuple(children)

    def disconnected(self, code: int | None) -> None:
        """A connection ended; `code` is the close code the server sent, None if the peer left."""
        child = self._disconnects.get(code)
        if child is None:
            child = self._disconnects[code] = self.disconnects.labels(
                "peer" if code is None else str(code)
            )
        child.inc()
        if code == Disconnect.SLOW:
            self.slow_consumer_disconnects.inc()

    def published(self, namespace: str, source: str) -> None:
        child = self._publications.get((namespace, source))
        if child is None:
            child = self._publications[(namespace, source)] = self.publications.labels(
                namespace, source
            )
        child.inc()

    def broadcast(self, receivers: int) -> None:
        """One publication was handed to `receivers` subscribers (> 0)."""
        self._publication_deliveries(receivers)
        self._fanout_observe(receivers)

    def join_leave(self, kind: str, receivers: int) -> None:
        self._deliveries[kind].inc(receivers)

    def api_request(self, method: str, status: int, seconds: float | None = None) -> None:
        """For the server API: count one request (`method` as in `/api/<method>`)."""
        self._capped_child(self.api_requests, method, str(status)).inc()
        if seconds is not None:
            self._capped_child(self.api_request_duration, method).observe(seconds)

    def proxy_call(self, proxy: str, kind: str, result: str, seconds: float) -> None:
        """A call to the backend ended; `proxy` is a [[proxies]] name (bounded by the config)."""
        self._capped_child(self.proxy_calls, proxy, kind, result).inc()
        self._capped_child(self.proxy_call_duration, proxy, kind).observe(seconds)

    def error(self, kind: str) -> None:
        self._capped_child(self.errors, kind).inc()

    def refused(self, reason: str) -> None:
        """A limit refused something; `reason` is one of guards.limits.REFUSAL_REASONS."""
        self._capped_child(self.refusals, reason).inc()

    def slow_close(self, frame_sent: bool) -> None:
        self.slow_close_frames.labels("sent" if frame_sent else "dropped").inc()

    def handshake_failed(self, reason: str) -> None:
        """A handshake did not complete; `reason` is one of transport.HANDSHAKE_FAILURES."""
        self._capped_child(self.handshake_failures, reason).inc()

    def _capped_child(self, metric: Any, first: str, *rest: str) -> Any:
        """The child for labels (first, *rest), where `first` comes from outside the code."""
        key = (id(metric), (first, *rest))
        child = self._capped.get(key)
        if child is None:
            seen = self._capped_seen.setdefault(id(metric), set())
            if first not in seen and first != OTHER and len(seen) >= MAX_LABEL_VALUES:
                return self._capped_child(metric, OTHER, *rest)
            seen.add(first)
            child = self._capped[key] = metric.labels(first, *rest)
        return child

    # --- scraping ---

    def watch(
        self, levels: Callable[[], NodeLevels], checks: Callable[[], Iterable[ReadinessCheck]]
    ) -> None:
        """Add the scrape-time gauges: the node's `levels` and its readiness `checks` (once)."""
        self.registry.register(NodeCollector(levels, checks))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def count_tasks() -> int | None:
    """Tasks alive in the current Trio run (walks the task tree from the root); None outside
    a Trio run (a test calling `generate_latest` from another thread)."""
    try:
        root = trio.lowlevel.current_root_task()
    except RuntimeError:
        return None
    count = 0
    todo = [root] if root is not None else []
    while todo:
        task = todo.pop()
        count += 1
        for nursery in task.child_nurseries:
            todo.extend(nursery.child_tasks)
    return count


@attrs.frozen
class NodeLevels:
    """What the node's scrape-time gauges show, read at scrape time (`Metrics.watch`)."""

    connections: int
    outbox_bytes: int  # queued in every connection's outbox
    hub_channels: int
    hub_subscriptions: int
    # From the engines' `statistics()`, where they keep count (None: they do not).
    history_streams: int | None = None
    history_publications: int | None = None
    presence_entries: int | None = None


class NodeCollector(Collector):
    """Gauges computed when scraped, from the node's levels and readiness checks."""

    def __init__(
        self, levels: Callable[[], NodeLevels], checks: Callable[[], Iterable[ReadinessCheck]]
    ) -> None:
        self._levels = levels
        self._checks = checks

    def describe(self) -> Iterable[Metric]:
        return ()  # computed at scrape time; nothing to register up front

    def collect(self) -> Iterator[Metric]:
        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, value=value)

        info = GaugeMetricFamily("aether_build_info", "Aether version", labels=["version"])
        info.add_metric([__version__], 1)
        yield info
        levels = self._levels()
        yield gauge("aether_connections", "Connected (authenticated) clients", levels.connections)
        yield gauge(
            "aether_outbox_bytes", "Bytes queued in all connections' outboxes", levels.outbox_bytes
        )
        yield gauge(
            "aether_hub_channels", "Channels with subscribers on this node", levels.hub_channels
        )
        yield gauge(
            "aether_hub_subscriptions", "Subscriptions on this node", levels.hub_subscriptions
        )
        for name, doc, value in (
            ("aether_history_streams", "Channel streams kept", levels.history_streams),
            ("aether_history_publications", "Publications kept", levels.history_publications),
            ("aether_presence_entries", "Presence entries kept", levels.presence_entries),
        ):
            if value is not None:
                yield gauge(name, doc, value)
        tasks = count_tasks()
        if tasks is not None:
            yield gauge("aether_trio_tasks", "Tasks alive in the Trio run", tasks)
        checks = evaluate(self._checks())
        yield gauge("aether_ready", "1 if every readiness check passes", all(c.ok for c in checks))
        per_check = GaugeMetricFamily(
            "aether_readiness_check", "1 if this readiness check passes", labels=["check"]
        )
        for check in checks:
            per_check.add_metric([check.name], check.ok)
        yield per_check
