"""A real S3 API on loopback for the backup tests: moto's standalone server (`moto[server]`) in a
process of its own on a free port, and the state an Aether node leaves behind (SQLite with bans
and an audit chain, a history snapshot, Redis keys in the engine's layout, a config with files).
"""

from __future__ import annotations

import secrets
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from redis_server import free_port

from aether_trio.admin.store import Database
from aether_trio.cli import main
from aether_trio.engines.snapshot import SavedStream, write_snapshot
from aether_trio.protocol.messages import ClientInfo, Publication, RawJSON

__all__ = ["MotoServer", "Node", "free_port", "run", "running_moto"]

ACCESS = ("testing-key-id", "testing-secret")


def run(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str, str]:
    """`aether ARGV` in this process: its exit code, stdout and stderr."""
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


class MotoServer:
    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(self.url + "/moto-api/", timeout=1)
                return
            except httpx.TransportError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("moto_server did not start") from None
                time.sleep(0.1)  # the server gives no readiness signal but answering

    def client(self) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=self.url,
            region_name="us-east-1",
            aws_access_key_id=ACCESS[0],
            aws_secret_access_key=ACCESS[1],
        )

    def new_bucket(self) -> str:
        name = f"aether-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


@contextmanager
def running_moto() -> Iterator[MotoServer]:
    server = MotoServer()
    try:
        yield server
    finally:
        server.close()


class Node:
    """The files of one Aether node under `root`, and a config.toml that points at them."""

    def __init__(self, root: Path, moto: MotoServer, bucket: str, redis: Any = None) -> None:
        self.root = root
        self.data_dir = root / "data"
        self.etc = root / "etc"
        self.logs = root / "logs"
        for path in (self.data_dir, self.etc / "secrets", self.logs):
            path.mkdir(parents=True)
        (self.etc / "secrets" / "hmac").write_text(secrets.token_hex(32) + "\n")
        (self.etc / "secrets" / "api").write_text(secrets.token_hex(16) + "\n")
        (self.etc / "backup.key").write_text(secrets.token_bytes(32).hex() + "\n")
        (self.etc / "aws").write_text(
            f"[default]\naws_access_key_id = {ACCESS[0]}\naws_secret_access_key = {ACCESS[1]}\n"
        )
        self.redis = redis
        self.prefix = f"t{uuid.uuid4().hex[:8]}"
        self.bucket = bucket
        self.moto = moto
        self.write_config()

    @property
    def config_path(self) -> Path:
        return self.etc / "config.toml"

    def write_config(self, **backup: Any) -> None:
        settings = {
            "bucket": self.bucket,
            "endpoint_url": self.moto.url,
            "region": "us-east-1",
            "credentials_file": "aws",
            "key_file": "backup.key",
            "log_dir": str(self.logs),
            **backup,
        }
        lines = ["[server]", 'node_name = "node-a"', "", "[admin]",
                 f'data_dir = "{self.data_dir}"', "", "[token]",
                 'hmac_secret_file = "secrets/hmac"', "", "[[api.keys]]", 'name = "ops"',
                 'key_file = "secrets/api"', 'roles = ["admin"]', ""]  # fmt: skip
        if self.redis is not None:
            address = self.redis.address
            lines += ["[engine]", 'type = "redis"', "", "[engine.redis]",
                      f'address = "{address}"', f'prefix = "{self.prefix}"', ""]  # fmt: skip
        lines.append("[backup]")
        for key, value in settings.items():
            text = f'"{value}"' if isinstance(value, str) else str(value).lower()
            lines.append(f"{key} = {text}")
        self.config_path.write_text("\n".join(lines) + "\n")

    def fill_sqlite(self, entries: int = 5) -> tuple[int, str]:
        db = Database.open(self.data_dir / "aether.sqlite3")
        try:
            db.put_ban("mallory", None, "spam", time.time())
            db.put_revoked("jti-1", time.time() + 3600, time.time())
            head = (0, "")
            for n in range(entries):
                draft = {"ts": "2026-12-07T00:00:00.000Z", "actor": "key:ops", "ok": True,
                         "action": "admin.ban", "params": {"n": n}, "result": None}  # fmt: skip
                head = db.append_audit([draft])
            return head
        finally:
            db.close()

    def fill_history(self) -> None:
        now = time.time()
        info = ClientInfo("42", "client-1", RawJSON(b'{"a":1}'), RawJSON(b""))
        pubs = tuple(
            Publication(RawJSON(b'{"n":%d}' % n), info if n % 2 else None, n) for n in (1, 2, 3)
        )
        write_snapshot(
            self.data_dir / "history.sqlite3",
            [SavedStream("news", "EPOCHabc", 3, now + 3600, now + 600, pubs)],
            now,
        )

    def fill_redis(self, channels: int = 5, per_channel: int = 4) -> None:
        p = self.prefix
        for c in range(channels):
            ch = f"chat:{c}"
            for n in range(1, per_channel + 1):
                self.redis.command("XADD", f"{p}.stream.{ch}", f"{n}-0", "d", f"pub-{c}-{n}")
            self.redis.command("HSET", f"{p}.meta.{ch}", "e", f"epoch{c:03d}",
                               "s", per_channel)  # fmt: skip
            self.redis.command("PEXPIRE", f"{p}.stream.{ch}", 3_600_000)
        self.redis.command("HSET", f"{p}.presence.data.chat:0", "client-1", "x")
        self.redis.command("SET", f"{p}.other", "kept")
        self.redis.command("SET", "someone-else", "not ours")

    def fill_logs(self) -> None:
        (self.logs / "aether.log").write_text("started\n")
        (self.logs / "old").mkdir()
        (self.logs / "old" / "aether.log.1").write_text("yesterday\n")

    def argv(self, *args: str) -> list[str]:
        return ["backup", args[0], "-c", str(self.config_path), *args[1:]]
