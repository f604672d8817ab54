"""The verified-connection-token table (`TokenVerifier.verify_connect`): a token presented again
(a reconnect storm) is not verified again, yet expires, is dropped with the keys, is never
mistaken for another token, and the table stays bounded."""

from __future__ import annotations

import time
from typing import Any

import pytest
from conftest import SECRET

from aether_trio.auth import tokens
from aether_trio.auth.tokens import TokenExpired, TokenInvalid, TokenVerifier, mint_token
from aether_trio.config import TokenConfig


def mint(secret: str = SECRET, **claims: Any) -> str:
    return mint_token(secret, {"sub": "u", **claims})


def counting(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every full verification (signature and claims) the verifiers do."""
    verified: list[str] = []
    real = tokens._decode

    def decode(token: str, *args: Any) -> dict[str, Any]:
        verified.append(token)
        return real(token, *args)

    monkeypatch.setattr(tokens, "_decode", decode)
    return verified


def test_a_token_presented_again_is_not_verified_again(monkeypatch: pytest.MonkeyPatch) -> None:
    verified = counting(monkeypatch)
    verifier = TokenVerifier(TokenConfig(hmac_secret=SECRET))
    token = mint(info={"n": 1}, channels=["a"])
    first = verifier.verify_connect(token)
    again = verifier.verify_connect(token)
    assert again == first
    assert first.user == "u"
    assert verified == [token]


def test_a_remembered_token_still_expires() -> None:
    verifier = TokenVerifier(TokenConfig(hmac_secret=SECRET))
    now = time.time()
    token = mint(exp=int(now) + 10, nbf=int(now) - 5)
    verifier.verify_connect(token, now=now)
    with pytest.raises(TokenExpired, match="expired"):
        verifier.verify_connect(token, now=now + 11)
    with pytest.raises(TokenExpired, match="not valid yet"):
        verifier.verify_connect(token, now=now - 10)


def test_a_refused_token_is_refused_every_time(monkeypatch: pytest.MonkeyPatch) -> None:
    verified = counting(monkeypatch)
    verifier = TokenVerifier(TokenConfig(hmac_secret=SECRET))
    forged = mint("another-secret-0123456789abcdef0123")
    for _ in range(2):
        with pytest.raises(TokenInvalid, match="bad signature"):
            verifier.verify_connect(forged)
    assert verified == [forged, forged]
    with pytest.raises(TokenInvalid, match="channel"):
        verifier.verify_connect(mint(channel="$c"))


def test_a_token_with_a_remembered_signature_and_other_claims_is_refused() -> None:
    verifier = TokenVerifier(TokenConfig(hmac_secret=SECRET))
    token = mint(sub="alice")
    verifier.verify_connect(token)
    header, _payload, signature = token.split(".")
    other_payload = mint(sub="mallory").split(".")[1]
    with pytest.raises(TokenInvalid, match="bad signature"):
        verifier.verify_connect(f"{header}.{other_payload}.{signature}")


def test_a_new_verifier_after_a_key_rotation_remembers_nothing() -> None:
    token = mint()
    TokenVerifier(TokenConfig(hmac_secret=SECRET)).verify_connect(token)
    rotated = TokenVerifier(TokenConfig(hmac_secret="rotated-secret-0123456789abcdef0123"))
    with pytest.raises(TokenInvalid, match="bad signature"):
        rotated.verify_connect(token)


def test_the_table_is_bounded_and_keeps_the_newest(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tokens, "VERIFIED_TOKENS", 3)
    verifier = TokenVerifier(TokenConfig(hmac_secret=SECRET))
    minted = [mint(sub=f"u{n}") for n in range(5)]
    for token in minted:
        verifier.verify_connect(token)
    verified = counting(monkeypatch)
    for token in minted[2:]:
        verifier.verify_connect(token)
    assert verified == []  # the newest three are remembered
    verifier.verify_connect(minted[0])
    assert verified == [minted[0]]  # the oldest were dropped


def test_long_tokens_and_jwks_verifiers_are_not_remembered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    verified = counting(monkeypatch)
    long_token = mint(info={"pad": "x" * tokens.VERIFIED_TOKEN_MAX_LENGTH})
    verifier = TokenVerifier(TokenConfig(hmac_secret=SECRET))
    verifier.verify_connect(long_token)
    verifier.verify_connect(long_token)
    with_jwks = TokenVerifier(
        TokenConfig(hmac_secret=SECRET, jwks_url="http://127.0.0.1:9/.well-known/jwks.json")
    )
    token = mint()
    with_jwks.verify_connect(token)
    with_jwks.verify_connect(token)
    assert verified == [long_token, long_token, token, token]
