"""`aether healthcheck`: one running server probed end to end, the answer for a monitor.

The steps, in order, each bounded by the step timeout; the first CRITICAL one ends the probe
(the later ones are reported as skipped):

    health     GET /health answers 200                                   else CRITICAL
    ready      GET /ready answers 200 (a 503 names the failing checks)    else CRITICAL
    connect    a WebSocket to the client endpoint, `connect` with a minted token
    subscribe  a probe channel of its own, with a minted subscription token
    publish    POST /api/publish into it with the publisher key
    deliver    the publication arrives on the socket: the round trip, publish to arrival
               (above `warning_rtt`: WARNING)
    metrics    GET /metrics parses (prometheus_client's parser) and has the expected families
               (else WARNING: clients are served, monitoring is blind)

Exit codes as Nagios plugins have them: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (the probe could
not run: no usable configuration). One line on stdout names the status and the failing step,
with performance data after `|`; `--json` prints one JSON object instead.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import orjson
import trio
from prometheus_client.parser import text_string_to_metric_families
from trio_websocket import WebSocketConnection, open_websocket_url

from .probe import Target, http_get, http_post, probe_channel

__all__ = ["EXPECTED_FAMILIES", "STEPS", "Report", "Status", "StepResult", "run_healthcheck"]

STEPS = ("health", "ready", "connect", "subscribe", "publish", "deliver", "metrics")
# Families (names without `_total`) a healthy scrape has: build, connections, readiness, the
# publications and API requests the probe itself just caused, the process collector.
EXPECTED_FAMILIES = frozenset(
    {
        "aether_build_info",
        "aether_connections",
        "aether_ready",
        "aether_publications",
        "aether_api_requests",
        "aether_process_open_fds",
    }
)


class Status(enum.IntEnum):
    """Nagios plugin states; the value is the exit code."""

    OK = 0
    WARNING = 1
    CRITICAL = 2
    UNKNOWN = 3


class StepFailed(Exception):
    def __init__(self, status: Status, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


@attrs.frozen
class StepResult:
    name: str
    status: Status | None  # None: skipped after an earlier CRITICAL
    seconds: float
    detail: str


@attrs.frozen
class Report:
    steps: tuple[StepResult, ...]
    round_trip_seconds: float | None
    warning_rtt: float

    @property
    def status(self) -> Status:
        states = [s.status for s in self.steps if s.status is not None]
        return max(states, default=Status.UNKNOWN)

    @property
    def failed(self) -> StepResult | None:
        """The step that decided the status (the first of the worst), None when OK."""
        status = self.status
        if status is Status.OK:
            return None
        return next((s for s in self.steps if s.status is status), None)

    def line(self) -> str:
        """`AETHER <STATUS> - <summary> | <perfdata>`, the Nagios plugin format."""
        failed = self.failed
        if failed is None:
            rtt = self.round_trip_seconds or 0.0
            summary = f"{len(self.steps)} steps OK, publish to delivery {rtt * 1000:.1f} ms"
        else:
            summary = f"{failed.name}: {failed.detail}"
        perf = [f"{s.name}={s.seconds:.6f}s" for s in self.steps if s.status is not None]
        if self.round_trip_seconds is not None:
            perf.insert(0, f"rtt={self.round_trip_seconds:.6f}s;{self.warning_rtt:g};;0")
        return f"AETHER {self.status.name} - {summary} | {' '.join(perf)}"

    def jsonable(self) -> dict[str, Any]:
        failed = self.failed
        return {
            "status": self.status.name,
            "code": int(self.status),
            "failed_step": failed.name if failed else None,
            "summary": self.line().partition(" - ")[2].partition(" | ")[0],
            "round_trip_seconds": self.round_trip_seconds,
            "steps": [
                {
                    "name": s.name,
                    "status": s.status.name if s.status is not None else "SKIPPED",
                    "seconds": round(s.seconds, 6),
                    "detail": s.detail,
                }
                for s in self.steps
            ],
        }


class _Probe:
    """One run: the steps share the socket, the channel and the publish time."""

    def __init__(self, target: Target, nursery: trio.Nursery, warning_rtt: float) -> None:
        self.target = target
        self.nursery = nursery
        self.warning_rtt = warning_rtt
        self.ws: WebSocketConnection | None = None
        self.channel = probe_channel(target.namespace)
        self.nonce = self.channel.rpartition("-")[2]
        self.published_at = 0.0
        self.round_trip: float | None = None
        self._next_id = 0

    async def health(self) -> str:
        return await self._probe_endpoint("/health")

    async def ready(self) -> str:
        return await self._probe_endpoint("/ready")

    async def _probe_endpoint(self, path: str) -> str:
        answer = await http_get(self.target.http_url + path, self.timeout)
        try:
            body = orjson.loads(answer.body)
            failing = [f"{c['name']}: {c['detail']}" for c in body["checks"] if not c["ok"]]
            status = body["status"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            raise StepFailed(Status.CRITICAL, f"HTTP {answer.status}, not a probe answer") from None
        if answer.status != 200:
            raise StepFailed(
                Status.CRITICAL, f"HTTP {answer.status} {status} ({'; '.join(failing)})"
            )
        return str(status)

    async def connect(self) -> str:
        target = self.target
        context = open_websocket_url(
            target.ws_url,
            target.ssl_context,
            connect_timeout=self.timeout,
            disconnect_timeout=1.0,
        )
        self.ws = await self.nursery.start(_hold, context)
        reply = await self._command("connect", {"token": target.connection_token()})
        return f"client {reply['connect'].get('client', '?')}"

    async def subscribe(self) -> str:
        token = self.target.subscription_token(self.channel)
        await self._command("subscribe", {"channel": self.channel, "token": token})
        return self.channel

    async def publish(self) -> str:
        body = orjson.dumps({"channel": self.channel, "data": {"probe": self.nonce}})
        self.published_at = time.perf_counter()
        answer = await http_post(
            f"{self.target.http_url}/api/publish", body, {"X-API-Key": self.target.api_key},
            self.timeout,
        )  # fmt: skip
        if answer.status != 200:
            raise StepFailed(Status.CRITICAL, f"HTTP {answer.status}: {answer.body[:200]!r}")
        result = orjson.loads(answer.body)
        if "error" in result:
            raise StepFailed(Status.CRITICAL, f"API error {result['error']}")
        return "accepted"

    async def deliver(self) -> str:
        while True:
            for message in await self._messages():
                push = message.get("push", {})
                data = push.get("pub", {}).get("data")
                if push.get("channel") == self.channel and data == {"probe": self.nonce}:
                    self.round_trip = time.perf_counter() - self.published_at
                    detail = f"round trip {self.round_trip * 1000:.1f} ms"
                    if self.round_trip > self.warning_rtt:
                        raise StepFailed(Status.WARNING, f"{detail}, above {self.warning_rtt:g} s")
                    return detail

    async def metrics(self) -> str:
        answer = await http_get(self.target.http_url + "/metrics", self.timeout)
        if answer.status != 200:
            raise StepFailed(Status.WARNING, f"HTTP {answer.status}")
        try:
            families = {f.name for f in text_string_to_metric_families(answer.body.decode())}
        except ValueError as exc:
            raise StepFailed(Status.WARNING, f"does not parse: {exc}") from None
        missing = sorted(EXPECTED_FAMILIES - families)
        if missing:
            raise StepFailed(Status.WARNING, f"missing {', '.join(missing)}")
        return f"{len(families)} families"

    # --- the socket ---

    timeout = 5.0

    async def _command(self, method: str, body: dict[str, Any]) -> dict[str, Any]:
        self._next_id += 1
        command_id = self._next_id
        assert self.ws is not None
        await self.ws.send_message(orjson.dumps({"id": command_id, method: body}).decode())
        while True:
            for message in await self._messages():
                if message.get("id") != command_id:
                    continue
                if "error" in message:
                    error = message["error"]
                    raise StepFailed(
                        Status.CRITICAL, f"error {error.get('code')} {error.get('message', '')}"
                    )
                return message

    async def _messages(self) -> list[dict[str, Any]]:
        assert self.ws is not None
        frame = await self.ws.get_message()
        text = frame.decode() if isinstance(frame, bytes) else frame
        return [orjson.loads(line) for line in text.split("\n") if line.strip()]


async def _hold(
    context: Any, *, task_status: trio.TaskStatus[WebSocketConnection] = trio.TASK_STATUS_IGNORED
) -> None:
    """Keep the WebSocket open until the probe's nursery is cancelled."""
    async with context as ws:
        task_status.started(ws)
        await trio.sleep_forever()


