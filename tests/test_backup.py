"""`aether backup create` and `aether backup verify` (the drill) against a real S3 API on
loopback (moto's standalone server) and private redis-servers: the round trip of every kind of
state, and every way a backup can be bad, each detected with the failing check named and a
non-zero exit."""

from __future__ import annotations

import re
import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from backup_helpers import MotoServer, Node, run, running_moto
from redis_server import RedisServer, running_redis

from aether_trio.backup.archive import file_sha256, unpack
from aether_trio.backup.crypto import load_key


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    with running_moto() as server:
        yield server


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    with running_redis() as server:
        yield server


@pytest.fixture
def node(tmp_path: Path, moto: MotoServer, redis: RedisServer) -> Node:
    node = Node(tmp_path / "node", moto, moto.new_bucket(), redis)
    node.fill_sqlite()
    node.fill_history()
    node.fill_redis()
    node.fill_logs()
    return node


def create(node: Node, capsys: pytest.CaptureFixture[str]) -> str:
    code, out, err = run(capsys, node.argv("create"))
    assert code == 0, err
    match = re.search(r"^backup (\S+): ", out)
    assert match is not None, out
    return match[1]


def object_key(backup_id: str) -> str:
    return f"aether/{backup_id}.aeb"


def rewrite(node: Node, backup_id: str, change: Any, *, keep_checksum: bool) -> None:
    """Replace the archive by `change(bytes)`; with `keep_checksum` the recorded SHA-256 is the
    new content's (an attacker or a bug that also rewrote the metadata), else the original's."""
    s3 = node.moto.client()
    found = s3.get_object(Bucket=node.bucket, Key=object_key(backup_id))
    data = change(found["Body"].read())
    sha = found["Metadata"]["sha256"]
    if keep_checksum:
        import hashlib

        sha = hashlib.sha256(data).hexdigest()
    s3.put_object(Bucket=node.bucket, Key=object_key(backup_id), Body=data,
                  Metadata={"sha256": sha})  # fmt: skip


def sqlite_rows(path: Path) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        return list(conn.iterdump())
    finally:
        conn.close()


# --- the round trip ----------------------------------------------------------------------------


def test_create_then_verify_prints_every_check_rpo_and_rto(
    node: Node, capsys: pytest.CaptureFixture[str]
) -> None:
    backup_id = create(node, capsys)
    code, out, err = run(capsys, node.argv("verify"))
    assert code == 0, out + err
    for check in ("download", "authenticate", "unpack", "checksums", "sqlite", "audit_chain",
                  "history", "redis", "config"):  # fmt: skip
        assert re.search(rf"^  {check} +ok ", out, re.M), out
    assert "6 entries" not in out
    assert "5 entries" in out
    assert (
        "11 keys, 5 streams" in out
    )  # 5 streams + 5 metas + the other key (presence left out) = 11
    assert re.search(rf"backup {backup_id}: verified; RPO [\d.]+ s, RTO [\d.]+ s$", out, re.M)
    code, out, _ = run(capsys, node.argv("list"))
    assert code == 0
    assert re.search(rf"^{backup_id} +[\d.]+ s +[\d.]+ KiB  verified$", out, re.M), out


