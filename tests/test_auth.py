"""Tests for aether_trio.auth: algorithms, key selection, time checks, claim mapping, robustness."""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import json
import logging
import random
import time
import warnings
from typing import Any

import attrs
import jwt
import orjson
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import NameOID

from aether_trio.auth import tokens as auth
from aether_trio.auth.tokens import (
    ChannelOverride,
    ServerSubscription,
    TokenError,
    TokenExpired,
    TokenInvalid,
    TokenVerifier,
    mint_token,
)
from aether_trio.config import TokenConfig

SECRET = "test-hmac-secret-long-enough-for-hs512-0123456789abcdefghijklmnopqrstuv"
OTHER_SECRET = "another-hmac-secret-long-enough-for-hs512-0123456789abcdefghijklmnopq"
NOW = 1_700_000_000.0

ALGORITHMS = [
    "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "EdDSA",
]  # fmt: skip
KEY_KIND = {"RS": "rsa", "ES256": "p256", "ES384": "p384", "ES512": "p521", "EdDSA": "ed25519"}
CONFIG_FIELD = {"rsa": "rsa_public_key", "ed25519": "ed25519_public_key"}


@attrs.frozen
class KeyPair:
    private: str
    public: str
    key: Any  # the private key object


def _pair(key: Any) -> KeyPair:
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return KeyPair(private, public, key)


@pytest.fixture(scope="session")
def keys() -> dict[str, KeyPair]:
    return {
        "rsa": _pair(rsa.generate_private_key(public_exponent=65537, key_size=2048)),
        "rsa2": _pair(rsa.generate_private_key(public_exponent=65537, key_size=2048)),
        "p256": _pair(ec.generate_private_key(ec.SECP256R1())),
        "p384": _pair(ec.generate_private_key(ec.SECP384R1())),
        "p521": _pair(ec.generate_private_key(ec.SECP521R1())),
        "k256": _pair(ec.generate_private_key(ec.SECP256K1())),
        "ed25519": _pair(ed25519.Ed25519PrivateKey.generate()),
        "ed448": _pair(ed448.Ed448PrivateKey.generate()),
    }


def kind_of(alg: str) -> str:
    return "hmac" if alg.startswith("HS") else KEY_KIND.get(alg, KEY_KIND.get(alg[:2], ""))


def config_for(alg: str, keys: dict[str, KeyPair], **options: Any) -> TokenConfig:
    kind = kind_of(alg)
    if kind == "hmac":
        return TokenConfig(hmac_secret=SECRET, **options)
    field = CONFIG_FIELD.get(kind, "ecdsa_public_key")
    fields: dict[str, Any] = {field: keys[kind].public, **options}
    return TokenConfig(**fields)


def signing_key(alg: str, keys: dict[str, KeyPair]) -> str:
    kind = kind_of(alg)
    return SECRET if kind == "hmac" else keys[kind].private


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def raw_token(header: Any, payload: Any, key: bytes = SECRET.encode()) -> str:
    """An HS256-signed token built by hand, so header and payload can be anything."""
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    signing_input = f"{b64url(orjson.dumps(header))}.{b64url(body)}"
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(signature)}"


HS256 = {"alg": "HS256", "typ": "JWT"}


@pytest.fixture
def verifier() -> TokenVerifier:
    return TokenVerifier(TokenConfig(hmac_secret=SECRET))


def connect(claims: dict[str, Any], now: float = NOW, **options: Any) -> auth.ConnectCredentials:
    verifier = TokenVerifier(TokenConfig(hmac_secret=SECRET, **options))
    return verifier.verify_connect(mint_token(SECRET, claims), now=now)


def subscribe(claims: dict[str, Any], now: float = NOW, **options: Any) -> auth.SubscribeClaims:
    verifier = TokenVerifier(TokenConfig(hmac_secret=SECRET, **options))
    return verifier.verify_subscribe(mint_token(SECRET, claims), now=now)


def verify(kind: str, claims: dict[str, Any], now: float = NOW, **options: Any) -> Any:
    if kind == "subscribe":
        return subscribe({"channel": "news", **claims}, now, **options)
    return connect(claims, now, **options)


def test_public_api() -> None:
    assert sorted(auth.__all__) == [
        "ChannelOverride",
        "ConnectCredentials",
        "ServerSubscription",
        "SubscribeClaims",
        "TokenError",
        "TokenExpired",
        "TokenInvalid",
        "TokenVerifier",
        "mint_token",
    ]
    assert issubclass(TokenExpired, TokenError)
    assert issubclass(TokenInvalid, TokenError)
    assert not issubclass(TokenExpired, TokenInvalid)


