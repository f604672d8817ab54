"""What goes into a backup, gathered into a staging directory (synchronous: run in a thread).

sqlite/aether.sqlite3    bans, revocations, the audit log: SQLite's online backup API, a
                         consistent copy while the server writes (never a file copy)
sqlite/history.sqlite3   the memory engine's history snapshot, when there is one (at rest
                         between runs, or written live by the server's own backup service)
redis/keys.bin           Aether's Redis keys (engines/keyspace.py), stream positions recorded
redis/dump.rdb           or, with --rdb, Redis's own snapshot file (BGSAVE), described by
                         loading it into a scratch redis-server
config/config.toml       the configuration file, and under config/files/ every file it
                         names (`*_file`: TLS, token keys, API keys); the backup's own key
                         and credentials are left out: they must live elsewhere anyway
logs/...                 files under `[backup] log_dir` changed since the previous backup
"""

from __future__ import annotations

import io
import shutil
import sqlite3
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs

from ..admin.store import DB_NAME
from ..engines import keyspace
from ..engines.snapshot import SNAPSHOT_NAME
from .errors import BackupError

__all__ = ["Sources", "collect", "config_references", "copy_sqlite"]

# The backup's own secrets: never packed (a backup cannot hold the key that opens it).
NOT_PACKED = frozenset({"backup.key_file", "backup.credentials_file", "backup.log_dir"})


@attrs.frozen
class Sources:
    data_dir: Path
    node: str
    config_path: Path | None = None
    redis_address: str | None = None
    redis_prefix: str = "aether"
    # Take Redis's own RDB file (BGSAVE) instead of DUMPing the keys: the Redis is on this host.
    redis_rdb: bool = False
    redis_server: str = "redis-server"
    log_dir: Path | None = None
    logs_since: float = 0.0
    # The running server writes its live history snapshot here (memory engine); None: take the
    # one at rest in data_dir, if any.
    history: Callable[[Path], None] | None = None


