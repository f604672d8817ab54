"""Unexpected exceptions: caught at a task's boundary, never at the client's expense.

Where the code cannot go on (a bug in a command handler, a connection's tasks, a service, a timer
callback, an HTTP route), the boundary hands the exception to the node's `ErrorTracker`, which
- logs it with its traceback, on the server only (clients get a bare code: 100, 3004 or a 500),
- counts it by type (`aether_errors_total{kind}`),
- keeps it in a bounded ring of recent errors for `GET /admin/errors` (time, type, a truncated
  message and where it happened; never the traceback's local variables),
- sends it to Sentry when `[monitor] sentry_dsn` is set (sentry-sdk, the `sentry` extra, imported
  only then; without local variables, personal data or default integrations).

Expected failures (a refused command, a socket closed by the peer, cancellation) never come here.

`supervise` is the boundary of a long-running service: a service that fails after it started is
reported and restarted after a capped backoff (its state shows in the `services` readiness check
meanwhile); one that fails to start fails the server's start, as before.
"""

from __future__ import annotations

import functools
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any

import attrs
import trio

from .._version import __version__

if TYPE_CHECKING:
    from .metrics import Metrics

__all__ = ["ErrorRecord", "ErrorTracker", "leaf_exceptions", "no_frame_locals"]

log = logging.getLogger(__name__)

MESSAGE_LIMIT = 300
RESTART_MIN_SECONDS = 0.1
RESTART_MAX_SECONDS = 5.0
# A service that ran this long before failing starts again from the smallest backoff.
RESTART_RESET_SECONDS = 60.0


@attrs.frozen
class ErrorRecord:
    timestamp: float  # Unix time
    type: str
    message: str
    where: str


def leaf_exceptions(exc: BaseException) -> Iterator[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        for sub in exc.exceptions:
            yield from leaf_exceptions(sub)
    else:
        yield exc


class ErrorTracker:
    def __init__(self, ring_size: int, metrics: Metrics) -> None:
        self._ring: deque[ErrorRecord] = deque(maxlen=ring_size)
        self._metrics = metrics
        self.total = 0
        # Supervised services: name -> "running" | "restarting".
        self.services: dict[str, str] = {}
        # Extra `sentry_sdk.init` options (tests pass a capturing `transport`).
        self.sentry_options: dict[str, Any] = {}
        self._sentry: Any = None  # the sentry_sdk module while it is initialised

    # --- recording ---

    def capture(self, exc: BaseException, where: str) -> None:
        """Count and keep `exc` (and send it to Sentry); the caller has logged it. A group is
        taken apart: each leaf exception is one error."""
        if isinstance(exc, BaseExceptionGroup):
            for leaf in leaf_exceptions(exc):
                self.capture(leaf, where)
            return
        kind = type(exc).__name__
        message = str(exc)
        if len(message) > MESSAGE_LIMIT:
            message = message[: MESSAGE_LIMIT - 3] + "..."
        self._ring.append(ErrorRecord(time.time(), kind, message, where))
        self.total += 1
        self._metrics.error(kind)
        sentry = self._sentry
        if sentry is not None:
            with sentry.new_scope() as scope:
                scope.set_tag("where", where)
                sentry.capture_exception(exc)

    def report(self, exc: BaseException, where: str) -> None:
        """Log `exc` with its traceback, then `capture` it; each leaf of a group separately."""
        for leaf in leaf_exceptions(exc):
            log.error("unexpected error in %s", where, exc_info=leaf)
            self.capture(leaf, where)

    def recent(self, limit: int | None = None) -> list[ErrorRecord]:
        """Newest first."""
        records = list(reversed(self._ring))
        return records if limit is None else records[:limit]

    # --- Sentry ---

    async def run(
        self, dsn: str, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Keep a Sentry client open while this runs (nothing to do without a DSN)."""
        if not dsn:
            task_status.started()
            await trio.sleep_forever()
        import sentry_sdk  # the optional `sentry` extra

        sentry_sdk.init(
            dsn=dsn,
            release=f"aether@{__version__}",
            # Only what `capture` sends: no logging/threading/excepthook integrations that
            # would report the same error twice or things that are not errors.
            default_integrations=False,
            auto_enabling_integrations=False,
            # Frame locals may hold tokens and payloads; they stay on the server. (Personal data
            # is not sent either: the SDK's default.)
            **no_frame_locals(sentry_sdk.VERSION),
            **self.sentry_options,
        )
        self._sentry = sentry_sdk
        log.info("error reports go to Sentry")
        try:
            task_status.started()
            await trio.sleep_forever()
        finally:
            self._sentry = None
            # Flushes what is queued (bounded) and stops the SDK's worker thread.
            sentry_sdk.get_client().close(timeout=2.0)

    # --- services ---

    async def supervise(
        self,
        name: str,
        service: Callable[..., Awaitable[object]],
        *args: object,
        task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run `service(*args, task_status=...)`, restarting it when it fails after starting."""
        backoff = RESTART_MIN_SECONDS
        started = False
        while True:
            began = trio.current_time()
            try:
                async with trio.open_nursery() as nursery:
                    value = await nursery.start(functools.partial(service, *args))
                    self.services[name] = "running"
                    if not started:
                        started = True
                        task_status.started(value)
                self.services.pop(name, None)
                return  # the service finished on its own
            except* Exception as group:
                if not started:
                    raise
                self.services[name] = "restarting"
                self.report(group, f"service {name}")
            if trio.current_time() - began >= RESTART_RESET_SECONDS:
                backoff = RESTART_MIN_SECONDS
            log.warning("restarting service %s in %.1f s", name, backoff)
            await trio.sleep(backoff)
            backoff = min(backoff * 2, RESTART_MAX_SECONDS)


def no_frame_locals(sdk_version: str) -> dict[str, Any]:
    """The `sentry_sdk.init` option that keeps frame locals out of events: 3.x moved it from
    `include_local_variables` into `data_collection` (and refuses the old name)."""
    major = int(sdk_version.split(".", 1)[0])
    if major >= 3:
        return {"data_collection": {"stack_frame_variables": False}}
    return {"include_local_variables": False}
