"""The server API methods Centrifugo has in PRO (issue 15, item 4): `connections`, user status and
bans and revocations, called with the real `cent` client (its request and result classes) and,
where the exact JSON matters, with raw HTTP; the connections they refuse are closed with the
codes the operator commands use, and the refusals hold for the next connect.
"""

from __future__ import annotations

import time
from typing import Any

import cent
import httpx
import pytest
import trio
from cent.exceptions import CentApiResponseError
from conftest import close_reason, make_config, serve_in, token
from test_backend_proxies import raw_client
from trio_websocket import ConnectionClosed

from aether_trio.app import Server

ADMIN = "admin-key-0123456789abcdef"
PUBLISHER = "publisher-key-0123456789abcdef"
READER = "reader-key-0123456789abcdef"
KEYS = [
    {"name": "ops", "key": ADMIN, "roles": ["admin"]},
    {"name": "backend", "key": PUBLISHER, "roles": ["publisher"]},
    {"name": "dashboard", "key": READER, "roles": ["reader"]},
]


async def start(nursery: trio.Nursery, tmp_path: Any) -> Server:
    config = make_config({"api": {"keys": KEYS}, "admin": {"data_dir": str(tmp_path)}})
    return await serve_in(nursery, config)


async def cent_call(server: Server, method: str, request: Any, key: str = ADMIN) -> Any:
    """`cent.Client.<method>(request)`, the real client's call, in a thread."""

    def blocking() -> Any:
        client = cent.Client(f"http://127.0.0.1:{server.http_port}/api", api_key=key, timeout=5)
        return getattr(client, method)(request)

    return await trio.to_thread.run_sync(blocking)


async def raw(server: Server, method: str, body: dict[str, Any], key: str = ADMIN) -> Any:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.http_port}") as http:
        response = await http.post(f"/api/{method}", json=body, headers={"X-API-Key": key})
    return response.status_code, response.json() if response.content else None


async def closed_with(client: Any) -> tuple[int, str]:
    with trio.fail_after(10), pytest.raises(ConnectionClosed) as closed:
        await client.read_until_closed()
    reason = close_reason(closed.value)
    return reason.code, reason.reason or ""


async def refused_connect(server: Server, tok: str) -> int:
    async with raw_client(server) as client:
        with pytest.raises(ConnectionClosed) as closed:
            await client.send_then_read_until_closed({"id": 1, "connect": {"token": tok}})
        return close_reason(closed.value).code


# --- connections ---


async def test_connections_of_a_user_in_centrifugos_shape(
    nursery: trio.Nursery, tmp_path: Any
) -> None:
    server = await start(nursery, tmp_path)
    iat = int(time.time()) - 10
    async with raw_client(server) as a, raw_client(server) as b, raw_client(server) as other:
        tok = token("u", jti="tok-a", iat=iat, info={"name": "Ann"})
        ca = await a.connect(tok, name="py", version="1.2")
        await b.connect(token("u"))
        await other.connect(token("v"))
        await a.command("subscribe", {"channel": "room"})
        status, body = await raw(server, "connections", {"user": "u"})
        assert status == 200
        connections = body["result"]["connections"]
        assert len(connections) == 2
        first = connections[ca["connect"]["client"]]
        assert first["app_name"] == "py"
        assert first["app_version"] == "1.2"
        assert (first["transport"], first["protocol"], first["user"]) == ("websocket", "json", "u")
        assert first["info"] == {"name": "Ann"}
        assert set(first["state"]["channels"]) == {"room"}  # the system channel is off by default
        assert first["state"]["connection_token"] == {"uid": "tok-a", "issued_at": iat}
        assert first["connected_at_ms"] <= time.time() * 1000
        # The real cent client parses it into its own classes.
        result = await cent_call(
            server, "connections", cent.ConnectionsRequest(user="u", expression="")
        )
        assert set(result.connections) == set(connections)
        everyone = await cent_call(
            server, "connections", cent.ConnectionsRequest(user="", expression="")
        )
        assert len(everyone.connections) == 3
        with pytest.raises(CentApiResponseError) as refused:
            await cent_call(
                server, "connections", cent.ConnectionsRequest(user="", expression="user == 'u'")
            )
        assert refused.value.code == 108


# --- user status ---


async def test_user_status_update_get_delete(nursery: trio.Nursery, tmp_path: Any) -> None:
    server = await start(nursery, tmp_path)
    async with raw_client(server) as client:
        await client.connect(token("online-user"))
        before = int(time.time())
        request = cent.UpdateUserStatusRequest(users=["online-user", "away"])
        await cent_call(server, "update_user_status", request, PUBLISHER)
        # cent's request has no `state`: the Centrifugo field, sent raw.
        await raw(server, "update_user_status", {"users": ["away"], "state": "busy"}, PUBLISHER)
        result = await cent_call(
            server,
            "get_user_status",
            cent.GetUserStatusRequest(users=["online-user", "away", "never"]),
            READER,
        )
        online, away, never = result.statuses
        assert online.user == "online-user"
        assert online.active >= before
        assert online.online >= before
        assert away.user == "away"
        assert away.active >= before
        assert not away.online
        assert (never.user, never.active, never.online) == ("never", 0, 0)
        _, body = await raw(server, "get_user_status", {"users": ["away"]})
        assert body["result"]["statuses"][0]["state"] == "busy"  # cent's class has no `state`
    # Gone: `online` is when it was last seen.
    _, body = await raw(server, "get_user_status", {"users": ["online-user"]})
    assert body["result"]["statuses"][0]["online"] >= before
    await cent_call(
        server, "delete_user_status", cent.DeleteUserStatusRequest(users=["online-user", "away"])
    )
    _, body = await raw(server, "get_user_status", {"users": ["online-user", "away"]})
    assert body["result"]["statuses"] == [{"user": "online-user"}, {"user": "away"}]
    status, body = await raw(server, "get_user_status", {"users": []})
    assert body["error"]["code"] == 107
    status, _ = await raw(server, "delete_user_status", {"users": ["x"]}, key=READER)
    assert status == 403