# --- algorithms and keys -----------------------------------------------------------------------


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_every_algorithm_is_accepted(alg: str, keys: dict[str, KeyPair]) -> None:
    verifier = TokenVerifier(config_for(alg, keys))
    token = mint_token(signing_key(alg, keys), {"sub": "42"}, alg)
    assert jwt.get_unverified_header(token)["alg"] == alg
    assert verifier.verify_connect(token, now=NOW).user == "42"
    assert verifier.verify_subscribe(
        mint_token(signing_key(alg, keys), {"sub": "42", "channel": "c"}, alg), now=NOW
    ) == auth.SubscribeClaims("42", "c", "", None, b"", b"", None)


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_algorithm_outside_the_allow_list_is_invalid(alg: str, keys: dict[str, KeyPair]) -> None:
    others = tuple(a for a in ALGORITHMS if a != alg)
    all_keys = TokenConfig(
        hmac_secret=SECRET,
        rsa_public_key=keys["rsa"].public,
        ecdsa_public_key=keys[kind_of(alg) if alg.startswith("ES") else "p256"].public,
        ed25519_public_key=keys["ed25519"].public,
    )
    token = mint_token(signing_key(alg, keys), {"sub": "42"}, alg)
    assert TokenVerifier(all_keys).verify_connect(token, now=NOW).user == "42"  # control
    with pytest.raises(TokenInvalid, match="not allowed"):
        TokenVerifier(attrs.evolve(all_keys, algorithms=others)).verify_connect(token, now=NOW)


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_algorithm_without_a_configured_key_is_invalid(alg: str, keys: dict[str, KeyPair]) -> None:
    other = "EdDSA" if alg.startswith("HS") else "HS256"
    token = mint_token(signing_key(alg, keys), {"sub": "42"}, alg)
    with pytest.raises(TokenInvalid, match="not allowed"):
        TokenVerifier(config_for(other, keys)).verify_connect(token, now=NOW)


@pytest.mark.parametrize(
    ("alg", "signer"),
    [("ES384", "p384"), ("ES512", "p521"), ("ES256", "p256")],
)
def test_ecdsa_key_serves_only_its_own_curve(
    alg: str, signer: str, keys: dict[str, KeyPair]
) -> None:
    token = mint_token(keys[signer].private, {"sub": "42"}, alg)
    for configured in ("p256", "p384", "p521"):
        verifier = TokenVerifier(TokenConfig(ecdsa_public_key=keys[configured].public))
        if configured == signer:
            assert verifier.verify_connect(token, now=NOW).user == "42"
        else:
            with pytest.raises(TokenInvalid):
                verifier.verify_connect(token, now=NOW)


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "", "HS1024", "ES521", "ES256K", "PS256"])
def test_none_and_unknown_algorithms_are_invalid(alg: str, keys: dict[str, KeyPair]) -> None:
    verifier = TokenVerifier(
        TokenConfig(
            hmac_secret=SECRET,
            rsa_public_key=keys["rsa"].public,
            ecdsa_public_key=keys["p521"].public,
        )
    )
    header = b64url(orjson.dumps({"alg": alg, "typ": "JWT"}))
    payload = b64url(orjson.dumps({"sub": "admin"}))
    unsigned = f"{header}.{payload}."
    with pytest.raises(TokenInvalid, match="unsupported algorithm"):
        verifier.verify_connect(unsigned, now=NOW)
    if alg in {"PS256", "ES521"}:  # really signed by PyJWT with the configured family's key
        key = keys["rsa" if alg == "PS256" else "p521"].key
        with pytest.raises(TokenInvalid, match="unsupported algorithm"):
            verifier.verify_connect(jwt.encode({"sub": "admin"}, key, alg), now=NOW)


@pytest.mark.parametrize("alg", [None, 256, ["HS256"], {"HS256": 1}, True])
def test_non_string_alg_header_is_invalid(alg: Any, verifier: TokenVerifier) -> None:
    header: dict[str, Any] = {"typ": "JWT"} if alg is None else {"alg": alg, "typ": "JWT"}
    with pytest.raises(TokenInvalid):
        verifier.verify_connect(raw_token(header, {"sub": "42"}), now=NOW)


