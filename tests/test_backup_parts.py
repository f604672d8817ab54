"""The backup's parts one by one, where the command-line tests do not reach: the Redis keyspace
copy (engines/keyspace.py) against private redis-servers, S3 errors against moto, the service's
failure paths, the progress bars, the collect step's refusals."""

from __future__ import annotations

import io
import logging
import re
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from backup_helpers import MotoServer, Node, free_port, running_moto
from prometheus_client import CollectorRegistry
from redis_server import RedisServer, running_redis

from aether_trio.backup import cli as backup_cli
from aether_trio.backup import crypto
from aether_trio.backup.collect import Sources, collect
from aether_trio.backup.errors import BackupError, StorageError
from aether_trio.backup.service import BackupMetrics, BackupService
from aether_trio.backup.storage import Storage, new_id
from aether_trio.cli import main
from aether_trio.config import BackupConfig, load_config
from aether_trio.engines import keyspace


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    with running_moto() as server:
        yield server


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    with running_redis() as server:
        yield server


# --- the keyspace -----------------------------------------------------------------------------


def test_an_empty_prefix_dumps_nothing_and_records_the_time(redis: RedisServer) -> None:
    out = io.BytesIO()
    dumped = keyspace.dump_keyspace(redis.address, "nothing-here", out)
    assert (dumped.keys, dumped.streams, out.getvalue()) == (0, {}, b"")
    assert dumped.time_ms > 1_700_000_000_000


def test_records_cut_short_are_refused() -> None:
    record = keyspace.RECORD.pack(3, 4, -1) + b"key" + b"valu"
    assert list(keyspace.read_records(io.BytesIO(record))) == [(b"key", b"valu", -1)]
    with pytest.raises(keyspace.KeyspaceError, match="inside a record header"):
        list(keyspace.read_records(io.BytesIO(record[:5])))
    with pytest.raises(keyspace.KeyspaceError, match=r"inside a record$"):
        list(keyspace.read_records(io.BytesIO(record[:-1])))


def test_restore_keeps_ttls_skips_the_expired_and_goes_in_batches(redis: RedisServer) -> None:
    source = redis.client()
    for n in range(600):
        source.set(f"p.k{n}", n)
    source.set("p.gone", "x")
    out = io.BytesIO()
    dumped = keyspace.dump_keyspace(redis.address, "p", out)
    assert dumped.keys == 601
    now_ms = int(source.time()[0] * 1000)
    records = list(keyspace.read_records(io.BytesIO(out.getvalue())))
    records = [(k, v, now_ms + 600_000 if k == b"p.k1" else e) for k, v, e in records]
    records.append((b"p.expired", records[0][1], now_ms - 1000))
    with running_redis() as target:
        assert keyspace.restore_keyspace(target.address, records) == 601
        dest = target.client()
        assert dest.get("p.k599") == b"599"
        assert dest.exists("p.expired") == 0
        assert 500_000 < dest.pttl("p.k1") <= 600_000
        assert dest.pttl("p.k2") == -1
        # Existing keys are not replaced without `replace`: Redis refuses, named.
        with pytest.raises(keyspace.KeyspaceError, match="BUSYKEY"):
            keyspace.restore_keyspace(target.address, records[:1])
        assert keyspace.restore_keyspace(target.address, records[:1], replace=True) == 1


def test_an_unreachable_redis_is_named_by_every_operation() -> None:
    address = f"redis://127.0.0.1:{free_port()}/0"
    calls: list[Callable[[], object]] = [
        lambda: keyspace.dump_keyspace(address, "p", io.BytesIO()),
        lambda: keyspace.restore_keyspace(address, []),
        lambda: keyspace.live_keys(address, "p"),
        lambda: keyspace.stream_positions(address, "p"),
        lambda: keyspace.dump_value(address, b"k"),
    ]
    for call in calls:
        with pytest.raises(keyspace.KeyspaceError, match=f"Redis at {address}: "):
            call()
    assert keyspace.ping(address) is False


