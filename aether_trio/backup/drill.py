"""`aether backup verify`, the drill: a backup is proven by restoring it, every time.

The checks, in order; the first that fails ends the drill and is named in the report and the
exit status:

    download       the object exists and its SHA-256 is the one recorded at upload
    authenticate   the key is the archive's (key id), every chunk authenticates, nothing is cut
    unpack         it decompresses into a tar with a manifest of this backup
    checksums      every member has the size and SHA-256 the manifest lists, and no other exists
    sqlite         each database passes `PRAGMA integrity_check` with the manifest's row counts
    audit_chain    the audit log's hash chain verifies end to end; its head is the manifest's
    history        the history snapshot reads as one (engines/snapshot.py)
    redis          the keys RESTORE into a scratch redis-server on a free port: as many as the
                   manifest says, sampled values identical, every stream at its recorded epoch
                   and offset
    config         the configuration parses, with the files it names (what check-config does)

RTO is what a real restore would take: download, decrypt, unpack and restore into the scratch
SQLite and Redis (the checks themselves excluded). RPO is the age of the newest verified backup.
The result is stored next to the archive (`<id>.drill.json`), which `aether backup list` shows.
"""

from __future__ import annotations

import contextlib
import sqlite3
import tempfile
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs

from ..admin import chain
from ..admin.store import DB_NAME, Database
from ..config import Config, ConfigError, parse_config
from ..engines import keyspace
from ..engines.snapshot import SNAPSHOT_NAME, SnapshotError, read_snapshot
from .archive import check_members, file_sha256, unpack
from .collect import table_counts
from .crypto import load_key
from .errors import ArchiveError, BackupError, CheckFailed, Tampered, Truncated, WrongKey
from .scratch import scratch_redis
from .storage import Entry, Progress, Storage

__all__ = ["Check", "DrillReport", "verify_backup"]

Bar = Callable[[str, int], Progress]


@attrs.frozen
class Check:
    name: str
    ok: bool
    detail: str
    seconds: float


@attrs.frozen
class DrillReport:
    backup_id: str
    checks: tuple[Check, ...]
    rto: float | None  # seconds; None when the drill failed before the restore was done
    rpo: float | None  # seconds since the newest verified backup; None: there is none
    at: float

    @property
    def failed(self) -> Check | None:
        return next((c for c in self.checks if not c.ok), None)

    @property
    def ok(self) -> bool:
        return self.failed is None

    def record(self) -> dict[str, Any]:
        failed = self.failed
        return {
            "ok": self.ok,
            "at": self.at,
            "failed_check": failed.name if failed else None,
            "detail": failed.detail if failed else None,
            "rto_seconds": self.rto,
            "checks": [attrs.asdict(c) for c in self.checks],
        }


class _Drill:
    def __init__(self) -> None:
        self.checks: list[Check] = []
        self.restore_seconds = 0.0

    def check(self, name: str, step: Callable[[], str], *, restore: bool = False) -> None:
        started = time.monotonic()
        try:
            detail = step()
        except CheckFailed as exc:
            self.checks.append(Check(exc.check, False, exc.detail, time.monotonic() - started))
            raise
        except BackupError as exc:
            self.checks.append(Check(name, False, str(exc), time.monotonic() - started))
            raise CheckFailed(name, str(exc)) from None
        seconds = time.monotonic() - started
        if restore:
            self.restore_seconds += seconds
        self.checks.append(Check(name, True, detail, seconds))


