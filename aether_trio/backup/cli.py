"""`aether backup keygen | create | list | verify | prune | restore`.

Exit codes: 0 done (verify: every check passed), 1 failed (the message, or the failed check,
says why), 2 usage or configuration. On a terminal, transfers show a progress bar (tqdm); off
one, each command prints one summary line per backup.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from ..config import Config
from .errors import BackupError
from .retention import Candidate, to_keep

# boto3, zstandard and cryptography are imported by the commands that use them, not by every
# `aether` command (building the parser imports this module): they cost half a second.
if TYPE_CHECKING:
    from .drill import DrillReport
    from .storage import Entry, Progress, Storage

__all__ = ["add_parsers", "human_bytes", "human_seconds"]

LoadConfig = Callable[[str | None, int | None], tuple[Config, str | None]]


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError  # pragma: no cover


def human_seconds(s: float) -> str:
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    if s < 172800:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} d"


class _Bars:
    """tqdm bars on a terminal, nothing otherwise; closed together at the end."""

    def __init__(self) -> None:
        self._open: list[Any] = []

    def __call__(self, label: str, total: int) -> Progress:
        from tqdm import tqdm

        bar = tqdm(total=total, desc=label, unit="B", unit_scale=True, leave=False)
        self._open.append(bar)
        return lambda n: bar.update(n)

    def close(self) -> None:
        for bar in self._open:
            bar.close()


def _bars() -> _Bars | None:
    return _Bars() if sys.stderr.isatty() else None


def cmd_keygen(args: argparse.Namespace) -> int:
    try:
        from .crypto import generate_key_file

        generate_key_file(Path(args.file))
    except FileExistsError:
        print(f"error: {args.file} exists; never replace a key older backups need",
              file=sys.stderr)  # fmt: skip
        return 1
    print(f"wrote {args.file} (mode 0600): set [backup] key_file, keep a copy off this host")
    return 0


def _setup(args: argparse.Namespace) -> tuple[Config, str | None, Storage]:
    config, path = args.load_config(args.config, args.instance)
    from .storage import Storage

    return config, path, Storage(config.backup)


def _run(args: argparse.Namespace, fn: Callable[[argparse.Namespace], int]) -> int:
    try:
        return fn(args)
    except BackupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def cmd_create(args: argparse.Namespace) -> int:
    from .create import create_backup
    from .storage import ARCHIVE_SUFFIX

    config, path, storage = _setup(args)
    bars = _bars()
    try:
        created = create_backup(config, path, storage, bar=bars, rdb=args.rdb)
    finally:
        if bars is not None:
            bars.close()
    redis = "" if created.redis_keys is None else f", {created.redis_keys} Redis keys"
    where = storage.where(created.id + ARCHIVE_SUFFIX)
    print(
        f"backup {created.id}: {human_bytes(created.size)}, {created.members} files{redis}, "
        f"uploaded to {where} in {human_seconds(created.seconds)}"
    )
    return 0


def _status(entry: Entry) -> str:
    if entry.drill is None:
        return "not verified"
    if entry.drill.get("ok"):
        return "verified"
    return f"FAILED ({entry.drill.get('failed_check')})"


def cmd_list(args: argparse.Namespace) -> int:
    _config, _path, storage = _setup(args)
    entries = storage.entries()
    now = time.time()
    if args.json:
        rows = [{"id": e.id, "created_at": e.created_at, "size": e.size, "drill": e.drill}
                for e in entries]  # fmt: skip
        print(orjson.dumps(rows).decode())
        return 0
    if not entries:
        print(f"no backups in {storage.where()}")
        return 0
    print(f"{'ID':<42} {'AGE':>9} {'SIZE':>10}  DRILL")
    for e in entries:
        print(f"{e.id:<42} {human_seconds(now - e.created_at):>9} {human_bytes(e.size):>10}  "
              f"{_status(e)}")  # fmt: skip
    return 0


def print_report(report: DrillReport) -> None:
    for check in report.checks:
        status = "ok" if check.ok else "FAILED"
        print(f"  {check.name:<13} {status:<6} {check.detail}")
    rpo = "none verified" if report.rpo is None else human_seconds(report.rpo)
    if report.ok:
        assert report.rto is not None
        print(f"backup {report.backup_id}: verified; RPO {rpo}, RTO {human_seconds(report.rto)}")
    else:
        failed = report.failed
        assert failed is not None
        print(f"backup {report.backup_id}: FAILED check {failed.name}: {failed.detail}; "
              f"RPO {rpo}")  # fmt: skip


def cmd_verify(args: argparse.Namespace) -> int:
    config, _path, storage = _setup(args)
    bars = _bars()
    try:
        from .drill import verify_backup

        report = verify_backup(config, storage, args.id, bar=bars)
    finally:
        if bars is not None:
            bars.close()
    print_report(report)
    return 0 if report.ok else 1


def cmd_prune(args: argparse.Namespace) -> int:
    config, _path, storage = _setup(args)
    pruned = prune(config, storage, time.time(), dry_run=args.dry_run)
    verb = "would delete" if args.dry_run else "deleted"
    for backup_id in pruned:
        print(f"{verb} {backup_id}")
    print(f"{verb} {len(pruned)} backups")
    return 0


def prune(config: Config, storage: Storage, now: float, *, dry_run: bool = False) -> list[str]:
    cfg = config.backup
    entries = storage.entries()
    keep = to_keep(
        [Candidate(e.id, e.created_at, e.verified) for e in entries],
        now,
        last=cfg.keep_last,
        daily=cfg.keep_daily,
        weekly=cfg.keep_weekly,
    )
    doomed = [e.id for e in entries if e.id not in keep]
    if not dry_run:
        for backup_id in doomed:
            storage.delete(backup_id)
    return doomed


def cmd_restore(args: argparse.Namespace) -> int:
    config, _path, storage = _setup(args)
    redis = args.redis
    if redis is None and config.engine.type == "redis" and config.backup.include_redis:
        redis = config.engine.redis.address
    bars = _bars()
    try:
        from .restore import restore_backup

        restored = restore_backup(
            config,
            storage,
            None if args.id == "latest" else args.id,
            data_dir=Path(args.data_dir or config.admin.data_dir),
            redis_address=redis,
            config_dir=Path(args.config_dir) if args.config_dir else None,
            force=args.force,
            bar=bars,
            server_url=f"http://{config.http.host}:{config.http.port}",
        )
    finally:
        if bars is not None:
            bars.close()
    redis_text = "" if restored.redis_keys is None else f", {restored.redis_keys} Redis keys"
    print(f"restored {restored.id}: {', '.join(restored.databases) or 'no databases'}"
          f"{redis_text}, {restored.config_files} config files")  # fmt: skip
    return 0


def add_parsers(
    sub: Any,
    with_config: Callable[[argparse.ArgumentParser], argparse.ArgumentParser],
    load_config: LoadConfig,
) -> None:
    """Register `backup` on the `aether` parser's subparsers."""
    backup = sub.add_parser("backup", help="encrypted backups to S3, verified by restoring them")
    commands = backup.add_subparsers(dest="backup_command", required=True)

    def command(name: str, text: str, fn: Callable[[argparse.Namespace], int]) -> Any:
        p = with_config(commands.add_parser(name, help=text))
        p.set_defaults(func=lambda args: _run(args, fn), load_config=load_config)
        return p

    keygen = commands.add_parser("keygen", help="write a new random key file (mode 0600)")
    keygen.add_argument("file")
    keygen.set_defaults(func=cmd_keygen)
    command("create", "back up now and upload", cmd_create).add_argument(
        "--rdb", action="store_true", help="take Redis's RDB file (BGSAVE; Redis on this host)"
    )
    command("list", "backups with age, size and drill status", cmd_list).add_argument(
        "--json", action="store_true"
    )
    command("verify", "the drill: restore into scratch SQLite and Redis, check", cmd_verify)\
        .add_argument("id", nargs="?", help="a backup id (default: the newest)")  # fmt: skip
    command("prune", "delete what [backup] keep_* does not keep", cmd_prune).add_argument(
        "--dry-run", action="store_true", help="only say what would be deleted"
    )
    restore = command("restore", "restore a backup (the server stopped)", cmd_restore)
    restore.add_argument("id", help="a backup id, or `latest`")
    restore.add_argument("--data-dir", help="where the databases go (default: [admin] data_dir)")
    restore.add_argument("--redis", help="Redis address (default: [engine.redis] address)")
    restore.add_argument("--config-dir", help="also write the configuration and its files here")
    restore.add_argument("--force", action="store_true", help="replace existing state")
