"""The bucket: archives and drill records on any S3-compatible endpoint, through boto3.

Objects under `[backup] prefix`:

    <id>.aeb          the encrypted archive; metadata `sha256` = SHA-256 of the object as uploaded
    <id>.drill.json   the last drill's result (plain JSON: status, time, failed check, RTO; no
                      secrets, no state)

An id is `<UTC time>-<node>-<random>`, e.g. `20261207T223218Z-aether-1f3a9c`: ids sort by time
and name when the backup was taken. boto3 is synchronous: callers run it in a worker thread or a
command-line process. Every failure becomes a `StorageError` naming the bucket and the endpoint.
"""

from __future__ import annotations

import datetime
import re
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import boto3
import botocore.exceptions
import botocore.session
import orjson
from boto3.s3.transfer import TransferConfig
from botocore.config import Config as BotoConfig

from ..config import BackupConfig
from .errors import StorageError

__all__ = ["ARCHIVE_SUFFIX", "Entry", "Storage", "created_at", "new_id"]

ARCHIVE_SUFFIX = ".aeb"
DRILL_SUFFIX = ".drill.json"
ID = re.compile(r"^(\d{8}T\d{6}Z)-[A-Za-z0-9_-]+-[0-9a-f]{6}$")
TIME_FORMAT = "%Y%m%dT%H%M%SZ"

Progress = Callable[[int], None]


def new_id(node: str, now: float) -> str:
    moment = datetime.datetime.fromtimestamp(now, datetime.UTC).strftime(TIME_FORMAT)
    safe = re.sub(r"[^A-Za-z0-9_-]", "_", node)[:40] or "node"
    return f"{moment}-{safe}-{secrets.token_hex(3)}"


def created_at(backup_id: str) -> float:
    match = ID.match(backup_id)
    if match is None:
        raise ValueError(f"not a backup id: {backup_id!r}")
    moment = datetime.datetime.strptime(match[1], TIME_FORMAT).replace(tzinfo=datetime.UTC)
    return moment.timestamp()


@attrs.frozen
class Entry:
    id: str
    created_at: float
    size: int
    drill: dict[str, Any] | None  # the last drill's record, None if never drilled

    @property
    def verified(self) -> bool:
        return bool(self.drill and self.drill.get("ok"))