@pytest.mark.parametrize("with_hmac", [True, False])
def test_algorithm_confusion_rsa_public_key_as_hmac_secret(
    with_hmac: bool, keys: dict[str, KeyPair]
) -> None:
    config = TokenConfig(rsa_public_key=keys["rsa"].public, hmac_secret=SECRET if with_hmac else "")
    verifier = TokenVerifier(config)
    forged = raw_token(HS256, {"sub": "admin"}, key=keys["rsa"].public.encode())
    with pytest.raises(TokenInvalid):
        verifier.verify_connect(forged, now=NOW)
    if with_hmac:  # control: the same hand-built token with the real secret passes
        assert verifier.verify_connect(raw_token(HS256, {"sub": "a"}), now=NOW).user == "a"


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_wrong_signature_is_invalid(alg: str, keys: dict[str, KeyPair]) -> None:
    verifier = TokenVerifier(config_for(alg, keys))
    wrong = {"rsa": "rsa2", "p256": "p256", "p384": "p384", "p521": "p521", "ed25519": "ed25519"}
    kind = kind_of(alg)
    if kind == "hmac":
        other_key = OTHER_SECRET
    elif kind == "rsa":
        other_key = keys[wrong[kind]].private
    else:  # a fresh key of the same type
        fresh = (
            ed25519.Ed25519PrivateKey.generate()
            if kind == "ed25519"
            else ec.generate_private_key(keys[kind].key.curve)
        )
        other_key = _pair(fresh).private
    with pytest.raises(TokenInvalid, match="bad signature"):
        verifier.verify_connect(mint_token(other_key, {"sub": "42"}, alg), now=NOW)
    # A valid signature moved onto another payload does not verify either.
    good = mint_token(signing_key(alg, keys), {"sub": "42"}, alg).split(".")
    evil = mint_token(signing_key(alg, keys), {"sub": "admin"}, alg).split(".")
    with pytest.raises(TokenInvalid, match="bad signature"):
        verifier.verify_connect(f"{good[0]}.{evil[1]}.{good[2]}", now=NOW)


def test_previous_hmac_secret_is_accepted_during_rotation() -> None:
    rotating = TokenVerifier(TokenConfig(hmac_secret=SECRET, hmac_previous_secret=OTHER_SECRET))
    only_new = TokenVerifier(TokenConfig(hmac_secret=SECRET))
    for alg in ("HS256", "HS384", "HS512"):
        old = mint_token(OTHER_SECRET, {"sub": "old"}, alg)
        assert rotating.verify_connect(old, now=NOW).user == "old"
        assert rotating.verify_connect(mint_token(SECRET, {"sub": "new"}, alg)).user == "new"
        with pytest.raises(TokenInvalid):
            only_new.verify_connect(old, now=NOW)
        with pytest.raises(TokenInvalid):
            rotating.verify_connect(mint_token("third-secret" * 4, {"sub": "x"}, alg), now=NOW)


def test_short_keys_work_without_warnings(caplog: pytest.LogCaptureFixture) -> None:
    weak_rsa = _pair(rsa.generate_private_key(public_exponent=65537, key_size=1024))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PyJWT's InsecureKeyLengthWarning must not fire per token
        with caplog.at_level(logging.WARNING, logger="aether_trio.auth"):
            verifier = TokenVerifier(
                TokenConfig(hmac_secret="s3cr3t", rsa_public_key=weak_rsa.public)
            )
        assert "shorter than 32 bytes" in caplog.text
        assert "s3cr3t" not in caplog.text
        for alg in ("HS256", "HS512"):
            assert verifier.verify_connect(mint_token("s3cr3t", {"sub": "1"}, alg)).user == "1"
        assert verifier.verify_connect(mint_token(weak_rsa.private, {"sub": "2"}, "RS256")).user
    assert issubclass(jwt.InsecureKeyLengthWarning, UserWarning)  # what this test guards against


def test_rsa_certificate_is_accepted_as_public_key(keys: dict[str, KeyPair]) -> None:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "aether-test")])
    start = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(keys["rsa"].key.public_key())
        .serial_number(1)
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=1))
        .sign(keys["rsa"].key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    verifier = TokenVerifier(TokenConfig(rsa_public_key=pem))
    token = mint_token(keys["rsa"].private, {"sub": "42"}, "RS256")
    assert verifier.verify_connect(token, now=NOW).user == "42"


# --- malformed tokens --------------------------------------------------------------------------

GARBAGE = [
    "",
    " ",
    "abc",
    "a.b",
    "a.b.c",
    "a.b.c.d",
    "....",
    "...",
    "eyJ.eyJ.sig",
    "ü.ü.ü",
    "\x00.\x00.\x00",
    "\ud800.\ud800.\ud800",  # not encodable as UTF-8
    "a" * 10_000,
    ".".join(["eyJhbGciOiJIUzI1NiJ9"] * 3),
    "eyJhbGciOiJIUzI1NiJ9.e30",
    b64url(b"not json") + "." + b64url(b"{}") + ".",
    b64url(b"[1,2]") + "." + b64url(b"{}") + ".",
    b64url(b'"HS256"') + "." + b64url(b"{}") + ".",
    b64url(b"{" * 5000) + "." + b64url(b"{}") + ".",
    b64url(b'{"alg":"HS256"}') + "=." + b64url(b"{}") + ".",
    b64url(b'{"alg":"HS256"}') + ".!!!." + b64url(b"x"),
    b64url(b'{"alg":"HS256","kid":5}') + "." + b64url(b"{}") + ".",
    b64url(b'{"alg":"HS256","crit":["exp"]}') + "." + b64url(b"{}") + ".",
    b64url(b'{"alg":"HS256","b64":false,"crit":["b64"]}') + ".." + b64url(b"x"),
]


@pytest.mark.parametrize("token", GARBAGE)
def test_garbage_tokens_are_invalid(token: str, verifier: TokenVerifier) -> None:
    with pytest.raises(TokenInvalid):
        verifier.verify_connect(token, now=NOW)
    with pytest.raises(TokenInvalid):
        verifier.verify_subscribe(token, now=NOW)


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        b"[1, 2]",
        b'"claims"',
        b"42",
        b"null",
        b"",
        b"{" * 2000,
        b"\xff\xfe",
        b"{'a': 1}",
    ],
)
def test_signed_payload_that_is_not_a_json_object_is_invalid(
    payload: bytes, verifier: TokenVerifier
) -> None:
    with pytest.raises(TokenInvalid, match="claims"):
        verifier.verify_connect(raw_token(HS256, payload), now=NOW)


