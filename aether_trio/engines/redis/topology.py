"""How one shard of the Redis engine finds its server: a fixed address, the master a Sentinel
names, or a Redis Cluster (docs/redis.md).

A topology answers three questions for `RedisClient` and `PubSub`, on the asyncio side of the
bridge: where commands go now (`locate`, asked again at the start of every PUB/SUB session and at
every probe, so a Sentinel failover is noticed within `probe_interval` even when no
`+switch-master` event reached us: centrifuge re-checks its Sentinel topology periodically for
that reason), which client sends them (`new_client`), and where the PUB/SUB connection goes
(`pubsub_address`). `name` is for logs and `/ready`: host and port, never credentials.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.crc import key_slot

from ...config.sections import RedisEngineConfig

__all__ = [
    "ClusterTopology",
    "SentinelTopology",
    "Topology",
    "public_name",
    "topologies",
    "with_host",
]

MAX_CONNECTIONS = 32
RedisLike = aredis.Redis | RedisCluster


def public_name(address: str) -> str:
    """`host:port` (or the socket path) of a Redis URL: what logs and `/ready` may show."""
    parts = urlsplit(address)
    if parts.scheme == "unix":
        return parts.path
    return f"{parts.hostname}:{parts.port or 6379}"


def with_host(address: str, host: str, port: int) -> str:
    """`address` (scheme, credentials, db) pointed at another server."""
    parts = urlsplit(address)
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@{host}:{port}" if userinfo else f"{host}:{port}"
    return urlunsplit(parts._replace(netloc=netloc))


def _no_retry() -> Retry:
    # No retries inside redis-py: a failure is reported at once and retried, if at all, by
    # whoever asked (a client resubscribes, the PUB/SUB supervisor reconnects).
    return Retry(NoBackoff(), 0)


class Topology:
    """One server at a fixed address; the base of the others."""

    cluster = False
    # Whether `locate` can give another answer later (then it is asked at every probe).
    moves = False

    def __init__(self, config: RedisEngineConfig, address: str) -> None:
        self.config = config
        self.address = address
        self.name = public_name(address)

    async def locate(self) -> str:
        """asyncio side: the address commands go to now."""
        return self.address

    def new_client(self, address: str) -> RedisLike:
        cfg = self.config
        pool = aredis.BlockingConnectionPool.from_url(
            address,
            # Without pipelining every concurrent call holds a connection of its own: callers
            # beyond these wait for one (within their io_timeout) instead of failing.
            max_connections=MAX_CONNECTIONS,
            timeout=cfg.io_timeout,
            socket_timeout=cfg.io_timeout,
            socket_connect_timeout=cfg.connect_timeout,
            retry=_no_retry(),
            client_name="aether",
            protocol=2,
        )
        return aredis.Redis(connection_pool=pool)

    async def close_client(self, client: RedisLike) -> None:
        """asyncio side: close a client of `new_client` with its connections."""
        if isinstance(client, aredis.Redis):
            await client.aclose(close_connection_pool=True)
        else:
            await client.aclose()

    def pubsub_address(self, located: str, session: int) -> str:
        """Where the PUB/SUB connection of session number `session` goes."""
        return located

    async def aclose(self) -> None:
        """asyncio side: close what `locate` opened."""


class SentinelTopology(Topology):
    """The master that `sentinel_master_name` names, asked of the Sentinels; `address` gives the
    scheme, credentials and db of the connections to it."""

    moves = True

    def __init__(self, config: RedisEngineConfig) -> None:
        super().__init__(config, config.address)
        self.name = f"sentinel master {config.sentinel_master_name}"
        self._sentinel: Sentinel | None = None

    async def locate(self) -> str:
        cfg = self.config
        if self._sentinel is None:
            sentinels = [(host, int(port)) for host, _, port in
                         (item.rpartition(":") for item in cfg.sentinel_addresses)]  # fmt: skip
            options: dict[str, Any] = {
                "socket_timeout": cfg.io_timeout,
                "socket_connect_timeout": cfg.connect_timeout,
                "retry": _no_retry(),
                "protocol": 2,
            }
            if cfg.sentinel_password:
                options["password"] = cfg.sentinel_password
            self._sentinel = Sentinel(sentinels, sentinel_kwargs=options)
        # MasterNotFoundError (a RedisError) while no Sentinel names a healthy master: the
        # caller treats it like any other failure to reach Redis.
        host, port = await self._sentinel.discover_master(cfg.sentinel_master_name)
        return with_host(cfg.address, host, int(port))

    async def aclose(self) -> None:
        if self._sentinel is not None:
            for sentinel in self._sentinel.sentinels:
                await sentinel.aclose()
            self._sentinel = None


class ClusterTopology(Topology):
    """A Redis Cluster: redis-py's `RedisCluster` routes each command to its slot's master (the
    channel is the hash tag of every key of a channel, scripts.py). PUB/SUB uses plain PUBLISH,
    which a cluster delivers on every node, so the PUB/SUB connection may go to any node: each
    session takes the next configured address."""

    cluster = True

    def __init__(self, config: RedisEngineConfig) -> None:
        super().__init__(config, config.cluster_addresses[0])
        self.name = f"cluster {','.join(public_name(a) for a in config.cluster_addresses)}"

    def new_client(self, address: str) -> RedisLike:
        cfg = self.config
        first = urlsplit(address)
        nodes = [ClusterNode(parts.hostname or "127.0.0.1", parts.port or 6379)
                 for parts in map(urlsplit, cfg.cluster_addresses)]  # fmt: skip
        return RedisCluster(
            startup_nodes=nodes,
            username=first.username,
            password=first.password,
            ssl=first.scheme == "rediss",
            max_connections=MAX_CONNECTIONS,
            socket_timeout=cfg.io_timeout,
            socket_connect_timeout=cfg.connect_timeout,
            retry=_no_retry(),
            client_name="aether",
            protocol=2,
        )

    def pubsub_address(self, located: str, session: int) -> str:
        addresses = self.config.cluster_addresses
        return addresses[session % len(addresses)]

    async def probe_routes(self, client: RedisLike) -> list[str]:
        """asyncio side: a key on each master, from the client's slot map."""
        assert isinstance(client, RedisCluster)
        await client.initialize()  # at once unless the map is missing or stale
        first: dict[str, int] = {}
        for slot, nodes in client.nodes_manager.slots_cache.items():
            first.setdefault(nodes[0].name, slot)  # nodes[0]: the slot's master
        return [f"{self.config.prefix}.probe.{{{_tag(slot)}}}" for slot in first.values()]


_TAGS: dict[int, str] = {}


def _tag(slot: int) -> str:
    """A hash tag of `slot` (found by trying numbers: about 16k CRC16s once per slot)."""
    if slot not in _TAGS:
        n = 0
        while key_slot(str(n).encode()) != slot:
            n += 1
        _TAGS[slot] = str(n)
    return _TAGS[slot]


def topologies(config: RedisEngineConfig) -> list[Topology]:
    """One topology per shard."""
    if config.sentinel_addresses:
        return [SentinelTopology(config)]
    if config.cluster_addresses:
        return [ClusterTopology(config)]
    return [Topology(config, address) for address in config.addresses or (config.address,)]
