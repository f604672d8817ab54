"""Private Redis topologies for the tests, built from tests/redis_server.py's servers: a master
with a replica watched by Sentinels (`redis-server --sentinel`), and a 3-master Redis Cluster
(`--cluster-enabled yes` + `redis-cli --cluster create`). Free ports, own directories, nothing
persisted; the machine's own Redis is never touched.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis
from redis_server import RedisServer, free_port

__all__ = ["RedisCluster", "SentinelSetup", "running_cluster", "running_sentinels", "wait_for"]

MASTER_NAME = "aether-master"


def wait_for(condition: Callable[[], bool], limit: float = 20.0, what: str = "") -> None:
    """Poll `condition` (a server gives no other signal) until true, or fail after `limit`."""
    deadline = time.monotonic() + limit
    while True:
        try:
            if condition():
                return
        except redis.RedisError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what or condition}")
        time.sleep(0.05)


class Sentinel:
    """One `redis-server --sentinel` on a free port, monitoring `MASTER_NAME`."""

    def __init__(self, master_port: int, quorum: int) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed (apt-get install -y redis-server)")
        self.dir = Path(tempfile.mkdtemp(prefix="aether-sentinel-"))
        self.port = free_port()
        conf = self.dir / "sentinel.conf"  # Sentinel rewrites its file: it must be writable
        conf.write_text(
            f"port {self.port}\nbind 127.0.0.1\nprotected-mode no\ndir {self.dir}\n"
            f"sentinel monitor {MASTER_NAME} 127.0.0.1 {master_port} {quorum}\n"
            # Quick enough for a test; production keeps the defaults (30 s, 3 min).
            f"sentinel down-after-milliseconds {MASTER_NAME} 500\n"
            f"sentinel failover-timeout {MASTER_NAME} 3000\n"
        )
        self.process = subprocess.Popen(
            [binary, str(conf), "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_for(lambda: bool(self.client().ping()), 10, f"sentinel on {self.port}")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=5)

    def command(self, *args: Any) -> Any:
        with self.client() as conn:
            return conn.execute_command(*args)

    def master(self) -> tuple[str, int]:
        host, port = self.command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME)
        return host.decode(), int(port)

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        shutil.rmtree(self.dir, ignore_errors=True)


class SentinelSetup:
    def __init__(self, master: RedisServer, replica: RedisServer, sentinels: list[Sentinel]):
        self.master = master
        self.replica = replica
        self.sentinels = sentinels

    def current_master_port(self) -> int:
        return self.sentinels[0].master()[1]

    def in_sync(self) -> bool:
        """The replica has applied everything the master wrote: its own replication offset (it
        moves at once, unlike the acknowledgement the master sees once a second)."""
        written = self.master.client().info("replication")["master_repl_offset"]
        applied = self.replica.client().info("replication")["slave_repl_offset"]
        return bool(applied >= written)

    def kill_master(self) -> None:
        """SIGKILL: no goodbye to clients, replica or Sentinels."""
        process = self.master.process
        assert process is not None
        process.kill()
        process.wait(5)
        self.master.process = None


@contextmanager
def running_sentinels(count: int = 1) -> Iterator[SentinelSetup]:
    """A master, one replica in sync with it, and `count` Sentinels that all see both."""
    with ExitStack() as stack:
        master = RedisServer()
        stack.callback(master.close)
        replica = RedisServer("--replicaof", "127.0.0.1", str(master.port))
        stack.callback(replica.close)
        wait_for(
            lambda: replica.client().info("replication")["master_link_status"] == "up",
            what="the replica to sync",
        )
        quorum = count // 2 + 1
        sentinels = []
        for _ in range(count):
            sentinel = Sentinel(master.port, quorum)
            stack.callback(sentinel.close)
            sentinels.append(sentinel)

        def ready() -> bool:
            for sentinel in sentinels:
                replicas = sentinel.command("SENTINEL", "REPLICAS", MASTER_NAME)
                # Listed is not enough: a replica the Sentinel has not reached yet ("slave,
                # disconnected", link status "err") cannot be promoted (NOGOODSLAVE).
                if not replicas or not all(_promotable(r) for r in replicas):
                    return False
                others = sentinel.command("SENTINEL", "SENTINELS", MASTER_NAME)
                if len(others) != count - 1:
                    return False
            return True

        wait_for(ready, what="the sentinels to see the replica and each other")
        yield SentinelSetup(master, replica, sentinels)


def _promotable(replica: dict[bytes, bytes]) -> bool:
    flags = replica.get(b"flags", b"").split(b",")
    return b"disconnected" not in flags and replica.get(b"master-link-status") == b"ok"


class RedisCluster:
    def __init__(self, nodes: list[RedisServer]) -> None:
        self.nodes = nodes

    @property
    def addresses(self) -> list[str]:
        return [f"redis://127.0.0.1:{node.port}" for node in self.nodes]

    def elapse(self, prefix: str, seconds: float) -> None:
        """tests/redis_server.py's `elapse` on every master (each holds its slots' keys)."""
        for node in self.nodes:
            node.elapse(prefix, seconds)


@contextmanager
def running_cluster(masters: int = 3) -> Iterator[RedisCluster]:
    """`masters` cluster-enabled servers joined by `redis-cli --cluster create`, no replicas."""
    cli = shutil.which("redis-cli")
    if cli is None:
        pytest.fail("redis-cli is not installed (apt-get install -y redis-server)")
    with ExitStack() as stack:
        nodes = []
        for _ in range(masters):
            # The cluster bus port is the port + 10000 unless given: beyond 65535 for a high
            # free port, so it gets a free port of its own.
            bus = str(free_port())
            node = RedisServer("--cluster-enabled", "yes", "--cluster-port", bus,
                               "--cluster-node-timeout", "5000")  # fmt: skip
            stack.callback(node.close)
            nodes.append(node)
        create = [cli, "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in nodes)]
        subprocess.run([*create, "--cluster-yes"], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=60)  # fmt: skip

        def ok() -> bool:
            return all(b"cluster_state:ok" in node.command("CLUSTER", "INFO") for node in nodes)

        wait_for(ok, what="the cluster to be ok")
        yield RedisCluster(nodes)