def test_create_and_restore_name_an_unreachable_redis(
    tmp_path: Path, moto: MotoServer, redis: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    node = Node(tmp_path / "n", moto, moto.new_bucket(), redis)
    node.fill_redis()
    assert main(node.argv("create")) == 0
    capsys.readouterr()
    redis.stop()
    assert main(node.argv("create")) == 1
    assert f"Redis at {redis.address}: " in capsys.readouterr().err
    data = tmp_path / "elsewhere"
    assert main(node.argv("restore", "latest", "--data-dir", str(data))) == 1
    assert f"Redis at {redis.address}: " in capsys.readouterr().err
    # With --force the refusal check is skipped, and the restore itself names it.
    assert main(node.argv("restore", "latest", "--data-dir", str(data), "--force")) == 1
    assert f"Redis at {redis.address}: " in capsys.readouterr().err


# --- collecting -------------------------------------------------------------------------------


def test_a_database_that_is_not_one_and_a_vanished_config_file(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "aether.sqlite3").write_bytes(b"not a database at all" * 100)
    with pytest.raises(BackupError, match=r"SQLite backup of .*aether.sqlite3 failed: "):
        collect(Sources(data, "n"), tmp_path / "s1")
    (data / "aether.sqlite3").unlink()
    config = tmp_path / "config.toml"
    config.write_text('[token]\nhmac_secret_file = "gone"\n')
    with pytest.raises(BackupError, match=r"token.hmac_secret_file: cannot read .*gone"):
        collect(Sources(data, "n", config_path=config), tmp_path / "s2")


def test_a_history_hook_that_writes_nothing_leaves_history_out(tmp_path: Path) -> None:
    manifest = collect(Sources(tmp_path, "n", history=lambda path: None), tmp_path / "s")
    assert manifest["sqlite"] == {}


# --- S3 ---------------------------------------------------------------------------------------


def storage(moto: MotoServer, **settings: Any) -> Storage:
    return Storage(BackupConfig(**{"endpoint_url": moto.url, "region": "us-east-1", **settings}))


def test_s3_refusals_are_named(
    moto: MotoServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    with pytest.raises(StorageError, match="list at s3://bad bucket/aether/ at http"):
        storage(moto, bucket="bad bucket").entries()  # refused by botocore before sending
    with pytest.raises(StorageError, match="does not exist"):
        storage(moto, bucket="no-such-bucket-anywhere").entries()
    bucket = moto.new_bucket()
    # A refusal that is none of the named ones: a range beyond the object's end.
    moto.client().put_object(Bucket=bucket, Key="one-byte", Body=b"x")
    s3 = storage(moto, bucket=bucket)
    with pytest.raises(StorageError, match=r"^read at s3://.* at http://\S+: InvalidRange"):
        s3._call("read", s3.client.get_object, Bucket=bucket, Key="one-byte", Range="bytes=5-9")
    # No credentials anywhere.
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(StorageError, match="no S3 credentials"):
        storage(moto, bucket=bucket, profile="").entries()


def test_a_drill_record_that_is_not_json_counts_as_none(
    moto: MotoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    bucket = moto.new_bucket()
    s3 = storage(moto, bucket=bucket)
    backup_id = new_id("n", 1_800_000_000)
    for suffix, body in ((".aeb", b"x"), (".drill.json", b"{not json")):
        moto.client().put_object(Bucket=bucket, Key=f"aether/{backup_id}{suffix}", Body=body)
    [entry] = s3.entries()
    assert entry.drill is None
    assert not entry.verified
    assert backup_cli._status(entry) == "not verified"


# --- the service ------------------------------------------------------------------------------


def service_for(node: Node, **backup: Any) -> BackupService:
    node.write_config(**backup)
    config = load_config(node.config_path)
    return BackupService(lambda: config, str(node.config_path),
                         BackupMetrics(CollectorRegistry()))  # fmt: skip


async def test_without_the_drill_a_backup_is_enough(tmp_path: Path, moto: MotoServer) -> None:
    node = Node(tmp_path / "n", moto, moto.new_bucket())
    service = service_for(node, verify_after=False)
    assert await service.run_once() is True
    assert service.metrics.verifications.labels("ok")._value.get() == 0


async def test_unexpected_errors_are_logged_and_counted(
    tmp_path: Path,
    moto: MotoServer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    node = Node(tmp_path / "n", moto, moto.new_bucket())
    service = service_for(node)

    def boom(*_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError("unexpected")

    monkeypatch.setattr("aether_trio.backup.drill.verify_backup", boom)
    assert await service.run_once() is False
    assert service.metrics.verifications.labels("failed")._value.get() == 1
    assert "drill FAILED unexpected" in caplog.text
    monkeypatch.setattr("aether_trio.backup.create.create_backup", boom)
    with caplog.at_level(logging.ERROR):
        assert await service.run_once() is False
    assert service.metrics.runs.labels("failed")._value.get() == 1
    assert "backup failed" in caplog.text
    assert "RuntimeError: unexpected" in caplog.text


def test_an_upload_the_bucket_does_not_hold_whole_is_an_error(
    tmp_path: Path,
    moto: MotoServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    node = Node(tmp_path / "n", moto, moto.new_bucket())
    monkeypatch.setattr(Storage, "head", lambda self, backup_id: (1, ""))
    assert main(node.argv("create")) == 1
    assert "the bucket holds 1 bytes" in capsys.readouterr().err


# --- output -----------------------------------------------------------------------------------


def test_progress_bars_on_a_terminal(
    tmp_path: Path,
    moto: MotoServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert backup_cli._bars() is None  # not a terminal here
    monkeypatch.setattr(backup_cli, "_bars", backup_cli._Bars)
    node = Node(tmp_path / "n", moto, moto.new_bucket())
    for command in ("create", "verify"):
        assert main(node.argv(command)) == 0
    assert main(node.argv("restore", "latest", "--data-dir", str(tmp_path / "r"))) == 0
    err = capsys.readouterr().err
    assert "upload" in err
    assert "download" in err


def test_human_units() -> None:
    assert backup_cli.human_bytes(512) == "512 B"
    assert backup_cli.human_bytes(3 * 1024**3) == "3.0 GiB"
    assert [backup_cli.human_seconds(s) for s in (5, 600, 7200, 3 * 86400)] == [
        "5.0 s", "10.0 min", "2.0 h", "3.0 d",
    ]  # fmt: skip


def test_the_stream_objects_say_what_they_are() -> None:
    out = io.BytesIO()
    enc = crypto.Encryptor(out, bytes(32), "x")
    assert enc.writable()
    enc.close()
    dec = crypto.Decryptor(io.BytesIO(out.getvalue()), bytes(32), "x")
    assert dec.readable()
    assert dec.read() == b""


def test_sqlite_copies_are_single_files(tmp_path: Path) -> None:
    from aether_trio.backup.collect import copy_sqlite

    source = tmp_path / "a.sqlite3"
    conn = sqlite3.connect(source)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE t (x)")
    conn.execute("INSERT INTO t VALUES (1)")
    conn.commit()
    assert copy_sqlite(source, tmp_path / "copy" / "a.sqlite3") == {"tables": {"t": 1}}
    conn.close()
    copy = sqlite3.connect(tmp_path / "copy" / "a.sqlite3")
    assert copy.execute("PRAGMA journal_mode").fetchone() == ("delete",)
    copy.close()


# --- archives that decrypt but are not ours ----------------------------------------------------


def sealed(payload: bytes, key: bytes = bytes(32), backup_id: str = "b") -> io.BytesIO:
    out = io.BytesIO()
    enc = crypto.Encryptor(out, key, backup_id)
    enc.write(payload)
    enc.close()
    return io.BytesIO(out.getvalue())


def tar_of(*members: tuple[str, bytes | None]) -> bytes:
    import tarfile

    import zstandard

    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return zstandard.ZstdCompressor().compress(raw.getvalue())


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        (tar_of(("link", None)), "unexpected archive member 'link'"),
        (b"not zstd at all", "the archive cannot be unpacked"),
        (tar_of(("other.txt", b"x")), "the archive has no readable manifest"),
        (tar_of(("manifest.json", b"{not json")), "the archive has no readable manifest"),
    ],
)
def test_authentic_archives_that_are_not_backups_are_refused(
    tmp_path: Path, payload: bytes, words: str
) -> None:
    from aether_trio.backup.archive import unpack
    from aether_trio.backup.errors import ArchiveError

    with pytest.raises(ArchiveError, match=re.escape(words)):
        unpack(sealed(payload), bytes(32), "b", tmp_path)
    assert not (tmp_path / "etc").exists()


def test_a_named_profile_of_a_credentials_file(tmp_path: Path, moto: MotoServer) -> None:
    bucket = moto.new_bucket()
    (tmp_path / "aws").write_text(
        "[backups]\naws_access_key_id = a\naws_secret_access_key = b\n"
    )  # fmt: skip
    s3 = storage(moto, bucket=bucket, credentials_file=str(tmp_path / "aws"), profile="backups")
    assert s3.entries() == []


# --- --rdb ------------------------------------------------------------------------------------


def test_a_failed_bgsave_and_an_rdb_file_not_on_this_host_are_named(
    tmp_path: Path,
    moto: MotoServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # This Redis lets `dir` change at runtime (Redis 7 protects it by default).
    with running_redis("--enable-protected-configs", "yes") as redis:
        node = Node(tmp_path / "n", moto, moto.new_bucket(), redis)
        node.fill_redis()
        redis.command("CONFIG", "SET", "dir", "/proc")  # a directory no one can write to
        assert main(node.argv("create", "--rdb")) == 1
        assert "BGSAVE failed (see the Redis log)" in capsys.readouterr().err
        redis.command("CONFIG", "SET", "dir", str(redis.dir))
    monkeypatch.setattr(keyspace, "bgsave", lambda address: tmp_path / "elsewhere" / "dump.rdb")
    assert main(node.argv("create", "--rdb")) == 1
    err = capsys.readouterr().err
    assert "--rdb: cannot read Redis's RDB file" in err
    assert "it must be on this host" in err
