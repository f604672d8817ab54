"""Durable single-node history: the memory engine's streams carried across a graceful restart.

The composition root (app.py) calls `load` before anything is served and `save` after
everything stopped (connections, the HTTP API, the node), so no publication lands after the
snapshot is taken. The file format is `snapshot.py`'s; file work runs in worker threads.

Theory of operation. A snapshot is the truth only until the streams move on: once a restored
stream takes a publication, the snapshot's top offset for it is stale, and a process killed
before its next graceful stop would bring back that old top with the *same* epoch and hand out
the offsets after it a second time, to different publications (clients holding such an offset
would "recover" the wrong messages). So `load` removes the snapshot once it has read it, before
anything is served: after a crash the node starts empty, with new epochs, and clients see their
positions unrecoverable (`recovered: false`) instead of wrong. Only a graceful stop writes one.

    start:    snapshot read, removed (durably), streams restored  ->  serve
    stop:     streams exported on the loop (one instant), written to a temporary file in a
              thread, bounded by `save_timeout` and shielded, then renamed over the snapshot
    crash:    no snapshot (it was consumed) or the previous one (never consumed), never torn
    version:  a snapshot of another format version is refused and left in place (logged); the
              next graceful stop replaces it
    corrupt:  moved aside as `history.sqlite3.corrupt-<time>` (logged); the node starts empty
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

import attrs
import trio

from .snapshot import (
    SNAPSHOT_NAME,
    CorruptSnapshot,
    SavedStream,
    Snapshot,
    SnapshotError,
    SnapshotVersionError,
    read_snapshot,
    remove_snapshot,
    stale_temporary_files,
    write_snapshot,
)

__all__ = ["HistoryPersistence", "SnapshotReport", "StreamStore"]

log = logging.getLogger(__name__)


class StreamStore(Protocol):
    """What a broker offers to be persisted (the memory broker)."""

    def export_streams(self, wall_now: float) -> list[SavedStream]: ...

    def import_streams(
        self, streams: Iterable[SavedStream], wall_now: float
    ) -> tuple[int, int]: ...


@attrs.frozen
class SnapshotReport:
    """What one load or save moved, for the log and `aether admin node`."""

    streams: int
    publications: int
    bytes: int
    seconds: float
    saved_at: float  # wall-clock time the streams were taken from the broker

    def as_dict(self) -> dict[str, Any]:
        return {**attrs.asdict(self), "seconds": round(self.seconds, 3)}


class HistoryPersistence:
    def __init__(
        self,
        broker: StreamStore,
        data_dir: str | Path,
        save_timeout: float,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.broker = broker
        self.path = Path(data_dir) / SNAPSHOT_NAME
        self.save_timeout = save_timeout
        self._wall = wall_clock
        self.last_load: SnapshotReport | None = None
        self.last_save: SnapshotReport | None = None
        # Set once `load` has run to its end: only then may `save` replace what is on disk (a
        # start cancelled before it must not overwrite a snapshot nobody has read).
        self._armed = False

    def statistics(self) -> dict[str, Any]:
        """For `aether admin node`: what this process restored at its start (a save happens
        only as the process stops, so nobody could ask about it)."""
        return {
            "path": str(self.path),
            "loaded": self.last_load.as_dict() if self.last_load else None,
        }

    async def load(self) -> None:
        """Restore the snapshot, if any, into the broker and remove it from disk."""
        started = time.perf_counter()
        try:
            snapshot = await trio.to_thread.run_sync(self._consume)
        except FileNotFoundError:
            log.info("history snapshot: none at %s, starting with empty history", self.path)
            snapshot = None
        except SnapshotVersionError as exc:
            log.error(
                "history snapshot %s refused: %s; starting with empty history (the file is "
                "left as it is and replaced at the next graceful stop)", self.path, exc,
            )  # fmt: skip
            snapshot = None
        except CorruptSnapshot as exc:
            moved = await trio.to_thread.run_sync(self._move_aside)
            log.error(
                "history snapshot %s is corrupt (%s); moved to %s, starting with empty history",
                self.path, exc, moved,
            )  # fmt: skip
            snapshot = None
        except OSError as exc:
            log.error(
                "history snapshot %s could not be read or removed (%s); starting with empty "
                "history", self.path, exc,
            )  # fmt: skip
            snapshot = None
        self._armed = True
        if snapshot is None:
            return
        streams, pubs = self.broker.import_streams(snapshot.streams, self._wall())
        report = self.last_load = SnapshotReport(
            streams, pubs, snapshot.bytes, time.perf_counter() - started, snapshot.saved_at
        )
        log.info(
            "history snapshot loaded from %s: %d streams, %d publications, %d bytes in %.3f s "
            "(saved %.0f s ago; dropped as expired: %d streams, %d publications)",
            self.path, report.streams, report.publications, report.bytes, report.seconds,
            self._wall() - snapshot.saved_at, len(snapshot.streams) - streams,
            snapshot.publications - pubs,
        )  # fmt: skip

    def _consume(self) -> Snapshot:
        """Read the snapshot and remove it durably (worker thread). Also clears temporary files
        left by a process that died while writing."""
        for stale in stale_temporary_files(self.path):
            stale.unlink(missing_ok=True)
        snapshot = read_snapshot(self.path)
        remove_snapshot(self.path)
        return snapshot

    def _move_aside(self) -> Path | str:
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(self._wall()))
        target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        try:
            self.path.replace(target)
        except OSError as exc:
            return f"nowhere ({exc.strerror})"
        return target

    async def save(self) -> None:
        """Write every live stream to the snapshot; shielded (it runs while the server is being
        cancelled) and given up after `save_timeout` seconds, leaving the disk as it was."""
        if not self._armed:
            log.warning("history snapshot not written: the start never restored history")
            return
        self._armed = False
        with trio.CancelScope(shield=True), trio.move_on_after(self.save_timeout) as limit:
            started = time.perf_counter()
            wall_now = self._wall()
            streams = self.broker.export_streams(wall_now)
            abort = threading.Event()
            try:
                size = await trio.to_thread.run_sync(
                    write_snapshot, self.path, streams, wall_now, abort, abandon_on_cancel=True
                )
            except (OSError, sqlite3.Error, SnapshotError) as exc:
                log.error("history snapshot could not be written to %s: %s", self.path, exc)
                return
            finally:
                # After a timeout the abandoned thread stops at its next batch and removes its
                # temporary file; after a finished write this changes nothing.
                abort.set()
        if limit.cancelled_caught:
            log.error(
                "history snapshot not written: it took more than %.1f s ([engine] "
                "persist_timeout); the next start has empty history", self.save_timeout,
            )  # fmt: skip
            return
        publications = sum(len(s.publications) for s in streams)
        report = self.last_save = SnapshotReport(
            len(streams), publications, size, time.perf_counter() - started, wall_now
        )
        log.info(
            "history snapshot saved to %s: %d streams, %d publications, %d bytes in %.3f s",
            self.path, report.streams, report.publications, report.bytes, report.seconds,
        )  # fmt: skip