def copy_sqlite(source: Path, dest: Path) -> dict[str, Any]:
    """A consistent copy by the online backup API, as a single self-contained file; returns the
    row count of every table."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    src = sqlite3.connect(source, timeout=30)
    try:
        dst = sqlite3.connect(dest)
        try:
            src.backup(dst)
            dst.execute("PRAGMA journal_mode=DELETE")  # no -wal file beside the copy
            return {"tables": table_counts(dst)}
        finally:
            dst.close()
    except sqlite3.Error as exc:
        raise BackupError(f"SQLite backup of {source} failed: {exc}") from None
    finally:
        src.close()


def table_counts(conn: sqlite3.Connection) -> dict[str, int]:
    names = [row[0] for row in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
    )]  # fmt: skip
    return {name: conn.execute(f'SELECT count(*) FROM "{name}"').fetchone()[0] for name in names}


def audit_head(path: Path) -> list[Any] | None:
    conn = sqlite3.connect(path)  # a copy of Aether's database: the table is always there
    try:
        row = conn.execute("SELECT seq, hash FROM audit_head WHERE id = 1").fetchone()
    finally:
        conn.close()
    return None if row is None else [row[0], row[1]]


def config_references(data: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, str]]:
    """(key path, file name) of every non-empty `*_file` option of parsed TOML."""
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from config_references(value, path + ".")
        elif isinstance(value, list):
            for index, item in enumerate(value):
                if isinstance(item, dict):
                    yield from config_references(item, f"{path}[{index}].")
        elif key.endswith("_file") and isinstance(value, str) and value:
            yield path, value


def _collect_config(config_path: Path, staging: Path) -> dict[str, Any]:
    text = config_path.read_bytes()
    (staging / "config").mkdir(parents=True)
    (staging / "config" / "config.toml").write_bytes(text)
    files: dict[str, str] = {}
    for number, (key_path, name) in enumerate(config_references(tomllib.loads(text.decode()))):
        if key_path in NOT_PACKED:
            continue
        source = config_path.parent / name
        member = f"config/files/{number}-{Path(name).name}"
        try:
            (staging / member).parent.mkdir(parents=True, exist_ok=True)
            (staging / member).write_bytes(source.read_bytes())
        except OSError as exc:
            raise BackupError(f"{key_path}: cannot read {source}: {exc.strerror}") from None
        files[key_path] = member
    return {"file": "config/config.toml", "references": files}


def _collect_logs(log_dir: Path, since: float, staging: Path) -> dict[str, Any]:
    count = 0
    for path in sorted(log_dir.rglob("*")):
        if path.is_file() and path.stat().st_mtime > since:
            member = staging / "logs" / path.relative_to(log_dir)
            member.parent.mkdir(parents=True, exist_ok=True)
            member.write_bytes(path.read_bytes())
            count += 1
    return {"since": since, "files": count}


def collect(sources: Sources, staging: Path) -> dict[str, Any]:
    """Fill `staging`; returns the manifest's description of the state (members are added when
    the archive is packed)."""
    manifest: dict[str, Any] = {"sqlite": {}, "redis": None, "config": None, "logs": None}
    database = sources.data_dir / DB_NAME
    if database.is_file():
        copied = copy_sqlite(database, staging / "sqlite" / DB_NAME)
        copied["audit_head"] = audit_head(staging / "sqlite" / DB_NAME)
        manifest["sqlite"][DB_NAME] = copied
    history = staging / "sqlite" / SNAPSHOT_NAME
    if sources.history is not None:
        history.parent.mkdir(parents=True, exist_ok=True)
        sources.history(history)
        if history.is_file():
            manifest["sqlite"][SNAPSHOT_NAME] = {"tables": _counts(history)}
    elif (sources.data_dir / SNAPSHOT_NAME).is_file():
        manifest["sqlite"][SNAPSHOT_NAME] = copy_sqlite(sources.data_dir / SNAPSHOT_NAME, history)
    if sources.redis_address is not None:
        (staging / "redis").mkdir()
        try:
            if sources.redis_rdb:
                dumped = _collect_rdb(sources, staging / "redis" / "dump.rdb")
            else:
                with (staging / "redis" / "keys.bin").open("wb") as out:
                    dumped = keyspace.dump_keyspace(
                        sources.redis_address, sources.redis_prefix, out
                    )
        except keyspace.KeyspaceError as exc:
            raise BackupError(str(exc)) from None
        manifest["redis"] = {
            "mode": "rdb" if sources.redis_rdb else "dump",
            "prefix": sources.redis_prefix,
            "keys": dumped.keys,
            "streams": {ch: list(position) for ch, position in dumped.streams.items()},
            "samples": dumped.samples,
            "time_ms": dumped.time_ms,
        }
    if sources.config_path is not None:
        manifest["config"] = _collect_config(sources.config_path, staging)
    if sources.log_dir is not None and sources.log_dir.is_dir():
        manifest["logs"] = _collect_logs(sources.log_dir, sources.logs_since, staging)
    return manifest


def _collect_rdb(sources: Sources, dest: Path) -> keyspace.KeyspaceDump:
    """Redis's RDB file, and what it holds of ours: read back from a scratch server that loads
    it, so the manifest describes the file exactly (a snapshot of one instant: every stream at
    a consistent position)."""
    from .scratch import scratch_redis

    assert sources.redis_address is not None
    path = keyspace.bgsave(sources.redis_address)
    try:
        shutil.copyfile(path, dest)
    except OSError as exc:
        raise BackupError(
            f"--rdb: cannot read Redis's RDB file {path} ({exc.strerror}): it must be on this "
            "host and readable; without --rdb the keys are copied over the connection"
        ) from None
    with scratch_redis(sources.redis_server, rdb=dest) as address:
        return keyspace.dump_keyspace(address, sources.redis_prefix, io.BytesIO())


def _counts(path: Path) -> dict[str, int]:
    conn = sqlite3.connect(path)
    try:
        return table_counts(conn)
    finally:
        conn.close()
