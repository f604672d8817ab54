"""Serve an `HttpApp` with Hypercorn's Trio worker inside the server's own Trio run."""

from __future__ import annotations

import logging
import math

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve

from .asgi import HttpApp

__all__ = ["serve_http"]

log = logging.getLogger(__name__)


async def serve_http(
    app: HttpApp,
    host: str,
    port: int,
    *,
    read_timeout: float = 10.0,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on host:port until cancelled; reports the bound port through task_status."""
    config = HypercornConfig()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("aether_trio.http.hypercorn")
    config.graceful_timeout = 1.0
    # The longest a read waits for a request's next bytes (a head trickling in); the body as a
    # whole is bounded by the app (HttpApp.read_timeout: 408).
    config.read_timeout = math.ceil(read_timeout)  # whole seconds in Hypercorn

    async def started(*, task_status: trio.TaskStatus[list[str]]) -> None:
        await serve(app, config, task_status=task_status)  # type: ignore[arg-type]

    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(started)
        bound = int(binds[0].rsplit(":", 1)[1])
        log.info("internal HTTP listening on %s", binds[0])
        task_status.started(bound)
