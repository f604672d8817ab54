"""Liveness and readiness (/health, /ready), the resource monitor, and error tracking.

Probes and the admin route are exercised over real HTTP; everything timed (sampling, loop lag,
service restarts) runs in-process on the autojump clock.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import httpx
import pytest
import sentry_sdk
import trio
import trio.testing
from conftest import make_config, open_raw, running_server, serve_in, token, ws_url
from sentry_sdk.envelope import Envelope
from sentry_sdk.transport import Transport
from sentry_sdk.types import Event
from trio_websocket import ConnectionClosed

from aether_trio.app import Server
from aether_trio.connection import serve
from aether_trio.connection.handlers import HANDLERS
from aether_trio.engines.memory import MemoryBroker, MemoryPresenceManager
from aether_trio.http.asgi import Request, Response
from aether_trio.node import Node
from aether_trio.observe.errors import ErrorTracker, no_frame_locals
from aether_trio.observe.metrics import Metrics
from aether_trio.observe.monitor import ResourceMonitor, ResourceSample, over_thresholds
from aether_trio.observe.readiness import Check, evaluate
from aether_trio.protocol.codec import raw_json
from aether_trio.timers import Scheduler

ADMIN_KEY = "health-admin-key-0123456789"
PUBLISHER_KEY = "health-publisher-key-0123456789"
KEYS = {
    "api": {
        "keys": [
            {"name": "ops", "key": ADMIN_KEY, "roles": ["admin"]},
            {"name": "app", "key": PUBLISHER_KEY, "roles": ["publisher"]},
        ]
    }
}
NO_HTTP = {"http": {"enabled": False}}


def checks_of(body: dict[str, Any]) -> dict[str, bool]:
    return {check["name"]: check["ok"] for check in body["checks"]}


def sample_value(server: Server, name: str, **labels: str) -> float | None:
    return server.node.metrics.registry.get_sample_value(name, labels)


# --- /health and /ready over HTTP --------------------------------------------------------------


def test_health_answers_200_with_its_check() -> None:
    with running_server(make_config()) as srv:
        base = f"http://127.0.0.1:{srv.server.http_port}"
        response = httpx.get(f"{base}/health")
        assert response.status_code == 200
        body = response.json()
        assert body["status"] == "ok"
        assert checks_of(body) == {"event_loop": True}
        assert httpx.post(f"{base}/health").status_code == 405
        assert httpx.post(f"{base}/metrics").status_code == 405


def test_ready_flips_with_maintenance_and_drain_and_back() -> None:
    with running_server(make_config(KEYS)) as srv:
        base = f"http://127.0.0.1:{srv.server.http_port}"
        admin = {"X-API-Key": ADMIN_KEY}

        def ready() -> tuple[int, dict[str, bool], float]:
            response = httpx.get(f"{base}/ready")
            metrics = httpx.get(f"{base}/metrics").text
            line = next(x for x in metrics.splitlines() if x.startswith("aether_ready "))
            return response.status_code, checks_of(response.json()), float(line.split()[1])

        status, checks, gauge = ready()
        assert (status, gauge) == (200, 1.0)
        assert set(checks) == {
            "engines", "services", "maintenance", "drain", "accepting",
            "rss", "open_files", "loop_lag", "outbox_bytes",
        }  # fmt: skip
        assert all(checks.values())

        # The operator command switches maintenance on: the node leaves the load balancer.
        answer = httpx.post(f"{base}/api/admin/maintenance", headers=admin, json={"enabled": True})
        assert answer.status_code == 200, answer.text
        status, checks, gauge = ready()
        assert (status, gauge) == (503, 0.0)
        assert [name for name, ok in checks.items() if not ok] == ["maintenance"]
        assert httpx.get(f"{base}/ready").json()["status"] == "not ready"

        httpx.post(f"{base}/api/admin/maintenance", headers=admin, json={"enabled": False})
        assert ready()[:1] == (200,)

        # Drain state, set directly on the node.
        srv.call(setattr, srv.server.node, "draining", True)
        status, checks, _gauge = ready()
        assert status == 503
        assert not checks["drain"]
        srv.call(setattr, srv.server.node, "draining", False)
        assert ready()[0] == 200


async def test_not_ready_once_shutdown_starts() -> None:
    async with trio.open_nursery() as nursery:
        server = await serve_in(nursery, make_config(NO_HTTP))
        assert all(c.ok for c in evaluate(server.node.readiness_checks))
        await server.shutdown()
        failing = [c.name for c in evaluate(server.node.readiness_checks) if not c.ok]
        assert failing == ["accepting"]
        nursery.cancel_scope.cancel()


def test_a_readiness_check_that_raises_fails_without_failing_the_probe() -> None:
    def broken() -> Check:
        raise RuntimeError("no")

    results = evaluate([broken, lambda: Check("fine", True)])
    assert [(c.name, c.ok) for c in results] == [("broken", False), ("fine", True)]


# --- resource monitor ---------------------------------------------------------------------------


async def test_a_resource_over_its_threshold_warns_fails_ready_and_sets_the_metric(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="aether_trio.observe.monitor")
    config = make_config({**NO_HTTP, "monitor": {"rss_max_bytes": 1}})
    async with trio.open_nursery() as nursery:
        server = await serve_in(nursery, config)
        failing = {c.name: c.detail for c in evaluate(server.node.readiness_checks) if not c.ok}
        assert list(failing) == ["rss"]
        assert failing["rss"].endswith("bytes > 1")
        assert sample_value(server, "aether_resource_threshold_exceeded", resource="rss") == 1
        assert sample_value(server, "aether_resource_threshold_exceeded", resource="loop_lag") == 0
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1
        assert "rss" in warnings[0].getMessage()

        # Thresholds follow the running config: lifted by a reload, cleared at the next sample.
        server.node.reload(make_config({**NO_HTTP, "monitor": {"rss_max_bytes": 0}}))
        await trio.sleep(1.5)
        assert all(c.ok for c in evaluate(server.node.readiness_checks))
        assert sample_value(server, "aether_resource_threshold_exceeded", resource="rss") == 0
        assert "back under its threshold: rss" in caplog.text
        # One warning per crossing, not one per sample.
        assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1
        nursery.cancel_scope.cancel()


async def test_event_loop_lag_is_measured_from_a_late_timer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    node: Node[Any] = Node(make_config(), MemoryBroker(), MemoryPresenceManager())
    # Samples every 1 s; lag above 0.5 s is too much.
    monitor = ResourceMonitor(node.metrics, lambda: node.config.monitor, node.outbox_bytes)

    def lag_buckets() -> tuple[float | None, ...]:
        registry = node.metrics.registry
        return tuple(
            registry.get_sample_value("aether_event_loop_lag_seconds_bucket", {"le": le})
            for le in ("0.5", "1.0")
        )

    async with trio.open_nursery() as nursery:
        await nursery.start(monitor.run)  # at T; the first timer is due at T + 1
        assert lag_buckets() == (1, 1)  # the first sample, taken at start
        await trio.sleep(0.5)
        # The loop "busy" for 1.2 s: the timer due at T + 1 runs at T + 1.7.
        autojump_clock.jump(1.2)
        await trio.sleep(0.001)
        assert monitor.last is not None
        assert monitor.last.loop_lag_seconds == pytest.approx(0.7)
        failing = [c.name for c in evaluate(monitor.checks()) if not c.ok]
        assert failing == ["loop_lag"]
        assert lag_buckets() == (1, 2)
        await trio.sleep(1.0)  # the next timer is on time
        assert monitor.last.loop_lag_seconds == 0
        assert all(c.ok for c in evaluate(monitor.checks()))
        nursery.cancel_scope.cancel()


def test_threshold_comparisons() -> None:
    sample = ResourceSample(
        rss_bytes=500, open_files=95, open_files_limit=100, cpu_seconds=1.0, cpu_ratio=0.5,
        loop_lag_seconds=0.2, outbox_bytes=2000,
    )  # fmt: skip
    defaults = make_config().monitor
    assert list(over_thresholds(sample, defaults)) == ["open_files"]
    assert over_thresholds(sample, defaults)["open_files"] == "95 of 100 (95% > 90%)"
    strict = make_config(
        {
            "monitor": {
                "rss_max_bytes": 499,
                "open_files_max_ratio": 0.0,  # off
                "loop_lag_max_seconds": 0.1,
                "outbox_max_total_bytes": 1999,
            }
        }
    ).monitor
    assert list(over_thresholds(sample, strict)) == ["rss", "loop_lag", "outbox_bytes"]


# --- error tracking -----------------------------------------------------------------------------


async def test_a_failing_service_is_reported_and_restarted_without_taking_the_server_down(
    autojump_clock: trio.testing.MockClock,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with trio.open_nursery() as nursery:
        server = await serve_in(nursery, make_config(NO_HTTP))
        node = server.node
        broker: Any = node.broker
        real_sweep = broker.sweep
        failed = trio.Event()

        def sweep_once_broken() -> None:
            monkeypatch.setattr(broker, "sweep", real_sweep)
            failed.set()
            raise RuntimeError("injected sweep failure")

        monkeypatch.setattr(broker, "sweep", sweep_once_broken)
        await failed.wait()  # the memory broker sweeps every 60 s
        await trio.sleep(0.05)  # reported; the restart waits 0.1 s
        assert node.errors.services["broker"] == "restarting"
        failing = [c.name for c in evaluate(node.readiness_checks) if not c.ok]
        assert failing == ["engines", "services"]
        [record] = node.errors.recent()
        assert (record.type, record.message, record.where) == (
            "RuntimeError", "injected sweep failure", "service broker"
        )  # fmt: skip
        assert sample_value(server, "aether_errors_total", kind="RuntimeError") == 1
        logged = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert logged
        assert logged[0].exc_info is not None

        await trio.sleep(0.1)  # restarted after the first backoff
        assert node.errors.services["broker"] == "running"
        assert all(c.ok for c in evaluate(node.readiness_checks))
        # The restarted broker delivers again: a subscriber gets a publication.
        async with open_raw(ws_url(server)) as client:
            await client.connect(token("1"))
            await client.command("subscribe", {"channel": "news"})
            await node.publish(node.resolve("news"), raw_json({"after": "restart"}))
            with trio.fail_after(5):
                while (message := await client.receive()).get("push", {}).get("channel") != (
                    "news"
                ):
                    pass
            assert message["push"]["pub"]["data"] == {"after": "restart"}
        nursery.cancel_scope.cancel()


async def test_a_service_that_fails_to_start_fails_the_start() -> None:
    tracker = ErrorTracker(10, Metrics())

    async def broken(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        raise OSError("cannot bind")

    with pytest.RaisesGroup(pytest.RaisesGroup(OSError, flatten_subgroups=True)):
        async with trio.open_nursery() as nursery:
            await nursery.start(tracker.supervise, "broken", broken)
    assert tracker.recent() == []


async def test_command_connection_timer_and_route_failures_land_in_the_ring(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with trio.open_nursery() as nursery:
        server = await serve_in(nursery, make_config(KEYS))
        errors = server.node.errors
        url = ws_url(server)

        # A command handler that raises: error 100 to the client, the connection goes on.
        async def broken_handler(client: Any, cmd_id: int, req: Any) -> None:
            raise ZeroDivisionError("injected handler failure")

        async with open_raw(url) as client:
            await client.connect(token("1"))
            monkeypatch.setitem(HANDLERS, "presence_stats", broken_handler)
            reply = await client.command("presence_stats", {"channel": "news"})
            assert reply["error"]["code"] == 100
            assert "injected" not in str(reply)
            assert "error" not in await client.command("history", {"channel": "news"})

        # A connection task that crashes: that connection ends, the server stays.
        async def crash(client: Any) -> None:
            raise KeyError("injected connection failure")

        monkeypatch.setattr(serve, "read_loop", crash)
        async with open_raw(url) as doomed:
            # Closed, any way: maybe before the send already (the crash is immediate).
            with trio.fail_after(5), pytest.raises(ConnectionClosed):
                await doomed.send_then_read_until_closed(
                    {"id": 1, "connect": {"token": token("2")}}
                )
        monkeypatch.undo()

        # A timer callback and an HTTP route that raise.
        def broken_timer() -> None:
            raise LookupError("injected timer failure")

        server.node.scheduler.call_later(0, broken_timer)

        async def broken_route(request: Request) -> Response:
            raise ValueError("injected route failure")

        server.http_app.route("/boom", broken_route)
        base = f"http://127.0.0.1:{server.http_port}"
        async with httpx.AsyncClient(base_url=base, timeout=5) as http:
            assert (await http.get("/boom")).status_code == 500
            assert {(r.type, r.where) for r in errors.recent()} == {
                ("ZeroDivisionError", "command presence_stats"),
                ("KeyError", "connection"),
                ("LookupError", "timer callback"),
                ("ValueError", "HTTP GET /boom"),
            }
            for kind in ("ZeroDivisionError", "KeyError", "LookupError", "ValueError"):
                assert sample_value(server, "aether_errors_total", kind=kind) == 1

            # GET /admin/errors: admin keys only, newest first.
            assert (await http.get("/admin/errors")).status_code == 401
            publisher = {"X-API-Key": PUBLISHER_KEY}
            assert (await http.get("/admin/errors", headers=publisher)).status_code == 403
            answer = await http.get(
                "/admin/errors", headers={"X-API-Key": ADMIN_KEY, "X-Request-Id": "req-42"}
            )
            assert answer.status_code == 200
            assert answer.headers["x-request-id"] == "req-42"
            body = answer.json()
            assert body["total"] == 4
            assert [e["type"] for e in body["errors"]][-1] == "ZeroDivisionError"  # the oldest
            newest = body["errors"][0]
            assert set(newest) == {"time", "timestamp", "type", "message", "where"}
            limited = await http.get("/admin/errors?limit=1", headers={"X-API-Key": ADMIN_KEY})
            assert limited.json()["errors"] == [newest]
        nursery.cancel_scope.cancel()


def test_the_ring_is_bounded_and_messages_truncated() -> None:
    tracker = ErrorTracker(3, Metrics())
    for n in range(5):
        tracker.capture(ValueError(f"error {n} " + "x" * 1000), "test")
    records = tracker.recent()
    assert [r.message[:7] for r in records] == ["error 4", "error 3", "error 2"]
    assert all(len(r.message) == 300 for r in records)
    assert tracker.total == 5


def test_an_exception_group_counts_each_of_its_errors() -> None:
    tracker = ErrorTracker(10, Metrics())
    group = ExceptionGroup("two", [ValueError("a"), ExceptionGroup("one", [KeyError("b")])])
    tracker.capture(group, "test")
    assert sorted(r.type for r in tracker.recent()) == ["KeyError", "ValueError"]


async def test_timer_failures_reach_the_hook(autojump_clock: trio.testing.MockClock) -> None:
    def fail() -> None:
        raise ZeroDivisionError

    seen: list[tuple[str, str]] = []
    scheduler = Scheduler()
    scheduler.on_error = lambda exc, where: seen.append((type(exc).__name__, where))
    async with trio.open_nursery() as nursery:
        await nursery.start(scheduler.run)
        scheduler.call_later(1, fail)
        await trio.sleep(2)
        nursery.cancel_scope.cancel()
    assert seen == [("ZeroDivisionError", "timer callback")]


# --- Sentry -------------------------------------------------------------------------------------

FAKE_DSN = "https://0123456789abcdef0123456789abcdef@sentry.invalid/42"


class CapturingTransport(Transport):
    """Keeps the envelopes the SDK would send (nothing leaves the process)."""

    envelopes: list[Envelope] = []

    def capture_envelope(self, envelope: Envelope) -> None:
        CapturingTransport.envelopes.append(envelope)


def _events() -> list[Event]:
    return [e for env in CapturingTransport.envelopes if (e := env.get_event()) is not None]


async def test_with_a_dsn_errors_also_go_to_sentry(monkeypatch: pytest.MonkeyPatch) -> None:
    CapturingTransport.envelopes = []
    inits: list[dict[str, Any]] = []
    real_init = sentry_sdk.init

    def recording_init(*args: Any, **kwargs: Any) -> Any:
        inits.append(kwargs)
        return real_init(*args, **kwargs)

    monkeypatch.setattr(sentry_sdk, "init", recording_init)
    server = Server(make_config({**NO_HTTP, "monitor": {"sentry_dsn": FAKE_DSN}}))
    server.node.errors.sentry_options = {"transport": CapturingTransport}

    runtime_secret = uuid.uuid4().hex

    async def broken_handler(client: Any, cmd_id: int, req: Any) -> None:
        secret_local = f"{client.user}:{runtime_secret}"  # noqa: F841 (Sentry must not send it)
        raise ZeroDivisionError("injected for sentry")

    monkeypatch.setitem(HANDLERS, "presence_stats", broken_handler)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        async with open_raw(ws_url(server)) as client:
            await client.connect(token("1"))
            reply = await client.command("presence_stats", {"channel": "news"})
            assert reply["error"]["code"] == 100
        nursery.cancel_scope.cancel()

    assert len(inits) == 1
    assert inits[0]["dsn"] == FAKE_DSN
    assert no_frame_locals(sentry_sdk.VERSION).items() <= inits[0].items()
    assert not inits[0].get("send_default_pii")
    [event] = _events()
    [exception] = event["exception"]["values"]
    assert (exception["type"], exception["value"]) == ("ZeroDivisionError", "injected for sentry")
    assert event["tags"]["where"] == "command presence_stats"
    assert runtime_secret not in str(event)  # no frame locals
    # Closed with the server: later errors are not sent.
    server.node.errors.capture(RuntimeError("after"), "test")
    assert len(_events()) == 1


async def test_without_a_dsn_sentry_is_not_initialised(monkeypatch: pytest.MonkeyPatch) -> None:
    inits: list[Any] = []
    monkeypatch.setattr(sentry_sdk, "init", lambda *a, **k: inits.append(k))
    tracker = ErrorTracker(10, Metrics())
    async with trio.open_nursery() as nursery:
        await nursery.start(tracker.run, "")
        tracker.capture(RuntimeError("local only"), "test")
        nursery.cancel_scope.cancel()
    assert inits == []
    assert tracker.total == 1


@pytest.mark.parametrize(
    ("version", "option"),
    [
        ("2.19.0", {"include_local_variables": False}),
        ("3.0.1", {"data_collection": {"stack_frame_variables": False}}),
    ],
)
def test_frame_locals_are_turned_off_in_each_sdk_generation(
    version: str, option: dict[str, Any]
) -> None:
    assert no_frame_locals(version) == option
