"""Publish throughput of the Redis engine on one Redis, sharded over two, and on a 3-master Redis
Cluster (plain PUBLISH, which a cluster sends to every node over its bus), issue 11.

    .venv/bin/python ops/bench/redis_layouts.py [--publications 10000] [--channels 50]

Starts private servers (tests/redis_topologies.py) and runs the engine in this process with 100
concurrent publishers over `--channels` channels, every channel subscribed, so each publication
is the Lua append + PUBLISH and comes back through a PUB/SUB connection. Reports publications/s,
this process's CPU and the servers' summed CPU per publication, and how the channels spread.
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path
from typing import Any

import trio

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from redis_publish import Counter  # noqa: E402
from redis_server import RedisServer, running_redis  # noqa: E402
from redis_topologies import running_cluster  # noqa: E402

from aether_trio.config import RedisEngineConfig  # noqa: E402
from aether_trio.engines.base import HistoryOptions  # noqa: E402
from aether_trio.engines.redis import open_redis_engine  # noqa: E402
from aether_trio.engines.redis.shards import shard_index  # noqa: E402
from aether_trio.protocol.messages import ClientInfo, Publication, RawJSON  # noqa: E402

HISTORY = HistoryOptions(size=100, ttl=60.0, meta_ttl=3600.0)
PUB = Publication(RawJSON(b'{"text":"hello, world","n":12345}'), ClientInfo("42", "c1"))
PUBLISHERS = 100


def servers_cpu(servers: list[RedisServer]) -> float:
    total = 0.0
    for server in servers:
        info = server.client().info("cpu")
        total += float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
    return total


async def measure(
    config: RedisEngineConfig, servers: list[RedisServer], total: int, channels: int
) -> dict[str, Any]:
    broker, _presence = open_redis_engine(config)
    counter = Counter()
    names = [f"bench-{n}" for n in range(channels)]
    async with trio.open_nursery() as nursery:
        await nursery.start(broker.run, counter)
        for name in names:
            await broker.subscribe(name)
        counter.expected = total
        per = total // PUBLISHERS
        cpu, redis_cpu, started = time.process_time(), servers_cpu(servers), time.perf_counter()

        async def publisher(k: int) -> None:
            for i in range(per):
                await broker.publish(names[(k + i) % channels], PUB, HISTORY)

        async with trio.open_nursery() as publishers:
            for k in range(PUBLISHERS):
                publishers.start_soon(publisher, k)
        await counter.all_in.wait()
        elapsed = time.perf_counter() - started
        cpu, redis_cpu = time.process_time() - cpu, servers_cpu(servers) - redis_cpu
        nursery.cancel_scope.cancel()
    spread = collections.Counter(shard_index(n, len(broker.shards)) for n in names)
    return {
        "per_second": total / elapsed,
        "aether_us": cpu / total * 1e6,
        "redis_us": redis_cpu / total * 1e6,
        "spread": dict(sorted(spread.items())),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--publications", type=int, default=10_000)
    parser.add_argument("--channels", type=int, default=50)
    args = parser.parse_args()
    total, channels = args.publications, args.channels
    rows = []
    with running_redis() as one:
        config = RedisEngineConfig(address=one.address, prefix=f"b{time.time_ns()}")
        rows.append(("one Redis", trio.run(measure, config, [one], total, channels)))
    with running_redis() as first, running_redis() as second:
        config = RedisEngineConfig(addresses=(first.address, second.address),
                                   prefix=f"b{time.time_ns()}")  # fmt: skip
        rows.append(("2 shards", trio.run(measure, config, [first, second], total, channels)))
    with running_cluster() as cluster:
        config = RedisEngineConfig(cluster_addresses=tuple(cluster.addresses),
                                   prefix=f"b{time.time_ns()}")  # fmt: skip
        rows.append(("cluster, 3 masters",
                     trio.run(measure, config, cluster.nodes, total, channels)))  # fmt: skip
    print("| layout | publications/s | Aether CPU per publication | Redis CPU per publication "
          "(all servers) | channels per shard |")  # fmt: skip
    print("|---|---|---|---|---|")
    for name, row in rows:
        print(
            f"| {name} | {row['per_second']:,.0f} | {row['aether_us']:,.0f} µs | "
            f"{row['redis_us']:,.0f} µs | {row['spread']} |"
        )


if __name__ == "__main__":
    main()
