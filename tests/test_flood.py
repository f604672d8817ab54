"""Abuse on loopback, bounded in count and time: the server limits the abusers and keeps serving
a well-behaved client with every publication, in order and without starving it.

These are starvation checks, not performance assertions: the latency bound (2 s per publication)
is an order of magnitude above what a loaded CI machine needs.
"""

from __future__ import annotations

import os
import resource
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import orjson
import pytest
import trio
from conftest import (
    RawClient,
    close_reason,
    get_text,
    make_config,
    open_raw,
    serve_in,
    token,
    ws_url,
)
from trio_websocket import ConnectionClosed

from aether_trio.app import Server
from aether_trio.config import Config

IP = "127.0.0.1"
LATENCY_BOUND = 2.0  # seconds from publish to delivery, per publication
CHANNEL = "watch"


def _rss_bytes() -> int | None:
    """Current resident memory of this process (server and test clients), Linux only."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return None


@asynccontextmanager
async def serving(cfg: Config) -> AsyncIterator[Server]:
    async with trio.open_nursery() as nursery:
        yield await serve_in(nursery, cfg)
        nursery.cancel_scope.cancel()


class Subscriber:
    """A well-behaved client: subscribed to CHANNEL, answering pings, timing publications."""

    def __init__(self, client: RawClient) -> None:
        self.client = client
        self.latencies: list[float] = []
        self.received: list[int] = []

    async def run(self, count: int) -> None:
        while len(self.received) < count:
            message = await self.client.receive()
            if message == {}:
                await self.client.send({})  # pong
                continue
            pub = message.get("push", {}).get("pub")
            if pub is not None:
                self.received.append(pub["data"]["n"])
                self.latencies.append(trio.current_time() - pub["data"]["at"])


async def publish_steadily(server: Server, count: int, interval: float) -> None:
    """A well-behaved publisher connection: `count` publications, one every `interval`."""
    async with open_raw(ws_url(server)) as publisher:
        assert "connect" in await publisher.connect(token("publisher"))
        for n in range(count):
            data = {"n": n, "at": trio.current_time()}
            reply = await publisher.command("publish", {"channel": CHANNEL, "data": data})
            assert reply == {"id": n + 2, "publish": {}}, reply
            await trio.sleep(interval)


class Abuser:
    """Sends commands as fast as the socket takes them, reading everything, until closed."""

    def __init__(self) -> None:
        self.sessions = 0
        self.closes: list[tuple[int, str | None]] = []
        self.refused = 0  # 111 replies seen
        self.answered = 0  # commands handled

    async def session(self, server: Server, frame_size: int = 50) -> None:
        self.sessions += 1
        async with open_raw(ws_url(server)) as client:
            assert "connect" in await client.connect(token("abuser"))
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._send_forever, client, frame_size)
                try:
                    while True:
                        for line in (await get_text(client.ws)).split("\n"):
                            reply = orjson.loads(line)
                            if reply.get("error", {}).get("code") == 111:
                                self.refused += 1
                            elif "presence_stats" in reply:
                                self.answered += 1
                except ConnectionClosed as exc:
                    close = close_reason(exc)
                    self.closes.append((close.code, close.reason))
                nursery.cancel_scope.cancel()

    @staticmethod
    async def _send_forever(client: RawClient, frame_size: int) -> None:
        cmd_id = 2
        while True:
            commands = [
                {"id": cmd_id + i, "presence_stats": {"channel": CHANNEL}}
                for i in range(frame_size)
            ]
            cmd_id += frame_size
            try:
                await client.send(*commands)
            except ConnectionClosed:
                return


async def test_an_abusive_client_is_limited_while_a_good_one_gets_every_publication() -> None:
    cfg = make_config(
        {"limits": {"command_rate": 20.0, "command_burst": 20, "command_refusals": 300,
                    "command_refusal_window": 10.0, "user_command_rate": 0}}
    )  # fmt: skip
    publications, interval, abusers = 40, 0.05, 4
    abuser = Abuser()
    rss_before = _rss_bytes()
    peak = {"outbox_bytes": 0, "clients": 0}
    async with serving(cfg) as server, open_raw(ws_url(server)) as good:
        assert "connect" in await good.connect(token("good"))
        assert await good.command("subscribe", {"channel": CHANNEL}) == {"id": 2, "subscribe": {}}
        subscriber = Subscriber(good)
        publishing_done = trio.Event()

        async def abuse(worker: int) -> None:
            # Reconnect after each 3013 while the publications go on (bounded: 25 per worker).
            for _ in range(25):
                await abuser.session(server)
                if publishing_done.is_set():
                    return

        async def publish() -> None:
            await publish_steadily(server, publications, interval)
            publishing_done.set()

        async def watch_memory() -> None:
            while True:
                clients = list(server.node.clients.values())
                queued = sum(client.queued_bytes for client in clients)
                peak["outbox_bytes"] = max(peak["outbox_bytes"], queued)
                peak["clients"] = max(peak["clients"], len(clients))
                await trio.sleep(0.01)

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(watch_memory)
                async with trio.open_nursery() as flood:
                    flood.start_soon(subscriber.run, publications)
                    for worker in range(abusers):
                        flood.start_soon(abuse, worker)
                    flood.start_soon(publish)
                nursery.cancel_scope.cancel()

    # The good client got every publication, in order, each within the bound.
    assert subscriber.received == list(range(publications))
    assert max(subscriber.latencies) < LATENCY_BOUND, subscriber.latencies
    # Every abusive session was told 111, then closed with 3013; commands beyond its burst (and
    # what refilled meanwhile) were not handled.
    assert abuser.sessions >= abusers
    assert abuser.closes == [(3013, "too many requests")] * abuser.sessions
    assert abuser.refused >= 300 * abuser.sessions
    assert abuser.answered < abuser.sessions * (20 + 20 * 10)
    # Memory stayed bounded: outboxes far below their limits, no pile of connections, and the
    # process did not grow by more than a generous bound.
    assert peak["outbox_bytes"] < 1 << 20
    assert peak["clients"] <= 2 + 2 * abusers  # (a closed abuser may linger in cleanup)
    rss_after = _rss_bytes()
    if rss_before is not None and rss_after is not None:
        assert rss_after - rss_before < 200 << 20


# --- half-open sockets ------------------------------------------------------------------------

HALF_OPEN = 1000


def _enough_file_descriptors(needed: int) -> bool:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return True
    if hard != resource.RLIM_INFINITY and hard < needed:
        return False
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    return True


async def test_a_thousand_half_open_sockets_do_not_exhaust_the_server() -> None:
    # Each half-open socket costs two descriptors here (both ends live in this process).
    if not _enough_file_descriptors(2 * HALF_OPEN + 500):
        pytest.fail(
            "not enough file descriptors for both ends of the half-open sockets: "
            "raise the hard RLIMIT_NOFILE (ulimit -Hn) to run this test"
        )
    timeout = 3.0
    cfg = make_config({"server": {"handshake_timeout": timeout}})
    async with serving(cfg) as server:
        streams: list[trio.SocketStream] = []
        opened_at: list[float] = []
        try:
            for i in range(HALF_OPEN):
                stream = await trio.open_tcp_stream(IP, server.port)
                if i % 2:  # half of them start a request and never finish it
                    await stream.send_all(b"GET /connection/websocket HTTP/1.1\r\nHost: x\r\n")
                streams.append(stream)
                opened_at.append(trio.current_time())

            # While they are all open, a well-behaved client connects and gets publications.
            async with open_raw(ws_url(server)) as good:
                assert "connect" in await good.connect(token("good"))
                assert "subscribe" in await good.command("subscribe", {"channel": CHANNEL})
                subscriber = Subscriber(good)
                with trio.fail_after(10):
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(subscriber.run, 5)
                        nursery.start_soon(publish_steadily, server, 5, 0.01)
                assert subscriber.received == list(range(5))
                assert max(subscriber.latencies) < LATENCY_BOUND

            # And the server closes every one of them within the handshake timeout.
            closed_after: list[float] = []

            async def wait_closed(stream: trio.SocketStream, since: float) -> None:
                try:
                    while await stream.receive_some(4096):
                        pass
                except trio.BrokenResourceError:
                    pass
                closed_after.append(trio.current_time() - since)

            with trio.fail_after(timeout + 10):
                async with trio.open_nursery() as nursery:
                    for stream, since in zip(streams, opened_at, strict=True):
                        nursery.start_soon(wait_closed, stream, since)
            assert len(closed_after) == HALF_OPEN
            assert max(closed_after) < timeout + 5, max(closed_after)
            # None was ever counted as a connection.
            assert server.node.limits.connections == 0
        finally:
            for stream in streams:
                await stream.aclose()