# --- bans and revocations ---


async def test_block_user_closes_refuses_and_unblock_lets_in(
    nursery: trio.Nursery, tmp_path: Any
) -> None:
    server = await start(nursery, tmp_path)
    async with raw_client(server) as client, raw_client(server) as bystander:
        await client.connect(token("troll"))
        await bystander.connect(token("nice"))
        await cent_call(server, "block_user", cent.BlockUserRequest(user="troll"))
        assert await closed_with(client) == (3507, "permission denied")
        assert "presence_stats" in await bystander.command("presence_stats", {"channel": "x"})
    assert await refused_connect(server, token("troll")) == 3507
    await cent_call(server, "unblock_user", cent.UnblockUserRequest(user="troll"))
    async with raw_client(server) as client:
        assert "connect" in await client.connect(token("troll"))


async def test_block_user_with_an_expiry_and_bad_input(
    nursery: trio.Nursery, tmp_path: Any
) -> None:
    server = await start(nursery, tmp_path)
    _, body = await raw(server, "block_user", {"user": "t", "expire_at": int(time.time()) + 2})
    assert body == {"result": {}}
    assert await refused_connect(server, token("t")) == 3507
    _, body = await raw(server, "block_user", {"user": "t", "expire_at": 5})
    assert body["error"]["code"] == 107  # in the past
    _, body = await raw(server, "block_user", {"expire_at": 0})
    assert body["error"]["code"] == 107  # no user
    status, _ = await raw(server, "block_user", {"user": "t"}, key=READER)
    assert status == 403
    await trio.sleep(2.5)  # the block ran out
    async with raw_client(server) as client:
        assert "connect" in await client.connect(token("t"))


async def test_revoke_token_closes_its_holders_and_refuses_it(
    nursery: trio.Nursery, tmp_path: Any
) -> None:
    server = await start(nursery, tmp_path)
    revoked, kept = token("r", jti="bad-jti"), token("r", jti="good-jti")
    async with raw_client(server) as holder, raw_client(server) as other:
        await holder.connect(revoked)
        await other.connect(kept)
        await cent_call(server, "revoke_token", cent.RevokeTokenRequest(uid="bad-jti"))
        assert await closed_with(holder) == (3500, "invalid token")
        assert "presence_stats" in await other.command("presence_stats", {"channel": "x"})
    assert await refused_connect(server, revoked) == 3500
    _, body = await raw(server, "revoke_token", {"uid": ""})
    assert body["error"]["code"] == 107


async def test_invalidate_user_tokens_issued_before(nursery: trio.Nursery, tmp_path: Any) -> None:
    server = await start(nursery, tmp_path)
    now = int(time.time())
    old, new = token("i", iat=now - 100), token("i", iat=now + 100)
    async with raw_client(server) as old_client, raw_client(server) as new_client:
        await old_client.connect(old)
        await new_client.connect(new)
        await cent_call(
            server,
            "invalidate_user_tokens",
            cent.InvalidateUserTokensRequest(user="i", issued_before=now),
        )
        assert await closed_with(old_client) == (3500, "invalid token")
        assert "presence_stats" in await new_client.command("presence_stats", {"channel": "x"})
    assert await refused_connect(server, old) == 3500
    _, body = await raw(server, "invalidate_user_tokens", {"user": "i", "channel": "c"})
    assert body["error"]["code"] == 108
    # issued_before 0: every token issued up to now.
    _, body = await raw(server, "invalidate_user_tokens", {"user": "j"})
    assert body == {"result": {}}
    assert await refused_connect(server, token("j", iat=now - 1)) == 3500


async def test_the_methods_in_a_batch(nursery: trio.Nursery, tmp_path: Any) -> None:
    server = await start(nursery, tmp_path)
    _, body = await raw(
        server,
        "batch",
        {"commands": [{"block_user": {"user": "b1"}}, {"unblock_user": {"user": "b1"}}]},
    )
    assert body == {"replies": [{"block_user": {}}, {"unblock_user": {}}]}


async def test_without_the_admin_state_bans_are_not_available() -> None:
    from aether_trio.http.api import access
    from aether_trio.http.api.errors import ApiError
    from aether_trio.http.api.methods import ApiContext
    from aether_trio.http.api.requests import BlockUser

    server = Server(make_config())
    context = ApiContext(server.node, "", 0.0)
    with pytest.raises(ApiError) as refused:
        await access.block_user(context, BlockUser(user="x"))
    assert int(refused.value.code) == 108


async def test_too_many_users_and_a_negative_cut_off_are_bad_requests(
    nursery: trio.Nursery, tmp_path: Any
) -> None:
    server = await start(nursery, tmp_path)
    users = [f"u{i}" for i in range(1001)]
    _, body = await raw(server, "get_user_status", {"users": users}, READER)
    assert body["error"]["code"] == 107
    _, body = await raw(server, "invalidate_user_tokens", {"user": "u", "issued_before": -5})
    assert body["error"]["code"] == 107
