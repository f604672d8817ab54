"""Publish throughput and CPU per publication of the Redis engine, with and without automatic
pipelining, for 1 and for 100 concurrent publishers (issue 11).

    .venv/bin/python ops/bench/redis_publish.py [--publications 20000]

Starts a private redis-server (port of its own, no persistence) and runs the engine in this
process: each publication goes through `RedisBroker.publish` (the Lua append + PUBLISH) and comes
back through the engine's PUB/SUB connection to a counting handler, so both halves are measured.
CPU is this process's (`time.process_time`) and Redis's (`INFO cpu`), per publication.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from aether_trio.config import RedisEngineConfig
from aether_trio.engines.base import HistoryOptions
from aether_trio.engines.redis import open_redis_engine
from aether_trio.protocol.messages import ClientInfo, Publication, RawJSON

HISTORY = HistoryOptions(size=100, ttl=60.0, meta_ttl=3600.0)
PUB = Publication(RawJSON(b'{"text":"hello, world","n":12345}'), ClientInfo("42", "c1"))


class Counter:
    def __init__(self) -> None:
        self.received = 0
        self.all_in = trio.Event()
        self.expected = 0

    def handle_publication(self, channel: str, pub: Publication) -> None:
        self.received += 1
        if self.received >= self.expected:
            self.all_in.set()

    def handle_join(self, channel: str, info: ClientInfo) -> None: ...
    def handle_leave(self, channel: str, info: ClientInfo) -> None: ...
    def handle_gap(self, channels: list[str]) -> None: ...


def redis_cpu(port: int) -> float:
    out = subprocess.run(["redis-cli", "-p", str(port), "INFO", "cpu"], capture_output=True,
                         text=True, check=True).stdout  # fmt: skip
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    return float(fields["used_cpu_user"]) + float(fields["used_cpu_sys"])


async def measure(port: int, pipelining: bool, publishers: int, total: int) -> dict[str, float]:
    config = RedisEngineConfig(address=f"redis://127.0.0.1:{port}/0", prefix=f"b{time.time_ns()}",
                               pipelining=pipelining, io_timeout=30.0)  # fmt: skip
    broker, _presence = open_redis_engine(config)
    counter = Counter()
    counter.expected = total
    async with trio.open_nursery() as nursery:
        await nursery.start(broker.run, counter)
        await broker.subscribe("news")
        per = total // publishers

        async def publisher() -> None:
            for _ in range(per):
                await broker.publish("news", PUB, HISTORY)

        cpu, rcpu, wall = time.process_time(), redis_cpu(port), time.perf_counter()
        async with trio.open_nursery() as inner:
            for _ in range(publishers):
                inner.start_soon(publisher)
        await counter.all_in.wait()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        rcpu = redis_cpu(port) - rcpu
        batches = broker.client.batches
        nursery.cancel_scope.cancel()
    return {"rate": total / wall, "cpu_us": cpu / total * 1e6, "redis_cpu_us": rcpu / total * 1e6,
            "commands_per_pipeline": total / batches if batches else 1.0}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--publications", type=int, default=20000)
    args = parser.parse_args()
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server is not installed")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    workdir = tempfile.mkdtemp()
    server = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                               "--appendonly", "no", "--dir", workdir],
                              stdout=subprocess.DEVNULL)  # fmt: skip
    try:
        time.sleep(0.5)
        print("pipelining publishers  publications/s  CPU us/pub (aether)  (redis)  cmds/pipeline")
        for publishers in (1, 100):
            for pipelining in (True, False):
                total = args.publications if publishers > 1 else args.publications // 4
                r = trio.run(measure, port, pipelining, publishers, total)
                print(f"{'on' if pipelining else 'off':>10} {publishers:>10} {r['rate']:>15,.0f} "
                      f"{r['cpu_us']:>20.1f} {r['redis_cpu_us']:>8.1f} "
                      f"{r['commands_per_pipeline']:>14.1f}")  # fmt: skip
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
