"""`AuditLog`: state changes appended to a SHA-256 hash chain, persisted by a writer task.

`record()` is synchronous, cheap and never raises: it turns the parameters into plain JSON data
(secrets removed, see `chain.redact`) and queues the entry. The writer task (`run`, owned by the
admin service's nursery) chains whatever is queued onto the stored head and writes it in one
transaction, in a worker thread (`Database.append_audit`): `seq`, `prev` and `hash` are assigned
there, so the chain order is the commit order (the call order within this process) and a second
process writing the same database extends the same chain instead of forking it. Storage errors
are retried with capped backoff; on shutdown what is left is written, shielded and time-limited.
`append()` is what requests use: it waits for room in the bounded queue instead of dropping the
entry, so a batch of thousands of state changes is slowed down to what storage takes, and
`flush()` waits until everything recorded so far is stored: the server API and the operator
commands await both before they answer, so an answered change is in the log, even if the process
is killed right after (SQLite's WAL, synchronous commits). `record()`, for the rare events of
the server itself (a start, a SIGHUP reload, sampled auth failures), never waits: when the queue
is full it drops the entry, counts and logs it.

Auth failures are sampled: at most `per_minute` entries in each minute; the next recorded one
says how many were left out before it.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import trio

from . import chain
from .store import Store, StoreError

__all__ = ["AuditLog", "AuditStatistics"]

log = logging.getLogger(__name__)

MAX_PENDING = 10_000
SHUTDOWN_FLUSH_SECONDS = 5.0
FLUSH_WAIT_SECONDS = 5.0
RETRY_DELAYS = (0.1, 0.5, 1.0, 5.0)


@attrs.frozen
class AuditStatistics:
    recorded: int
    written: int
    pending: int
    max_pending: int
    dropped: int
    auth_failures_suppressed: int
    head_seq: int
    head_hash: str


class AuditLog:
    def __init__(
        self,
        store: Store,
        head: tuple[int, str] | None = None,
        *,
        auth_failures_per_minute: int = 10,
        max_pending: int = MAX_PENDING,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._clock = clock  # for the auth-failure sampling window
        self._head = head or (0, chain.GENESIS)
        self._recorded = 0
        self._written = 0
        self._pending: deque[dict[str, Any]] = deque()
        self._max_pending = max_pending
        self._dropped = 0
        self._wakeup = trio.Event()
        self._progress = trio.Event()
        self._per_minute = auth_failures_per_minute
        self._window_start = -60.0
        self._window_count = 0
        self._suppressed = 0

    # --- recording (synchronous) ---

    def record(
        self,
        action: str,
        *,
        actor: str,
        params: Mapping[str, Any] | None = None,
        result: Any = None,
        ok: bool = True,
    ) -> None:
        if len(self._pending) >= self._max_pending:
            self._dropped += 1
            log.error("audit queue full: entry %s by %s dropped", action, actor)
            return
        try:
            draft = {
                "ts": chain.timestamp(time.time()),
                "actor": str(actor),
                "action": str(action),
                "params": chain.redact(params or {}),
                "result": chain.jsonable(result),
                "ok": bool(ok),
            }
        except Exception:  # a caller's odd parameter must not break its request
            log.exception("audit entry %s by %s could not be built", action, actor)
            return
        self._pending.append(draft)
        self._recorded += 1
        self._wakeup.set()
        log.debug("audit: %s by %s%s", action, actor, "" if ok else " (failed)")

    async def append(
        self,
        action: str,
        *,
        actor: str,
        params: Mapping[str, Any] | None = None,
        result: Any = None,
        ok: bool = True,
    ) -> None:
        while len(self._pending) >= self._max_pending:
            await self._progress.wait()  # the writer stored a batch: room again
        self.record(action, actor=actor, params=params, result=result, ok=ok)

    def auth_failure(self, kind: str, *, actor: str, detail: str) -> None:
        now = self._clock()
        if now - self._window_start >= 60.0:
            self._window_start, self._window_count = now, 0
        if self._window_count >= self._per_minute:
            self._suppressed += 1
            return
        self._window_count += 1
        suppressed, self._suppressed = self._suppressed, 0
        params = {"kind": kind, "detail": detail, "suppressed_before": suppressed}
        self.record("auth_failure", actor=actor, params=params, ok=False)

    def statistics(self) -> AuditStatistics:
        return AuditStatistics(
            self._recorded, self._written, len(self._pending), self._max_pending, self._dropped,
            self._suppressed, *self._head,
        )  # fmt: skip

    # --- persisting ---

    async def flush(self) -> bool:
        """Wait (bounded) until every entry recorded so far is stored; False if time ran out
        (storage failing for that long: logged; the entries stay queued and are retried)."""
        target = self._recorded
        with trio.move_on_after(FLUSH_WAIT_SECONDS):
            while self._written < target:
                await self._progress.wait()
        if self._written < target:
            log.error("audit: %d entries not stored within %gs", target - self._written,
                      FLUSH_WAIT_SECONDS)  # fmt: skip
            return False
        return True

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        try:
            while True:
                await self._wakeup.wait()
                self._wakeup = trio.Event()
                await self._write_pending()
        finally:
            with trio.move_on_after(SHUTDOWN_FLUSH_SECONDS, shield=True) as scope:
                await self._write_pending()
            if scope.cancelled_caught:
                log.error("audit: %d entries could not be written at shutdown", len(self._pending))

    async def _write_pending(self) -> None:
        attempt = 0
        while self._pending:
            batch = list(self._pending)
            try:
                self._head = await self._store.call(self._store.db.append_audit, batch)
            except StoreError:
                delay = RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)]
                log.exception("audit: writing %d entries failed, retry in %gs", len(batch), delay)
                attempt += 1
                await trio.sleep(delay)
                continue
            attempt = 0
            for _ in batch:
                self._pending.popleft()
            self._written += len(batch)
            self._progress.set()
            self._progress = trio.Event()
