"""Retention (`aether backup prune`) over a simulated month, pure; then prune, list and restore
against a real S3 API on loopback (moto) and private redis-servers."""

from __future__ import annotations

import datetime
import re
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from backup_helpers import MotoServer, Node, run, running_moto
from redis_server import RedisServer, running_redis

from aether_trio.backup.retention import Candidate, to_keep
from aether_trio.backup.storage import created_at, new_id

UTC = datetime.UTC


def at(day: int, hour: int) -> float:
    return datetime.datetime(2026, 12, day, hour, tzinfo=UTC).timestamp()


def test_a_simulated_month_keeps_exactly_what_the_policy_says() -> None:
    """December 2026 (the 1st is a Tuesday): a backup every 6 hours, a prune after each, as a
    timer would run them; only the 00:00 backups of the first ten days passed their drill."""
    kept: list[Candidate] = []
    for day in range(1, 31):
        for hour in (0, 6, 12, 18):
            kept.append(Candidate(f"{day:02d}-{hour:02d}", at(day, hour), hour == 0 and day <= 10))
            now = at(day, hour) + 3600
            survivors = to_keep(kept, now, last=3, daily=7, weekly=4)
            kept = [c for c in kept if c.id in survivors]
    expected = {
        "30-06", "30-12", "30-18",  # the newest 3
        "24-18", "25-18", "26-18", "27-18", "28-18", "29-18",  # the newest of each of 7 days
        "13-18", "20-18",  # the newest of each of the 4 weeks (Monday 7th, 14th, 21st, 28th)
        "10-00",  # the newest verified one, whatever its age
    }  # fmt: skip
    assert {c.id for c in kept} == expected


def test_the_policy_edges() -> None:
    backups = [Candidate(str(n), at(1 + n, 12), False) for n in range(10)]
    assert to_keep(backups, at(11, 0), last=0, daily=0, weekly=0) == set()
    assert to_keep(backups, at(11, 0), last=2, daily=0, weekly=0) == {"9", "8"}
    assert to_keep(backups, at(11, 0), last=0, daily=2, weekly=0) == {"9"}  # none on the 11th
    # Two a day: the later one of each day is the day's.
    twice = [Candidate(f"{d}-{h}", at(d, h), False) for d in (1, 2) for h in (1, 2)]
    assert to_keep(twice, at(2, 3), last=0, daily=5, weekly=0) == {"1-2", "2-2"}
    # The future (a clock set back) is not a day of the window.
    assert (
        to_keep([Candidate("x", at(20, 0), False)], at(10, 0), last=0, daily=3, weekly=1) == set()
    )
    assert to_keep([Candidate("v", at(1, 0), True)], at(30, 0), last=0, daily=0, weekly=0) == {"v"}


def test_ids_sort_by_time_and_carry_it() -> None:
    first, second = new_id("node/1 ä", at(5, 1)), new_id("node", at(5, 2))
    assert re.fullmatch(r"20261205T010000Z-node_1__-[0-9a-f]{6}", first)
    assert sorted([second, first]) == [first, second]
    assert created_at(first) == at(5, 1)
    with pytest.raises(ValueError, match="not a backup id"):
        created_at("../etc/passwd")


# --- against S3 --------------------------------------------------------------------------------


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
    node.fill_redis()
    return node


def test_prune_deletes_what_the_policy_drops_with_their_drill_records(
    node: Node, capsys: pytest.CaptureFixture[str]
) -> None:
    import time

    s3 = node.moto.client()
    now = time.time()
    ids = [new_id("node-a", now - hours * 3600) for hours in range(0, 24 * 20, 12)]
    for n, backup_id in enumerate(ids):
        s3.put_object(Bucket=node.bucket, Key=f"aether/{backup_id}.aeb", Body=b"x" * n,
                      Metadata={"sha256": ""})  # fmt: skip
        drill = {"ok": n == 30, "failed_check": None if n == 30 else "redis"}
        s3.put_object(Bucket=node.bucket, Key=f"aether/{backup_id}.drill.json",
                      Body=orjson.dumps(drill))  # fmt: skip
    s3.put_object(Bucket=node.bucket, Key="aether/not-a-backup.txt", Body=b"left alone")
    node.write_config(keep_last=2, keep_daily=3, keep_weekly=2)
    candidates = [Candidate(i, created_at(i), n == 30) for n, i in enumerate(ids)]
    keep = to_keep(candidates, time.time(), last=2, daily=3, weekly=2)
    assert ids[30] in keep  # the newest verified one (15 days old) survives
    code, out, _ = run(capsys, node.argv("prune", "--dry-run"))
    assert code == 0
    assert f"would delete {len(ids) - len(keep)} backups" in out
    assert len(s3.list_objects_v2(Bucket=node.bucket)["Contents"]) == 2 * len(ids) + 1
    code, out, _ = run(capsys, node.argv("prune"))
    assert code == 0
    assert f"deleted {len(ids) - len(keep)} backups" in out
    left = {o["Key"] for o in s3.list_objects_v2(Bucket=node.bucket)["Contents"]}
    expected = {f"aether/{i}{suffix}" for i in keep for suffix in (".aeb", ".drill.json")}
    assert left == expected | {"aether/not-a-backup.txt"}
    code, out, _ = run(capsys, node.argv("list", "--json"))
    listed = orjson.loads(out)
    assert [row["id"] for row in listed] == sorted(keep)
    assert [row["drill"]["ok"] for row in listed].count(True) == 1
    code, out, _ = run(capsys, node.argv("list"))
    assert re.search(rf"^{ids[30]} +[\d.]+ d +30 B  verified$", out, re.M), out
    assert re.search(r"FAILED \(redis\)$", out, re.M)


