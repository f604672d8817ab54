"""JWKS as a key source: public keys fetched from an HTTPS endpoint, chosen by the token's `kid`.

The key set is loaded on first use and again when older than `refresh_interval`, by the command
that needs it. The endpoint is fetched in a worker thread (never blocking the event loop) and the
last good key set is kept: while the endpoint is down, tokens verify against the cached keys. A
token with an unknown `kid` triggers a refresh at most once per `min_refresh_interval`, so a flood
of made-up `kid`s cannot become a flood of requests to the identity provider. Only public key
types are accepted (RSA, EC, OKP/Ed25519): a symmetric `oct` key published in a JWKS would let
anyone who can read the endpoint sign tokens.
"""

from __future__ import annotations

import json
import logging
import urllib.request
from collections.abc import Callable
from typing import Any

import jwt
import trio
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

__all__ = ["JwksCache", "fetch_jwks"]

log = logging.getLogger(__name__)

_EC_ALGORITHMS = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
MAX_JWKS_BYTES = 1 << 20


def fetch_jwks(url: str, timeout: float) -> dict[str, Any]:
    """Blocking GET of a JWKS document (run it in a thread)."""
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        body = response.read(MAX_JWKS_BYTES + 1)
    if len(body) > MAX_JWKS_BYTES:
        raise ValueError("JWKS document too large")
    data = json.loads(body)
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise ValueError("not a JWKS document (no 'keys' array)")
    return data


def algorithms_for(key: Any, declared: str | None) -> tuple[str, ...]:
    if isinstance(key, rsa.RSAPublicKey):
        found: tuple[str, ...] = ("RS256", "RS384", "RS512")
    elif isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name in _EC_ALGORITHMS:
        found = (_EC_ALGORITHMS[key.curve.name],)
    elif isinstance(key, ed25519.Ed25519PublicKey):
        found = ("EdDSA",)
    else:
        return ()
    if declared:
        return (declared,) if declared in found else ()
    return found


def parse_jwks(data: dict[str, Any]) -> dict[str, tuple[Any, tuple[str, ...]]]:
    """kid -> (public key, algorithms it may verify); unusable entries are skipped."""
    keys: dict[str, tuple[Any, tuple[str, ...]]] = {}
    for entry in data["keys"]:
        if not isinstance(entry, dict) or entry.get("kty") not in ("RSA", "EC", "OKP"):
            continue
        kid = entry.get("kid")
        if not isinstance(kid, str) or not kid or entry.get("use", "sig") != "sig":
            continue
        try:
            key = jwt.PyJWK(entry).key
        except (jwt.PyJWTError, ValueError, TypeError, KeyError):
            log.warning("JWKS: skipping unusable key %r", kid[:64])
            continue
        declared = entry.get("alg") if isinstance(entry.get("alg"), str) else None
        if algorithms := algorithms_for(key, declared):
            keys[kid] = (key, algorithms)
    return keys


class JwksCache:
    def __init__(
        self,
        url: str,
        *,
        refresh_interval: float = 300.0,
        min_refresh_interval: float = 10.0,
        timeout: float = 5.0,
        fetch: Callable[[str, float], dict[str, Any]] = fetch_jwks,
    ) -> None:
        self.url = url
        self.refresh_interval = refresh_interval
        self.min_refresh_interval = min_refresh_interval
        self.timeout = timeout
        self._fetch = fetch
        self.keys: dict[str, tuple[Any, tuple[str, ...]]] = {}
        self._last_attempt = -float("inf")
        self._loaded_at = -float("inf")
        self._lock = trio.Lock()
        self.fetches = 0
        self.failures = 0

    def get(self, kid: str) -> tuple[Any, tuple[str, ...]] | None:
        return self.keys.get(kid)

    async def refresh(self, *, force: bool = False) -> bool:
        """Fetch the key set unless one was tried less than `min_refresh_interval` ago.
        Returns whether a fetch succeeded; on failure the cached keys stay."""
        async with self._lock:  # concurrent unknown kids share one request
            now = trio.current_time()
            if not force and now - self._last_attempt < self.min_refresh_interval:
                return False
            self._last_attempt = now
            self.fetches += 1
            try:
                data = await trio.to_thread.run_sync(self._fetch, self.url, self.timeout)
                keys = parse_jwks(data)
            except (OSError, ValueError) as exc:
                self.failures += 1
                log.warning("JWKS fetch failed, serving %d cached keys: %s", len(self.keys), exc)
                return False
            self.keys = keys
            self._loaded_at = now
            log.info("JWKS: %d keys loaded", len(keys))
            return True

    async def ensure(self, kid: str) -> None:
        """Before verifying a token: load the key set if it is unknown (first use) or older than
        `refresh_interval`, or if the token's `kid` is unknown (bounded by the refresh rate)."""
        stale = trio.current_time() - self._loaded_at >= self.refresh_interval
        if stale or kid not in self.keys:
            await self.refresh()