@pytest.mark.parametrize("seed", range(8))
def test_mutated_tokens_raise_only_token_errors(seed: int, keys: dict[str, KeyPair]) -> None:
    rng = random.Random(seed)
    alg = ALGORITHMS[seed % len(ALGORITHMS)]
    verifier = TokenVerifier(config_for(alg, keys))
    token = mint_token(signing_key(alg, keys), {"sub": "42", "info": {"a": [1]}}, alg)
    alphabet = "AZaz09-_.=+/!é\x00 "
    for _ in range(200):
        chars = list(token)
        for _ in range(rng.randint(1, 4)):
            pos = rng.randrange(len(chars))
            op = rng.choice(("replace", "delete", "insert"))
            if op == "replace":
                chars[pos] = rng.choice(alphabet)
            elif op == "delete":
                del chars[pos]
            else:
                chars.insert(pos, rng.choice(alphabet))
        mutated = "".join(chars)
        if mutated != token:
            with pytest.raises(TokenError):  # anything else escaping fails the test
                verifier.verify_connect(mutated, now=NOW)


CLAIM_NAMES = [
    "sub", "exp", "nbf", "iat", "jti", "aud", "iss", "info", "b64info", "data", "b64data",
    "channels", "subs", "meta", "expire_at", "channel", "client", "override",
]  # fmt: skip
CLAIM_VALUES: list[Any] = [
    None, True, 0, -1, 1.5, 2**70, "", "x", "aGk=", "bnVsbA==", "e30=", [], ["a", 1], ["a"],
    {}, {"value": True}, {"presence": {"value": 1}}, {"presence": {"value": True}},
    {"a": {"b": []}}, {"a": None}, {"a": {"info": 1, "b64data": "!"}},
]  # fmt: skip


@pytest.mark.parametrize("seed", range(4))
def test_signed_random_claims_raise_only_token_errors(seed: int, verifier: TokenVerifier) -> None:
    rng = random.Random(seed)
    outcomes: set[str] = set()
    for _ in range(400):
        names = rng.sample(CLAIM_NAMES, rng.randint(1, 6))
        token = raw_token(HS256, {name: rng.choice(CLAIM_VALUES) for name in names})
        for method in (verifier.verify_connect, verifier.verify_subscribe):
            try:
                method(token, now=NOW)
                outcomes.add("ok")
            except TokenError as exc:
                outcomes.add(type(exc).__name__)
    assert outcomes == {"ok", "TokenInvalid", "TokenExpired"}


def test_error_messages_never_contain_the_token_or_key(keys: dict[str, KeyPair]) -> None:
    verifier = TokenVerifier(TokenConfig(hmac_secret=SECRET))
    tokens = [
        *GARBAGE,
        mint_token(OTHER_SECRET, {"sub": "x"}),
        mint_token(SECRET, {"sub": 1}),
        mint_token(SECRET, {"exp": NOW - 1}),
        mint_token(SECRET, {"b64info": "!!!"}),
        raw_token({"alg": "none-secret-looking-value"}, {}),
    ]
    for token in tokens:
        with pytest.raises(TokenError) as info:
            verifier.verify_connect(token, now=NOW)
        message = str(info.value)
        assert 0 < len(message) <= 60
        assert SECRET not in message
        assert "secret" not in message
        assert token not in message or len(token) < 4
        assert all(part not in message for part in token.split(".") if len(part) > 3)


