"""`aether backup create`: collect, pack, seal, upload; one backup at a time per data directory.

Synchronous (boto3, sqlite3, redis-py): the command line calls it directly, the server's
scheduled service in a worker thread. A lock file in `[admin] data_dir` (an `flock`, released by
the kernel if the process dies) keeps a scheduled backup and a manual one from overlapping.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import attrs

from .._version import __version__
from ..config import Config
from .archive import file_sha256, pack
from .collect import Sources, collect
from .crypto import load_key
from .errors import BackupError, StorageError
from .storage import Progress, Storage, new_id

__all__ = ["Created", "backup_lock", "create_backup", "sources_for"]

LOCK_NAME = ".backup.lock"
Bar = Callable[[str, int], Progress]


@attrs.frozen
class Created:
    id: str
    size: int
    members: int
    redis_keys: int | None
    seconds: float


@contextlib.contextmanager
def backup_lock(data_dir: Path) -> Iterator[None]:
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(data_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BackupError(
                f"another backup is running (lock {data_dir / LOCK_NAME}); not starting a second"
            ) from None
        yield
    finally:
        os.close(fd)  # closing releases the lock


def sources_for(
    config: Config,
    config_path: str | Path | None,
    *,
    logs_since: float = 0.0,
    history: Callable[[Path], None] | None = None,
    rdb: bool = False,
) -> Sources:
    cfg = config.backup
    use_redis = cfg.include_redis and config.engine.type == "redis"
    return Sources(
        data_dir=Path(config.admin.data_dir),
        node=config.server.node_name,
        config_path=Path(config_path) if cfg.include_config and config_path else None,
        redis_address=config.engine.redis.address if use_redis else None,
        redis_prefix=config.engine.redis.prefix,
        redis_rdb=rdb,
        redis_server=cfg.redis_server,
        log_dir=Path(cfg.log_dir) if cfg.log_dir else None,
        logs_since=logs_since,
        history=history,
    )


def create_backup(
    config: Config,
    config_path: str | Path | None,
    storage: Storage,
    *,
    now: float | None = None,
    bar: Bar | None = None,
    history: Callable[[Path], None] | None = None,
    rdb: bool = False,
) -> Created:
    key = load_key(config.backup.key_file)
    started = time.monotonic()
    now = time.time() if now is None else now
    with backup_lock(Path(config.admin.data_dir)):
        logs_since = 0.0
        if config.backup.log_dir:  # logs newer than the newest backup in the bucket
            logs_since = max((e.created_at for e in storage.entries()), default=0.0)
        sources = sources_for(config, config_path, logs_since=logs_since, history=history, rdb=rdb)
        if rdb and sources.redis_address is None:
            raise BackupError('--rdb: Redis is not backed up ([engine] type = "redis" and '
                              "[backup] include_redis = true)")  # fmt: skip
        backup_id = new_id(config.server.node_name, now)
        with tempfile.TemporaryDirectory(prefix="aether-backup-") as tmp:
            staging = Path(tmp) / "staging"
            staging.mkdir()
            manifest = collect(sources, staging)
            manifest.update(id=backup_id, created_at=now, aether_version=__version__,
                            node=config.server.node_name)  # fmt: skip
            archive = Path(tmp) / "archive.aeb"
            with archive.open("wb") as out:
                pack(staging, manifest, out, key, backup_id)
            size, sha256 = archive.stat().st_size, file_sha256(archive)
            members = sum(1 for p in staging.rglob("*") if p.is_file())
            storage.upload(archive, backup_id, sha256, bar("upload", size) if bar else None)
        stored_size, stored_sha = storage.head(backup_id)
        if (stored_size, stored_sha) != (size, sha256):
            raise StorageError(f"{backup_id}: the bucket holds {stored_size} bytes, "
                               f"{size} were uploaded")  # fmt: skip
    redis = manifest["redis"]
    return Created(
        backup_id, size, members, None if redis is None else redis["keys"],
        time.monotonic() - started,
    )  # fmt: skip
