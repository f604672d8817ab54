"""JWKS key source: parsing, bounded refresh, cache when the endpoint is down, and a real
endpoint serving keys to a running server."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
import trio
from conftest import close_reason, make_config, open_raw, serve_in, ws_url
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from trio_websocket import ConnectionClosed

from aether_trio.auth.jwks import JwksCache, parse_jwks


def _jwk(key: Any, kid: str, **extra: Any) -> dict[str, Any]:
    algorithm = jwt.get_algorithm_by_name(
        "RS256" if isinstance(key, rsa.RSAPublicKey)
        else "EdDSA" if isinstance(key, ed25519.Ed25519PublicKey) else "ES256"
    )  # fmt: skip
    return {**json.loads(algorithm.to_jwk(key)), "kid": kid, **extra}


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def test_parse_jwks_accepts_public_keys_and_refuses_the_rest(rsa_key: rsa.RSAPrivateKey) -> None:
    ec_key = ec.generate_private_key(ec.SECP384R1()).public_key()
    ed_key = ed25519.Ed25519PrivateKey.generate().public_key()
    data = {
        "keys": [
            _jwk(rsa_key.public_key(), "rsa"),
            _jwk(rsa_key.public_key(), "rsa-384", alg="RS384"),
            _jwk(rsa_key.public_key(), "rsa-mismatch", alg="ES256"),
            _jwk(ec_key, "ec"),
            _jwk(ed_key, "ed"),
            {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},  # a published secret: refused
            _jwk(rsa_key.public_key(), "enc", use="enc"),
            {**_jwk(rsa_key.public_key(), "x"), "kid": 5},
            {"kty": "RSA", "kid": "broken", "n": "!!", "e": "AQAB"},
            "not a key",
        ]
    }
    keys = parse_jwks(data)
    assert {kid: algs for kid, (_key, algs) in keys.items()} == {
        "rsa": ("RS256", "RS384", "RS512"),
        "rsa-384": ("RS384",),
        "ec": ("ES384",),
        "ed": ("EdDSA",),
    }


class FakeEndpoint:
    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data
        self.calls = 0
        self.down = False

    def __call__(self, url: str, timeout: float) -> dict[str, Any]:
        self.calls += 1
        if self.down:
            raise OSError("connection refused")
        return self.data


async def test_unknown_kids_refresh_at_a_bounded_rate(
    autojump_clock: trio.testing.MockClock, rsa_key: rsa.RSAPrivateKey
) -> None:
    endpoint = FakeEndpoint({"keys": [_jwk(rsa_key.public_key(), "k1")]})
    cache = JwksCache("https://idp.example/jwks", min_refresh_interval=10, fetch=endpoint)
    await cache.ensure("k1")
    assert endpoint.calls == 1
    assert cache.get("k1") is not None
    for n in range(50):  # a flood of made-up kids
        await cache.ensure(f"made-up-{n}")
    assert endpoint.calls == 1
    await trio.sleep(10)
    await cache.ensure("made-up-again")
    assert endpoint.calls == 2
    await cache.ensure("k1")  # known and fresh: no request
    assert endpoint.calls == 2


async def test_cached_keys_serve_while_the_endpoint_is_down(
    autojump_clock: trio.testing.MockClock, rsa_key: rsa.RSAPrivateKey
) -> None:
    endpoint = FakeEndpoint({"keys": [_jwk(rsa_key.public_key(), "k1")]})
    cache = JwksCache("https://idp.example/jwks", refresh_interval=60, fetch=endpoint)
    await cache.ensure("k1")
    endpoint.down = True
    await trio.sleep(61)
    await cache.ensure("k1")  # stale: tries, fails, keeps the keys
    assert endpoint.calls == 2
    assert cache.failures == 1
    assert cache.get("k1") is not None
    endpoint.down = False
    endpoint.data = {"keys": [_jwk(rsa_key.public_key(), "k2")]}
    await trio.sleep(61)
    await cache.ensure("k2")
    assert cache.get("k2") is not None
    assert cache.get("k1") is None


@pytest.fixture
def jwks_server(rsa_key: rsa.RSAPrivateKey) -> Iterator[tuple[str, dict[str, Any], Any]]:
    state: dict[str, Any] = {"keys": [_jwk(rsa_key.public_key(), "k1")], "requests": 0}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state["requests"] += 1
            body = json.dumps({"keys": state["keys"]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/jwks", state, httpd
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def _rs256(key: rsa.RSAPrivateKey, kid: str, user: str = "7") -> str:
    return jwt.encode(
        {"sub": user, "exp": int(time.time()) + 600}, key, algorithm="RS256", headers={"kid": kid}
    )


async def test_running_server_verifies_tokens_from_a_real_jwks_endpoint(
    jwks_server: tuple[str, dict[str, Any], Any], rsa_key: rsa.RSAPrivateKey
) -> None:
    url, state, httpd = jwks_server
    config = make_config(
        {"token": {"hmac_secret": "", "jwks_url": url, "jwks_min_refresh_interval": 0.0}}
    )
    async with trio.open_nursery() as nursery:
        server = await serve_in(nursery, config)
        async with open_raw(ws_url(server)) as client:
            reply = await client.connect(_rs256(rsa_key, "k1"))
            assert reply["connect"]["client"]

        # Key rotation at the identity provider: a new kid is fetched on first sight.
        new_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        state["keys"] = [_jwk(rsa_key.public_key(), "k1"), _jwk(new_key.public_key(), "k2")]
        async with open_raw(ws_url(server)) as client:
            assert "connect" in await client.connect(_rs256(new_key, "k2"))

        # A token signed by a key the endpoint does not publish is refused.
        stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        async with open_raw(ws_url(server)) as client:
            await client.send({"id": 1, "connect": {"token": _rs256(stranger, "k2")}})
            with pytest.raises(ConnectionClosed) as closed:
                await client.receive()
            assert close_reason(closed.value).code == 3500

        # The endpoint goes down: cached keys keep working.
        await trio.to_thread.run_sync(httpd.shutdown)
        async with open_raw(ws_url(server)) as client:
            assert "connect" in await client.connect(_rs256(new_key, "k2"))
        nursery.cancel_scope.cancel()
