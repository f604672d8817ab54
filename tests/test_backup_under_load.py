"""Backups of a live Redis-engine server while clients publish: the backup restores to a state
where recovery by offset works for every stream, and 20 create/verify cycles under load all
succeed (the seed's "backup success rate 100%" and "backup verification rate 100%", measured).
Real servers, raw protocol clients publishing over WebSocket, private redis-servers, S3 from
moto's server on loopback; real time throughout (threads, sockets)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from backup_helpers import MotoServer, Node, running_moto
from conftest import make_config, open_raw, serve_in, token, ws_url
from redis_server import RedisServer, running_redis

from aether_trio.backup.archive import unpack
from aether_trio.backup.crypto import load_key
from aether_trio.cli import main
from aether_trio.config import Config

CHANNELS = [f"load{n}" for n in range(5)]


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    with running_moto() as server:
        yield server


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    with running_redis() as server:
        yield server


def server_config(redis: RedisServer, prefix: str, data_dir: Path) -> Config:
    return make_config({
        "admin": {"data_dir": str(data_dir)},
        # The raw publishers answer no pings: none are sent (the cycles outlast an interval).
        "client": {"ping_interval": 0.0},
        "engine": {"type": "redis", "redis": {"address": redis.address, "prefix": prefix}},
    })  # fmt: skip


class Publishers:
    """One client per channel publishing as fast as its replies come back; its data is the
    count of its publications before it (so at offset k the data is k - 1)."""

    def __init__(self) -> None:
        self.published = dict.fromkeys(CHANNELS, 0)
        self.stop = trio.Event()

    @property
    def total(self) -> int:
        return sum(self.published.values())

    async def run(self, url: str, channel: str) -> None:
        async with open_raw(url) as client:
            assert "connect" in await client.connect(token(f"publisher-{channel}"))
            while not self.stop.is_set():
                n = self.published[channel]
                reply = await client.command("publish", {"channel": channel, "data": {"n": n}})
                assert "publish" in reply, reply
                self.published[channel] = n + 1


async def cli(*argv: str) -> tuple[int, str]:
    """`aether ...` in a worker thread (it is synchronous: boto3, sqlite3, redis-py), its stdout
    captured by redirecting print through a buffer of its own."""
    import contextlib
    import io

    def call() -> tuple[int, str]:
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            code = main(list(argv))
        return code, out.getvalue()

    return await trio.to_thread.run_sync(call)


async def next_publication(client: Any, channel: str) -> dict[str, Any]:
    with trio.fail_after(10):
        while True:
            push = (await client.receive()).get("push", {})
            if push.get("channel") == channel and "pub" in push:
                pub: dict[str, Any] = push["pub"]
                return pub


async def until(condition: Any, limit: float = 30.0) -> None:
    with trio.fail_after(limit):
        while not condition():  # noqa: ASYNC110  (no event for it: poll with a deadline)
            await trio.sleep(0.01)


async def test_a_backup_taken_while_clients_publish_restores_to_recoverable_streams(
    tmp_path: Path, moto: MotoServer, redis: RedisServer
) -> None:
    node = Node(tmp_path / "n", moto, moto.new_bucket(), redis)
    node.fill_sqlite()
    load = Publishers()
    async with trio.open_nursery() as nursery:
        server = await serve_in(nursery, server_config(redis, node.prefix, node.data_dir))
        for channel in CHANNELS:
            nursery.start_soon(load.run, ws_url(server), channel)
        await until(lambda: all(n >= 20 for n in load.published.values()))
        before = load.total
        code, out = await cli(*node.argv("create"))
        assert code == 0, out
        during = load.total - before
        await until(lambda: load.total >= before + during + 50)  # and they go on after it
        load.stop.set()
        nursery.cancel_scope.cancel()
    assert during > 0  # publications landed while the backup was being taken
    backup_id = re.search(r"^backup (\S+):", out, re.M)[1]  # type: ignore[index]
    # The manifest's positions: what the backup holds of each stream.
    archive = tmp_path / "a.aeb"
    moto.client().download_file(node.bucket, f"aether/{backup_id}.aeb", str(archive))
    with archive.open("rb") as fh:
        manifest = unpack(fh, load_key(node.etc / "backup.key"), backup_id, tmp_path / "x")
    streams = {ch: tuple(pos) for ch, pos in manifest["redis"]["streams"].items()}
    assert sorted(streams) == CHANNELS
    code, out = await cli(*node.argv("verify", backup_id))
    assert code == 0, out
    with running_redis() as target:
        restored_dir = tmp_path / "restored"
        code, out = await cli(*node.argv("restore", backup_id, "--redis", target.address,
                                          "--data-dir", str(restored_dir)))  # fmt: skip
        assert code == 0, out
        config = server_config(target, node.prefix, restored_dir)
        async with trio.open_nursery() as nursery:
            server = await serve_in(nursery, config)
            async with open_raw(ws_url(server)) as client:
                assert "connect" in await client.connect(token("reader"))
                for channel, (epoch, top) in sorted(streams.items()):
                    assert 20 <= top < load.published[channel]
                    # A client that had seen up to 10 before the backup's position recovers the
                    # rest, in order, with the stream's epoch: recovery by offset works.
                    reply = await client.command("subscribe", {
                        "channel": channel, "recover": True, "offset": top - 10, "epoch": epoch,
                    })  # fmt: skip
                    result: dict[str, Any] = reply["subscribe"]
                    assert result["recovered"] is True, (channel, result)
                    assert result["epoch"] == epoch
                    pubs = result["publications"]
                    assert [p["offset"] for p in pubs] == list(range(top - 9, top + 1))
                    assert [p["data"]["n"] for p in pubs] == [p["offset"] - 1 for p in pubs]
                    # The stream goes on from there: the next publication is top + 1.
                    published = await client.command("publish", {"channel": channel,
                                                                 "data": {"n": top}})  # fmt: skip
                    assert "publish" in published, published
                    push = await next_publication(client, channel)
                    assert push["offset"] == top + 1
            nursery.cancel_scope.cancel()


CYCLES = 20


async def test_twenty_create_and_verify_cycles_under_load_all_succeed(
    tmp_path: Path, moto: MotoServer, redis: RedisServer
) -> None:
    node = Node(tmp_path / "n", moto, moto.new_bucket(), redis)
    node.fill_sqlite()
    load = Publishers()
    created = verified = 0
    async with trio.open_nursery() as nursery:
        server = await serve_in(nursery, server_config(redis, node.prefix, node.data_dir))
        for channel in CHANNELS:
            nursery.start_soon(load.run, ws_url(server), channel)
        await until(lambda: load.total >= 50)
        started = load.total
        for _ in range(CYCLES):
            code, out = await cli(*node.argv("create"))
            created += code == 0
            code, out = await cli(*node.argv("verify"))
            verified += code == 0 and "verified; RPO" in out
        under_load = load.total - started
        load.stop.set()
        nursery.cancel_scope.cancel()
    print(f"{CYCLES} cycles: backups {created}/{CYCLES}, verified {verified}/{CYCLES}, "
          f"{under_load} publications meanwhile")  # fmt: skip
    assert (created, verified) == (CYCLES, CYCLES)
    assert under_load > CYCLES  # the load really ran throughout
