"""`[backup]`: where `aether backup` stores archives, the schedule and the retention
(aether_trio/backup; README "Backups", ops/README.md)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import attrs

from ..protocol.options import non_negative, positive

__all__ = ["BackupConfig", "parse_duration"]

DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
DURATION_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """ "90s", "30m", "6h", "1d" in seconds; "" = 0 (off)."""
    if not text:
        return 0.0
    match = DURATION.match(text)
    if match is None or float(match[1]) <= 0:
        raise ValueError(f'expected "" or a duration such as "30m", "6h", "1d", got {text!r}')
    return float(match[1]) * DURATION_UNITS[match[2]]


def _duration(_inst: object, attr: attrs.Attribute[Any], value: str) -> None:
    try:
        parse_duration(value)
    except ValueError as exc:
        raise ValueError(f"{attr.name}: {exc}") from None


def _key_prefix(_inst: object, attr: attrs.Attribute[Any], value: str) -> None:
    if value.startswith("/") or ".." in value.split("/"):
        raise ValueError(f'{attr.name}: expected a relative key prefix such as "aether/"')


@attrs.frozen
class BackupConfig:
    """`aether backup` and the scheduled backups (docs: README, ops/README.md)."""

    bucket: str = ""
    # Object keys start with it; "" = the bucket's root.
    prefix: str = attrs.field(default="aether/", validator=_key_prefix)
    # Any S3-compatible endpoint (MinIO, Ceph, a cloud's); "" = AWS's for `region`.
    endpoint_url: str = ""
    region: str = ""
    # An AWS shared credentials file and its profile; "" = the environment (AWS_ACCESS_KEY_ID...).
    credentials_file: str = ""
    profile: str = ""
    # 64 hex digits (`aether backup keygen`); keep a copy off this host: without it no restore.
    key_file: str = ""
    # How often the server itself takes a backup ("6h", "1d"; "" = never: a timer or cron does).
    schedule: str = attrs.field(default="", validator=_duration)
    # Each wait is the schedule +- this fraction of it, so nodes sharing a bucket spread out.
    jitter: float = attrs.field(default=0.1, validator=non_negative)
    # Run the drill (`aether backup verify`) after each scheduled backup.
    verify_after: bool = True
    # Retention (`aether backup prune`): the newest N, one a day for D days, one a week for W
    # weeks; the newest verified backup is always kept.
    keep_last: int = attrs.field(default=7, validator=non_negative)
    keep_daily: int = attrs.field(default=7, validator=non_negative)
    keep_weekly: int = attrs.field(default=4, validator=non_negative)
    # What goes in besides the SQLite databases of [admin] data_dir.
    include_redis: bool = True
    include_config: bool = True
    # Logs modified since the previous backup are taken from here ("" = none).
    log_dir: str = ""
    # The drill restores Redis keys into a scratch server started from this program.
    redis_server: str = "redis-server"
    # Archives larger than this are uploaded in parts of this size (S3 multipart).
    multipart_threshold: int = attrs.field(default=8 << 20, validator=positive)

    def __attrs_post_init__(self) -> None:
        if self.jitter >= 1:
            raise ValueError(f"jitter: expected a fraction 0..1, got {self.jitter!r}")
        if self.multipart_threshold < 5 << 20:
            raise ValueError("multipart_threshold: S3 parts are at least 5 MiB (5242880)")

    @property
    def interval(self) -> float:
        return parse_duration(self.schedule)

    def resolved(self, base: Path) -> BackupConfig:
        """A copy with the file paths made absolute (relative to the config file)."""
        changes = {
            name: str(base / getattr(self, name))
            for name in ("key_file", "credentials_file", "log_dir")
            if getattr(self, name)
        }
        return attrs.evolve(self, **changes)  # type: ignore[arg-type]
