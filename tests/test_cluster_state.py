"""Cluster-wide state on the memory twins: bans, revocations and cut-offs travelling between two
nodes' `AccessState`s, what a node does with bad changes from another node or bad entries in the
shared tables, an engine that fails, and the server API's cluster handlers fed nonsense. The same
paths over Redis with three real nodes: tests/test_redis_nodes.py.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import trio
from conftest import make_config, serve_in

from aether_trio.admin.cluster import ClusterAccess
from aether_trio.admin.state import AccessState
from aether_trio.admin.store import Store
from aether_trio.config import ConfigError, parse_config
from aether_trio.engines.base import EngineError
from aether_trio.engines.control import MemoryControl, MemoryControlBus, MemorySharedState
from aether_trio.engines.memory import MemoryBroker, MemoryPresenceManager
from aether_trio.http.api import cluster as api_cluster
from aether_trio.http.api.routes import ServerApi
from aether_trio.http.apiauth import ApiAuth
from aether_trio.node import Node

ADMIN = "admin-key-0123456789abcdef"


class FailingShared(MemorySharedState):
    """A shared state whose engine is down (`fail` set) for the chosen operations."""

    def __init__(self) -> None:
        super().__init__()
        self.fail: set[str] = set()

    def _check(self, what: str) -> None:
        if what in self.fail:
            raise EngineError("redis is unreachable")

    async def put(self, table: str, key: str, value: bytes) -> None:
        self._check("put")
        await super().put(table, key, value)

    async def load(self, table: str) -> dict[str, bytes]:
        self._check("load")
        return await super().load(table)

    async def remove_connection(self, user: str, client_id: str) -> None:
        self._check("remove")
        await super().remove_connection(user, client_id)

    async def refresh_connections(self, entries: list[tuple[str, str]], ttl: float) -> None:
        self._check("refresh")
        await super().refresh_connections(entries, ttl)


@attrs.define
class Member:
    node: Node[Any]
    state: AccessState
    access: ClusterAccess


@asynccontextmanager
async def two_nodes(
    tmp_path: Path, shared: MemorySharedState, resync: float = 3600.0
) -> AsyncIterator[list[Member]]:
    """Two nodes on one bus; by default no resync within the test: what arrives came by a
    control message."""
    bus = MemoryControlBus()
    config = make_config({"cluster": {"state_resync_interval": resync}})
    members = []
    async with trio.open_nursery() as nursery:
        for name in ("a", "b"):
            node: Node[Any] = Node(config, MemoryBroker(), MemoryPresenceManager(), bus.plane(),
                                   shared)  # fmt: skip
            store = await Store.open(tmp_path / name)
            state = AccessState(store, shared=shared, cluster=node.cluster)
            await state.load()
            access = ClusterAccess(node, state)
            await nursery.start(node.cluster.run)
            await nursery.start(access.run)
            members.append(Member(node, state, access))
        yield members
        nursery.cancel_scope.cancel()


async def until(condition: Callable[[], bool]) -> None:
    with trio.fail_after(30):
        while not condition():  # noqa: ASYNC110  (no event for it: poll with a deadline)
            await trio.sleep(0.01)


async def test_access_changes_reach_the_other_node_and_its_store(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    shared = MemorySharedState()
    async with two_nodes(tmp_path, shared) as (a, b):
        await a.state.ban("mallory", None, "spam")
        await a.state.revoke("jti-1", time.time() + 3600)
        await a.state.set_cutoff("trent", 1000)
        await until(lambda: b.state.ban_of("mallory") is not None and b.state.is_revoked("jti-1")
                    and b.state.cutoff("trent") == 1000)  # fmt: skip
        assert await b.state.unban("mallory") is True
        await until(lambda: a.state.ban_of("mallory") is None)
        assert await shared.load("bans") == {}
    # b wrote what it learnt to its own store: a restart of b alone keeps it.
    store = await Store.open(tmp_path / "b")
    again = AccessState(store)
    await again.load()
    assert again.is_revoked("jti-1")
    assert again.cutoff("trent") == 1000
    assert again.ban_of("mallory") is None
    await store.aclose()


async def test_a_node_uploads_what_only_it_knows_and_resyncs_from_the_shared_tables(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO")
    store = await Store.open(tmp_path / "old")
    old = AccessState(store)
    await old.ban("oscar", None, "from before the cluster")
    await old.set_cutoff("peggy", 5)
    await store.aclose()
    shared = MemorySharedState()
    await shared.put("cutoffs", "peggy", b'{"before": 7}')  # known already: not uploaded
    # Garbage and expired entries in the shared tables (another version, a hand edit).
    await shared.put("bans", "junk", b"not json")
    await shared.put("bans", "list", b"[1]")
    await shared.put("bans", "bad-expiry", b'{"expire_at": "soon"}')
    await shared.put("bans", "bad-reason", b'{"expire_at": null, "reason": 5}')
    await shared.put("cutoffs", "bad", b'{"before": true}')
    await shared.put("revoked", "old-jti", b'{"expire_at": 1.0}')
    await shared.put("revoked", "new-jti", b'{"expire_at": null}')
    store = await Store.open(tmp_path / "old")
    state = AccessState(store, shared=shared)
    await state.load()
    node: Node[Any] = Node(make_config({"cluster": {"state_resync_interval": 1.0}}),
                           MemoryBroker(), MemoryPresenceManager())  # fmt: skip
    access = ClusterAccess(node, state)
    async with trio.open_nursery() as nursery:
        await nursery.start(access.run)
        assert "1 access entries of this node added" in caplog.text
        assert state.cutoff("peggy") == 7  # the cluster's wins
        assert state.is_revoked("new-jti")
        assert not state.is_revoked("old-jti")
        assert "old-jti" not in await shared.load("revoked")  # expired: deleted
        assert [ban.user for ban in state.bans()] == ["oscar"]
        # A cut-off set elsewhere (and its message missed) is found at the next resync.
        await shared.put("cutoffs", "victor", b'{"before": 99}')
        await until(lambda: state.cutoff("victor") == 99)
        await trio.sleep(5)  # more resyncs: the bad entries were logged once each
        assert caplog.text.count("ignored a shared") == 5
        nursery.cancel_scope.cancel()
    await store.aclose()


async def test_bad_changes_from_another_node_are_ignored(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    async with two_nodes(tmp_path, MemorySharedState()) as (a, b):
        for body in (
            {"t": "nope", "k": "x", "v": None},
            {"t": "bans", "k": 5, "v": None},
            {"t": "bans", "k": "x", "v": 3},
            {"t": "bans", "k": "x", "v": {"expire_at": "soon"}},
            {"t": "revoked", "k": "x", "v": None},
            {"t": "cutoffs", "k": "x", "v": {"before": "x"}},
        ):
            await a.node.cluster.broadcast("access", body)
        await a.state.ban("last", None, "")  # in order after the bad ones
        await until(lambda: b.state.ban_of("last") is not None)
        assert [ban.user for ban in b.state.bans()] == ["last"]
        assert caplog.text.count("ignored an access change") == 6


async def test_an_engine_that_fails_changes_nothing_and_a_failed_resync_is_logged(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    shared = FailingShared()
    async with two_nodes(tmp_path, shared) as (a, _b):
        shared.fail = {"put"}
        with pytest.raises(EngineError):
            await a.state.ban("wendy", None, "")
        assert a.state.ban_of("wendy") is None
        shared.fail = {"load"}
        await a.access.resync()
        assert "re-reading the shared access state failed" in caplog.text
    shared.fail = {"load"}
    store = await Store.open(tmp_path / "c")
    node: Node[Any] = Node(make_config(), MemoryBroker(), MemoryPresenceManager())
    async with trio.open_nursery() as nursery:
        await nursery.start(ClusterAccess(node, AccessState(store, shared=shared)).run)
        nursery.cancel_scope.cancel()
    await store.aclose()
    assert "adding this node's access entries to the shared state failed" in caplog.text


async def test_an_operator_command_gets_503_when_the_shared_state_is_down(tmp_path: Path) -> None:
    config = make_config({
        "admin": {"data_dir": str(tmp_path)},
        "api": {"keys": [{"name": "ops", "key": ADMIN, "roles": ["admin"]}]},
    })  # fmt: skip
    async with trio.open_nursery() as nursery:
        server = await serve_in(nursery, config)
        assert server.admin.state is not None
        failing = FailingShared()
        failing.fail = {"put"}
        server.admin.state._shared = failing
        url = f"http://127.0.0.1:{server.http_port}"
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            response = await client.post("/api/admin/ban", json={"user": "zed"},
                                         headers={"X-API-Key": ADMIN})  # fmt: skip
            assert response.status_code == 503
            assert "nothing changed" in response.json()["error"]
            response = await client.get("/api/admin/bans", headers={"X-API-Key": ADMIN})
            assert response.json() == {"bans": []}
        nursery.cancel_scope.cancel()


# --- connections counted across nodes -----------------------------------------------------------


@attrs.define
class Conn:
    client_id: str
    user: str


async def test_counted_connections_survive_a_failing_engine(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    shared = FailingShared()
    config = make_config({"limits": {"connection_limit_per_user": 1},
                          "cluster": {"connection_ttl": 3.0}})  # fmt: skip
    node: Node[Any] = Node(config, MemoryBroker(), MemoryPresenceManager(), shared=shared)
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        await node.count_connection("una", "c1")
        await node.count_connection("", "anonymous")  # not counted
        shared.fail = {"refresh", "remove"}
        await trio.sleep(1.5)  # a renewal fails (logged), the entry stays until its TTL
        assert "renewing 1 counted connections failed" in caplog.text
        node.unregister(Conn("c1", "una"))
        await trio.sleep(0.1)
        assert "uncounting connection c1 failed" in caplog.text
        nursery.cancel_scope.cancel()


# --- the server API's cluster handlers ----------------------------------------------------------


async def test_the_api_cluster_handlers_refuse_nonsense(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO")
    node: Node[Any] = Node(make_config(), MemoryBroker(), MemoryPresenceManager())
    api = ServerApi(node, ApiAuth(lambda: ()))
    channels = node.cluster.surveys["channels"]
    assert await channels({"pattern": 5}) == {"error": "pattern must be a string"}
    assert "error" in await channels({"pattern": "[unclosed"})
    assert await channels({"pattern": "*"}) == {"channels": {}}
    disconnect = node.cluster.commands["api.disconnect"]
    await disconnect({"user": "u", "client": "", "session": "", "whitelist": [], "code": 17,
                      "reason": ""})  # fmt: skip
    assert "cluster disconnect refused here" in caplog.text
    await disconnect({"user": 5})
    assert "cluster disconnect that does not decode" in caplog.text
    assert api.context.node is node
    # Another node's `channels` reply is believed only where it is well-formed.
    counts = api_cluster._channel_counts(
        {"channels": {"a": {"num_clients": 2}, "b": {"num_clients": True}, "c": 3, "d": {}}}
    )
    assert counts == {"a": 2}
    assert api_cluster._channel_counts({"channels": []}) == {}


def test_node_expire_must_be_longer_than_the_heartbeat() -> None:
    with pytest.raises(ConfigError, match="node_expire"):
        parse_config({"cluster": {"heartbeat_interval": 5.0, "node_expire": 5.0}})


async def test_a_change_the_other_nodes_cannot_be_told_is_still_made(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    class Down(MemoryControl):
        async def broadcast(self, message: bytes) -> None:
            raise EngineError("redis is unreachable")

    node: Node[Any] = Node(make_config(), MemoryBroker(), MemoryPresenceManager(), Down())
    store = await Store.open(tmp_path)
    state = AccessState(store, shared=MemorySharedState(), cluster=node.cluster)
    await state.ban("xavier", None, "")
    assert state.ban_of("xavier") is not None  # the others find it at their resync
    assert "telling the other nodes about bans xavier failed" in caplog.text
    await store.aclose()


async def test_a_resync_that_read_before_a_change_does_not_undo_it(tmp_path: Path) -> None:
    class Slow(MemorySharedState):
        def __init__(self) -> None:
            super().__init__()
            self.reading = trio.Event()
            self.release = trio.Event()

        async def load(self, table: str) -> dict[str, bytes]:
            found = await super().load(table)  # read before the ban below...
            self.reading.set()
            await self.release.wait()  # ...and returned after it
            return found

    shared = Slow()
    store = await Store.open(tmp_path)
    state = AccessState(store, shared=shared)
    async with trio.open_nursery() as nursery:
        results: list[list[tuple[str, str]]] = []

        async def resync() -> None:
            results.append(await state.resync())

        nursery.start_soon(resync)
        await shared.reading.wait()
        await state.ban("yves", None, "")
        shared.release.set()
    assert results == [[]]
    assert state.ban_of("yves") is not None  # kept; the next resync reads it
    assert await state.resync() == []  # and it is not new then
    assert state.ban_of("yves") is not None
    await store.aclose()
