"""What the control plane costs and how fast it is (issue 11): three Aether nodes in this process
on a private redis-server, with the default `[cluster]` settings.

    .venv/bin/python ops/bench/cluster_control.py [--idle 30] [--rounds 20] [--quiet]

1. Idle: the nodes run with no client for `--idle` seconds; reported are this process's CPU per
   node (`time.process_time`, divided by three), Redis's CPU (`INFO cpu`) and the commands Redis
   ran per second per node (`INFO commandstats`), by command: heartbeats are PUBLISHes, the
   state resync HGETALLs, the PUB/SUB probe one PUBLISH every `probe_interval` (2 s).
2. Latency: a client on node c, a ban (then an unban) through node a's operator API, timed from
   the request until node c closed the client; the same for the server API's `disconnect`
   through node a of a client on node b.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import redis
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from redis_server import running_redis  # noqa: E402

from aether_trio.app import Server  # noqa: E402
from aether_trio.auth.tokens import mint_token  # noqa: E402
from aether_trio.config import parse_config  # noqa: E402

SECRET = "bench-secret-0123456789abcdef0123456789abcdef"
ADMIN = "bench-admin-key-0123456789abcdef"


def config(address: str, name: str, data: str, quiet: bool) -> Any:
    # quiet: no heartbeat or resync within the run (the baseline: probes only)
    return parse_config({
        "server": {"port": 0, "node_name": name},
        "http": {"port": 0},
        "admin": {"data_dir": f"{data}/{name}"},
        "api": {"keys": [{"name": "ops", "key": ADMIN, "roles": ["admin"]}]},
        "token": {"hmac_secret": SECRET},
        "engine": {"type": "redis", "redis": {"address": address, "prefix": "bench"}},
        "log": {"level": "error"},
        "cluster": {"heartbeat_interval": 3600.0, "node_expire": 7200.0,
                    "state_resync_interval": 3600.0} if quiet else {},
    })  # fmt: skip


def commandstats(conn: redis.Redis) -> dict[str, int]:
    stats = conn.info("commandstats")
    return {name.removeprefix("cmdstat_"): value["calls"] for name, value in stats.items()}


def redis_cpu(conn: redis.Redis) -> float:
    cpu = conn.info("cpu")
    return float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"])


# One HTTP client per node, opened before timing: what is timed is the request, not httpx's
# set-up (its SSL context alone takes tens of ms on a loaded machine).
CLIENTS: dict[int, httpx.AsyncClient] = {}
ANSWERED: list[float] = []


async def post(server: Server, path: str, body: dict[str, Any]) -> None:
    client = CLIENTS.get(server.http_port)
    if client is None:
        url = f"http://127.0.0.1:{server.http_port}"
        client = CLIENTS[server.http_port] = httpx.AsyncClient(base_url=url, timeout=10)
    started = time.perf_counter()
    response = await client.post(path, json=body, headers={"X-API-Key": ADMIN})
    ANSWERED.append(time.perf_counter() - started)
    response.raise_for_status()


async def time_close(on: Server, via: Server, user: str, path: str, body: dict[str, Any]) -> float:
    """Seconds from the request through `via` until `on` closed `user`'s client."""
    url = f"ws://127.0.0.1:{on.port}/connection/websocket"
    token = mint_token(SECRET, {"sub": user, "exp": int(time.time()) + 600})
    async with open_websocket_url(url) as ws:
        await ws.send_message(f'{{"id":1,"connect":{{"token":"{token}"}}}}')
        await ws.get_message()
        started = time.perf_counter()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(post, via, path, body)
            try:
                with trio.fail_after(10):
                    while True:
                        await ws.get_message()
            except ConnectionClosed:
                return time.perf_counter() - started
    raise AssertionError("unreachable")


def summary(values: list[float]) -> str:
    ms = sorted(v * 1000 for v in values)
    return (f"median {statistics.median(ms):.1f} ms, max {ms[-1]:.1f} ms "
            f"({len(ms)} rounds)")  # fmt: skip


async def main(idle: float, rounds: int, quiet: bool) -> None:
    with running_redis() as server, tempfile.TemporaryDirectory() as data:
        conn = server.client()
        async with trio.open_nursery() as nursery:
            nodes = [
                await nursery.start(Server(config(server.address, name, data, quiet)).run)
                for name in ("a", "b", "c")
            ]
            a, b, c = nodes
            await trio.sleep(4)  # every node has heard the others
            cpu0, rcpu0, stats0 = time.process_time(), redis_cpu(conn), commandstats(conn)
            await trio.sleep(idle)
            cpu1, rcpu1, stats1 = time.process_time(), redis_cpu(conn), commandstats(conn)
            what = "no heartbeat/resync" if quiet else "defaults (heartbeat 3 s, resync 5 s)"
            print(f"idle {idle:.0f} s, 3 nodes, {what}, PUB/SUB probe every 2 s")
            print(f"  Aether CPU per node: {(cpu1 - cpu0) / 3 / idle * 100:.3f} %")
            print(f"  Redis CPU: {(rcpu1 - rcpu0) / idle * 100:.3f} %")
            for name in sorted(stats1):
                calls = stats1[name] - stats0.get(name, 0)
                if calls and name not in ("info", "ping"):
                    print(f"  {name}: {calls / idle / 3:.2f} /s per node")
            if quiet:
                nursery.cancel_scope.cancel()
                return
            for node in nodes:  # open the HTTP clients
                await post(node, "/api/info", {})
            ANSWERED.clear()
            bans, disconnects = [], []
            for n in range(rounds):
                user = f"user{n}"
                bans.append(await time_close(c, a, user, "/api/admin/ban", {"user": user}))
                await post(a, "/api/admin/unban", {"user": user})
                other = f"other{n}"  # the unban may not have reached b yet
                disconnects.append(await time_close(b, a, other, "/api/disconnect",
                                                    {"user": other}))  # fmt: skip
            print(f"ban via node a -> client on node c closed: {summary(bans)}")
            print(f"API disconnect via node a -> client on node b closed: {summary(disconnects)}")
            print(f"(HTTP answers of node a to these requests: {summary(ANSWERED)})")
            for client in CLIENTS.values():
                await client.aclose()
            nursery.cancel_scope.cancel()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idle", type=float, default=30.0)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--quiet", action="store_true", help="baseline: no heartbeat or resync")
    args = parser.parse_args()
    trio.run(main, args.idle, args.rounds, args.quiet)
