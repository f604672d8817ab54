"""Durable single-node history end to end: real `aether serve` processes on one data_dir.

A client subscribes with recovery, the server API publishes, the server is stopped with SIGTERM
and started again, more is published, and the client comes back with its last offset and epoch:
it must recover every publication it missed, in order, once, with the same epoch. SIGINT stops
as gracefully, after closing its clients. A server killed with SIGKILL instead comes back with
empty history (the snapshot was consumed at its start) and no corrupt file: the client is told
its position cannot be recovered. The snapshot format and
its refusals are tested without processes in tests/test_history_snapshot.py.
"""

from __future__ import annotations

import re
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from conftest import SECRET, RawClient, open_raw, token
from test_lifecycle import ServerProcess, start

from aether_trio.engines.snapshot import SNAPSHOT_NAME, read_snapshot

API_KEY = "durable-history-test-key"
CHANNEL = "chat:room"

CONFIG = f"""
[server]
port = 0
shutdown_drain_seconds = 3.0
close_wait_seconds = 1.0

[http]
port = 0

[token]
hmac_secret = "{SECRET}"

[api]
keys = [{{ name = "backend", key = "{API_KEY}", roles = ["publisher"] }}]

[[channel.namespaces]]
name = "chat"
history_size = 1000
history_ttl = 3600.0
force_recovery = true
allow_subscribe_for_client = true
"""
# [engine] persist_history is left out: on by default.


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "aether.toml"
    path.write_text(CONFIG + f'\n[admin]\ndata_dir = "{tmp_path / "data"}"\n')
    return path


class Node:
    """One `aether serve` process, its WebSocket URL and its server API."""

    def __init__(self, process: ServerProcess, url: str) -> None:
        self.server = process
        self.url = url
        http = re.search(r"internal HTTP listening on http://[\d.]+:(\d+)", process.log)
        assert http is not None, process.log
        self.api = f"http://127.0.0.1:{http.group(1)}/api"

    async def publish(self, http: httpx.AsyncClient, seq: int) -> dict[str, Any]:
        response = await http.post(
            f"{self.api}/publish",
            json={"channel": CHANNEL, "data": {"seq": seq}},
            headers={"X-API-Key": API_KEY},
        )
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()["result"]
        return result

    async def stop(self, signum: signal.Signals) -> int:
        self.server.process.send_signal(signum)
        with trio.fail_after(10):
            return await self.server.process.wait()

    async def reap(self) -> None:
        """Whatever happened: no process and no pipe left behind."""
        process = self.server.process
        with trio.CancelScope(shield=True), trio.fail_after(10):
            process.kill()
            await process.wait()
            if process.stderr is not None:
                await process.stderr.aclose()


async def start_node(config_file: Path) -> Node:
    process, url = await start(config_file)
    return Node(process, url)


async def subscribe(client: RawClient, **recovery: Any) -> dict[str, Any]:
    await client.connect(token("alice"))
    reply = await client.command("subscribe", {"channel": CHANNEL, **recovery})
    assert "subscribe" in reply, reply
    result: dict[str, Any] = reply["subscribe"]
    return result


async def receive_publications(client: RawClient, count: int) -> list[dict[str, Any]]:
    pubs: list[dict[str, Any]] = []
    with trio.fail_after(10):
        while len(pubs) < count:
            message = await client.receive()
            if message.get("push", {}).get("channel") == CHANNEL and "pub" in message["push"]:
                pubs.append(message["push"]["pub"])
    return pubs


SEEN_LIVE, MISSED_BEFORE_STOP, MISSED_AFTER_START = 20, 15, 15