def test_list_of_an_empty_bucket(node: Node, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, node.argv("list"))
    assert code == 0
    assert f"no backups in s3://{node.bucket}/aether/" in out


def test_restore_refuses_live_state_without_force_and_replaces_it_with(
    node: Node, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out, err = run(capsys, node.argv("create"))
    assert code == 0, err
    before = node.redis.client().dump(f"{node.prefix}.stream.chat:1")
    # Live state changes after the backup: a ban, a publication.
    node.fill_sqlite(entries=2)
    node.redis.command("XADD", f"{node.prefix}.stream.chat:1", "5-0", "d", "later")
    node.redis.command("HSET", f"{node.prefix}.meta.chat:1", "s", 5)
    etc = tmp_path / "etc-restored"
    etc.mkdir()
    (etc / "config.toml").write_text("# live\n")
    code, _, err = run(capsys, node.argv("restore", "latest", "--config-dir", str(etc)))
    assert code == 1
    assert "refusing to overwrite live state (stop the server, then give --force)" in err
    assert f"{node.data_dir / 'aether.sqlite3'} exists" in err
    assert "Redis holds 11 keys under" in err
    assert f"{etc / 'config.toml'} exists" in err
    assert (etc / "config.toml").read_text() == "# live\n"  # nothing was touched
    code, out, err = run(capsys, node.argv("restore", "latest", "--force", "--config-dir",
                                           str(etc)))  # fmt: skip
    assert code == 0, err
    assert "restored " in out
    assert "aether.sqlite3, 11 Redis keys, 3 config files" in out
    assert node.redis.client().dump(f"{node.prefix}.stream.chat:1") == before
    import sqlite3

    conn = sqlite3.connect(node.data_dir / "aether.sqlite3")
    assert conn.execute("SELECT seq FROM audit_head").fetchone() == (5,)  # not the 7 of later
    conn.close()
    assert not (node.data_dir / "aether.sqlite3-wal").exists()
    assert (etc / "config.toml").read_bytes() == node.config_path.read_bytes()


def test_restore_of_a_backup_that_is_not_there(
    node: Node, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, _, err = run(capsys, node.argv("restore", "latest", "--data-dir", str(tmp_path / "d")))
    assert code == 1
    assert "no backups in s3://" in err
    code, _, err = run(capsys, node.argv("restore", "20261201T000000Z-x-abcdef", "--data-dir",
                                         str(tmp_path / "d"), "--force"))  # fmt: skip
    assert code == 1
    assert "no such object" in err


def test_restore_refuses_while_the_server_runs_unless_in_maintenance(tmp_path: Path) -> None:
    """Whatever --force says: a running server keeps its SQLite connection and its in-memory
    history, so a restore under it would be undone or corrupted. Maintenance mode (new
    connections refused) is the documented window; a stopped server answers nothing."""
    from conftest import make_config, running_server

    from aether_trio.backup.errors import RefusedOverwrite
    from aether_trio.backup.restore import restore_backup
    from aether_trio.backup.restore import running_server as refusal

    with running_server() as srv:
        url = f"http://127.0.0.1:{srv.server.http_port}"
        reason = refusal(url)
        assert reason is not None
        assert f"a server is running at {url}" in reason
        with pytest.raises(RefusedOverwrite, match="stop it, or switch maintenance mode on"):
            restore_backup(
                make_config(), None, "any", data_dir=tmp_path, redis_address=None,  # type: ignore[arg-type]
                force=True, server_url=url,
            )  # fmt: skip
        srv.call(setattr, srv.server.node, "maintenance", True)
        assert refusal(url) is None
    assert refusal(url) is None  # stopped: nothing answers
