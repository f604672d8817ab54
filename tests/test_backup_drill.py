"""Every check of the drill (`aether backup verify`) fails when it should, named, with exit 1.

Each case takes one real backup (module fixture), changes what is inside it as an attacker or a
bug with the key could (a member, the manifest, both), seals it again under a new id with the
right key and checksum, so that download and authentication pass and the check under test is
the one that must catch it. S3 is moto's server on loopback, Redis a private redis-server.
"""

from __future__ import annotations

import hashlib
import io
import re
import shutil
import sqlite3
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import zstandard
from backup_helpers import MotoServer, Node, running_moto
from redis_server import RedisServer, running_redis

from aether_trio.backup.archive import MANIFEST, describe_members, unpack
from aether_trio.backup.crypto import Encryptor, load_key
from aether_trio.backup.storage import new_id
from aether_trio.cli import main

Edit = Callable[[Path, dict[str, Any]], object]


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    with running_moto() as server:
        yield server


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    with running_redis() as server:
        yield server


@pytest.fixture(scope="module")
def original(
    tmp_path_factory: pytest.TempPathFactory, moto: MotoServer, redis: RedisServer
) -> tuple[Node, Path]:
    """A node, and the unpacked content of one real backup of it."""
    root = tmp_path_factory.mktemp("drill")
    node = Node(root / "node", moto, moto.new_bucket(), redis)
    node.fill_sqlite()
    node.fill_history()
    node.fill_redis()
    assert main(node.argv("create")) == 0
    s3 = moto.client()
    [obj] = s3.list_objects_v2(Bucket=node.bucket)["Contents"]
    backup_id = obj["Key"].removeprefix("aether/").removesuffix(".aeb")
    s3.download_file(node.bucket, obj["Key"], str(root / "a.aeb"))
    with (root / "a.aeb").open("rb") as fh:
        unpack(fh, load_key(node.etc / "backup.key"), backup_id, root / "content")
    return node, root / "content"


def forge(node: Node, content: Path, tmp: Path, edit: Edit, *, members: bool = True) -> str:
    """A new backup made of `content` changed by `edit`; with `members` the manifest's member
    list is made to match the changed files (so only the deeper checks can see the change)."""
    work = tmp / "forged"
    shutil.copytree(content, work)
    manifest = orjson.loads((work / MANIFEST).read_bytes())
    backup_id = new_id("node-a", time.time())
    manifest["id"] = backup_id
    edit(work, manifest)
    (work / MANIFEST).unlink()
    if members:
        manifest["members"] = describe_members(work)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        text = orjson.dumps(manifest)
        info = tarfile.TarInfo(MANIFEST)
        info.size = len(text)
        tar.addfile(info, io.BytesIO(text))
        for path in sorted(work.rglob("*")):
            if path.is_file():
                tar.add(path, arcname=path.relative_to(work).as_posix())
    sealed = io.BytesIO()
    encryptor = Encryptor(sealed, load_key(node.etc / "backup.key"), backup_id)
    encryptor.write(zstandard.ZstdCompressor().compress(raw.getvalue()))
    encryptor.close()
    data = sealed.getvalue()
    node.moto.client().put_object(
        Bucket=node.bucket, Key=f"aether/{backup_id}.aeb", Body=data,
        Metadata={"sha256": hashlib.sha256(data).hexdigest()},
    )  # fmt: skip
    return backup_id


def drill(node: Node, backup_id: str, capsys: pytest.CaptureFixture[str]) -> str:
    code = main(node.argv("verify", backup_id))
    out = capsys.readouterr().out
    assert code == 1, out
    return out


def rewrite_sqlite(path: Path, sql: str) -> None:
    conn = sqlite3.connect(path)
    with conn:
        conn.execute(sql)
    conn.close()