async def test_a_client_recovers_everything_it_missed_across_a_graceful_restart(
    config_file: Path,
) -> None:
    data_dir = config_file.parent / "data"
    first = await start_node(config_file)
    try:
        async with httpx.AsyncClient(timeout=5) as http:
            # A live client sees the first publications, then goes away.
            async with open_raw(first.url) as client:
                subscribed = await subscribe(client)
                assert subscribed["recoverable"] is True
                epoch = subscribed["epoch"]
                for seq in range(1, SEEN_LIVE + 1):
                    assert await first.publish(http, seq) == {"offset": seq, "epoch": epoch}
                live = await receive_publications(client, SEEN_LIVE)
            assert [p["offset"] for p in live] == list(range(1, SEEN_LIVE + 1))
            last_offset = live[-1]["offset"]
            # Missed while the client is away, then the deploy.
            for seq in range(SEEN_LIVE + 1, SEEN_LIVE + MISSED_BEFORE_STOP + 1):
                await first.publish(http, seq)
            assert await first.stop(signal.SIGTERM) == 0
            total = SEEN_LIVE + MISSED_BEFORE_STOP
            await first.server.wait_for_log(
                rf"history snapshot saved to [^:]+: 1 streams, {total} publications, \d+ bytes"
            )
            assert (data_dir / SNAPSHOT_NAME).exists()

            second = await start_node(config_file)
            try:
                loaded = re.search(
                    r"history snapshot loaded from [^:]+: 1 streams, (\d+) publications",
                    second.server.log,
                )
                assert loaded is not None, second.server.log
                assert int(loaded.group(1)) == total
                # Missed after the restart: the stream goes on with the same epoch.
                first_after = total + 1
                for seq in range(first_after, first_after + MISSED_AFTER_START):
                    assert await second.publish(http, seq) == {"offset": seq, "epoch": epoch}

                async with open_raw(second.url) as client:
                    recovered = await subscribe(
                        client, recover=True, offset=last_offset, epoch=epoch
                    )
                    assert recovered["recovered"] is True
                    assert recovered["epoch"] == epoch
                    missed = MISSED_BEFORE_STOP + MISSED_AFTER_START
                    got = recovered["publications"]
                    assert [p["offset"] for p in got] == list(
                        range(last_offset + 1, last_offset + missed + 1)
                    )
                    assert [p["data"]["seq"] for p in got] == [p["offset"] for p in got]
                    # Live delivery continues right after the recovered ones: no gap, no repeat.
                    next_seq = last_offset + missed + 1
                    await second.publish(http, next_seq)
                    [after] = await receive_publications(client, 1)
                    assert after["offset"] == next_seq
                assert await second.stop(signal.SIGTERM) == 0
            finally:
                await second.reap()
    finally:
        await first.reap()


async def test_a_killed_server_comes_back_empty_never_corrupt(config_file: Path) -> None:
    data_dir = config_file.parent / "data"
    first = await start_node(config_file)
    try:
        async with httpx.AsyncClient(timeout=5) as http:
            epoch = (await first.publish(http, 1))["epoch"]
            await first.publish(http, 2)
            # SIGINT (Ctrl-C) is a graceful stop too; the connected client is closed first.
            async with open_raw(first.url) as client:
                await subscribe(client)
                assert await first.stop(signal.SIGINT) == 0
            await first.server.wait_for_log(r"history snapshot saved to")
            log = first.server.log
            assert log.index("shutting down: closing 1 connections") < log.index("snapshot saved")

            second = await start_node(config_file)
            try:
                assert "1 streams, 2 publications" in second.server.log
                # Consumed at start: from here on the stream moves past the snapshot.
                assert not (data_dir / SNAPSHOT_NAME).exists()
                assert await second.publish(http, 3) == {"offset": 3, "epoch": epoch}
                assert await second.stop(signal.SIGKILL) == -signal.SIGKILL
            finally:
                await second.reap()

            # A snapshot brought back now would hand out offset 3 of this epoch a second time.
            third = await start_node(config_file)
            try:
                assert "history snapshot: none at" in third.server.log
                async with open_raw(third.url) as client:
                    result = await subscribe(client, recover=True, offset=3, epoch=epoch)
                assert result["was_recovering"] is True
                assert "recovered" not in result  # false: left out on the wire
                assert result["epoch"] != epoch
                assert not list(data_dir.glob(f"{SNAPSHOT_NAME}.corrupt-*"))
                assert await third.stop(signal.SIGTERM) == 0
            finally:
                await third.reap()
            assert read_snapshot(data_dir / SNAPSHOT_NAME).streams[0].epoch != epoch
    finally:
        await first.reap()
