"""The history snapshot: the memory engine's streams in one SQLite file, always written whole.

Format version 1 (`FORMAT_VERSION`), marked in the file's header by `PRAGMA application_id`
(`APPLICATION_ID`, "AeHS": this is an Aether history snapshot) and `PRAGMA user_version`:

    snapshot      (saved_at)                    one row: wall-clock time of the save
    streams       (channel PRIMARY KEY, epoch, top, meta_expires_at, pubs_expire_at)
    publications  (channel, offset, data, user, client, conn_info, chan_info, tags)
                  PRIMARY KEY (channel, offset); `user` NULL = no info; `tags` a JSON object

Expiry times are wall-clock deadlines (`time.time()` seconds): the broker's own clock
(`trio.current_time`) restarts with every process, so the broker converts at export and import.
`data`, `conn_info` and `chan_info` are the compact JSON bytes the broker holds (b"" = absent),
checked again at read since they are embedded verbatim into every frame that carries them.

Writes are atomic: a temporary file next to the snapshot, fsynced, then `os.replace`d over it
and the directory fsynced, so a crash at any point leaves the previous snapshot or the new one,
never a torn file. The functions here are synchronous (the caller runs them in a worker thread).

Errors:
    SnapshotError              base: the snapshot cannot be used (never reaches a client)
    ├── SnapshotVersionError   written by another format version: refused, left as it is
    ├── CorruptSnapshot        not a snapshot, or unreadable: moved aside by the caller
    └── SnapshotAborted        the caller gave up on a write: the temporary file is removed
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import orjson

from ..protocol.messages import ClientInfo, Publication, RawJSON

__all__ = [
    "APPLICATION_ID",
    "FORMAT_VERSION",
    "SNAPSHOT_NAME",
    "CorruptSnapshot",
    "SavedStream",
    "Snapshot",
    "SnapshotAborted",
    "SnapshotError",
    "SnapshotVersionError",
    "read_snapshot",
    "remove_snapshot",
    "stale_temporary_files",
    "write_snapshot",
]

SNAPSHOT_NAME = "history.sqlite3"
FORMAT_VERSION = 1
APPLICATION_ID = 0x41654853  # "AeHS"
_TMP_SUFFIX = ".tmp"
# Streams written per executemany; an abort is noticed between batches.
_BATCH = 500

_SCHEMA = """
CREATE TABLE snapshot (saved_at REAL NOT NULL);
CREATE TABLE streams (
    channel TEXT PRIMARY KEY, epoch TEXT NOT NULL, top INTEGER NOT NULL,
    meta_expires_at REAL NOT NULL, pubs_expire_at REAL NOT NULL) WITHOUT ROWID;
CREATE TABLE publications (
    channel TEXT NOT NULL, offset INTEGER NOT NULL, data BLOB NOT NULL,
    user TEXT, client TEXT, conn_info BLOB, chan_info BLOB, tags TEXT,
    PRIMARY KEY (channel, offset)) WITHOUT ROWID;
"""


class SnapshotError(Exception):
    pass


class SnapshotVersionError(SnapshotError):
    def __init__(self, version: int) -> None:
        super().__init__(f"written by format version {version}; this server reads {FORMAT_VERSION}")
        self.version = version


class CorruptSnapshot(SnapshotError):
    pass


class SnapshotAborted(SnapshotError):
    pass


@attrs.frozen
class SavedStream:
    """One stream as it leaves or enters the broker: deadlines are wall-clock seconds."""

    channel: str
    epoch: str
    top: int
    meta_expires_at: float
    pubs_expire_at: float
    publications: tuple[Publication, ...] = ()


@attrs.frozen
class Snapshot:
    saved_at: float
    streams: list[SavedStream]
    bytes: int

    @property
    def publications(self) -> int:
        return sum(len(s.publications) for s in self.streams)


# --- writing -----------------------------------------------------------------------------------


def write_snapshot(
    path: Path,
    streams: Sequence[SavedStream],
    saved_at: float,
    abort: threading.Event | None = None,
) -> int:
    """Replace the snapshot at `path` with `streams` atomically; returns the file's size.
    Setting `abort` (from another thread) makes the write stop before it replaces anything."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f"{path.name}.", suffix=_TMP_SUFFIX)
    os.close(fd)  # sqlite opens it by name; mkstemp gave it mode 0600 (publications are private)
    tmp = Path(name)
    try:
        _write_database(tmp, streams, saved_at, abort)
        _fsync(tmp)
        if abort is not None and abort.is_set():
            raise SnapshotAborted("the write was given up")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)
    return path.stat().st_size


def _write_database(
    tmp: Path, streams: Sequence[SavedStream], saved_at: float, abort: threading.Event | None
) -> None:
    conn = sqlite3.connect(tmp, isolation_level=None)
    try:
        # A fresh private file made atomic by the rename: no journal, no syncs until the end.
        conn.execute("PRAGMA journal_mode=OFF")
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
        conn.execute(f"PRAGMA user_version={FORMAT_VERSION}")
        conn.executescript(_SCHEMA)
        conn.execute("BEGIN")
        conn.execute("INSERT INTO snapshot VALUES (?)", (saved_at,))
        for start in range(0, len(streams), _BATCH):
            if abort is not None and abort.is_set():
                raise SnapshotAborted("the write was given up")
            batch = streams[start : start + _BATCH]
            conn.executemany(
                "INSERT INTO streams VALUES (?, ?, ?, ?, ?)",
                [(s.channel, s.epoch, s.top, s.meta_expires_at, s.pubs_expire_at) for s in batch],
            )
            conn.executemany(
                "INSERT INTO publications VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [_publication_row(s.channel, p) for s in batch for p in s.publications],
            )
        conn.execute("COMMIT")
    finally:
        conn.close()


