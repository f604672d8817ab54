"""Three Aether nodes sharing one Redis: publications, presence, the server API and the operator
commands work against any node and reach the clients of every node; the per-user connection
limit, bans and revocations hold across nodes; a node that falls silent leaves `info`; garbage
on the control channel changes nothing; a client moved to another node recovers without loss.

Real servers in the test's Trio run (each with its own data directory), raw protocol clients,
httpx for the HTTP APIs, the session's redis-server with a prefix per test. Real time: the
waits are generous bounds, what is asserted is the outcome (the times are printed, not asserted
beyond "within a few seconds").
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from conftest import RawClient, close_reason, make_config, open_raw, serve_in, token, ws_url
from ops_helpers import free_base_port
from redis_server import RedisServer, new_prefix
from test_workers import WAIT, Parent, config_text
from trio_websocket import ConnectionClosed

from aether_trio.app import Server
from aether_trio.protocol.errors import DisconnectError

ADMIN = "admin-key-0123456789abcdef"
WITHIN = 5.0  # "a second or two", with room for a loaded machine

CLUSTER = {"heartbeat_interval": 0.2, "node_expire": 1.0, "survey_timeout": 2.0,
           "state_resync_interval": 0.5}  # fmt: skip


def node_config(redis: RedisServer, prefix: str, name: str, data: Path, **extra: Any) -> Any:
    return make_config({
        "server": {"node_name": name},
        "admin": {"data_dir": str(data / name)},
        "api": {"keys": [{"name": "ops", "key": ADMIN, "roles": ["admin"]}]},
        "engine": {"type": "redis", "redis": {"address": redis.address, "prefix": prefix,
                                              "io_timeout": 2.0, "probe_interval": 0.2}},
        "cluster": CLUSTER,
        **extra,
    })  # fmt: skip


@asynccontextmanager
async def three_nodes(
    redis: RedisServer, data: Path, **extra: Any
) -> AsyncIterator[tuple[trio.Nursery, list[Server]]]:
    prefix = new_prefix()
    async with trio.open_nursery() as nursery:
        nodes = [
            await serve_in(nursery, node_config(redis, prefix, name, data, **extra))
            for name in ("a", "b", "c")
        ]
        # Every node knows the two others (a heartbeat and a hello back).
        await until(lambda: all(len(n.node.cluster.nodes()) == 3 for n in nodes))
        yield nursery, nodes
        nursery.cancel_scope.cancel()


async def until(condition: Callable[[], bool], limit: float = 10.0) -> None:
    with trio.fail_after(limit):
        while not condition():  # noqa: ASYNC110  (no event for it: poll with a deadline)
            await trio.sleep(0.01)


async def api(server: Server, method: str, body: dict[str, Any]) -> dict[str, Any]:
    """A server API call; its `result` (an `error` fails the test)."""
    answer = await http(server, f"/api/{method}", body)
    assert "result" in answer, answer
    result: dict[str, Any] = answer["result"]
    return result


async def admin(server: Server, command: str, body: dict[str, Any]) -> dict[str, Any]:
    return await http(server, f"/api/admin/{command}", body)


async def http(server: Server, path: str, body: dict[str, Any]) -> dict[str, Any]:
    url = f"http://127.0.0.1:{server.http_port}"
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        response = await client.post(path, json=body, headers={"X-API-Key": ADMIN})
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


async def connected(client: RawClient, user: str, **claims: Any) -> str:
    reply = await client.connect(token(user, **claims))
    assert "connect" in reply, reply
    client_id: str = reply["connect"]["client"]
    return client_id


async def subscribe(client: RawClient, channel: str, **body: Any) -> dict[str, Any]:
    reply = await client.command("subscribe", {"channel": channel, **body})
    assert "subscribe" in reply, reply
    result: dict[str, Any] = reply["subscribe"]
    return result


async def push_of(client: RawClient, kind: str, limit: float = 10.0) -> dict[str, Any]:
    """The next push of `kind` (pub, subscribe, unsubscribe, ...), skipping others."""
    with trio.fail_after(limit):
        while True:
            push = (await client.receive()).get("push", {})
            if kind in push:
                found: dict[str, Any] = push
                return found


async def closed_with(client: RawClient, limit: float = WITHIN) -> tuple[int, float]:
    """The close code the server sends, and how long it took."""
    started = time.monotonic()
    with trio.fail_after(limit), pytest.raises(ConnectionClosed) as closed:
        await client.read_until_closed()
    return close_reason(closed.value).code, time.monotonic() - started


async def refused_with(server: Server, user: str, **claims: Any) -> int:
    async with open_raw(ws_url(server)) as client:
        with trio.fail_after(10), pytest.raises(ConnectionClosed) as closed:
            await client.send_then_read_until_closed({"id": 1, "connect": {
                "token": token(user, **claims)}})  # fmt: skip
        return close_reason(closed.value).code


def admitted(server: Server, user: str) -> bool:
    """Whether the node's bans and revocations let `user` connect."""
    try:
        server.node.access.check(user, "", None)
    except DisconnectError:
        return False
    return True


