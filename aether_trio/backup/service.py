"""The scheduled backups inside the server (`[backup] schedule`), and their metrics.

Theory of operation: one task, owned by the server's services nursery (supervised: restarted if
it ever fails), sleeps for the schedule +- `jitter` of it, then takes a backup, runs the drill
on it (`verify_after`) and prunes by the retention policy, each in a worker thread (boto3,
sqlite3 and redis-py are synchronous). Runs never overlap: the loop waits for one to finish
before it sleeps again, and `create_backup`'s lock file keeps a manual `aether backup create` or
a systemd timer from running at the same time (the later one fails, named, and is counted).
A run in progress at shutdown is abandoned (its thread is not waited for; the lock is released
with the process, the upload never completes, the next start runs on schedule).

With the memory engine the live history is taken at one instant on the event loop
(`history`, given by the composition root) and written to the archive by the worker thread.

Metrics (always exposed, so that the alert rules in ops/prometheus can rely on them):
    aether_backup_schedule_seconds                 the schedule (0: the server takes none)
    aether_backup_last_success_timestamp_seconds   newest successful backup of this node
    aether_backup_last_size_bytes                  its archive's size
    aether_backup_last_verify_success              1/0 for the last drill, NaN before any
    aether_backup_duration_seconds                 the last backup's duration (the drill apart)
    aether_backup_runs_total{result}               scheduled backups: ok / failed
    aether_backup_verifications_total{result}      their drills: ok / failed
At start the newest backup of this node in the bucket sets the `last_*` gauges, so a restart
does not make a backup look stale (or fresh) that is not.
"""

from __future__ import annotations

import logging
import math
import random
import re
import time
from collections.abc import Callable
from pathlib import Path

import trio
from prometheus_client import CollectorRegistry, Counter, Gauge

from ..config import Config

__all__ = ["BackupMetrics", "BackupService", "jittered"]

log = logging.getLogger(__name__)


def jittered(interval: float, jitter: float, rng: random.Random) -> float:
    return interval * (1 + jitter * rng.uniform(-1.0, 1.0))


class BackupMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, registry=registry)

        self.schedule = gauge(
            "aether_backup_schedule_seconds",
            "[backup] schedule in seconds (0: the server takes no backups)",
        )
        self.last_success = gauge(
            "aether_backup_last_success_timestamp_seconds",
            "When this node's newest successful backup was taken",
        )
        self.last_size = gauge("aether_backup_last_size_bytes", "Its archive's size in bytes")
        self.last_verify = gauge(
            "aether_backup_last_verify_success",
            "1 if the last drill passed, 0 if it failed, NaN before any",
        )
        self.last_verify.set(math.nan)
        self.duration = gauge(
            "aether_backup_duration_seconds", "Duration of the last backup (collect, pack, upload)"
        )
        self.runs = Counter(
            "aether_backup_runs", "Scheduled backups by result", ["result"], registry=registry
        )
        self.verifications = Counter(
            "aether_backup_verifications",
            "Drills of scheduled backups by result",
            ["result"],
            registry=registry,
        )
        for result in ("ok", "failed"):
            self.runs.labels(result)
            self.verifications.labels(result)


class BackupService:
    def __init__(
        self,
        config: Callable[[], Config],
        config_path: str | None,
        metrics: BackupMetrics,
        *,
        history: Callable[[Path], None] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._config = config
        self._config_path = config_path
        self.metrics = metrics
        self._history = history
        self._rng = rng or random.Random()
        self.running = False
        metrics.schedule.set(config().backup.interval if config().backup.bucket else 0)

    @property
    def enabled(self) -> bool:
        cfg = self._config().backup
        return bool(cfg.bucket and cfg.interval)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await self._load_state()
        while True:
            cfg = self._config().backup
            await trio.sleep(jittered(cfg.interval, cfg.jitter, self._rng))
            await self.run_once()

    async def _load_state(self) -> None:
        from .errors import BackupError
        from .storage import Storage

        node = re.sub(r"[^A-Za-z0-9_-]", "_", self._config().server.node_name)[:40]

        def newest() -> tuple[float, int, bool | None] | None:
            mine = [e for e in Storage(self._config().backup).entries() if f"-{node}-" in e.id]
            if not mine:
                return None
            entry = mine[-1]
            return entry.created_at, entry.size, None if entry.drill is None else entry.verified

        try:
            found = await trio.to_thread.run_sync(newest, abandon_on_cancel=True)
        except BackupError as exc:
            log.warning("backup: cannot read the bucket at start: %s", exc)
            return
        if found is not None:
            created_at, size, verified = found
            self.metrics.last_success.set(created_at)
            self.metrics.last_size.set(size)
            if verified is not None:
                self.metrics.last_verify.set(1 if verified else 0)

    async def run_once(self) -> bool:
        """One backup, its drill and a prune; True if the backup (and its drill) succeeded."""
        if self.running:  # a manual trigger while a scheduled run is on: never two at once
            return False
        self.running = True
        try:
            return await self._run_once()
        finally:
            self.running = False

    async def _run_once(self) -> bool:
        from .cli import prune
        from .create import create_backup
        from .drill import verify_backup
        from .errors import BackupError
        from .storage import Storage

        config = self._config()
        started = time.monotonic()

        def create() -> tuple[Storage, str, int]:
            storage = Storage(config.backup)
            created = create_backup(config, self._config_path, storage, history=self._history)
            return storage, created.id, created.size

        try:
            storage, backup_id, size = await trio.to_thread.run_sync(create, abandon_on_cancel=True)
        except Exception as exc:  # a failed backup is counted and logged; the schedule goes on
            self.metrics.runs.labels("failed").inc()
            if isinstance(exc, BackupError):
                log.error("backup failed: %s", exc)
            else:
                log.exception("backup failed")
            return False
        self.metrics.runs.labels("ok").inc()
        self.metrics.duration.set(time.monotonic() - started)
        self.metrics.last_success.set(time.time())
        self.metrics.last_size.set(size)
        log.info("backup %s: %d bytes in %.1f s", backup_id, size, time.monotonic() - started)
        if not config.backup.verify_after:
            return True

        def drill_and_prune() -> tuple[bool, str]:
            report = verify_backup(config, storage, backup_id)
            failed = report.failed
            if failed is not None:
                return False, f"check {failed.name}: {failed.detail}"
            prune(config, storage, time.time())  # only after a verified backup
            return True, f"RTO {report.rto:.1f} s"

        try:
            ok, detail = await trio.to_thread.run_sync(drill_and_prune, abandon_on_cancel=True)
        except Exception as exc:
            ok, detail = False, str(exc)
        self.metrics.last_verify.set(1 if ok else 0)
        self.metrics.verifications.labels("ok" if ok else "failed").inc()
        if ok:
            log.info("backup %s drill passed, %s", backup_id, detail)
        else:
            log.error("backup %s drill FAILED %s", backup_id, detail)
        return ok