def verify_backup(
    config: Config,
    storage: Storage,
    backup_id: str | None = None,
    *,
    bar: Bar | None = None,
    record: bool = True,
) -> DrillReport:
    """Run the drill on `backup_id` (default: the newest backup). Never raises for a failed
    check: the report says which; a `StorageError` before anything could be tried does."""
    key = load_key(config.backup.key_file)
    entries = storage.entries()
    if backup_id is None:
        if not entries:
            raise BackupError(f"no backups in {storage.where()}")
        backup_id = entries[-1].id
    drill = _Drill()
    with tempfile.TemporaryDirectory(prefix="aether-drill-") as tmp:
        try:
            _run(drill, config, storage, key, backup_id, Path(tmp), bar)
            rto: float | None = drill.restore_seconds
        except CheckFailed:
            rto = None
    now = time.time()
    report = DrillReport(backup_id, tuple(drill.checks), rto, _rpo(entries, backup_id, rto, now),
                         now)  # fmt: skip
    if record:
        with contextlib.suppress(BackupError):  # the bucket may be what failed
            storage.put_drill(backup_id, report.record())
    return report


def _rpo(entries: list[Entry], backup_id: str, rto: float | None, now: float) -> float | None:
    verified = [e.created_at for e in entries if e.verified and e.id != backup_id]
    verified += [e.created_at for e in entries if e.id == backup_id and rto is not None]
    return now - max(verified) if verified else None


def _run(
    drill: _Drill,
    config: Config,
    storage: Storage,
    key: bytes,
    backup_id: str,
    tmp: Path,
    bar: Bar | None,
) -> None:
    archive, dest = tmp / "archive.aeb", tmp / "restored"
    manifest: dict[str, Any] = {}

    def download() -> str:
        size, recorded = storage.head(backup_id)
        storage.download(backup_id, archive, bar("download", size) if bar else None)
        got = file_sha256(archive)
        if not recorded:
            raise CheckFailed("download", "the object has no recorded SHA-256 (not written by "
                              "aether backup create)")  # fmt: skip
        if got != recorded:
            raise CheckFailed(
                "download",
                f"the object's SHA-256 is {got[:12]}..., {recorded[:12]}... was recorded at "
                "upload (corrupted in storage)",
            )
        return f"{size} bytes"

    def open_archive() -> str:
        dest.mkdir()
        try:
            with archive.open("rb") as source:
                manifest.update(unpack(source, key, backup_id, dest))
        except (WrongKey, Tampered, Truncated) as exc:
            raise CheckFailed("authenticate", str(exc)) from None
        except ArchiveError as exc:
            raise CheckFailed("unpack", str(exc)) from None
        return f"{len(manifest['members'])} members"

    drill.check("download", download, restore=True)
    drill.check("authenticate", open_archive, restore=True)
    drill.checks.append(Check("unpack", True, "manifest of this backup", 0.0))
    drill.check("checksums", lambda: _checksums(dest, manifest))
    drill.check("sqlite", lambda: _sqlite(dest, manifest))
    drill.check("audit_chain", lambda: _audit_chain(dest, manifest))
    drill.check("history", lambda: _history(dest, manifest))
    drill.check("redis", lambda: _redis(drill, config, dest, manifest))
    drill.check("config", lambda: _config(dest, manifest))


def _checksums(dest: Path, manifest: dict[str, Any]) -> str:
    problems = check_members(dest, manifest)
    if problems:
        raise CheckFailed("checksums", "; ".join(problems))
    return f"{len(manifest['members'])} members as listed"


def _sqlite(dest: Path, manifest: dict[str, Any]) -> str:
    for name, described in sorted(manifest["sqlite"].items()):
        conn = sqlite3.connect(dest / "sqlite" / name)
        try:
            result = [row[0] for row in conn.execute("PRAGMA integrity_check")]
            counts = table_counts(conn)
        except sqlite3.Error as exc:
            raise CheckFailed("sqlite", f"{name}: {exc}") from None
        finally:
            conn.close()
        if result != ["ok"]:
            raise CheckFailed("sqlite", f"{name}: integrity_check says {'; '.join(result)}")
        if counts != described["tables"]:
            raise CheckFailed("sqlite", f"{name}: rows {counts}, manifest {described['tables']}")
    return ", ".join(sorted(manifest["sqlite"])) or "no databases"