# --- publications, presence, info, channels -----------------------------------------------------


async def test_three_nodes_share_publications_in_order_presence_info_and_channels(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    async with (
        three_nodes(redis_server, tmp_path) as (_nursery, (a, b, c)),
        open_raw(ws_url(a)) as on_a,
        open_raw(ws_url(b)) as on_b,
        open_raw(ws_url(c)) as on_c,
    ):
        for client, user in ((on_a, "alice"), (on_b, "bob"), (on_c, "carol")):
            await connected(client, user)
            await subscribe(client, "news", recoverable=True)
        await subscribe(on_b, "sport")

        for n in range(30):
            await on_a.command("publish", {"channel": "news", "data": {"n": n}})
        for client in (on_b, on_c):
            got = [(await push_of(client, "pub"))["pub"] for _ in range(30)]
            assert [p["data"]["n"] for p in got] == list(range(30))
            assert [p["offset"] for p in got] == list(range(1, 31))

        reply = await on_c.command("presence_stats", {"channel": "news"})
        assert reply["presence_stats"] == {"num_clients": 3, "num_users": 3}

        # `info` on any node lists the three, with their own counts.
        for server in (a, b, c):
            nodes = (await api(server, "info", {}))["nodes"]
            assert sorted(n["name"] for n in nodes) == ["a", "b", "c"]
            assert len({n["uid"] for n in nodes}) == 3
            by_name = {n["name"]: n for n in nodes}
            assert by_name["b"]["num_clients"] == 1
            assert by_name["b"]["num_subs"] == b.node.hub_statistics().subscriptions >= 1
        # `channels` counts every node's subscribers (the system channel is off by default).
        channels = (await api(c, "channels", {}))["channels"]
        assert channels == {"news": {"num_clients": 3}, "sport": {"num_clients": 1}}
        channels = (await api(a, "channels", {"pattern": "sp*"}))["channels"]
        assert channels == {"sport": {"num_clients": 1}}


# --- the server API against any node ------------------------------------------------------------


async def test_the_server_api_on_one_node_acts_on_a_client_of_another(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    async with three_nodes(redis_server, tmp_path) as (_nursery, (a, b, c)):
        async with open_raw(ws_url(b)) as on_b:
            await connected(on_b, "dave")
            await subscribe(on_b, "room")
            await api(a, "unsubscribe", {"user": "dave", "channel": "room"})
            push = await push_of(on_b, "unsubscribe", WITHIN)
            assert push["channel"] == "room"
            await api(c, "subscribe", {"user": "dave", "channel": "extra"})
            push = await push_of(on_b, "subscribe", WITHIN)
            assert push["channel"] == "extra"
            assert "extra" in (await api(b, "channels", {}))["channels"]
            # `connections` on any node lists the user's connections on every node.
            async with open_raw(ws_url(c)) as on_c:
                await connected(on_c, "dave")
                listed = (await api(a, "connections", {"user": "dave"}))["connections"]
                assert len(listed) == 2
                assert {entry["user"] for entry in listed.values()} == {"dave"}
                channels = sorted(sorted(e["state"]["channels"]) for e in listed.values())
                assert channels == [[], ["extra"]]  # on c: none; on b: "room" left, "extra" added
            await api(a, "refresh", {"user": "dave", "expire_at": int(time.time()) + 600})
            push = await push_of(on_b, "refresh", WITHIN)
            assert push["refresh"]["expires"] is True
            started = time.monotonic()
            await api(a, "disconnect", {"user": "dave"})
            code, _ = await closed_with(on_b)
            assert code == 3503
            print(f"\nserver API disconnect via node a reached node b in "
                  f"{(time.monotonic() - started) * 1000:.1f} ms")  # fmt: skip
        # A request the node refuses is refused before it is broadcast: nothing happens anywhere.
        answer = await http(a, "/api/disconnect", {"user": "dave", "disconnect": {"code": 17}})
        assert answer["error"]["code"] == 107


# --- cluster-wide state -------------------------------------------------------------------------


async def test_a_users_connection_limit_holds_across_nodes(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    limits = {"limits": {"connection_limit_per_user": 2}}
    async with (
        three_nodes(redis_server, tmp_path, **limits) as (_nursery, (a, b, c)),
        open_raw(ws_url(a)) as first,
    ):
        await connected(first, "erin")
        async with open_raw(ws_url(b)) as second:
            await connected(second, "erin")
            assert await refused_with(c, "erin") == 3504
            assert await refused_with(a, "erin") == 3504
        # The connection on b is gone: c admits erin again (the count is updated behind the
        # close, so the test waits for it).
        with trio.fail_after(10):
            while True:
                async with open_raw(ws_url(c)) as third:
                    reply = await third.connect(token("erin"))
                if "connect" in reply:
                    break
                await trio.sleep(0.05)


async def test_a_ban_or_revocation_on_one_node_closes_the_users_clients_on_the_others(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    async with three_nodes(redis_server, tmp_path) as (_nursery, (a, b, c)):
        async with open_raw(ws_url(c)) as on_c, open_raw(ws_url(b)) as on_b:
            await connected(on_c, "frank")
            await connected(on_b, "frank")
            started = time.monotonic()
            result = await admin(a, "ban", {"user": "frank", "reason": "spam"})
            assert result["disconnected"] == 0  # none on a itself
            code_c, _ = await closed_with(on_c)
            code_b, _ = await closed_with(on_b)
            took = time.monotonic() - started
            assert (code_c, code_b) == (3507, 3507)
            print(f"\nban via node a closed the clients on b and c in {took * 1000:.1f} ms")
        assert await refused_with(b, "frank") == 3507
        assert await refused_with(c, "frank") == 3507
        assert [ban["user"] for ban in (await admin(c, "bans", {}))["bans"]] == ["frank"]
        await admin(b, "unban", {"user": "frank"})
        await until(lambda: admitted(c, "frank"), WITHIN)

        async with open_raw(ws_url(c)) as on_c:
            await connected(on_c, "grace", jti="token-1")
            started = time.monotonic()
            await admin(a, "revoke_token", {"jti": "token-1"})
            code, _ = await closed_with(on_c)
            assert code == 3500
            print(f"revocation via node a closed the client on c in "
                  f"{(time.monotonic() - started) * 1000:.1f} ms")  # fmt: skip
        assert await refused_with(b, "grace", jti="token-1") == 3500

        issued = int(time.time()) - 10
        async with open_raw(ws_url(b)) as on_b:
            await connected(on_b, "heidi", iat=issued)
            await admin(c, "invalidate_user_tokens", {"user": "heidi"})
            code, _ = await closed_with(on_b)
            assert code == 3500


async def test_a_node_that_missed_a_ban_catches_up_at_its_resync(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    async with (
        three_nodes(redis_server, tmp_path) as (_nursery, (a, _b, c)),
        open_raw(ws_url(c)) as on_c,
    ):
        if True:
            await connected(on_c, "ivan")
            # Node c does not hear the control message (as if its PUB/SUB connection were down
            # at that moment); its resync finds the ban in Redis.
            del c.node.cluster.commands["access"]
            await admin(a, "ban", {"user": "ivan"})
            code, _ = await closed_with(on_c)
            assert code == 3507


# --- nodes that stop, bad input -----------------------------------------------------------------


async def test_a_node_that_falls_silent_leaves_info_and_a_stopped_one_leaves_at_once(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    async with three_nodes(redis_server, tmp_path) as (nursery, (a, b, c)):

        async def names(server: Server) -> list[str]:
            return sorted(n["name"] for n in (await api(server, "info", {}))["nodes"])

        # c hangs: it stops heartbeating (and answers no survey).
        c.node.cluster.heartbeat_interval = 3600
        c.node.cluster.surveys.clear()
        with trio.fail_after(10):
            while await names(a) != ["a", "b"]:  # noqa: ASYNC110  (polling the API)
                await trio.sleep(0.1)
        assert await names(b) == ["a", "b"]
        # b shuts down gracefully: it says goodbye, and is dropped without waiting for expiry.
        await b.shutdown()
        with trio.fail_after(WITHIN):
            while await names(a) != ["a"]:  # noqa: ASYNC110  (polling the API)
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()


async def test_garbage_on_the_control_channel_is_ignored(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    async with three_nodes(redis_server, tmp_path) as (_nursery, (a, b, c)):
        prefix = a.config.engine.redis.prefix
        sender = b"f" * 32
        junk = [
            b"junk",
            sender + b"|not json",
            sender + b'|{"k": "cmd", "m": "api.disconnect", "b": {"user": 5}}',
            sender + b'|{"k": "cmd", "m": "access", "b": {"t": "bans", "k": "x", "v": 3}}',
            sender + b'|{"k": "cmd", "m": "access", "b": {"t": "bans", "k": "x", "v": {}}}'[:-2],
            sender + b'|{"k": "sreq", "id": "1", "op": "info", "b": {}}',  # answered, harmless
            sender + b'|{"k": "node", "i": {"name": 7, "num_clients": "many"}}',
        ]
        for message in junk:
            await trio.to_thread.run_sync(redis_server.command, "PUBLISH", f"{prefix}.control",
                                          message)  # fmt: skip
            direct = f"{prefix}.node.{a.node.cluster.node_id}"
            await trio.to_thread.run_sync(redis_server.command, "PUBLISH", direct, message)
        # Everything still works: info lists the three (and a node that sent nonsense info
        # only with what is well-formed of it), publications go from node to node.
        nodes = (await api(a, "info", {}))["nodes"]
        assert {"a", "b", "c"} <= {n["name"] for n in nodes}
        for entry in nodes:
            assert all(isinstance(entry[k], int) for k in ("num_clients", "num_subs", "uptime"))
        assert a.node.cluster.rejected >= 2
        async with open_raw(ws_url(c)) as on_c, open_raw(ws_url(b)) as on_b:
            await connected(on_c, "judy")
            await subscribe(on_c, "news")
            await connected(on_b, "ken")
            await on_b.command("publish", {"channel": "news", "data": {"ok": True}})
            assert (await push_of(on_c, "pub"))["pub"]["data"] == {"ok": True}
        assert admitted(a, "x")  # no "ban" of x was applied


# --- a client moved to another node -------------------------------------------------------------


async def test_a_client_moved_to_another_node_recovers_without_loss(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    total = 100
    async with three_nodes(redis_server, tmp_path) as (nursery, (a, b, c)):
        published = trio.Event()

        async def publisher() -> None:
            url = f"http://127.0.0.1:{c.http_port}"
            async with httpx.AsyncClient(base_url=url, timeout=10) as client:
                for n in range(total):
                    body = {"channel": "feed", "data": {"n": n}}
                    response = await client.post("/api/publish", json=body,
                                                 headers={"X-API-Key": ADMIN})  # fmt: skip
                    assert "result" in response.json(), response.text
                    await trio.sleep(0.005)
            published.set()

        seen: list[int] = []
        async with open_raw(ws_url(a)) as on_a:
            await connected(on_a, "lena")
            first = await subscribe(on_a, "feed", recoverable=True)
            nursery.start_soon(publisher)
            for _ in range(30):
                seen.append((await push_of(on_a, "pub"))["pub"]["offset"])
        # Lena's connection to a is gone (a moved her away); she reconnects to b.
        async with open_raw(ws_url(b)) as on_b:
            await connected(on_b, "lena")
            result = await subscribe(on_b, "feed", recover=True, offset=seen[-1],
                                     epoch=first["epoch"])  # fmt: skip
            assert result["recovered"] is True
            seen += [p["offset"] for p in result.get("publications", [])]
            with trio.fail_after(30):
                while len(seen) < total:
                    seen.append((await push_of(on_b, "pub"))["pub"]["offset"])
            await published.wait()
        # Every offset once, in order: nothing lost, nothing twice.
        assert seen == list(range(1, total + 1))


# --- real processes: `aether serve` with workers = 2 --------------------------------------------


async def test_two_worker_processes_are_two_nodes_of_one_cluster(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    base = free_base_port(3)
    port, http_port = base + 3, base  # the workers' internal ports: http_port + 1, + 2
    config = tmp_path / "aether.toml"
    config.write_text(
        config_text(port, http_port, redis_server, node_name="w")
        + f'[[api.keys]]\nname = "ops"\nkey = "{ADMIN}"\nroles = ["admin"]\n'
        + "[cluster]\nheartbeat_interval = 0.2\nnode_expire = 2.0\n"
        # Worker K's bans in <data_dir>/K: this test's own, not the working directory's.
        + f"[admin]\ndata_dir = {json.dumps(str(tmp_path / 'data'))}\n"
    )
    workers = Parent(config, port, http_port)
    try:
        await trio.to_thread.run_sync(workers.wait_listening)
        url = f"ws://127.0.0.1:{port}/connection/websocket"
        async with (
            open_raw(url) as one,
            open_raw(url) as two,
            open_raw(url) as three,
            open_raw(url) as four,
        ):
            clients = [one, two, three, four]
            for client in clients:
                await connected(client, "olga")
            # Either worker's API sees both workers and every connection, wherever it landed.
            for k in (1, 2):
                api_url = f"http://127.0.0.1:{http_port + k}"
                with trio.fail_after(WAIT):
                    while True:
                        nodes = (await post(api_url, "/api/info", {}))["result"]["nodes"]
                        if len(nodes) == 2 and sum(n["num_clients"] for n in nodes) == 4:
                            break
                        await trio.sleep(0.1)
                assert sorted(n["name"] for n in nodes) == ["w-1", "w-2"]
            # A ban through worker 1 closes olga's connections on both workers.
            await post(f"http://127.0.0.1:{http_port + 1}", "/api/admin/ban", {"user": "olga"})
            for client in clients:
                code, _ = await closed_with(client, WAIT)
                assert code == 3507
    finally:
        await trio.to_thread.run_sync(workers.kill_all)


async def post(url: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        response = await client.post(path, json=body, headers={"X-API-Key": ADMIN})
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer
