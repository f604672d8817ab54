"""Durable state: the SQLite store, `AccessState` checks, operator parameter parsing, and bans,
revocations and token cut-offs surviving a restart (a new server on the same data_dir), observed
with the real centrifuge-python SDK."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from centrifuge import Client, ClientEventHandler, ClientState, DisconnectedContext
from conftest import make_config, running_server, token

from aether_trio.admin import chain, params
from aether_trio.admin.params import BadParams
from aether_trio.admin.state import AccessState
from aether_trio.admin.store import Database, Store, database_path
from aether_trio.config import ConfigError, parse_config
from aether_trio.protocol.codes import Disconnect
from aether_trio.protocol.errors import DisconnectError

ADMIN_KEY = "admin-key-for-tests"
WAIT = 5.0


def admin_config(data_dir: Path) -> dict[str, Any]:
    return {
        "api": {"keys": [{"name": "ops", "key": ADMIN_KEY, "roles": ["admin"]}]},
        "admin": {"data_dir": str(data_dir)},
    }


# --- the database ---


def test_database_keeps_bans_revocations_and_cutoffs_across_reopen(tmp_path: Path) -> None:
    path = database_path(tmp_path)
    db = Database.open(path)
    db.put_ban("1", None, "spam", 0.0)
    db.put_ban("2", 100.0, "", 0.0)  # expired at 100
    db.put_ban("3", 1e12, "later", 0.0)
    db.delete_ban("3")
    db.put_revoked("jti-a", None, 0.0)
    db.put_revoked("jti-b", 50.0, 0.0)
    db.put_cutoff("9", 1234, 0.0)
    db.put_cutoff("9", 2000, 0.0)  # replaces
    db.close()
    db = Database.open(path)
    assert sorted(db.bans()) == [("1", None, "spam"), ("2", 100.0, "")]
    db.prune(now=200.0)
    assert db.bans() == [("1", None, "spam")]
    assert db.revoked() == [("jti-a", None)]
    assert db.cutoffs() == [("9", 2000)]
    db.close()


def test_two_writers_extend_one_audit_chain(tmp_path: Path) -> None:
    path = database_path(tmp_path)
    first, second = Database.open(path), Database.open(path)
    draft: dict[str, Any] = {
        "ts": "t",
        "actor": "a",
        "action": "x",
        "params": {},
        "result": None,
        "ok": True,
    }
    assert first.append_audit([draft, draft])[0] == 2
    assert second.append_audit([draft])[0] == 3  # reads the head the first one wrote
    assert first.append_audit([draft])[0] == 4
    assert chain.verify(first.audit_rows(), first.audit_head()).broken is None
    first.close()
    second.close()


def test_readonly_open_refuses_a_missing_file_and_writes(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        Database.open(database_path(tmp_path), readonly=True)
    Database.open(database_path(tmp_path)).close()
    db = Database.open(database_path(tmp_path), readonly=True)
    with pytest.raises(Exception, match="readonly"):
        db.put_ban("1", None, "", 0.0)
    db.close()


# --- AccessState ---


async def test_access_state_checks_bans_revocations_and_cutoffs(tmp_path: Path) -> None:
    store = await Store.open(tmp_path)
    state = AccessState(store)
    await state.load()
    state.check("1", "any", None)  # nothing configured: everything passes
    await state.ban("1", None, "spam")
    await state.ban("2", time.time() - 1, "")  # already expired
    await state.revoke("jti-x", None)
    await state.set_cutoff("3", 1000)

    def refused(user: str, jti: str, iat: int | None) -> Disconnect | None:
        try:
            state.check(user, jti, iat)
        except DisconnectError as exc:
            return exc.disconnect
        return None

    assert refused("1", "", None) == Disconnect.PERMISSION_DENIED
    assert refused("2", "", None) is None
    assert refused("5", "jti-x", 2000) == Disconnect.INVALID_TOKEN
    assert refused("3", "", 999) == Disconnect.INVALID_TOKEN
    assert refused("3", "", None) == Disconnect.INVALID_TOKEN  # no iat: counts as old
    assert refused("3", "", 1000) is None
    assert [b.user for b in state.bans()] == ["1"]
    assert await state.unban("1")
    assert not await state.unban("1")
    assert refused("1", "", None) is None

    reloaded = AccessState(store)
    await reloaded.load()
    assert reloaded.counts() == {"bans": 0, "revoked_tokens": 1, "token_cutoffs": 1}
    assert reloaded.cutoff("3") == 1000
    assert reloaded.is_revoked("jti-x")
    await store.aclose()


# --- parameters ---


def test_params_name_the_field_and_refuse_unknown_ones() -> None:
    def error(body: bytes, cls: type) -> tuple[str, str]:
        with pytest.raises(BadParams) as exc:
            params.decode(cls, params.read_body(body))
        return exc.value.field, exc.value.message

    # One wording for a body that is not a JSON object, shared with the server API.
    assert error(b"{", params.NoParams) == ("", "malformed JSON")
    assert error(b"[1]", params.NoParams) == ("", "the body must be a JSON object, got an array")
    assert error(b"{}", params.UserParams) == ("user", "is required")
    assert error(b'{"user": null}', params.UserParams) == ("user", "is required")
    assert error(b'{"user": 1}', params.UserParams) == (
        "user", "expected a string, got an integer"
    )  # fmt: skip
    assert error(b'{"user": ""}', params.UserParams) == ("user", "must not be empty")
    assert error(b'{"user": "%s"}' % (b"x" * 1025), params.UserParams) == (
        "user", "longer than 1024 characters"
    )  # fmt: skip
    assert error(b'{"user": "a", "duration": -1}', params.BanParams) == (
        "duration", "expected a number > 0, got -1.0"
    )  # fmt: skip
    assert error(b'{"user": "a", "duration": true}', params.BanParams)[0] == "duration"
    assert error(b'{"enabled": 1}', params.MaintenanceParams) == (
        "enabled",
        "expected true or false, got an integer",
    )
    assert error(b'{"max_tasks": 1.5}', params.TasksParams)[0] == "max_tasks"
    assert error(b'{"max_tasks": 0}', params.TasksParams) == (
        "max_tasks", "expected an integer >= 1, got 0"
    )  # fmt: skip
    assert error(b'{"max_tasks": 1, "zz": 2}', params.TasksParams) == ("zz", "unknown field")
    assert error(b'{"level": "loud"}', params.LogLevelParams)[0] == "level"
    query = params.read_query({"limit": ["9", "5"], "user": ["u"]})
    assert params.decode(params.ConnectionsParams, query, from_query=True) == (
        params.ConnectionsParams(user="u", channel=None, limit=5)
    )
    on = params.decode(params.MaintenanceParams, {"enabled": "true"}, from_query=True)
    rate = params.decode(params.DrainParams, {"rate": "2.5"}, from_query=True).rate
    assert (on.enabled, rate) == (True, 2.5)
    assert params.read_body(b"") == params.read_body(b" \n") == {}
    defaults = params.decode(params.DrainParams, {})
    assert (defaults.rate, defaults.maintenance) == (None, True)


# --- surviving a restart, seen by the SDK ---


class Events(ClientEventHandler):
    def __init__(self) -> None:
        self.connected = asyncio.Event()
        self.disconnected: list[DisconnectedContext] = []
        self.gone = asyncio.Event()

    async def on_connected(self, ctx: Any) -> None:
        self.connected.set()

    async def on_disconnected(self, ctx: DisconnectedContext) -> None:
        self.disconnected.append(ctx)
        self.gone.set()


async def outcome(url: str, tok: str) -> tuple[str, int]:
    """Connect once: ("connected", 0) or ("disconnected", close code)."""
    events = Events()
    client = Client(url, events=events, token=tok, proxy=None, max_reconnect_delay=0.3)
    await client.connect()
    try:
        async with asyncio.timeout(WAIT):
            done = {asyncio.ensure_future(events.connected.wait()),
                    asyncio.ensure_future(events.gone.wait())}  # fmt: skip
            _, pending = await asyncio.wait(done, return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()
        if client.state == ClientState.CONNECTED:
            return "connected", 0
        return "disconnected", events.disconnected[0].code
    finally:
        await client.disconnect()
        # Let the SDK finish its close handshakes and background tasks (no unclosed sockets).
        current = asyncio.current_task()
        background = [t for t in asyncio.all_tasks() if t is not current]
        if background:
            await asyncio.wait(background, timeout=2.0)


def admin(srv: Any, command: str, body: dict[str, Any]) -> dict[str, Any]:
    url = f"http://127.0.0.1:{srv.server.http_port}/api/admin/{command}"
    response = httpx.post(url, json=body, headers={"X-API-Key": ADMIN_KEY}, timeout=WAIT)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def test_bans_revocations_and_cutoffs_survive_a_restart(tmp_path: Path) -> None:
    config = make_config(admin_config(tmp_path / "data"))
    old_token = token("carol", iat=int(time.time()) - 100)
    with running_server(config) as srv:
        admin(srv, "ban", {"user": "mallory", "reason": "abuse"})
        admin(srv, "ban", {"user": "brief", "duration": 0.5})
        admin(srv, "revoke_token", {"jti": "stolen"})
        admin(srv, "invalidate_user_tokens", {"user": "carol"})
        assert asyncio.run(outcome(srv.url, token("mallory"))) == ("disconnected", 3507)
    time.sleep(0.6)  # "brief"'s ban runs out while the server is down

    with running_server(config) as srv:  # a new server on the same data_dir
        assert admin(srv, "bans", {}) == {
            "bans": [{"user": "mallory", "expire_at": None, "reason": "abuse"}]
        }

        async def scenario() -> None:
            assert await outcome(srv.url, token("mallory")) == ("disconnected", 3507)
            assert await outcome(srv.url, token("brief")) == ("connected", 0)
            assert await outcome(srv.url, token("dave", jti="stolen")) == ("disconnected", 3500)
            assert await outcome(srv.url, token("dave", jti="fresh")) == ("connected", 0)
            assert await outcome(srv.url, old_token) == ("disconnected", 3500)
            new = token("carol", iat=int(time.time()) + 2)
            assert await outcome(srv.url, new) == ("connected", 0)

        asyncio.run(scenario())
        assert admin(srv, "unban", {"user": "mallory"}) == {"user": "mallory", "removed": True}
        assert asyncio.run(outcome(srv.url, token("mallory"))) == ("connected", 0)


# --- configuration ---


@pytest.mark.parametrize("name", ["$aether:system", "aether.system", "$a b", "$", "$é"])
def test_system_channel_must_be_private_and_outside_namespaces(name: str) -> None:
    with pytest.raises(ConfigError, match=r"admin\.system_channel: expected"):
        parse_config({"admin": {"system_channel": name}})


def test_admin_options_have_documented_defaults_and_bounds() -> None:
    admin = parse_config({}).admin
    assert (admin.system_channel, admin.drain_rate, admin.audit_auth_failures_per_minute) == (
        "", 100.0, 10
    )  # fmt: skip
    assert parse_config({"admin": {"system_channel": ""}}).admin.system_channel == ""
    for bad in ({"drain_rate": 0}, {"audit_auth_failures_per_minute": -1}):
        with pytest.raises(ConfigError, match=rf"admin\.{next(iter(bad))}: "):
            parse_config({"admin": bad})