def replace(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def corrupt_pages(path: Path) -> None:
    data = bytearray(path.read_bytes())
    for index in range(4096 + 100, min(len(data), 4096 * 3), 7):  # past the header page
        data[index] ^= 0x5A
    path.write_bytes(bytes(data))


CASES: list[tuple[str, Edit, bool, str, str]] = [
    ("unchanged", lambda d, m: None, True, "", ""),
    ("manifest of another backup",
     lambda d, m: m.update(id="20261201T000000Z-x-abcdef"), True, "unpack", "not of format"),
    ("a member changed", lambda d, m: (d / "config/config.toml").write_text("# edited\n"), False,
     "checksums", "config/config.toml: SHA-256"),
    ("a member added", lambda d, m: (d / "extra").write_text("x"), False,
     "checksums", "extra: not in the manifest"),
    ("a member removed", lambda d, m: (d / "redis/keys.bin").unlink(), False,
     "checksums", "redis/keys.bin: missing"),
    ("pages corrupted", lambda d, m: corrupt_pages(d / "sqlite/aether.sqlite3"), True,
     "sqlite", "aether.sqlite3: "),
    ("a row deleted", lambda d, m: rewrite_sqlite(d / "sqlite/aether.sqlite3", "DELETE FROM bans"),
     True, "sqlite", "rows {"),
    ("audit head of another state",
     lambda d, m: m["sqlite"]["aether.sqlite3"].update(audit_head=[4, "0" * 64]), True,
     "audit_chain", "differs from the manifest's [4,"),
    ("not a history snapshot",
     lambda d, m: rewrite_sqlite(d / "sqlite/history.sqlite3", "PRAGMA application_id = 7"),
     True, "history", "not an Aether history snapshot"),
    ("a Redis key fewer", lambda d, m: m["redis"].update(keys=12), True,
     "redis", "11 keys restored, the manifest says 12"),
    ("a Redis value changed",
     lambda d, m: m["redis"]["samples"].update(dict.fromkeys(m["redis"]["samples"], "0" * 64)),
     True, "redis", "differs from its recorded value"),
    ("a stream position moved",
     lambda d, m: m["redis"]["streams"].update({"chat:2": ["epoch002", 9]}), True,
     "redis", "stream 'chat:2' is at ('epoch002', 4, 4), recorded epoch epoch002 offset 9"),
    ("Redis records cut",
     lambda d, m: (d / "redis/keys.bin").write_bytes((d / "redis/keys.bin").read_bytes()[:-5]),
     True, "redis", "RESTORE into the scratch server: the Redis records end inside a record"),
    ("a config that does not parse",
     lambda d, m: replace(d / "config/config.toml", 'node_name = "node-a"', "port = -1"), True,
     "config", "server.port: expected a port number"),
    ("a config that is not TOML",
     lambda d, m: (d / "config/config.toml").write_text("[server\n"), True,
     "config", "not valid TOML"),
    ("a config without the files the manifest names",
     lambda d, m: (d / "config/config.toml").write_text("[server]\n"), True,
     "config", "the manifest names api.keys[0].key_file, which the configuration does not"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "edit", "members", "check", "words"), CASES,
                         ids=[c[0] for c in CASES])  # fmt: skip
def test_the_drill_names_the_check_that_catches_it(
    original: tuple[Node, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    case: str,
    edit: Edit,
    members: bool,
    check: str,
    words: str,
) -> None:
    node, content = original
    backup_id = forge(node, content, tmp_path, edit, members=members)
    if not check:  # the forgery machinery itself changes nothing the drill cares about
        assert main(node.argv("verify", backup_id)) == 0, capsys.readouterr().out
        return
    out = drill(node, backup_id, capsys)
    assert re.search(rf"^  {check} +FAILED .*{re.escape(words)}", out, re.M), out
    assert f"FAILED check {check}: " in out


def test_an_object_without_a_recorded_checksum_and_an_empty_bucket(
    original: tuple[Node, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    node, _content = original
    s3 = node.moto.client()
    backup_id = new_id("node-a", time.time())
    s3.put_object(Bucket=node.bucket, Key=f"aether/{backup_id}.aeb", Body=b"anything")
    out = drill(node, backup_id, capsys)
    assert "FAILED check download: the object has no recorded SHA-256" in out
    empty = Node(tmp_path / "empty", node.moto, node.moto.new_bucket())
    assert main(empty.argv("verify")) == 1
    assert "no backups in s3://" in capsys.readouterr().err


def test_a_scratch_redis_that_cannot_start_fails_the_redis_check(
    original: tuple[Node, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    node, content = original
    backup_id = forge(node, content, tmp_path, lambda d, m: None)
    node.write_config(redis_server="false")  # exists, exits at once
    try:
        code = main(node.argv("verify", backup_id))
        out = capsys.readouterr().out
        assert code == 1
        assert "FAILED check redis: the scratch redis-server did not start" in out
        node.write_config(redis_server="no-such-program-anywhere")
        assert main(node.argv("verify", backup_id)) == 1
        assert "'no-such-program-anywhere' not found" in capsys.readouterr().out
    finally:
        node.write_config()