# --- time checks -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["connect", "subscribe"])
@pytest.mark.parametrize(
    ("claims", "now", "leeway", "expired"),
    [
        ({"exp": 1000}, 999.9, 0, False),
        ({"exp": 1000}, 1000, 0, True),
        ({"exp": 1000}, 5000, 0, True),
        ({"exp": 1000}, 1004.9, 5, False),
        ({"exp": 1000}, 1005, 5, True),
        ({"exp": 1000.5}, 1000.4, 0, False),
        ({"nbf": 1000}, 999.9, 0, True),
        ({"nbf": 1000}, 1000, 0, False),
        ({"nbf": 1000}, 995, 5, False),
        ({"nbf": 1000}, 994.9, 5, True),
        ({"nbf": 1000, "exp": 2000}, 1500, 0, False),
        ({"nbf": 3000, "exp": 2000}, 1500, 0, True),
        ({"iat": 9999}, 1000, 0, False),  # iat is not a time check
        ({}, 10**12, 0, False),
    ],
)
def test_exp_and_nbf_with_leeway(
    kind: str, claims: dict[str, Any], now: float, leeway: float, expired: bool
) -> None:
    if expired:
        with pytest.raises(TokenExpired):
            verify(kind, claims, now, leeway=leeway)
    else:
        verify(kind, claims, now, leeway=leeway)


def test_now_defaults_to_the_wall_clock(verifier: TokenVerifier) -> None:
    assert verifier.verify_connect(mint_token(SECRET, {"exp": time.time() + 60})).user == ""
    with pytest.raises(TokenExpired):
        verifier.verify_connect(mint_token(SECRET, {"exp": time.time() - 60}))
    with pytest.raises(TokenExpired):
        verifier.verify_connect(mint_token(SECRET, {"nbf": time.time() + 60}))


@pytest.mark.parametrize(
    "claims",
    [{"sub": 5}, {"channel": "news"}, {"aud": 5}, {"b64info": "%%"}, {"expire_at": "soon"}],
)
def test_invalid_beats_expired(claims: dict[str, Any], verifier: TokenVerifier) -> None:
    with pytest.raises(TokenInvalid):
        verifier.verify_connect(mint_token(SECRET, {"exp": NOW - 100, **claims}), now=NOW)


# --- aud / iss ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["connect", "subscribe"])
@pytest.mark.parametrize(
    ("configured", "claims", "ok"),
    [
        ({}, {}, True),
        ({}, {"aud": "anything", "iss": "anyone"}, True),
        ({"audience": "aether"}, {"aud": "aether"}, True),
        ({"audience": "aether"}, {"aud": ["other", "aether"]}, True),
        ({"audience": "aether"}, {"aud": "other"}, False),
        ({"audience": "aether"}, {"aud": ["other"]}, False),
        ({"audience": "aether"}, {"aud": []}, False),
        ({"audience": "aether"}, {}, False),
        ({"issuer": "https://auth"}, {"iss": "https://auth"}, True),
        ({"issuer": "https://auth"}, {"iss": "https://evil"}, False),
        ({"issuer": "https://auth"}, {}, False),
        ({"audience": "a", "issuer": "i"}, {"aud": "a", "iss": "i"}, True),
        ({"audience": "a", "issuer": "i"}, {"aud": "a", "iss": "x"}, False),
        ({}, {"aud": 5}, False),
        ({}, {"aud": ["a", 5]}, False),
        ({}, {"aud": {"a": 1}}, False),
        ({}, {"iss": 5}, False),
    ],
)
def test_audience_and_issuer(
    kind: str, configured: dict[str, Any], claims: dict[str, Any], ok: bool
) -> None:
    if ok:
        verify(kind, claims, **configured)
    else:
        with pytest.raises(TokenInvalid):
            verify(kind, claims, **configured)


# --- claim types -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["connect", "subscribe"])
@pytest.mark.parametrize(
    "claims",
    [
        {"sub": 42},
        {"sub": 4.2},
        {"sub": True},
        {"sub": ["a"]},
        {"sub": {"id": "a"}},
        {"jti": 5},
        {"exp": "2030-01-01"},
        {"exp": True},
        {"nbf": "1"},
        {"iat": "1"},
        {"iat": [1]},
        {"expire_at": 1.5},
        {"expire_at": "0"},
        {"expire_at": False},
        {"info": {"a": 1}, "b64info": 5},
        {"b64data": ["x"]},
        {"override": 5},
        {"override": {"presence": True}},
        {"override": {"presence": {"value": "yes"}}},
        {"override": {"join_leave": {"value": 1}}},
        {"b64info": "not base64!"},
        {"b64info": "aGk"},  # bad padding
        {"b64info": b64url(b"not json")},
        {"b64data": base64.b64encode(b"{broken").decode()},
        {"b64info": "w6k="},  # valid base64, not UTF-8 JSON
        {"b64info": "w6k=é"},  # not ASCII
    ],
)
def test_wrong_claim_types_are_invalid(kind: str, claims: dict[str, Any]) -> None:
    if kind == "connect" and set(claims) & {"data", "b64data", "override"}:
        claims = {"subs": {"chan": claims}}
    with pytest.raises(TokenInvalid):
        verify(kind, claims)


