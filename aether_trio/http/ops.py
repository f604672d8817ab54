"""Operations routes on the internal HTTP listener.

- `GET /metrics`: the Prometheus text format, rendered from the node's own registry in the Trio
  run (no exporter thread). Scrape-time gauges are computed right then.
- `GET /health`: liveness. Answering at all proves the event loop runs; the body lists the check.
- `GET /ready`: readiness. Every check of `node.readiness_checks` (engines, services,
  maintenance, drain, shutdown, resource thresholds) with its state; 200 if all pass, else 503.
- `GET /admin/errors`: the ring of recent unexpected errors (newest first; `?limit=N`); the
  composition root wraps it in the API key check (role `admin`).

Bodies are JSON; `{"status": ..., "checks": [{"name", "ok", "detail"}, ...]}` for the probes.
`counted` wraps the server API's route to count its requests by method and status.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST

from ..observe.readiness import Check, evaluate
from .asgi import HttpApp, Request, Response, Route, json_response

if TYPE_CHECKING:
    from ..node import Node
    from ..observe.metrics import Metrics
    from ..observe.monitor import ResourceMonitor

__all__ = ["OpsRoutes", "counted", "install"]

READ_METHODS = frozenset({"GET", "HEAD"})
METHOD_NOT_ALLOWED = Response(405, b"Method Not Allowed", "text/plain", (("allow", "GET, HEAD"),))


class OpsRoutes:
    def __init__(self, node: Node[Any], monitor: ResourceMonitor | None = None) -> None:
        self.node = node
        self.monitor = monitor

    async def metrics(self, request: Request) -> Response:
        if request.method not in READ_METHODS:
            return METHOD_NOT_ALLOWED
        return Response(200, self.node.metrics.exposition(), CONTENT_TYPE_LATEST)

    async def health(self, request: Request) -> Response:
        if request.method not in READ_METHODS:
            return METHOD_NOT_ALLOWED
        last = self.monitor.last if self.monitor is not None else None
        lag = f"; last loop lag {last.loop_lag_seconds:.3f} s" if last is not None else ""
        return _probe([Check("event_loop", True, f"answering{lag}")], "ok", "failing")

    async def ready(self, request: Request) -> Response:
        if request.method not in READ_METHODS:
            return METHOD_NOT_ALLOWED
        return _probe(evaluate(self.node.readiness_checks), "ready", "not ready")

    async def errors(self, request: Request) -> Response:
        if request.method not in READ_METHODS:
            return METHOD_NOT_ALLOWED
        limit_arg = request.query.get("limit", [""])[-1]
        limit = int(limit_arg) if limit_arg.isdigit() else None
        tracker = self.node.errors
        return json_response(
            {
                "total": tracker.total,
                "errors": [
                    {
                        "time": datetime.fromtimestamp(r.timestamp, UTC).isoformat(
                            timespec="milliseconds"
                        ),
                        "timestamp": r.timestamp,
                        "type": r.type,
                        "message": r.message,
                        "where": r.where,
                    }
                    for r in tracker.recent(limit)
                ],
            }
        )


def _probe(checks: list[Check], good: str, bad: str) -> Response:
    ok = all(check.ok for check in checks)
    body = {
        "status": good if ok else bad,
        "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in checks],
    }
    return json_response(body, 200 if ok else 503)


def install(
    app: HttpApp,
    node: Node[Any],
    monitor: ResourceMonitor | None = None,
    protect_admin: Callable[[Route], Route] | None = None,
) -> OpsRoutes:
    """Add the routes to `app`; `protect_admin` wraps the admin route (API key, role admin)."""
    routes = OpsRoutes(node, monitor)
    app.route("/metrics", routes.metrics)
    app.route("/health", routes.health)
    app.route("/ready", routes.ready)
    app.route("/admin/errors", protect_admin(routes.errors) if protect_admin else routes.errors)
    return routes


def counted(metrics: Metrics, prefix: str, methods: Collection[str], route: Route) -> Route:
    """`route` (every path under `prefix`), counted in aether_api_requests_total and timed;
    a method not in `methods` is labelled "unknown" (labels stay bounded)."""

    async def counted_route(request: Request) -> Response:
        method = request.path.removeprefix(prefix)
        label = method if method in methods else "unknown"
        started, status = time.perf_counter(), 500  # unless it answers: the router's bare 500
        try:
            response = await route(request)
            status = response.status
            return response
        finally:
            metrics.api_request(label, status, time.perf_counter() - started)

    return counted_route
