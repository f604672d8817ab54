"""The faults the soak injects, each a Trio function that does one thing to the deployment and
returns what it observed (how long until the deployment was whole again, in seconds).

Every fault is bounded: each wait has a deadline, and a fault that cannot complete says so in
its record instead of hanging the run.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import orjson
import trio
from backups import backup_cycle
from deployment import PROCESSES, Deployment
from rolling import rolling_deploy
from trio_websocket import ConnectionClosed, HandshakeError, wrap_client_stream

__all__ = ["FAULTS", "DelayProxy"]

HOT = "soak:hot"
SLOW = "soak:slow"
WHOLE_AGAIN = 60.0  # the longest a fault may take to heal before it is reported as not healed


async def _all_ready(dep: Deployment, deadline: float) -> float | None:
    """Seconds until every process answers /ready 200 (None: not within the deadline)."""
    start = trio.current_time()
    async with httpx.AsyncClient(timeout=2) as http:
        while trio.current_time() < deadline:
            ready = 0
            for instance in range(1, PROCESSES + 1):
                try:
                    answer = await http.get(f"{dep.internal(instance)}/ready")
                    ready += answer.status_code == 200
                except httpx.HTTPError:
                    pass
            if ready == PROCESSES:
                return trio.current_time() - start
            await trio.sleep(0.1)
    return None


async def kill_worker(dep: Deployment, ctx: Any) -> dict[str, Any]:
    """SIGKILL one process; supervisord restarts it."""
    instance = random.randint(1, PROCESSES)
    pid = await trio.to_thread.run_sync(dep.pid, instance)
    if pid is None:
        return {"instance": instance, "error": "not running"}
    os.kill(pid, signal.SIGKILL)
    await trio.sleep(0.5)
    healed = await _all_ready(dep, trio.current_time() + WHOLE_AGAIN)
    return {"instance": instance, "pid": pid, "healed_after_s": healed}


async def restart_redis(dep: Deployment, ctx: Any) -> dict[str, Any]:
    """Redis down for two seconds (AOF: nothing acknowledged is lost), then back."""
    await trio.to_thread.run_sync(dep.redis.stop)
    await trio.sleep(2)
    await trio.to_thread.run_sync(dep.redis.start)
    healed = await _all_ready(dep, trio.current_time() + WHOLE_AGAIN)
    return {"down_s": 2, "healed_after_s": healed}


async def drain_worker(dep: Deployment, ctx: Any) -> dict[str, Any]:
    """`aether admin drain` of one process: its clients are asked to reconnect (elsewhere)."""
    instance = random.randint(1, PROCESSES)
    started = time.monotonic()
    result = await trio.to_thread.run_sync(
        lambda: dep.aether(
            "admin",
            "drain",
            "-c",
            str(dep.config),
            "--instance",
            str(instance),
            "--keep-accepting",
            "--rate",
            "500",
            "--wait",
            "--timeout",
            "30",
            timeout=90,
        )
    )
    return {"instance": instance, "exit": result.returncode,
            "drained_after_s": round(time.monotonic() - started, 2)}  # fmt: skip


async def _raw_client(dep: Deployment, context: ssl.SSLContext, nursery: trio.Nursery) -> Any:
    stream = await trio.open_tcp_stream("127.0.0.1", dep.https_port)
    tls = trio.SSLStream(stream, context, server_hostname="127.0.0.1", https_compatible=True)
    return await wrap_client_stream(nursery, tls, "127.0.0.1", "/connection/websocket")


async def _send_bad(dep: Deployment, context: ssl.SSLContext, frames: list[bytes | str]) -> str:
    async with trio.open_nursery() as nursery:
        try:
            with trio.fail_after(10):
                ws = await _raw_client(dep, context, nursery)
                for frame in frames:
                    await ws.send_message(frame)
                while True:
                    await ws.get_message()
        except ConnectionClosed as closed:
            return f"closed {closed.reason.code if closed.reason else None}"
        except (trio.TooSlowError, HandshakeError, OSError, trio.BrokenResourceError) as exc:
            return f"unexpected {type(exc).__name__}"
        finally:
            nursery.cancel_scope.cancel()


async def bad_input(dep: Deployment, ctx: Any) -> dict[str, Any]:
    """A burst of bad input on fresh connections; each must be refused or closed cleanly."""
    outcomes: dict[str, str] = {}
    cases: dict[str, list[bytes | str]] = {
        "not json": ["{nope"],
        "bad token": [orjson.dumps({"id": 1, "connect": {"token": "x.y.z"}}).decode()],
        "oversized": ['{"id":1,"connect":{"data":"' + "x" * 200_000 + '"}}'],
        "binary garbage": [random.randbytes(512)],
        "no connect first": [orjson.dumps({"id": 1, "subscribe": {"channel": HOT}}).decode()],
    }
    for name, frames in cases.items():
        outcomes[name] = await _send_bad(dep, ctx.ssl_context, frames)
    return {"outcomes": outcomes}


async def slow_consumers(dep: Deployment, ctx: Any) -> dict[str, Any]:
    """Clients that subscribe to a channel of their own and stop reading while a burst of large
    publications is sent there: the server must cut them off (its outbox limits) without the
    rest of the run noticing."""
    count, burst, size = 5, 300, 16_384
    token = dep.token("slowpoke")
    cut_before = _slow_cuts(dep)
    subscribed = trio.Semaphore(0)

    failures: list[str] = []

    async def slowpoke(instance: int) -> None:
        try:
            await _slowpoke(instance)
        except (OSError, trio.BrokenResourceError, HandshakeError, ConnectionClosed) as exc:
            failures.append(type(exc).__name__)  # reported; the other slowpokes go on
            subscribed.release()

    async def _slowpoke(instance: int) -> None:
        # Straight at a process, with a 4 KB receive buffer: behind nginx, its buffers and two
        # hops of kernel buffers would absorb tens of MB before Aether saw anyone slow.
        sock = trio.socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        await sock.connect(("127.0.0.1", dep.ws_base + instance))
        async with trio.open_nursery() as nursery:
            ws = await wrap_client_stream(
                nursery,
                trio.SocketStream(sock),
                "127.0.0.1",
                "/connection/websocket",
                message_queue_size=0,
            )
            await ws.send_message(orjson.dumps({"id": 1, "connect": {"token": token}}).decode())
            await ws.send_message(orjson.dumps({"id": 2, "subscribe": {"channel": SLOW}}).decode())
            answered: set[int] = set()
            while len(answered) < 2:  # the two replies (one frame may carry both); then no more
                message = await ws.get_message()
                text = message if isinstance(message, str) else message.decode()
                answered |= {orjson.loads(line).get("id", 0) for line in text.splitlines() if line}
            subscribed.release()
            # trio-websocket's reader stops reading the socket once its queue (size 0) holds a
            # message: from here the kernel buffers fill, as with a client that cannot keep up.
            await trio.sleep(ctx.plan.slow_hold)
            nursery.cancel_scope.cancel()

    key = dep.key("backend")
    async with trio.open_nursery() as nursery:
        for n in range(count):
            nursery.start_soon(slowpoke, 1 + n % PROCESSES)
        with trio.move_on_after(30):
            for _ in range(count):
                await subscribed.acquire()
        async with httpx.AsyncClient(timeout=10, headers={"X-API-Key": key}) as http:
            for n in range(burst):
                await http.post(f"{dep.internal(1 + n % PROCESSES)}/api/publish",
                                json={"channel": SLOW, "data": {"pad": "x" * size}})  # fmt: skip
    with trio.move_on_after(15):  # the server cuts them off as their outboxes overflow
        while _slow_cuts(dep) - cut_before < count:  # noqa: ASYNC110  (polling its logs)
            await trio.sleep(0.5)
    # What the server did, from its own logs (the client cannot see a close frame queued behind
    # megabytes it never reads).
    return {
        "slow_clients": count,
        "burst": f"{burst} x {size} B",
        "closed_3008_by_server": _slow_cuts(dep) - cut_before,
        "failed_to_start": failures,
    }


def _slow_cuts(dep: Deployment) -> int:
    return sum(
        path.read_text(errors="replace").count("3008 slow")
        for path in (dep.directory / "log").glob("aether-*.log")
    )


class DelayProxy:
    """A loopback TCP proxy in front of nginx that some clients always use: transparent until
    `impair` sets a delay per chunk and a chance of a stall (a lost segment's retransmit)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.delay = 0.0
        self.stall_chance = 0.0

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._connection, listeners)

    async def _connection(self, downstream: trio.SocketStream) -> None:
        try:
            upstream = await trio.open_tcp_stream("127.0.0.1", self.target_port)
        except OSError:
            await downstream.aclose()
            return
        async with downstream, upstream, trio.open_nursery() as nursery:
            nursery.start_soon(self._pump, downstream, upstream, nursery.cancel_scope)
            nursery.start_soon(self._pump, upstream, downstream, nursery.cancel_scope)

    async def _pump(self, source: trio.SocketStream, sink: trio.SocketStream,
                    scope: trio.CancelScope) -> None:  # fmt: skip
        try:
            while chunk := await source.receive_some(65536):
                if self.delay:
                    await trio.sleep(self.delay * random.uniform(0.5, 1.5))
                if self.stall_chance and random.random() < self.stall_chance:
                    await trio.sleep(0.2 + random.random())  # a retransmit timeout
                await sink.send_all(chunk)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        scope.cancel()


async def impair_network(dep: Deployment, ctx: Any) -> dict[str, Any]:
    proxy: DelayProxy = ctx.proxy
    proxy.delay, proxy.stall_chance = 0.05, 0.02
    await trio.sleep(ctx.plan.impair_hold)
    proxy.delay, proxy.stall_chance = 0.0, 0.0
    return {"delay_ms": 50, "stall_chance": 0.02, "held_s": ctx.plan.impair_hold}


FAULTS: dict[str, Callable[[Deployment, Any], Awaitable[dict[str, Any]]]] = {
    "kill_worker": kill_worker,
    "restart_redis": restart_redis,
    "drain_worker": drain_worker,
    "bad_input": bad_input,
    "slow_consumers": slow_consumers,
    "impair_network": impair_network,
    "backup_cycle": backup_cycle,
    "rolling_deploy": rolling_deploy,
}