def _publication_row(channel: str, pub: Publication) -> tuple[Any, ...]:
    info = pub.info
    tags = orjson.dumps(pub.tags).decode() if pub.tags else None
    if info is None:
        return (channel, pub.offset, pub.data, None, None, None, None, tags)
    return (channel, pub.offset, pub.data, info.user, info.client,
            info.conn_info, info.chan_info, tags)  # fmt: skip


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_directory(path: Path) -> None:
    """Make a rename or an unlink in `path` durable (POSIX; a no-op where directories cannot be
    opened, as on Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_snapshot(path: Path) -> None:
    """Remove the snapshot durably: once this returns it cannot come back after a power loss."""
    path.unlink()
    _fsync_directory(path.parent)


def stale_temporary_files(path: Path) -> list[Path]:
    """Temporary files of writes that never finished (the process died in the middle)."""
    return sorted(path.parent.glob(f"{path.name}.*{_TMP_SUFFIX}"))


# --- reading -----------------------------------------------------------------------------------


def read_snapshot(path: Path) -> Snapshot:
    """The snapshot at `path`. Raises FileNotFoundError when there is none, SnapshotVersionError
    or CorruptSnapshot when it cannot be used."""
    size = path.stat().st_size
    try:
        # Read-only: a damaged file is moved aside as found, not "repaired" by opening it.
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            saved_at, streams = _read(conn)
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise CorruptSnapshot(f"unreadable: {exc}") from exc
    except (TypeError, ValueError, IndexError) as exc:
        raise CorruptSnapshot(f"unexpected content: {exc}") from exc
    return Snapshot(saved_at, streams, size)


def _read(conn: sqlite3.Connection) -> tuple[float, list[SavedStream]]:
    application_id = conn.execute("PRAGMA application_id").fetchone()[0]
    if application_id != APPLICATION_ID:
        raise CorruptSnapshot("not an Aether history snapshot (unknown application_id)")
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version != FORMAT_VERSION:
        raise SnapshotVersionError(version)
    saved_at = _number(conn.execute("SELECT saved_at FROM snapshot").fetchone()[0])
    return saved_at, list(_streams(conn))


def _streams(conn: sqlite3.Connection) -> Iterator[SavedStream]:
    pubs = conn.execute(
        "SELECT channel, offset, data, user, client, conn_info, chan_info, tags"
        " FROM publications ORDER BY channel, offset"
    )
    publication = _PublicationReader()
    pending = next(pubs, None)
    for row in conn.execute(
        "SELECT channel, epoch, top, meta_expires_at, pubs_expire_at FROM streams ORDER BY channel"
    ):
        channel, epoch, top, meta_expires_at, pubs_expire_at = row
        well_typed = type(channel) is str and type(epoch) is str and type(top) is int
        if not (well_typed and epoch and top >= 0):
            raise ValueError(f"bad stream row {row!r}")
        kept: list[Publication] = []
        # Both queries are ordered by channel: the publications of this stream come next.
        while pending is not None and pending[0] <= channel:
            if pending[0] != channel:
                raise ValueError(f"publications of {pending[0]!r}, which has no stream")
            kept.append(publication(pending, top))
            pending = next(pubs, None)
        yield SavedStream(
            channel, epoch, top, _number(meta_expires_at), _number(pubs_expire_at), tuple(kept)
        )
    if pending is not None:
        raise ValueError(f"publications of {pending[0]!r}, which has no stream")


class _PublicationReader:
    """Rows to checked publications. Equal infos and tags (a client publishing many times) are
    checked once and shared between publications, which treat them as immutable anyway."""

    def __init__(self) -> None:
        self._infos: dict[tuple[Any, ...], ClientInfo] = {}
        self._tags: dict[str, dict[str, str]] = {}

    def __call__(self, row: tuple[Any, ...], top: int) -> Publication:
        _channel, offset, data, user, client, conn_info, chan_info, tags = row
        if type(offset) is not int or not 0 < offset <= top:
            raise ValueError(f"offset {offset!r} outside 1..{top}")
        info = None
        if user is not None:
            key = (user, client, conn_info, chan_info)
            info = self._infos.get(key)
            if info is None:
                info = self._infos[key] = _info(user, client, conn_info, chan_info)
        parsed_tags = None
        if tags is not None:
            parsed_tags = self._tags.get(tags)
            if parsed_tags is None:
                parsed_tags = self._tags[tags] = _tags(tags)
        return Publication(data=_json(data), info=info, offset=offset, tags=parsed_tags)


def _info(user: object, client: object, conn_info: object, chan_info: object) -> ClientInfo:
    if type(user) is not str or type(client) is not str:
        raise ValueError("a publication's info has no user or client")
    return ClientInfo(user, client, _json(conn_info, empty=True), _json(chan_info, empty=True))


def _json(value: object, *, empty: bool = False) -> RawJSON:
    """Compact JSON bytes, as the codec embeds them: valid and without raw newlines."""
    if type(value) is not bytes or b"\n" in value or (not value and not empty):
        raise ValueError("a JSON payload is not compact JSON bytes")
    if value:
        orjson.loads(value)  # orjson.JSONDecodeError is a ValueError
    return RawJSON(value)


def _tags(value: object) -> dict[str, str]:
    if type(value) is not str:
        raise ValueError("tags are not text")
    tags = orjson.loads(value)
    if not (isinstance(tags, dict) and all(type(v) is str for v in tags.values())):
        raise ValueError("tags are not an object of strings")
    return tags


def _number(value: object) -> float:
    # SQLite hands back int, float, str, bytes or None (never a bool).
    if type(value) is not float and type(value) is not int:
        raise ValueError(f"{value!r} is not a number")
    return float(value)
