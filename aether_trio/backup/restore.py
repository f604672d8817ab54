"""`aether backup restore`: a backup back into a data directory, a Redis and a config directory.

Live state is never replaced silently: a data directory that holds Aether's databases, a Redis
that holds keys under the prefix, or a config directory with a config.toml are refused unless
`force` is given, and then the server must be stopped (or in maintenance mode with its Redis
keys left alone): a running server keeps its SQLite connection and its in-memory history. The
archive is authenticated and every checksum checked before anything is written; databases are
written to a temporary name and renamed into place (their old -wal/-shm files removed: they
belong to the replaced database).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs

from ..config import Config
from ..engines import keyspace
from .archive import check_members, unpack
from .collect import config_references
from .crypto import load_key
from .errors import BackupError, RefusedOverwrite
from .scratch import scratch_redis
from .storage import Progress, Storage

__all__ = ["Restored", "restore_backup"]

Bar = Callable[[str, int], Progress]


@attrs.frozen
class Restored:
    id: str
    databases: tuple[str, ...]
    redis_keys: int | None
    config_files: int


def _refusals(
    data_dir: Path, redis_address: str | None, prefix: str, config_dir: Path | None
) -> list[str]:
    found = [f"{data_dir / name} exists" for name in ("aether.sqlite3", "history.sqlite3")
             if (data_dir / name).exists()]  # fmt: skip
    if redis_address is not None:
        try:
            live = keyspace.live_keys(redis_address, prefix)
        except keyspace.KeyspaceError as exc:
            raise BackupError(str(exc)) from None
        if live:
            found.append(f"Redis holds {live} keys under {prefix!r}")
    if config_dir is not None and (config_dir / "config.toml").exists():
        found.append(f"{config_dir / 'config.toml'} exists")
    return found


def running_server(url: str) -> str | None:
    """Why a restore must not go on while the server at `url` (its internal listener) runs:
    None when nothing answers there, or when it answers with maintenance mode on (new
    connections refused: the documented window for a restore)."""
    import json
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{url}/ready", timeout=2.0) as answer:
            body = answer.read()
    except urllib.error.HTTPError as not_ready:  # 503: running, but not ready
        body = not_ready.read()
    except (OSError, ValueError):
        return None  # nothing answers: stopped
    try:
        checks = {c.get("name"): c for c in json.loads(body).get("checks", [])}
    except (ValueError, AttributeError):
        checks = {}  # something else answers there: treated as a running server
    if checks.get("maintenance", {}).get("ok") is False:
        return None
    return (
        f"a server is running at {url} (its /ready answered): stop it, or switch maintenance "
        "mode on (`aether admin maintenance on`), before a restore"
    )


def restore_backup(
    config: Config,
    storage: Storage,
    backup_id: str | None,
    *,
    data_dir: Path,
    redis_address: str | None,
    config_dir: Path | None = None,
    force: bool = False,
    bar: Bar | None = None,
    server_url: str | None = None,
) -> Restored:
    """`server_url`: the internal listener of the server whose state this replaces; a restore
    refuses to run while it answers (unless in maintenance mode), whatever `force` says."""
    if server_url is not None and (running := running_server(server_url)) is not None:
        raise RefusedOverwrite(running)
    key = load_key(config.backup.key_file)
    entries = storage.entries()
    if backup_id is None:
        if not entries:
            raise BackupError(f"no backups in {storage.where()}")
        backup_id = entries[-1].id
    prefix = config.engine.redis.prefix
    refusals = _refusals(data_dir, redis_address, prefix, config_dir)
    if refusals and not force:
        raise RefusedOverwrite(
            "refusing to overwrite live state (stop the server, then give --force): "
            + "; ".join(refusals)
        )
    with tempfile.TemporaryDirectory(prefix="aether-restore-") as tmp:
        archive, dest = Path(tmp) / "archive.aeb", Path(tmp) / "restored"
        size, _sha = storage.head(backup_id)
        storage.download(backup_id, archive, bar("download", size) if bar else None)
        dest.mkdir()
        with archive.open("rb") as source:
            manifest = unpack(source, key, backup_id, dest)
        problems = check_members(dest, manifest)
        if problems:
            raise BackupError(f"{backup_id}: " + "; ".join(problems))
        databases = _databases(dest, data_dir, manifest)
        redis_keys = None
        if redis_address is not None and manifest["redis"] is not None:
            try:
                redis_keys = _redis(config, dest, manifest["redis"], redis_address, force)
            except keyspace.KeyspaceError as exc:
                raise BackupError(str(exc)) from None
        config_files = _config(dest, config_dir, manifest) if config_dir else 0
    return Restored(backup_id, databases, redis_keys, config_files)


def _redis(config: Config, dest: Path, described: dict[str, Any], address: str, force: bool) -> int:
    records = dest / "redis" / "keys.bin"
    if described.get("mode") == "rdb":
        # An RDB file cannot be loaded into a running Redis: a scratch server loads it, and
        # Aether's keys are copied from there like a DUMP backup's.
        rdb = dest / "redis" / "dump.rdb"
        with (
            scratch_redis(config.backup.redis_server, rdb=rdb) as scratch,
            records.open("wb") as out,
        ):
            keyspace.dump_keyspace(scratch, described["prefix"], out)
    with records.open("rb") as source:
        return keyspace.restore_keyspace(address, keyspace.read_records(source), replace=force)


def _databases(dest: Path, data_dir: Path, manifest: dict[str, object]) -> tuple[str, ...]:
    data_dir.mkdir(parents=True, exist_ok=True)
    names = tuple(sorted(manifest["sqlite"]))  # type: ignore[call-overload]
    for name in names:
        staged = data_dir / f".{name}.restoring"
        shutil.copyfile(dest / "sqlite" / name, staged)
        for suffix in ("-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                (data_dir / (name + suffix)).unlink()
        os.replace(staged, data_dir / name)
    return names


def _config(dest: Path, config_dir: Path, manifest: dict[str, object]) -> int:
    described = manifest["config"]
    if not isinstance(described, dict):
        return 0
    config_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(dest / described["file"], config_dir / "config.toml")
    data = tomllib.loads((dest / described["file"]).read_text())
    names = dict(config_references(data))
    count = 1
    for key_path, member in described["references"].items():
        name = Path(names[key_path])
        # A relative name goes where the config expects it; an absolute one is not written
        # outside config_dir: it lands under restored-files/ and the operator moves it.
        target = config_dir / name if not name.is_absolute() else (
            config_dir / "restored-files" / Path(member).name)  # fmt: skip
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(dest / member, target)
        target.chmod(0o600)
        count += 1
    return count