def test_every_kind_of_state_comes_back_byte_for_byte_where_it_should(
    node: Node, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    backup_id = create(node, capsys)
    with running_redis() as target:
        restored = tmp_path / "restored"
        code, out, err = run(capsys, node.argv(
            "restore", backup_id, "--data-dir", str(restored / "data"), "--redis",
            target.address, "--config-dir", str(restored / "etc")))  # fmt: skip
        assert code == 0, err
        assert "aether.sqlite3, history.sqlite3, 11 Redis keys, 3 config files" in out
        # SQLite: the same rows (the online backup is a new file, not a byte copy of the WAL one)
        for name in ("aether.sqlite3", "history.sqlite3"):
            assert sqlite_rows(restored / "data" / name) == sqlite_rows(node.data_dir / name)
        # Redis: every key of ours, byte for byte as DUMP gives it, with its TTL; nothing else
        source, dest = node.redis.client(), target.client()
        ours = sorted(k for k in source.scan_iter(f"{node.prefix}.*") if b".presence." not in k)
        assert sorted(dest.scan_iter("*")) == ours
        for key in ours:
            assert dest.dump(key) == source.dump(key)
            assert abs(dest.pttl(key) - source.pttl(key)) < 60_000
        # The configuration and the files it names, byte for byte
        for name in ("config.toml", "secrets/hmac", "secrets/api"):
            assert (restored / "etc" / name).read_bytes() == (node.etc / name).read_bytes()
        assert not (restored / "etc" / "backup.key").exists()  # never packed
    # The logs are in the archive as they were
    archive = tmp_path / "a.aeb"
    node.moto.client().download_file(node.bucket, object_key(backup_id), str(archive))
    with archive.open("rb") as fh:
        manifest = unpack(fh, load_key(node.etc / "backup.key"), backup_id, tmp_path / "x")
    assert (tmp_path / "x" / "logs" / "old" / "aether.log.1").read_text() == "yesterday\n"
    assert manifest["logs"] == {"since": 0.0, "files": 2}
    assert manifest["node"] == "node-a"
    assert manifest["redis"]["keys"] == 11
    assert manifest["redis"]["streams"]["chat:3"] == ["epoch003", 4]
    text = (tmp_path / "x" / "manifest.json").read_text()
    for secret in ("hmac", "api"):
        assert (node.etc / "secrets" / secret).read_text().strip() not in text


def test_logs_older_than_the_previous_backup_are_not_taken_again(
    node: Node, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    create(node, capsys)
    import os
    import time

    for path in node.logs.rglob("*"):
        os.utime(path, (time.time() - 3600, time.time() - 3600))
    (node.logs / "new.log").write_text("after\n")
    second = create(node, capsys)
    archive = tmp_path / "b.aeb"
    node.moto.client().download_file(node.bucket, object_key(second), str(archive))
    with archive.open("rb") as fh:
        manifest = unpack(fh, load_key(node.etc / "backup.key"), second, tmp_path / "y")
    assert manifest["logs"]["files"] == 1
    assert [p.name for p in (tmp_path / "y" / "logs").rglob("*")] == ["new.log"]


def test_a_node_without_redis_or_state_backs_up_its_config_alone(
    tmp_path: Path, moto: MotoServer, capsys: pytest.CaptureFixture[str]
) -> None:
    node = Node(tmp_path / "bare", moto, moto.new_bucket())
    create(node, capsys)
    code, out, _ = run(capsys, node.argv("verify"))
    assert code == 0, out
    assert "no audit log in this backup" in out
    assert "no Redis keys in this backup" in out


# --- what must fail, and how --------------------------------------------------------------------


def assert_failed(out: str, check: str, words: str) -> None:
    assert re.search(rf"^  {check} +FAILED .*{re.escape(words)}", out, re.M), out
    assert re.search(rf"FAILED check {check}: .*{re.escape(words)}", out), out


def test_a_corrupted_object_fails_the_download_checksum(
    node: Node, capsys: pytest.CaptureFixture[str]
) -> None:
    backup_id = create(node, capsys)
    flip = lambda data: data[:500] + bytes([data[500] ^ 1]) + data[501:]  # noqa: E731
    rewrite(node, backup_id, flip, keep_checksum=False)
    code, out, _ = run(capsys, node.argv("verify", backup_id))
    assert code == 1
    assert_failed(out, "download", "corrupted in storage")
    code, out, _ = run(capsys, node.argv("list"))
    assert "FAILED (download)" in out


def test_a_corrupted_object_with_a_matching_checksum_fails_authentication(
    node: Node, capsys: pytest.CaptureFixture[str]
) -> None:
    backup_id = create(node, capsys)
    flip = lambda data: data[:500] + bytes([data[500] ^ 1]) + data[501:]  # noqa: E731
    rewrite(node, backup_id, flip, keep_checksum=True)
    code, out, _ = run(capsys, node.argv("verify", backup_id))
    assert code == 1
    assert_failed(
        out, "authenticate", "chunk 0 fails authentication (corrupted, altered or cut short)"
    )


def test_a_wrong_key_is_named_as_such(node: Node, capsys: pytest.CaptureFixture[str]) -> None:
    backup_id = create(node, capsys)
    (node.etc / "backup.key").write_text("ab" * 32 + "\n")
    code, out, _ = run(capsys, node.argv("verify", backup_id))
    assert code == 1
    assert_failed(out, "authenticate", "encrypted with another key")


def test_a_truncated_object_is_detected(
    node: Node, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Chunks of 512 bytes, so that the archive has many and can be cut at a chunk boundary.
    monkeypatch.setattr("aether_trio.backup.crypto.CHUNK", 512)
    backup_id = create(node, capsys)
    rewrite(node, backup_id, lambda data: data[: len(data) - 100], keep_checksum=False)
    code, out, _ = run(capsys, node.argv("verify", backup_id))
    assert code == 1
    assert_failed(out, "download", "corrupted in storage")
    header, sealed_chunk = 24, 512 + 16
    rewrite(node, backup_id, lambda data: data[: header + 3 * sealed_chunk], keep_checksum=True)
    code, out, _ = run(capsys, node.argv("verify", backup_id))
    assert code == 1
    assert_failed(out, "authenticate", "the archive ends early (after chunk 2)")
    rewrite(node, backup_id, lambda data: data[: header + 100], keep_checksum=True)
    code, out, _ = run(capsys, node.argv("verify", backup_id))
    assert code == 1
    assert_failed(out, "authenticate", "chunk 0 fails authentication (corrupted, altered or cut")
    rewrite(node, backup_id, lambda data: data[:10], keep_checksum=True)
    code, out, _ = run(capsys, node.argv("verify", backup_id))
    assert code == 1
    assert_failed(out, "authenticate", "the archive ends inside its header")


def test_a_missing_object_is_detected(node: Node, capsys: pytest.CaptureFixture[str]) -> None:
    backup_id = create(node, capsys)
    node.moto.client().delete_object(Bucket=node.bucket, Key=object_key(backup_id))
    code, out, _ = run(capsys, node.argv("verify", backup_id))
    assert code == 1
    assert_failed(out, "download", "no such object")


def test_an_unreachable_endpoint_and_a_missing_bucket_fail_clearly(
    node: Node, capsys: pytest.CaptureFixture[str]
) -> None:
    from backup_helpers import free_port

    node.write_config(endpoint_url=f"http://127.0.0.1:{free_port()}")
    for command in ("create", "verify", "list"):
        code, _, err = run(capsys, node.argv(command))
        assert code == 1
        assert "cannot reach http://127.0.0.1:" in err, err
    node.bucket = "no-such-bucket-here"
    node.write_config()
    code, _, err = run(capsys, node.argv("create"))
    assert code == 1
    assert "bucket 'no-such-bucket-here' does not exist" in err


def test_a_broken_audit_chain_fails_the_drill(
    node: Node, capsys: pytest.CaptureFixture[str]
) -> None:
    conn = sqlite3.connect(node.data_dir / "aether.sqlite3")
    with conn:
        conn.execute("UPDATE audit SET entry = replace(entry, 'mallory', 'eve') WHERE seq = 2")
        conn.execute("UPDATE audit SET entry = replace(entry, '\"n\":1', '\"n\":9') WHERE seq = 2")
    conn.close()
    create(node, capsys)
    code, out, _ = run(capsys, node.argv("verify"))
    assert code == 1
    assert_failed(out, "audit_chain", "entry 2: its hash does not match its content (edited)")


def test_commands_without_a_bucket_or_a_key_say_what_is_missing(
    node: Node, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    node.write_config(key_file="missing.key")
    code, _, err = run(capsys, node.argv("create"))
    assert code == 1
    assert "key_file: cannot read" in err
    node.write_config(bucket="")
    code, _, err = run(capsys, node.argv("list"))
    assert code == 1
    assert "[backup] bucket is not set" in err


def test_keygen_writes_a_private_key_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "k"
    code, out, _ = run(capsys, ["backup", "keygen", str(path)])
    assert code == 0
    assert "mode 0600" in out
    assert path.stat().st_mode & 0o777 == 0o600
    assert len(load_key(path)) == 32
    code, _, err = run(capsys, ["backup", "keygen", str(path)])
    assert code == 1
    assert "exists" in err


def test_the_object_checksum_is_the_uploaded_files(
    node: Node, capsys: pytest.CaptureFixture[str]
) -> None:
    backup_id = create(node, capsys)
    found = node.moto.client().head_object(Bucket=node.bucket, Key=object_key(backup_id))
    with tempfile.NamedTemporaryFile() as fh:
        node.moto.client().download_file(node.bucket, object_key(backup_id), fh.name)
        assert found["Metadata"]["sha256"] == file_sha256(Path(fh.name))


# --- --rdb: Redis's own snapshot file ---------------------------------------------------------


def test_rdb_mode_takes_redis_s_file_and_restores_its_keys(
    node: Node, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out, err = run(capsys, node.argv("create", "--rdb"))
    assert code == 0, err
    backup_id = re.search(r"^backup (\S+): ", out, re.M)[1]  # type: ignore[index]
    code, out, _ = run(capsys, node.argv("verify", backup_id))
    assert code == 0, out
    assert "11 keys, 5 streams at their recorded positions" in out
    archive = tmp_path / "r.aeb"
    node.moto.client().download_file(node.bucket, object_key(backup_id), str(archive))
    with archive.open("rb") as fh:
        manifest = unpack(fh, load_key(node.etc / "backup.key"), backup_id, tmp_path / "x")
    assert manifest["redis"]["mode"] == "rdb"
    assert (tmp_path / "x" / "redis" / "dump.rdb").read_bytes().startswith(b"REDIS")
    with running_redis() as target:
        code, out, err = run(capsys, node.argv(
            "restore", backup_id, "--data-dir", str(tmp_path / "d"), "--redis",
            target.address))  # fmt: skip
        assert code == 0, err
        assert "11 Redis keys" in out
        source, dest = node.redis.client(), target.client()
        ours = sorted(k for k in source.scan_iter(f"{node.prefix}.*") if b".presence." not in k)
        assert sorted(dest.scan_iter("*")) == ours
        for key in ours:
            assert dest.dump(key) == source.dump(key)


def test_rdb_mode_needs_a_redis_to_back_up(
    tmp_path: Path, moto: MotoServer, capsys: pytest.CaptureFixture[str]
) -> None:
    node = Node(tmp_path / "bare", moto, moto.new_bucket())
    code, _, err = run(capsys, node.argv("create", "--rdb"))
    assert code == 1
    assert "--rdb: Redis is not backed up" in err
