"""Latency of the application's backend (issue 15): a connect and an RPC through HTTP proxies to
a backend in a process of its own, against a token connect and an RPC answered by an in-process
hook, and the backend alone (an httpx POST to it), all on 127.0.0.1.

    .venv/bin/python ops/bench/backend_proxy.py [--rounds 100]

The backend is tests/backend_app.py's ASGI app under Hypercorn (Trio worker) in a subprocess;
Aether runs in this process with a raw WebSocket client. Medians and 95th percentiles, in ms.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import httpx
import trio

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from conftest import make_config, open_raw, token, ws_url  # noqa: E402

from aether_trio.app import Server  # noqa: E402
from aether_trio.backend import Hooks  # noqa: E402

BACKEND = """
import sys
sys.path.insert(0, {tests!r})
import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from backend_app import BackendApp
app = BackendApp()
app.routes["/connect"] = lambda body, headers: {{"result": {{"user": "u"}}}}
app.routes["/rpc"] = lambda body, headers: {{"result": {{"data": {{"ok": True}}}}}}
config = Config()
config.bind = ["127.0.0.1:{port}"]
config.accesslog = None
trio.run(serve, app, config)
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def summary(samples: list[float]) -> str:
    ordered = sorted(samples)
    median = statistics.median(ordered) * 1000
    p95 = ordered[int(len(ordered) * 0.95)] * 1000
    return f"median {median:6.2f} ms, p95 {p95:6.2f} ms ({len(ordered)} samples)"


async def timed(samples: list[float], call: Awaitable[Any]) -> None:
    """Await `call` (a coroutine made just before: making one costs nothing) and time it."""
    started = time.perf_counter()
    await call
    samples.append(time.perf_counter() - started)


async def main(port: int, rounds: int) -> None:
    url = f"http://127.0.0.1:{port}"
    config = make_config(
        {
            "proxies": [
                {"name": "connect", "endpoint": f"{url}/connect"},
                {"name": "rpc", "endpoint": f"{url}/rpc"},
            ],
            "client": {"connect_proxy_name": "connect", "rpc_proxy_name": "rpc"},
        }
    )
    results: dict[str, list[float]] = {
        "connect, HTTP proxy": [], "connect, token": [], "rpc, HTTP proxy": [],
        "rpc, in-process hook": [], "the backend alone (httpx POST)": [],
    }  # fmt: skip
    async with trio.open_nursery() as nursery:
        proxied = await nursery.start(Server(config).run)
        hooks = Hooks(on_rpc=lambda event: {"data": {"ok": True}})
        hooked = await nursery.start(Server(make_config(), hooks=hooks).run)
        for _ in range(rounds):
            async with open_raw(ws_url(proxied)) as client:
                await timed(results["connect, HTTP proxy"], client.connect())
                for _ in range(5):
                    await timed(results["rpc, HTTP proxy"], client.command("rpc", {"method": "m"}))
            async with open_raw(ws_url(proxied)) as client:
                await timed(results["connect, token"], client.connect(token("u")))
        async with open_raw(ws_url(hooked)) as client:
            await client.connect(token("u"))
            for _ in range(rounds * 5):
                call = client.command("rpc", {"method": "m"})
                await timed(results["rpc, in-process hook"], call)
        async with httpx.AsyncClient() as http:
            for _ in range(rounds * 2):
                post = http.post(f"{url}/rpc", content=b"{}")
                await timed(results["the backend alone (httpx POST)"], post)
        nursery.cancel_scope.cancel()
    for name, samples in results.items():
        print(f"{name:32} {summary(samples)}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=100)
    args = parser.parse_args()
    port = free_port()
    code = BACKEND.format(tests=str(ROOT / "tests"), port=port)
    backend = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.DEVNULL)
    try:
        with httpx.Client() as probe:
            for _ in range(100):
                try:
                    probe.post(f"http://127.0.0.1:{port}/rpc", content=b"{}")
                    break
                except httpx.TransportError:
                    time.sleep(0.05)
        trio.run(main, port, args.rounds)
    finally:
        backend.terminate()
        backend.wait()
