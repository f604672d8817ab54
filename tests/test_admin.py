"""Operator commands against a live server, each observed from the outside: real
centrifuge-python clients (asyncio, in a sync test with `asyncio.run`), HTTP calls with httpx and
the `aether admin` CLI as a subprocess. Every wait is bounded. At the end, without a server: every
command's parameters (unknown fields, wrong types, GET spellings) and the drain's pacing."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import time
import typing
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from types import NoneType
from typing import Any, cast

import attrs
import httpx
import orjson
import pytest
import trio
import trio.testing
from centrifuge import (
    Client,
    ClientState,
    ConnectingContext,
    DisconnectedContext,
    ReplyError,
    ServerPublicationContext,
    ServerSubscribedContext,
)
from conftest import RunningServer, make_config, running_server, token
from sdk_helpers import ClientRecorder, disconnect_all
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from aether_trio.admin import params
from aether_trio.admin.commands import COMMANDS
from aether_trio.admin.drain import Drain, DrainRunning
from aether_trio.connection.client import Client as ServerClient
from aether_trio.node import Node
from aether_trio.transport.listener import CONNECTION_TASK

ADMIN_KEY = "admin-key-for-tests"
PUBLISHER_KEY = "publisher-key-for-tests"
SYSTEM = "$aether.system"
WAIT = 5.0
SCENARIO_LIMIT = 40.0


def overrides(data_dir: Path, **extra: Any) -> dict[str, Any]:
    return {
        "api": {"keys": [
            {"name": "ops", "key": ADMIN_KEY, "roles": ["admin"]},
            {"name": "pub", "key": PUBLISHER_KEY, "roles": ["publisher", "reader"]},
        ]},
        "admin": {"data_dir": str(data_dir), "system_channel": SYSTEM},  # off by default
        **extra,
    }  # fmt: skip


# --- SDK clients ---


class Session:
    """SDK clients and an admin HTTP client for one scenario, all closed at its end."""

    def __init__(self, srv: RunningServer, http: httpx.AsyncClient) -> None:
        self.srv = srv
        self.http = http
        self.clients: list[Client] = []

    def new(self, tok: str, **kwargs: Any) -> tuple[Client, ClientRecorder]:
        rec = ClientRecorder()
        kwargs.setdefault("min_reconnect_delay", 0.05)
        kwargs.setdefault("max_reconnect_delay", 0.3)
        client = Client(self.srv.url, events=rec, token=tok, proxy=None, **kwargs)
        self.clients.append(client)
        return client, rec

    async def connected(self, tok: str, **kwargs: Any) -> tuple[Client, ClientRecorder]:
        client, rec = self.new(tok, **kwargs)
        await client.connect()
        await client.ready(timeout=WAIT)
        return client, rec

    async def refused(self, tok: str) -> tuple[int, str]:
        """Connect once with a bare WebSocket (the SDK retries reconnect codes silently): the
        close code and reason the server answers the connect command with."""
        async with ws_connect(self.srv.url) as ws:
            await ws.send(orjson.dumps({"id": 1, "connect": {"token": tok}}).decode())
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), WAIT)
        frame = closed.value.rcvd
        assert frame is not None
        return frame.code, frame.reason

    async def admin(self, command: str, body: Any = None, key: str = ADMIN_KEY) -> Any:
        response = await self.call("POST", command, body or {}, key)
        assert response.status_code == 200, response.text
        return response.json()

    async def call(self, method: str, command: str, body: Any, key: str | None) -> httpx.Response:
        headers = {"X-API-Key": key} if key else {}
        if method == "GET":
            return await self.http.get(command, params=body, headers=headers)
        return await self.http.request(method, command, json=body, headers=headers)

    async def on_server(self, fn: Callable[[Any], Any]) -> Any:
        return await asyncio.to_thread(self.srv.call, fn, self.srv.server.node)


@asynccontextmanager
async def session(srv: RunningServer) -> AsyncIterator[Session]:
    base = f"http://127.0.0.1:{srv.server.http_port}/api/admin/"
    async with httpx.AsyncClient(base_url=base, timeout=WAIT) as http:
        s = Session(srv, http)
        try:
            yield s
        finally:
            await disconnect_all(s.clients)


def run(tmp_path: Path, scenario: Callable[[Session], Awaitable[None]], **extra: Any) -> None:
    with running_server(make_config(overrides(tmp_path / "data", **extra))) as srv:

        async def main() -> None:
            async with asyncio.timeout(SCENARIO_LIMIT), session(srv) as s:
                await scenario(s)

        asyncio.run(main())


# --- system broadcast ---


def test_broadcast_arrives_at_every_connection_as_a_server_side_publication(
    tmp_path: Path,
) -> None:
    async def scenario(s: Session) -> None:
        alice, alice_rec = await s.connected(token("alice"))
        _bob, bob_rec = await s.connected(token("bob"))
        for rec in (alice_rec, bob_rec):
            subscribed: ServerSubscribedContext = (await rec.wait("subscribed"))[0]
            assert subscribed.channel == SYSTEM
            assert not subscribed.recoverable
        result = await s.admin("broadcast", {"data": {"text": "restart at 5"}})
        assert result == {"channel": SYSTEM, "recipients": 2}
        for rec in (alice_rec, bob_rec):
            pub: ServerPublicationContext = (await rec.wait("publication"))[0]
            assert (pub.channel, pub.pub.data) == (SYSTEM, {"text": "restart at 5"})
        # Clients cannot post system notices themselves, nor read presence or history there.
        for attempt in (alice.publish(SYSTEM, {"fake": 1}), alice.history(SYSTEM)):
            with pytest.raises(ReplyError) as refused:
                await attempt
            assert refused.value.code in (103, 108)
        # Only one subscription to the system channel per connection, whatever the token says.
        _carol, carol_rec = await s.connected(token("carol", channels=[SYSTEM, "news"]))
        await carol_rec.wait("subscribed", count=2)
        assert sorted(c.channel for c in carol_rec.of("subscribed")) == [SYSTEM, "news"]

    run(tmp_path, scenario)


def test_broadcast_without_a_system_channel_is_refused(tmp_path: Path) -> None:
    async def scenario(s: Session) -> None:
        _client, rec = await s.connected(token("alice"))
        response = await s.call("POST", "broadcast", {"data": "hi"}, ADMIN_KEY)
        assert response.status_code == 409
        await asyncio.sleep(0.2)
        assert not rec.of("subscribed")

    run(tmp_path, scenario, admin={"data_dir": str(tmp_path / "data"), "system_channel": ""})


# --- maintenance and drain ---


def test_maintenance_refuses_new_connections_and_keeps_existing_ones(tmp_path: Path) -> None:
    async def scenario(s: Session) -> None:
        old, old_rec = await s.connected(token("alice"))
        assert await s.admin("maintenance", {"enabled": True}) == {
            "maintenance": True, "clients": 1
        }  # fmt: skip
        assert await s.on_server(lambda node: node.maintenance) is True
        assert await s.refused(token("bob")) == (3001, "shutdown")  # a reconnect code
        late, late_rec = s.new(token("bob"))
        await late.connect()
        await asyncio.sleep(0.5)  # several refused attempts: the SDK keeps retrying
        assert late.state == ClientState.CONNECTING
        assert not late_rec.of("connected")
        await s.admin("broadcast", {"data": {"n": 1}})
        await old_rec.wait("publication")
        assert old.state == ClientState.CONNECTED

        await s.admin("maintenance", {"enabled": False})
        await late_rec.wait("connected")  # its own retry gets in
        assert late.state == ClientState.CONNECTED

    run(tmp_path, scenario)


def test_drain_asks_every_client_to_reconnect_gradually(tmp_path: Path) -> None:
    async def scenario(s: Session) -> None:
        recs = [(await s.connected(token(f"u{i}")))[1] for i in range(3)]
        first_ids = [rec.of("connected")[0].client for rec in recs]
        status = await s.admin("drain", {"rate": 4, "maintenance": False})
        assert (status["state"], status["total"], status["remaining"]) == ("running", 3, 3)
        assert await s.on_server(lambda node: node.draining) is True
        progress = (await s.call("GET", "drain", None, ADMIN_KEY)).json()
        assert progress["state"] == "running"
        assert progress["remaining"] < 3
        for rec in recs:
            closed: ConnectingContext = (await rec.wait("connecting", lambda c: c.code))[0]
            assert (closed.code, closed.reason) == (3011, "force reconnect")
            await rec.wait("connected", count=2)  # back, with a new connection
        assert [rec.of("connected")[1].client for rec in recs] != first_ids
        done = await s.admin("drain_status")
        assert (done["state"], done["closed"], done["remaining"]) == ("done", 3, 0)
        assert done["finished_at"] - done["started_at"] >= 0.4  # 3 at 4/s: two waits of 1/4 s
        assert await s.on_server(lambda node: (node.draining, node.maintenance)) == (False, False)

    run(tmp_path, scenario)


def drained_by(rec: ClientRecorder) -> bool:
    return any(ctx.code == 3011 for ctx in rec.of("connecting"))


def test_drain_switches_maintenance_on_and_can_be_cancelled(tmp_path: Path) -> None:
    async def scenario(s: Session) -> None:
        recs = [(await s.connected(token(f"u{i}")))[1] for i in range(4)]
        status = await s.admin("drain", {"rate": 1})
        assert status["maintenance"] is True
        again = await s.call("POST", "drain", {}, ADMIN_KEY)
        assert again.status_code == 409
        drained = [rec for rec in recs if drained_by(rec)]
        for _ in range(50):
            if drained:
                break
            await asyncio.sleep(0.05)
            drained = [rec for rec in recs if drained_by(rec)]
        cancelled = await s.admin("drain_cancel")
        assert cancelled["cancelled"] is True
        assert cancelled["state"] == "cancelled"
        assert cancelled["closed"] < 4
        assert await s.on_server(lambda node: (node.draining, node.maintenance)) == (False, True)
        # Drained clients are refused (maintenance) until maintenance is switched off.
        assert await s.refused(token("u9")) == (3001, "shutdown")
        await asyncio.sleep(0.3)
        assert not drained[0].of("connected")[1:]
        await s.admin("maintenance", {"enabled": False})
        await drained[0].wait("connected", count=2)
        await asyncio.sleep(1.2)  # a cancelled drain closes nobody else
        assert sum(1 for rec in recs if drained_by(rec)) == cancelled["closed"]

    run(tmp_path, scenario)


# --- bans and tokens ---


def test_ban_closes_a_users_connections_terminally_and_refuses_new_ones(tmp_path: Path) -> None:
    async def scenario(s: Session) -> None:
        mallory1, rec1 = await s.connected(token("mallory"))
        mallory2, rec2 = await s.connected(token("mallory"))
        alice, _ = await s.connected(token("alice"))
        result = await s.admin("ban", {"user": "mallory", "reason": "spam", "duration": 1.5})
        assert (result["disconnected"], result["reason"]) == (2, "spam")
        for client, rec in ((mallory1, rec1), (mallory2, rec2)):
            gone: DisconnectedContext = (await rec.wait("disconnected"))[0]
            assert (gone.code, gone.reason) == (3507, "permission denied")
            assert client.state == ClientState.DISCONNECTED  # terminal: no reconnect
        assert alice.state == ClientState.CONNECTED
        assert await s.refused(token("mallory")) == (3507, "permission denied")
        bans = await s.admin("bans")
        assert [b["user"] for b in bans["bans"]] == ["mallory"]
        await asyncio.sleep(1.6)  # the ban expires
        await s.connected(token("mallory"))
        await s.admin("ban", {"user": "mallory"})
        assert await s.admin("unban", {"user": "mallory"}) == {"user": "mallory", "removed": True}
        await s.connected(token("mallory"))

    run(tmp_path, scenario)


def test_revoked_jti_and_invalidated_tokens_are_closed_and_refused(tmp_path: Path) -> None:
    async def scenario(s: Session) -> None:
        stolen, stolen_rec = await s.connected(token("alice", jti="stolen"))
        fine, _ = await s.connected(token("alice", jti="fine"))
        assert (await s.admin("revoke_token", {"jti": "stolen"}))["disconnected"] == 1
        gone: DisconnectedContext = (await stolen_rec.wait("disconnected"))[0]
        assert (gone.code, gone.reason) == (3500, "invalid token")
        assert stolen.state == ClientState.DISCONNECTED
        assert fine.state == ClientState.CONNECTED
        assert await s.refused(token("bob", jti="stolen")) == (3500, "invalid token")

        old = token("carol", iat=int(time.time()) - 60)
        _, old_rec = await s.connected(old)
        result = await s.admin("invalidate_user_tokens", {"user": "carol"})
        assert result["disconnected"] == 1
        assert result["before"] > time.time()
        assert (await old_rec.wait("disconnected"))[0].code == 3500
        assert (await s.refused(old))[0] == 3500
        assert (await s.refused(token("carol")))[0] == 3500  # no iat: cannot be newer
        await s.connected(token("carol", iat=result["before"]))

    run(tmp_path, scenario)


def test_refresh_with_a_revoked_token_closes_the_connection(tmp_path: Path) -> None:
    async def scenario(s: Session) -> None:
        await s.admin("revoke_token", {"jti": "next"})

        async def get_token(*_args: Any) -> str:
            return token("alice", jti="next")

        client, rec = await s.connected(token("alice", ttl=1, jti="first"), get_token=get_token)
        gone: DisconnectedContext = (await rec.wait("disconnected"))[0]
        assert gone.code == 3500
        assert client.state == ClientState.DISCONNECTED

    run(tmp_path, scenario, client={"expired_close_delay": 5.0})


# --- refusals ---


def test_bad_requests_are_refused_whole_and_the_server_keeps_serving(tmp_path: Path) -> None:
    async def scenario(s: Session) -> None:
        client, _ = await s.connected(token("alice"))
        for key, status in ((None, 401), ("wrong", 401), (PUBLISHER_KEY, 403)):
            response = await s.call("POST", "ban", {"user": "alice"}, key)
            assert (response.status_code, response.content) == (status, b"")
        cases = [
            ("POST", "frobnicate", {}, 404, None),
            ("GET", "ban", {"user": "alice"}, 405, None),
            ("PUT", "node", {}, 405, None),
            ("POST", "ban", {"user": 42}, 400, "user"),
            ("POST", "ban", {"user": "alice", "duration": "1h"}, 400, "duration"),
            ("POST", "ban", {"user": "alice", "duration": -5}, 400, "duration"),
            ("POST", "ban", {"user": "alice", "until": 5}, 400, "until"),
            ("POST", "maintenance", {}, 400, "enabled"),
            ("POST", "maintenance", {"enabled": "yes"}, 400, "enabled"),
            ("POST", "drain", {"rate": 0}, 400, "rate"),
            ("POST", "log_level", {"level": "loud"}, 400, "level"),
            ("POST", "broadcast", {}, 400, "data"),
            ("POST", "connection", {"client": "nope"}, 404, None),
        ]
        for method, command, body, status, field in cases:
            response = await s.call(method, command, body, ADMIN_KEY)
            assert response.status_code == status, (command, body, response.text)
            assert response.json().get("field") == field
            assert response.json()["error"]
        malformed = await s.http.post("ban", content=b'{"user": ', headers={"X-API-Key": ADMIN_KEY})
        assert malformed.status_code == 400
        assert "JSON" in malformed.json()["error"]
        not_object = await s.call("POST", "ban", ["alice"], ADMIN_KEY)
        assert not_object.status_code == 400
        # Nothing was applied: no ban, no maintenance, no drain; the server goes on.
        node = await s.admin("node")
        assert (node["access"]["bans"], node["maintenance"], node["drain"]["state"]) == (
            0, False, "idle"
        )  # fmt: skip
        assert client.state == ClientState.CONNECTED
        await s.connected(token("alice"))

    run(tmp_path, scenario)


def test_every_command_refuses_unknown_fields_and_wrong_types_and_changes_nothing(
    tmp_path: Path,
) -> None:
    async def scenario(s: Session) -> None:
        client, _ = await s.connected(token("alice"))
        for name in sorted(VALID):
            response = await s.call("POST", name, {**VALID[name], "zz": 1}, ADMIN_KEY)
            assert response.status_code == 400, (name, response.text)
            assert response.json() == {"error": "unknown field", "field": "zz"}
        for name, field, value in wrong_types():
            response = await s.call("POST", name, {**VALID[name], field: value}, ADMIN_KEY)
            assert (response.status_code, response.json()["field"]) == (400, field), name
        # GET: parameters from the query string, numbers spelled as text.
        tree = (await s.call("GET", "tasks", {"max_tasks": "2"}, ADMIN_KEY)).json()
        assert tree["shown"] == 2
        for command, query, field in (
            ("tasks", {"max_tasks": "two"}, "max_tasks"),
            ("connections", {"limit": "0"}, "limit"),
            ("node", {"verbose": "true"}, "verbose"),
        ):
            response = await s.call("GET", command, query, ADMIN_KEY)
            assert (response.status_code, response.json()["field"]) == (400, field)
        node = await s.admin("node")
        assert (node["access"], node["maintenance"], node["drain"]["state"]) == (
            {"bans": 0, "revoked_tokens": 0, "token_cutoffs": 0}, False, "idle"
        )  # fmt: skip
        assert client.state == ClientState.CONNECTED

    run(tmp_path, scenario)


# --- configuration, logging and debugging views ---


def test_reload_and_log_level(tmp_path: Path) -> None:
    config = tmp_path / "aether.toml"
    base = 'hmac_secret = "test-secret-0123456789abcdef0123456789abcdef"\n'
    keys = f'[[api.keys]]\nname = "ops"\nkey = "{ADMIN_KEY}"\nroles = ["admin"]\n'
    config.write_text(f'[token]\n{base}{keys}[[channel.namespaces]]\nname = "late"\n')

    async def scenario(s: Session) -> None:
        assert (await s.call("POST", "reload", {}, ADMIN_KEY)).status_code == 409  # no file
        s.srv.server.config_path = str(config)
        assert await s.admin("reload") == {"reloaded": True, "path": str(config)}
        assert await s.on_server(lambda node: "late" in node.rules.namespaces)
        config.write_text("[token]\nleeway = -1\n")
        response = await s.call("POST", "reload", {}, ADMIN_KEY)
        assert response.status_code == 422
        assert "token.leeway" in response.json()["error"]
        assert await s.on_server(lambda node: "late" in node.rules.namespaces)  # kept

        root = logging.getLogger()
        before = root.level
        try:
            assert await s.admin("log_level", {"level": "DEBUG"}) == {"level": "debug"}
            assert root.level == logging.DEBUG
        finally:
            root.setLevel(before)

    run(tmp_path, scenario)


def test_debug_views_show_tasks_connections_and_the_node(tmp_path: Path) -> None:
    async def scenario(s: Session) -> None:
        client, rec = await s.connected(token("alice", channels=["news"]))
        await s.connected(token("bob"))
        client_id = rec.of("connected")[0].client
        view = await s.admin("connection", {"client": client_id})
        assert (view["user"], view["channels"]) == ("alice", sorted([SYSTEM, "news"]))
        assert view["outbox"]["queued_messages"] == 0
        assert view["outbox"]["max_bytes"] > 0
        assert 0 <= time.time() - view["last_activity"] < 10
        assert view["idle_seconds"] >= 0

        by_user = await s.admin("connections", {"user": "alice"})
        assert [c["client"] for c in by_user["connections"]] == [client_id]
        by_channel = (await s.call("GET", "connections", {"channel": "news"}, ADMIN_KEY)).json()
        assert by_channel["total"] == 1
        assert by_channel["connections"][0]["channels"] == 2
        assert (await s.admin("connections", {"limit": 1}))["total"] == 2

        tree = await s.admin("tasks")
        names: list[str] = []

        def walk(task: dict[str, Any]) -> None:
            names.append(task["name"])
            for nursery in task.get("nurseries", []):
                for child in nursery["tasks"]:
                    walk(child)

        walk(tree["root"])
        assert tree["tasks"] == len(names)
        assert tree["left_out"] == 0
        assert any(n.endswith("Server.run") for n in names)
        # One task per connection (its writer starts only once a write has to wait).
        assert sum(n == CONNECTION_TASK for n in names) >= 2, names
        small = await s.admin("tasks", {"max_tasks": 3})
        assert small["shown"] == 3
        assert small["left_out"] == tree["tasks"] - 3

        node = (await s.call("GET", "node", None, ADMIN_KEY)).json()
        assert (node["clients"], node["users"], node["system_channel"]) == (2, 2, SYSTEM)
        assert node["audit"]["written"] >= 1
        assert client.state == ClientState.CONNECTED

    run(tmp_path, scenario)


# --- the CLI ---


def aether(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aether_trio", *args], capture_output=True, text=True, timeout=60
    )


def test_admin_cli_prints_readable_results(tmp_path: Path) -> None:
    with running_server(make_config(overrides(tmp_path / "data"))) as srv:
        port = srv.server.http_port
        config = tmp_path / "aether.toml"
        config.write_text(
            f'[http]\nport = {port}\n[[api.keys]]\nname = "r"\nkey = "x"\nroles = ["reader"]\n'
            f'[[api.keys]]\nname = "ops"\nkey = "{ADMIN_KEY}"\nroles = ["admin"]\n'
        )
        c = ("-c", str(config))  # URL from [http], key: the first one with the admin role
        ban = aether("admin", "ban", "mallory", "--duration", "60", "--reason", "spam", *c)
        assert ban.returncode == 0, ban.stderr
        assert "user: mallory" in ban.stdout
        assert "disconnected: 0" in ban.stdout
        bans = aether("admin", "bans", *c)
        header, row = bans.stdout.splitlines()
        assert header.split() == ["USER", "EXPIRES", "REASON"]
        assert row.split()[0] == "mallory"
        as_json = aether("admin", "bans", "--json", *c)
        assert '"user": "mallory"' in as_json.stdout
        url = ("--url", f"http://127.0.0.1:{port}", "--key", ADMIN_KEY)
        assert (
            aether("admin", "maintenance", "on", *url).stdout == "maintenance: true\nclients: 0\n"
        )
        drain = aether("admin", "drain", "--wait", *url)
        assert drain.stdout.splitlines()[-1].startswith("drain done: 0/0 asked to reconnect")
        assert "Server.run" in aether("admin", "tasks", *url).stdout
        assert aether("admin", "broadcast", "hello", *url).stdout.startswith("channel: $aether")
        wrong = aether("admin", "node", "--url", f"http://127.0.0.1:{port}", "--key", "nope")
        assert wrong.returncode == 1
        assert "401" in wrong.stderr
        bad = aether("admin", "connection", "nope", *url)
        assert bad.returncode == 1
        assert "404" in bad.stderr
        assert srv.call(lambda: srv.server.node.maintenance) is True
    down = aether("admin", "node", "--url", f"http://127.0.0.1:{port}", "--key", ADMIN_KEY)
    assert down.returncode == 1
    assert "cannot reach" in down.stderr


# --- the drain's pacing, on a virtual clock ---


class FakeClient:
    def __init__(self, node: FakeNode, client_id: str) -> None:
        self.node, self.client_id = node, client_id
        self.closed: list[tuple[float, int]] = []

    def close(self, disconnect: Any, *, detail: str = "") -> None:
        self.closed.append((trio.current_time(), int(disconnect)))
        self.node.clients.pop(self.client_id, None)


class FakeNode:
    def __init__(self, count: int) -> None:
        self.maintenance = self.draining = False
        self.clients = {f"c{i}": FakeClient(self, f"c{i}") for i in range(count)}


def fake_drain(node: FakeNode) -> Drain:
    # A Drain reads and sets only these of its node: `maintenance`, `draining`, and `clients`
    # (their `client_id` and `close`).
    return Drain(cast(Node[ServerClient], node))


async def test_drain_paces_its_closes_and_owns_node_draining(autojump_clock: Any) -> None:
    for rate, count, expected in (
        (2.0, 5, [0.0, 0.5, 1.0, 1.5, 2.0]),
        (100.0, 12, [0.0] * 5 + [0.05] * 5 + [0.1] * 2),  # ticks of 50 ms, 5 per tick
    ):
        node = FakeNode(count)
        clients = list(node.clients.values())
        drain = fake_drain(node)
        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            status = drain.start(nursery, rate, maintenance=True)
            assert (status["total"], node.draining, node.maintenance) == (count, True, True)
            await trio.testing.wait_all_tasks_blocked()
            assert drain.status()["still_connected"] < count
        times = [round(c.closed[0][0] - start, 6) for c in clients]
        assert times == pytest.approx(expected)
        assert {c.closed[0][1] for c in clients} == {3011}
        assert (drain.state, node.draining, drain.status()["remaining"]) == ("done", False, 0)


async def test_drain_cancel_stops_it(autojump_clock: Any) -> None:
    node = FakeNode(10)
    drain = fake_drain(node)
    async with trio.open_nursery() as nursery:
        drain.start(nursery, 1.0, maintenance=False)
        with pytest.raises(DrainRunning):
            drain.start(nursery, 1.0, maintenance=False)
        await trio.sleep(2.5)
        assert await drain.cancel()
        assert not await drain.cancel()
    assert (drain.state, drain.status()["closed"], node.draining) == ("cancelled", 3, False)
    assert node.maintenance is False


# --- parameters, without a server: one attrs class per command ---

VALID: dict[str, dict[str, Any]] = {
    "broadcast": {"data": {"n": 1}},
    "maintenance": {"enabled": False},
    "drain": {"rate": 5, "maintenance": False},
    "drain_cancel": {},
    "drain_status": {},
    "ban": {"user": "u", "duration": 60, "reason": "r"},
    "unban": {"user": "u"},
    "bans": {},
    "revoke_token": {"jti": "j", "expire_at": 2e9},
    "invalidate_user_tokens": {"user": "u", "before": 5},
    "reload": {},
    "log_level": {"level": "INFO"},
    "node": {},
    "tasks": {"max_tasks": 5},
    "connection": {"client": "c"},
    "connections": {"user": "u", "channel": "c", "limit": 5},
}
# A value of the wrong JSON type for each parameter type.
WRONG = {str: 5, bool: "true", int: 1.5, float: "1", Any: None}


def wrong_types() -> list[tuple[str, str, Any]]:
    cases = []
    for name, command in sorted(COMMANDS.items()):
        for field in attrs.fields(attrs.resolve_types(command.params)):
            # `float | None` -> float: what a value must be when given
            kind = next((t for t in typing.get_args(field.type) if t is not NoneType), field.type)
            cases.append((name, field.name, WRONG[kind]))
    return cases


def test_every_command_has_valid_parameters_in_the_table() -> None:
    assert sorted(VALID) == sorted(COMMANDS)
    for name, raw in VALID.items():
        assert attrs.has(type(params.decode(COMMANDS[name].params, raw)))


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_refuses_an_unknown_field(name: str) -> None:
    with pytest.raises(params.BadParams) as info:
        params.decode(COMMANDS[name].params, {**VALID[name], "zz_unknown": 1})
    assert (info.value.field, info.value.message) == ("zz_unknown", "unknown field")
    with pytest.raises(params.BadParams) as info:
        params.decode(COMMANDS[name].params, {"zz_unknown": "1"}, from_query=True)
    assert info.value.field in ("zz_unknown", *VALID[name])  # a required one may come first


@pytest.mark.parametrize(("name", "field", "value"), wrong_types())
def test_every_command_refuses_a_wrong_type(name: str, field: str, value: Any) -> None:
    with pytest.raises(params.BadParams) as info:
        params.decode(COMMANDS[name].params, {**VALID[name], field: value})
    assert info.value.field == field
    expected = "is required" if value is None else "expected "
    assert info.value.message.startswith(expected), info.value.message


def test_get_parameters_are_spelled_as_text() -> None:
    def query(cls: type, **values: str) -> Any:
        raw = params.read_query({k: [v] for k, v in values.items()})
        return params.decode(cls, raw, from_query=True)

    assert query(params.TasksParams, max_tasks="3").max_tasks == 3
    assert query(params.ConnectionsParams, limit="2", user="7").user == "7"  # text stays text
    assert query(params.DrainParams, rate="0.5", maintenance="false") == params.DrainParams(
        0.5, False
    )
    assert query(params.InvalidateParams, user="u", before="12").before == 12
    for cls, values, field in (
        (params.TasksParams, {"max_tasks": "many"}, "max_tasks"),
        (params.TasksParams, {"max_tasks": "0"}, "max_tasks"),
        (params.DrainParams, {"maintenance": "1"}, "maintenance"),
        (params.DrainParams, {"rate": "-1"}, "rate"),
        (params.NoParams, {"x": ""}, "x"),
    ):
        with pytest.raises(params.BadParams) as info:
            query(cls, **values)
        assert info.value.field == field