class Storage:
    def __init__(self, config: BackupConfig) -> None:
        if not config.bucket:
            raise StorageError("[backup] bucket is not set")
        self.bucket = config.bucket
        self.prefix = config.prefix
        self.endpoint = config.endpoint_url or "AWS S3"
        self.threshold = config.multipart_threshold
        core = botocore.session.Session()
        if config.credentials_file:
            core.set_config_variable("credentials_file", config.credentials_file)
        if config.profile:
            core.set_config_variable("profile", config.profile)
        session = boto3.Session(botocore_session=core)
        self.client = session.client(
            "s3",
            endpoint_url=config.endpoint_url or None,
            region_name=config.region or None,
            # Bounded: an unreachable endpoint is reported within seconds, not minutes.
            config=BotoConfig(
                connect_timeout=5, read_timeout=60, retries={"max_attempts": 3, "mode": "standard"}
            ),
        )

    def where(self, name: str = "") -> str:
        return f"s3://{self.bucket}/{self.prefix}{name} at {self.endpoint}"

    def _call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except botocore.exceptions.ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code", "?"))
            if code == "NoSuchBucket":
                raise StorageError(f"{what}: bucket {self.bucket!r} does not exist at "
                                   f"{self.endpoint}") from None  # fmt: skip
            if code in ("NoSuchKey", "404", "NotFound"):
                raise StorageError(f"{what}: no such object {self.where(what)}") from None
            message = error.get("Message", "")
            raise StorageError(f"{what} at {self.where()}: {code} {message}".rstrip()) from None
        except botocore.exceptions.NoCredentialsError:
            raise StorageError(
                "no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or "
                "[backup] credentials_file"
            ) from None
        except (botocore.exceptions.EndpointConnectionError,
                botocore.exceptions.ConnectTimeoutError) as exc:  # fmt: skip
            raise StorageError(f"{what}: cannot reach {self.endpoint}: {exc}") from None
        except botocore.exceptions.BotoCoreError as exc:
            raise StorageError(f"{what} at {self.where()}: {exc}") from None

    def upload(self, path: Path, backup_id: str, sha256: str, progress: Progress | None) -> None:
        transfer = TransferConfig(multipart_threshold=self.threshold,
                                  multipart_chunksize=self.threshold)  # fmt: skip
        self._call(
            backup_id + ARCHIVE_SUFFIX,
            self.client.upload_file,
            str(path),
            self.bucket,
            self.prefix + backup_id + ARCHIVE_SUFFIX,
            ExtraArgs={"Metadata": {"sha256": sha256}},
            Config=transfer,
            Callback=progress,
        )

    def head(self, backup_id: str) -> tuple[int, str]:
        """(size, recorded SHA-256 or "") of an archive."""
        key = self.prefix + backup_id + ARCHIVE_SUFFIX
        found = self._call(
            backup_id + ARCHIVE_SUFFIX, self.client.head_object, Bucket=self.bucket, Key=key
        )
        return int(found["ContentLength"]), str(found.get("Metadata", {}).get("sha256", ""))

    def download(self, backup_id: str, path: Path, progress: Progress | None) -> None:
        transfer = TransferConfig(multipart_threshold=self.threshold,
                                  multipart_chunksize=self.threshold)  # fmt: skip
        key = self.prefix + backup_id + ARCHIVE_SUFFIX
        self._call(backup_id + ARCHIVE_SUFFIX, self.client.download_file, self.bucket, key,
                   str(path), Config=transfer, Callback=progress)  # fmt: skip

    def _objects(self) -> Iterator[dict[str, Any]]:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self.prefix
        )
        for page in pages:
            yield from page.get("Contents", ())

    def entries(self) -> list[Entry]:
        """Every backup in the bucket, oldest first, with its last drill's record."""
        objects = self._call("list", lambda: list(self._objects()))
        sizes, drilled = {}, set()
        for obj in objects:
            name = obj["Key"][len(self.prefix) :]
            if name.endswith(ARCHIVE_SUFFIX) and ID.match(name[: -len(ARCHIVE_SUFFIX)]):
                sizes[name[: -len(ARCHIVE_SUFFIX)]] = int(obj["Size"])
            elif name.endswith(DRILL_SUFFIX):
                drilled.add(name[: -len(DRILL_SUFFIX)])
        return [
            Entry(backup_id, created_at(backup_id), size,
                  self.drill(backup_id) if backup_id in drilled else None)
            for backup_id, size in sorted(sizes.items())
        ]  # fmt: skip

    def drill(self, backup_id: str) -> dict[str, Any] | None:
        key = self.prefix + backup_id + DRILL_SUFFIX
        found = self._call(backup_id + DRILL_SUFFIX, self.client.get_object,
                           Bucket=self.bucket, Key=key)  # fmt: skip
        try:
            record = orjson.loads(found["Body"].read())
        except orjson.JSONDecodeError:
            return None
        return record if isinstance(record, dict) else None

    def put_drill(self, backup_id: str, record: dict[str, Any]) -> None:
        key = self.prefix + backup_id + DRILL_SUFFIX
        self._call(backup_id + DRILL_SUFFIX, self.client.put_object, Bucket=self.bucket,
                   Key=key, Body=orjson.dumps(record), ContentType="application/json")  # fmt: skip

    def delete(self, backup_id: str) -> None:
        keys = [{"Key": self.prefix + backup_id + s} for s in (ARCHIVE_SUFFIX, DRILL_SUFFIX)]
        self._call("delete " + backup_id, self.client.delete_objects,
                   Bucket=self.bucket, Delete={"Objects": keys, "Quiet": True})  # fmt: skip
