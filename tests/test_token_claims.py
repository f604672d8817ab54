"""Centrifugo v6's token options `user_id_claim`, `audience_regex` and `issuer_regex`, and the
client `ping` command answered as upstream does (centrifuge's `handlePing`: 108 not available),
in both encodings.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import trio
from centrifuge import Client
from centrifuge.protocol import client_pb2 as sdk_pb
from conftest import SECRET, make_config, running_server, serve_in, ws_url
from sdk_helpers import ClientRecorder, disconnect_all
from test_sdk_protobuf import _delimited, _protobuf_connected, _replies
from trio_websocket import open_websocket_url

from aether_trio.auth.tokens import TokenInvalid, TokenVerifier, mint_token
from aether_trio.config import ConfigError, TokenConfig, parse_config


def mint(**claims: Any) -> str:
    return mint_token(SECRET, {"exp": int(time.time()) + 3600, **claims})


def verifier(**options: Any) -> TokenVerifier:
    return TokenVerifier(TokenConfig(hmac_secret=SECRET, **options))


# --- user_id_claim ---


def test_the_user_id_comes_from_the_configured_claim() -> None:
    v = verifier(user_id_claim="user_id")
    assert v.verify_connect(mint(sub="idp-subject", user_id="42")).user == "42"
    assert v.verify_connect(mint(sub="idp-subject")).user == ""  # absent: anonymous
    claims = v.verify_subscribe(mint(sub="x", user_id="42", channel="$c"))
    assert claims.user == "42"
    assert verifier().verify_connect(mint(sub="7", user_id="42")).user == "7"


def test_a_user_id_claim_that_is_not_a_string_is_invalid() -> None:
    with pytest.raises(TokenInvalid, match="user_id"):
        verifier(user_id_claim="user_id").verify_connect(mint(user_id=42))


@pytest.mark.parametrize("name", ["", "exp", "channel", "info"])
def test_the_user_id_claim_cannot_be_a_claim_with_a_meaning_of_its_own(name: str) -> None:
    with pytest.raises(ConfigError, match="user_id_claim"):
        parse_config({"token": {"hmac_secret": SECRET, "user_id_claim": name}})


def test_the_sdk_connects_as_the_user_of_the_configured_claim() -> None:
    config = make_config({"token": {"user_id_claim": "uid"}})
    with running_server(config) as srv:

        async def main() -> None:
            rec = ClientRecorder()
            client = Client(srv.url, events=rec, token=mint(sub="idp|123", uid="alice"))
            try:
                await client.connect()
                await client.ready(timeout=5.0)
                users = await asyncio.to_thread(srv.call, lambda: sorted(srv.server.node.users))
                assert users == ["alice"]
            finally:
                await disconnect_all([client])

        asyncio.run(main())


# --- audience_regex, issuer_regex ---


@pytest.mark.parametrize(
    ("aud", "ok"),
    [
        ("https://app1.example.com", True),
        (["other", "https://app22.example.com"], True),
        ("https://app.example.com", False),
        ("https://app1.example.com.evil", False),
        (None, False),
    ],
)
def test_audience_regex(aud: Any, ok: bool) -> None:
    v = verifier(audience_regex=r"^https://app[0-9]+\.example\.com$")
    token = mint(sub="1") if aud is None else mint(sub="1", aud=aud)
    if ok:
        assert v.verify_connect(token).user == "1"
    else:
        with pytest.raises(TokenInvalid, match="audience"):
            v.verify_connect(token)


@pytest.mark.parametrize(
    ("iss", "ok"), [("auth-eu", True), ("auth-us", True), ("other", False), (None, False)]
)
def test_issuer_regex_is_searched_like_go_regexp(iss: str | None, ok: bool) -> None:
    v = verifier(issuer_regex="auth-(eu|us)")
    token = mint(sub="1") if iss is None else mint(sub="1", iss=iss)
    if ok:
        assert v.verify_connect(token).user == "1"
    else:
        with pytest.raises(TokenInvalid, match="issuer"):
            v.verify_connect(token)


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({"audience": "a", "audience_regex": "a"}, "either audience or audience_regex"),
        ({"issuer": "i", "issuer_regex": "i"}, "either issuer or issuer_regex"),
        ({"audience_regex": "("}, "audience_regex: not a valid regular expression"),
        ({"issuer_regex": "[a"}, "issuer_regex: not a valid regular expression"),
    ],
)
def test_conflicting_or_broken_settings_are_refused(options: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        parse_config({"token": {"hmac_secret": SECRET, **options}})


# --- the client ping command ---


async def test_the_ping_command_is_answered_108_in_both_encodings(nursery: trio.Nursery) -> None:
    server = await serve_in(nursery, make_config())
    async with _protobuf_connected(ws_url(server)) as ws:
        await ws.send_message(_delimited(sdk_pb.Command(id=2, ping=sdk_pb.PingRequest())))
        with trio.fail_after(5):
            frame = await ws.get_message()
        assert isinstance(frame, bytes)
        (reply,) = _replies(frame)
        assert (reply.id, reply.error.code, reply.error.message) == (2, 108, "not available")
    async with open_websocket_url(ws_url(server)) as ws:
        await ws.send_message(f'{{"id":1,"connect":{{"token":"{mint(sub="1")}"}}}}')
        with trio.fail_after(5):
            await ws.get_message()
            await ws.send_message('{"id":2,"ping":{}}')
            answer = await ws.get_message()
        assert answer == '{"id":2,"error":{"code":108,"message":"not available"}}'
        await ws._stream.aclose()