async def run_healthcheck(
    target: Target, step_seconds: float = 5.0, warning_rtt: float = 0.5
) -> Report:
    """Every step in order, each within `step_seconds`; never raises for the server's faults."""
    results: list[StepResult] = []
    async with trio.open_nursery() as nursery:
        probe = _Probe(target, nursery, warning_rtt)
        probe.timeout = step_seconds
        steps: dict[str, Callable[[], Awaitable[str]]] = {
            name: getattr(probe, name) for name in STEPS
        }
        critical = False
        for name, step in steps.items():
            if critical:
                results.append(StepResult(name, None, 0.0, "skipped"))
                continue
            status, detail, seconds = await _timed(step, step_seconds)
            results.append(StepResult(name, status, seconds, detail))
            critical = status is Status.CRITICAL
        nursery.cancel_scope.cancel()
    return Report(tuple(results), probe.round_trip, warning_rtt)


async def _timed(step: Callable[[], Awaitable[str]], limit: float) -> tuple[Status, str, float]:
    started = time.perf_counter()
    try:
        with trio.fail_after(limit):
            detail = await step()
        status = Status.OK
    except StepFailed as exc:
        status, detail = exc.status, exc.detail
    except trio.TooSlowError:
        status, detail = Status.CRITICAL, f"no answer within {limit:g} s"
    except Exception as exc:
        # Whatever the server or the network did (refused, reset, a handshake answered 503, a
        # socket closed, a frame that is not JSON) is the answer of this step, never a crash.
        status, detail = Status.CRITICAL, _describe(exc)
    return status, detail, time.perf_counter() - started


def _describe(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    text = str(reason if reason is not None else exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:300]