@pytest.mark.parametrize("channel", ["news", "", "$private"])
def test_channel_claim_in_connection_token_is_invalid(channel: str) -> None:
    with pytest.raises(TokenInvalid, match="channel"):
        connect({"sub": "42", "channel": channel})


def test_null_claims_count_as_absent() -> None:
    creds = connect({"sub": None, "channel": None, "info": None, "meta": None, "exp": None})
    assert creds == auth.ConnectCredentials("", None, b"", {}, None, None, "")


@pytest.mark.parametrize("claims", [{}, {"channel": ""}, {"channel": 5}, {"channels": ["news"]}])
def test_subscription_token_without_channel_is_invalid(claims: dict[str, Any]) -> None:
    with pytest.raises(TokenInvalid):
        subscribe({"sub": "42", **claims})


def test_connection_token_is_not_a_subscription_token_and_vice_versa(
    verifier: TokenVerifier,
) -> None:
    connection = mint_token(SECRET, {"sub": "42"})
    subscription = mint_token(SECRET, {"sub": "42", "channel": "news"})
    with pytest.raises(TokenInvalid):
        verifier.verify_subscribe(connection, now=NOW)
    with pytest.raises(TokenInvalid):
        verifier.verify_connect(subscription, now=NOW)


# --- separate subscription key set -------------------------------------------------------------


def test_separate_subscription_key_set(keys: dict[str, KeyPair]) -> None:
    verifier = TokenVerifier(
        TokenConfig(hmac_secret=SECRET),
        TokenConfig(ed25519_public_key=keys["ed25519"].public, audience="subs", leeway=10),
    )
    sub_claims = {"sub": "42", "channel": "news", "aud": "subs", "exp": NOW - 5}
    good = mint_token(keys["ed25519"].private, sub_claims, "EdDSA")
    assert verifier.verify_subscribe(good, now=NOW).channel == "news"  # its own leeway
    with pytest.raises(TokenInvalid):  # its own audience
        verifier.verify_subscribe(
            mint_token(keys["ed25519"].private, {**sub_claims, "aud": "x"}, "EdDSA"), now=NOW
        )
    with pytest.raises(TokenInvalid):  # the connection keys do not sign subscription tokens
        verifier.verify_subscribe(mint_token(SECRET, sub_claims), now=NOW)
    with pytest.raises(TokenInvalid):  # and the subscription keys do not sign connection tokens
        verifier.verify_connect(mint_token(keys["ed25519"].private, {"sub": "1"}, "EdDSA"))
    assert verifier.verify_connect(mint_token(SECRET, {"sub": "1"}), now=NOW).user == "1"


@pytest.mark.parametrize("subscription", [None, TokenConfig(), TokenConfig(audience="ignored")])
def test_subscription_tokens_fall_back_to_connection_keys(subscription: Any) -> None:
    verifier = TokenVerifier(TokenConfig(hmac_secret=SECRET, issuer="me"), subscription)
    token = mint_token(SECRET, {"sub": "42", "channel": "news", "iss": "me"})
    assert verifier.verify_subscribe(token, now=NOW).user == "42"
    with pytest.raises(TokenInvalid):  # the connection config's issuer applies too
        verifier.verify_subscribe(mint_token(SECRET, {"channel": "news"}), now=NOW)


@pytest.mark.parametrize(
    ("config", "enabled"),
    [
        (TokenConfig(), False),
        (TokenConfig(audience="a", leeway=5), False),
        (TokenConfig(hmac_secret=SECRET), True),
    ],
)
def test_enabled(config: TokenConfig, enabled: bool) -> None:
    assert TokenVerifier(config).enabled is enabled
    assert TokenVerifier(TokenConfig(), config).enabled is False


# --- configuration errors at construction ------------------------------------------------------


@pytest.mark.parametrize(
    ("section", "field", "value", "message"),
    [
        ("token", "rsa_public_key", "garbage", "token.rsa_public_key: not a PEM public key"),
        ("token", "rsa_public_key", "p256", "token.rsa_public_key: not an RSA public key"),
        ("token", "rsa_public_key", "rsa-private", "token.rsa_public_key: not a PEM public key"),
        ("token", "ecdsa_public_key", "rsa", "token.ecdsa_public_key: not a P-256, P-384"),
        ("token", "ecdsa_public_key", "k256", "token.ecdsa_public_key: not a P-256, P-384"),
        ("token", "ed25519_public_key", "ed448", "token.ed25519_public_key: not an Ed25519"),
        ("token", "ed25519_public_key", "p256", "token.ed25519_public_key: not an Ed25519"),
        ("token", "hmac_secret", "rsa", "token.hmac_secret: looks like a PEM/SSH key"),
        ("subscription_token", "rsa_public_key", "x", "subscription_token.rsa_public_key: not"),
        ("subscription_token", "ed25519_public_key", "rsa", "subscription_token.ed25519_publ"),
    ],
)
def test_bad_keys_fail_at_construction(
    section: str, field: str, value: str, message: str, keys: dict[str, KeyPair]
) -> None:
    if value == "rsa-private":
        value = keys["rsa"].private
    elif value in keys:
        value = keys[value].public
    fields: dict[str, Any] = {field: value}
    config = TokenConfig(**fields)
    args = (config,) if section == "token" else (TokenConfig(hmac_secret=SECRET), config)
    with pytest.raises(ValueError, match="^" + message) as info:
        TokenVerifier(*args)
    assert "BEGIN" not in str(info.value)


