"""The scheduled backups inside the server (`[backup] schedule`): a real server takes backups of
its live memory-engine history on schedule, drills them and shows the results as metrics; runs
never overlap; failures are counted, not fatal. S3 is moto's server on loopback."""

from __future__ import annotations

import math
import random
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
import trio
import trio.lowlevel
from backup_helpers import MotoServer, Node, free_port, running_moto
from conftest import make_config, running_server
from prometheus_client import CollectorRegistry
from redis_server import RedisServer, running_redis

from aether_trio.app import Server
from aether_trio.backup.create import backup_lock
from aether_trio.backup.service import BackupMetrics, BackupService, jittered
from aether_trio.config import load_config
from aether_trio.engines.snapshot import SNAPSHOT_NAME


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    with running_moto() as server:
        yield server


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    with running_redis() as server:
        yield server


def test_waits_are_jittered_within_the_fraction() -> None:
    rng = random.Random(7)
    waits = [jittered(100.0, 0.1, rng) for _ in range(1000)]
    assert min(waits) >= 90.0
    assert max(waits) <= 110.0
    assert max(waits) - min(waits) > 15  # really spread
    assert jittered(100.0, 0.0, rng) == 100.0


def metric(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    assert match is not None, name
    return float(match[1])


def test_a_server_takes_verified_backups_on_schedule_and_exposes_them(
    tmp_path: Path, moto: MotoServer
) -> None:
    files = Node(tmp_path / "files", moto, moto.new_bucket())  # key, credentials, bucket
    config = make_config({
        "admin": {"data_dir": str(tmp_path / "data")},
        "api": {"keys": [{"name": "pub", "key": "publisher-key", "roles": ["publisher"]}]},
        "backup": {"bucket": files.bucket, "endpoint_url": moto.url, "region": "us-east-1",
                   "credentials_file": str(files.etc / "aws"),
                   "key_file": str(files.etc / "backup.key"), "schedule": "2s", "jitter": 0.0},
    })  # fmt: skip
    with running_server(config) as srv:
        base = f"http://127.0.0.1:{srv.server.http_port}"
        for n in range(5):
            reply = httpx.post(f"{base}/api/publish", headers={"X-API-Key": "publisher-key"},
                               json={"channel": "news", "data": {"n": n}}, timeout=10)  # fmt: skip
            assert reply.status_code == 200, reply.text
        deadline = time.monotonic() + 90
        while True:
            text = httpx.get(f"{base}/metrics", timeout=10).text
            if metric(text, 'aether_backup_verifications_total{result="ok"}') >= 1:
                break
            assert time.monotonic() < deadline, text
            time.sleep(0.2)  # polling the server's own metrics: nothing else tells
    assert metric(text, "aether_backup_schedule_seconds") == 2.0
    assert metric(text, "aether_backup_last_verify_success") == 1.0
    assert metric(text, "aether_backup_last_size_bytes") > 0
    assert time.time() - metric(text, "aether_backup_last_success_timestamp_seconds") < 90
    assert metric(text, "aether_backup_duration_seconds") > 0
    assert metric(text, 'aether_backup_runs_total{result="failed"}') == 0
    s3 = moto.client()
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=files.bucket)["Contents"]]
    drills = [k for k in keys if k.endswith(".drill.json")]
    assert drills
    record = orjson.loads(s3.get_object(Bucket=files.bucket, Key=drills[0])["Body"].read())
    assert record["ok"] is True
    history = next(c for c in record["checks"] if c["name"] == "history")
    # The live streams of the memory engine, taken while the server ran.
    assert history["detail"] == "1 streams, 5 publications"
    assert not (tmp_path / "data" / SNAPSHOT_NAME).exists()


def test_without_a_schedule_no_service_runs_but_the_metrics_are_there() -> None:
    server = Server(make_config())
    assert not server.backup.enabled
    text = server.node.metrics.exposition().decode()
    assert metric(text, "aether_backup_schedule_seconds") == 0.0
    assert math.isnan(metric(text, "aether_backup_last_verify_success"))


def service_for(node: Node) -> BackupService:
    config = load_config(node.config_path)
    return BackupService(lambda: config, str(node.config_path),
                         BackupMetrics(CollectorRegistry()))  # fmt: skip


def value(service: BackupService, metric_name: str, result: str) -> float:
    counter = getattr(service.metrics, metric_name)
    return float(counter.labels(result)._value.get())


async def test_runs_never_overlap(tmp_path: Path, moto: MotoServer) -> None:
    node = Node(tmp_path / "n", moto, moto.new_bucket())
    node.fill_sqlite()
    service = service_for(node)
    # A backup taken by someone else (a timer, an operator) holds the lock: this run fails.
    with backup_lock(node.data_dir):
        assert await service.run_once() is False
    assert value(service, "runs", "failed") == 1
    # Two at once in this server: the second returns at once, the first completes.
    results: list[bool] = []

    async def one() -> None:
        results.append(await service.run_once())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(one)
        while not service.running:  # the first one is under way (in its thread)
            await trio.lowlevel.checkpoint()
        nursery.start_soon(one)
    assert sorted(results) == [False, True]
    assert value(service, "runs", "ok") == 1
    assert value(service, "verifications", "ok") == 1
    assert service.metrics.last_verify._value.get() == 1.0


async def test_a_failed_drill_is_a_metric_not_a_crash(
    tmp_path: Path, moto: MotoServer, redis: RedisServer
) -> None:
    node = Node(tmp_path / "n", moto, moto.new_bucket(), redis)
    node.fill_redis()
    node.write_config(redis_server="no-such-redis-server-binary")
    service = service_for(node)
    assert await service.run_once() is False
    assert value(service, "runs", "ok") == 1
    assert value(service, "verifications", "failed") == 1
    assert service.metrics.last_verify._value.get() == 0.0
    # A new service (a restart) finds this node's newest backup and its failed drill.
    fresh = service_for(node)
    await fresh._load_state()
    assert fresh.metrics.last_success._value.get() > time.time() - 120
    assert fresh.metrics.last_size._value.get() > 0
    assert fresh.metrics.last_verify._value.get() == 0.0


async def test_an_unreachable_bucket_is_counted_and_logged(
    tmp_path: Path, moto: MotoServer, caplog: pytest.LogCaptureFixture
) -> None:
    node = Node(tmp_path / "n", moto, moto.new_bucket())
    node.write_config(endpoint_url=f"http://127.0.0.1:{free_port()}")
    service = service_for(node)
    await service._load_state()
    assert "cannot read the bucket at start" in caplog.text
    assert service.metrics.last_success._value.get() == 0.0
    assert await service.run_once() is False
    assert value(service, "runs", "failed") == 1
    assert "backup failed: " in caplog.text
