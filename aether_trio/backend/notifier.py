"""Events nobody waits for, told to the application's backend in the background: a connection
gone (`disconnect`), a channel occupied or vacated (`channel_state`).

Theory of operation. `tell` never waits: the event goes into a bounded queue (a disconnect storm
at shutdown must not become thousands of tasks or requests at once), and `WORKERS` tasks of the
notifier's own nursery take events out and call the backend one at a time each. A full queue
drops the event, counted as result "dropped"; a backend that fails is logged, counted and kept in
the error ring like any other call, and its answer (an error, a disconnect) has nobody to go to.
Nothing is retried: the backend learns of the channel's state from the next event.
"""

from __future__ import annotations

import logging
from typing import Any, Final

import trio

from ..protocol.errors import AppDisconnect, AppError, ReplyError
from .dispatch import Backend
from .hooks import HookTarget
from .http import HttpProxy

__all__ = ["QUEUE_SIZE", "WORKERS", "Notifier"]

log = logging.getLogger(__name__)

QUEUE_SIZE: Final = 10_000
WORKERS: Final = 4

Item = tuple[HttpProxy | HookTarget, str, Any]


class Notifier:
    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        self._send, self._receive = trio.open_memory_channel[Item](QUEUE_SIZE)
        self.dropped = 0

    def tell(self, target: HttpProxy | HookTarget, kind: str, event: Any) -> None:
        try:
            self._send.send_nowait((target, kind, event))
        except trio.WouldBlock:
            self.dropped += 1
            self._backend.observe(target.name, kind, "dropped", 0.0)

    def statistics(self) -> dict[str, int]:
        return {
            "queued": self._send.statistics().current_buffer_used,
            "dropped": self.dropped,
        }

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            for _ in range(WORKERS):
                nursery.start_soon(self._work)
            task_status.started()

    async def _work(self) -> None:
        async for target, kind, event in self._receive:
            try:
                await self._backend.call(target, kind, event, None)
            except (AppError, AppDisconnect):
                log.info("the backend answered the %s event with an error: ignored", kind)
            except ReplyError:
                pass  # already logged, counted and captured by the backend
            except Exception as exc:  # a bug of ours: the next event must still go out
                log.exception("telling the backend a %s event failed", kind)
                self._backend.capture(exc, f"{kind} event")