def test_previous_secret_without_current_secret_fails() -> None:
    with pytest.raises(ValueError, match=r"^token\.hmac_previous_secret"):
        TokenVerifier(TokenConfig(hmac_previous_secret=SECRET))


def test_keys_without_any_allowed_algorithm_fail(keys: dict[str, KeyPair]) -> None:
    with pytest.raises(ValueError, match=r"^token\.algorithms"):
        TokenVerifier(TokenConfig(hmac_secret=SECRET, algorithms=("RS256",)))
    with pytest.raises(ValueError, match=r"^token\.algorithms"):  # a P-256 key serves ES256 only
        TokenVerifier(TokenConfig(ecdsa_public_key=keys["p256"].public, algorithms=("ES384",)))


# --- claim mapping -----------------------------------------------------------------------------

INFO = {"name": "Alice", "bio": "line one\nline two", "tags": [1, 2.5, None, True], "n": {}}


def b64(value: Any, pretty: bool = True) -> str:
    text = orjson.dumps(value, option=orjson.OPT_INDENT_2 if pretty else 0)
    return base64.b64encode(text).decode()


@pytest.mark.parametrize(
    ("claims", "expected"),
    [
        ({}, b""),
        ({"info": INFO}, orjson.dumps(INFO)),
        ({"info": "text"}, b'"text"'),
        ({"info": 0}, b"0"),
        ({"info": []}, b"[]"),
        ({"b64info": b64(INFO)}, orjson.dumps(INFO)),
        ({"b64info": b64(INFO), "info": {"loses": True}}, orjson.dumps(INFO)),
        ({"b64info": "", "info": {"wins": True}}, b'{"wins":true}'),
    ],
)
def test_info_and_b64info(claims: dict[str, Any], expected: bytes) -> None:
    creds = connect(claims)
    sub = subscribe({"channel": "c", **claims})
    assert creds.info == sub.info == expected
    assert b"\n" not in creds.info


def test_data_and_b64data_in_subscription_token() -> None:
    assert subscribe({"channel": "c", "data": {"x": [1]}}).data == b'{"x":[1]}'
    assert subscribe({"channel": "c", "b64data": b64({"y": 2}), "data": 1}).data == b'{"y":2}'
    assert subscribe({"channel": "c"}).data == b""


@pytest.mark.parametrize(
    ("claims", "expected"),
    [
        ({}, {}),
        ({"channels": []}, {}),
        ({"channels": ["b", "a", "b"]}, {"b": ServerSubscription(), "a": ServerSubscription()}),
        ({"subs": {"x": {}}, "channels": ["y"]}, {"x": ServerSubscription()}),
        ({"subs": {}, "channels": ["y"]}, {"y": ServerSubscription()}),
        ({"subs": {"x": None}}, {"x": ServerSubscription()}),
        (
            {
                "subs": {
                    "z": {"info": INFO, "b64data": b64([1, 2])},
                    "a": {
                        "b64info": b64("hi"),
                        "data": {"d": 1},
                        "override": {
                            "presence": {"value": True},
                            "join_leave": {"value": False},
                            "force_recovery": {},
                            "force_positioning": None,
                            "unknown_flag": {"value": True},
                        },
                    },
                }
            },
            {
                "z": ServerSubscription(info=orjson.dumps(INFO), data=b"[1,2]"),
                "a": ServerSubscription(
                    info=b'"hi"',
                    data=b'{"d":1}',
                    override=ChannelOverride(presence=True, join_leave=False, force_recovery=False),
                ),
            },
        ),
    ],
)
def test_channels_and_subs(claims: dict[str, Any], expected: dict[str, ServerSubscription]) -> None:
    subs = connect(claims).subs
    assert dict(subs) == expected
    assert list(subs) == list(expected)  # token order is kept
    with pytest.raises(TypeError):
        subs["new"] = ServerSubscription()  # type: ignore[index]