def _audit_chain(dest: Path, manifest: dict[str, Any]) -> str:
    described = manifest["sqlite"].get(DB_NAME)
    if described is None:
        return "no audit log in this backup"
    db = Database(sqlite3.connect(dest / "sqlite" / DB_NAME))
    try:
        verification = chain.verify(db.audit_rows(), db.audit_head())
    finally:
        db.close()
    if verification.broken is not None:
        broken = verification.broken
        raise CheckFailed("audit_chain", f"entry {broken.seq}: {broken.problem}")
    head = [verification.entries, verification.head] if verification.entries else None
    if head != described["audit_head"]:
        manifest_head = described["audit_head"]
        raise CheckFailed("audit_chain", f"head {head} differs from the manifest's {manifest_head}")
    return f"{verification.entries} entries, head {verification.head[:16]}..."


def _history(dest: Path, manifest: dict[str, Any]) -> str:
    if SNAPSHOT_NAME not in manifest["sqlite"]:
        return "no history snapshot in this backup"
    try:
        snapshot = read_snapshot(dest / "sqlite" / SNAPSHOT_NAME)
    except SnapshotError as exc:
        raise CheckFailed("history", str(exc)) from None
    return f"{len(snapshot.streams)} streams, {snapshot.publications} publications"


def _redis(drill: _Drill, config: Config, dest: Path, manifest: dict[str, Any]) -> str:
    described = manifest["redis"]
    if described is None:
        return "no Redis keys in this backup"
    prefix = described["prefix"]
    rdb = dest / "redis" / "dump.rdb" if described.get("mode") == "rdb" else None
    started = time.monotonic()
    with scratch_redis(config.backup.redis_server, rdb=rdb) as address:
        try:
            if rdb is not None:  # loaded by the scratch server at its start
                restored = keyspace.live_keys(address, prefix)
            else:
                with (dest / "redis" / "keys.bin").open("rb") as source:
                    restored = keyspace.restore_keyspace(
                        address, keyspace.read_records(source), keep_ttl=False
                    )
        except keyspace.KeyspaceError as exc:
            raise CheckFailed("redis", f"RESTORE into the scratch server: {exc}") from None
        drill.restore_seconds += time.monotonic() - started
        if restored != described["keys"]:
            raise CheckFailed("redis", f"{restored} keys restored, the manifest says "
                              f"{described['keys']}")  # fmt: skip
        for name, sha in described["samples"].items():
            value = keyspace.dump_value(address, name.encode())
            if value is None or keyspace.key_sha256(value) != sha:
                raise CheckFailed("redis", f"key {name!r} differs from its recorded value")
        positions = keyspace.stream_positions(address, prefix)
        for channel, (epoch, top) in sorted(described["streams"].items()):
            found = positions.get(channel)
            if found is None or found[:2] != (epoch, top) or found[2] not in (0, top):
                raise CheckFailed("redis", f"stream {channel!r} is at {found}, recorded "
                                  f"epoch {epoch} offset {top}")  # fmt: skip
    return f"{restored} keys, {len(described['streams'])} streams at their recorded positions"


def _config(dest: Path, manifest: dict[str, Any]) -> str:
    described = manifest["config"]
    if described is None:
        return "no configuration in this backup"
    try:
        data = tomllib.loads((dest / described["file"]).read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise CheckFailed("config", f"not valid TOML: {exc}") from None
    for key_path, member in described["references"].items():
        try:
            _set(data, key_path, str(dest / member))
        except (KeyError, IndexError, TypeError, ValueError):
            raise CheckFailed("config", f"the manifest names {key_path}, which the configuration "
                              "does not have") from None  # fmt: skip
    try:
        config = parse_config(data, dest / "config")
    except ConfigError as exc:
        raise CheckFailed("config", str(exc).replace("\n", " ")) from None
    return f"parses ({len(config.channel.namespaces)} namespaces)"


def _set(data: dict[str, Any], key_path: str, value: str) -> None:
    """Set `a.b[2].c` in parsed TOML."""
    node: Any = data
    parts = key_path.replace("[", ".[").split(".")
    for part in parts[:-1]:
        node = node[int(part[1:-1])] if part.startswith("[") else node[part]
    node[parts[-1]] = value