@pytest.mark.parametrize(
    "claims",
    [
        {"channels": "news"},
        {"channels": ["news", 5]},
        {"channels": {"news": {}}},
        {"subs": ["news"]},
        {"subs": {"news": 5}},
        {"subs": {"news": ["x"]}},
        {"subs": {"news": {"info": 1, "b64info": "%"}}},
        {"subs": {"news": {"override": {"force_positioning": {"value": None}}}}},
        {"subs": {"news": {}}, "channels": [1]},
    ],
)
def test_bad_channels_and_subs_are_invalid(claims: dict[str, Any]) -> None:
    with pytest.raises(TokenInvalid):
        connect(claims)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (None, None),
        ({}, ChannelOverride()),
        ({"presence": {"value": False}}, ChannelOverride(presence=False)),
        (
            {name: {"value": True} for name in attrs.fields_dict(ChannelOverride)},
            ChannelOverride(True, True, True, True, True),
        ),
    ],
)
def test_override_in_subscription_token(override: Any, expected: ChannelOverride | None) -> None:
    assert subscribe({"channel": "c", "override": override}).override == expected


@pytest.mark.parametrize("meta", [{"plan": "pro", "limits": [1, {"a": None}]}, [1], "x", 0, False])
def test_meta_is_parsed_json(meta: Any) -> None:
    assert connect({"meta": meta}).meta == meta
    assert connect({}).meta is None


@pytest.mark.parametrize("kind", ["connect", "subscribe"])
@pytest.mark.parametrize(
    ("claims", "expire_at"),
    [
        ({}, None),
        ({"exp": NOW + 100}, int(NOW) + 100),
        ({"exp": NOW + 100.9}, int(NOW) + 100),
        ({"exp": NOW + 100, "expire_at": 0}, None),
        ({"expire_at": 0}, None),
        ({"exp": NOW + 100, "expire_at": int(NOW) + 5000}, int(NOW) + 5000),
        ({"expire_at": int(NOW) - 5000}, int(NOW) - 5000),  # not a validity check
        ({"exp": NOW + 100, "expire_at": -1}, None),
    ],
)
def test_expire_at(kind: str, claims: dict[str, Any], expire_at: int | None) -> None:
    assert verify(kind, claims).expire_at == expire_at


def test_full_connection_token() -> None:
    claims = {
        "sub": "user-1",
        "exp": NOW + 60,
        "iat": NOW - 1.5,
        "jti": "token-7",
        "info": INFO,
        "channels": ["ignored"],
        "subs": {"personal:user-1": {"data": {"welcome": True}}},
        "meta": {"tenant": 3},
    }
    assert connect(claims) == auth.ConnectCredentials(
        user="user-1",
        expire_at=int(NOW) + 60,
        info=orjson.dumps(INFO),
        subs={"personal:user-1": ServerSubscription(data=b'{"welcome":true}')},
        meta={"tenant": 3},
        issued_at=int(NOW) - 2,
        token_id="token-7",
    )


def test_full_subscription_token() -> None:
    claims = {
        "sub": "user-1",
        "channel": "chat:1",
        "client": "c-1",
        "exp": NOW + 60,
        "expire_at": 0,
        "b64info": b64({"role": "mod"}),
        "data": ["d"],
        "override": {"join_leave": {"value": True}},
    }
    assert subscribe(claims) == auth.SubscribeClaims(
        user="user-1",
        channel="chat:1",
        client="c-1",
        expire_at=None,
        info=b'{"role":"mod"}',
        data=b'["d"]',
        override=ChannelOverride(join_leave=True),
    )


# --- mint_token ----------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_mint_token_round_trip(alg: str, keys: dict[str, KeyPair]) -> None:
    claims = {"sub": "ü-42", "exp": NOW + 10, "info": INFO, "meta": {"m": [1]}}
    token = mint_token(signing_key(alg, keys), claims, alg)
    creds = TokenVerifier(config_for(alg, keys)).verify_connect(token, now=NOW)
    assert (creds.user, creds.info, creds.meta) == ("ü-42", orjson.dumps(INFO), {"m": [1]})
    # PyJWT, used independently, agrees with the signature.
    key = SECRET if alg.startswith("HS") else keys[kind_of(alg)].key.public_key()
    decoded = jwt.decode(token, key, algorithms=[alg], options={"verify_exp": False})
    assert decoded == claims


@pytest.mark.parametrize(
    ("secret", "alg"),
    [
        (SECRET, "none"),
        (SECRET, "PS256"),
        (SECRET, "RS256"),  # an HMAC secret is not a PEM private key
        ("p384", "ES256"),  # wrong curve for the algorithm
        ("rsa", "EdDSA"),
        ("rsa", "HS256"),  # a PEM key is refused as an HMAC secret
    ],
)
def test_mint_token_refuses_bad_input(secret: str, alg: str, keys: dict[str, KeyPair]) -> None:
    if secret in keys:
        secret = keys[secret].private
    with pytest.raises(ValueError, match=r".") as info:  # any message, checked below
        mint_token(secret, {"sub": "1"}, alg)
    assert "BEGIN" not in str(info.value)
    assert SECRET not in str(info.value)
