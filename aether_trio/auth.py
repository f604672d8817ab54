"""JWT connection and subscription tokens with Centrifugo's claim set.

    TokenError          base; the message is short and safe for the server log (never the token)
    ├── TokenExpired    `exp` passed or `nbf` not reached, after leeway: protocol error 109
    └── TokenInvalid    everything else: signature, algorithm, malformed token, claim types, aud/iss

Design: the keys are parsed once into a table `alg -> keys to try`, restricted to the configured
allow-list and to algorithms whose key is present (an ECDSA key serves only the ES* of its curve).
The header's `alg` picks the keys and PyJWT checks the signature with `algorithms=[alg]` alone, so
`none`, unknown algorithms and HS/RS confusion never reach a verifier. PyJWT does signatures only,
through a private `PyJWS` whose HMAC/RSA algorithms skip the per-token `InsecureKeyLengthWarning`
(Centrifugo accepts short secrets; we log it once at construction). Claims are decoded with orjson
and type-checked here, as Go's typed structs do in Centrifugo; a JSON `null` claim counts as absent.
Time checks run last, against a caller-supplied `now`, so a token that is both malformed and expired
is invalid, and expiry is testable without sleeping. Raw JSON claims are re-serialized compactly.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, TypeVar

import attrs
import jwt
import orjson
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_pem_public_key
from jwt.algorithms import ECAlgorithm, HMACAlgorithm, OKPAlgorithm, RSAAlgorithm

from .config import TOKEN_ALGORITHMS, TokenConfig
from .jwks import JwksCache

__all__ = [
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

_log = logging.getLogger(__name__)
_T = TypeVar("_T")


class TokenError(Exception):
    """A token was refused; the message is for the server log."""


class TokenExpired(TokenError):
    """`exp` is in the past or `nbf` in the future (after leeway)."""


class TokenInvalid(TokenError):
    """The token cannot be trusted or does not have the expected shape."""


@attrs.frozen
class ChannelOverride:
    presence: bool | None = None
    join_leave: bool | None = None
    force_push_join_leave: bool | None = None
    force_recovery: bool | None = None
    force_positioning: bool | None = None


@attrs.frozen
class ServerSubscription:
    info: bytes = b""
    data: bytes = b""
    override: ChannelOverride | None = None


@attrs.frozen
class ConnectCredentials:
    user: str
    expire_at: int | None
    info: bytes
    subs: Mapping[str, ServerSubscription]
    meta: Any
    issued_at: int | None
    token_id: str


@attrs.frozen
class SubscribeClaims:
    user: str
    channel: str
    client: str
    expire_at: int | None
    info: bytes
    data: bytes
    override: ChannelOverride | None


class _QuietHMAC(HMACAlgorithm):
    def check_key_length(self, key: bytes) -> str | None:
        return None


class _QuietRSA(RSAAlgorithm):
    def check_key_length(self, key: Any) -> str | None:
        return None


def _make_jws() -> jwt.PyJWS:
    jws = jwt.PyJWS(algorithms=[])
    for bits in (256, 384, 512):
        jws.register_algorithm(f"HS{bits}", _QuietHMAC(getattr(HMACAlgorithm, f"SHA{bits}")))
        jws.register_algorithm(f"RS{bits}", _QuietRSA(getattr(RSAAlgorithm, f"SHA{bits}")))
    jws.register_algorithm("ES256", ECAlgorithm(ECAlgorithm.SHA256, ec.SECP256R1))
    jws.register_algorithm("ES384", ECAlgorithm(ECAlgorithm.SHA384, ec.SECP384R1))
    jws.register_algorithm("ES512", ECAlgorithm(ECAlgorithm.SHA512, ec.SECP521R1))
    jws.register_algorithm("EdDSA", OKPAlgorithm())
    return jws


_JWS = _make_jws()
_EC_CURVES = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
_OVERRIDE_FLAGS = tuple(field.name for field in attrs.fields(ChannelOverride))


_PUBLIC_KEYS = {  # config field -> (first algorithm it must serve, what it must be)
    "rsa_public_key": ("RS256", "an RSA"),
    "ecdsa_public_key": ("ES", "a P-256, P-384 or P-521"),
    "ed25519_public_key": ("EdDSA", "an Ed25519"),
}


def _public_key(pem: str, field: str) -> tuple[Any, tuple[str, ...]]:
    """A PEM public key (or certificate) with the algorithms it can verify."""
    data = pem.strip().encode()
    try:
        if data.startswith(b"-----BEGIN CERTIFICATE-----"):
            key: Any = x509.load_pem_x509_certificate(data).public_key()
        else:
            key = load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        raise ValueError(f"{field}: not a PEM public key") from None
    if isinstance(key, rsa.RSAPublicKey):
        return key, ("RS256", "RS384", "RS512")
    if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name in _EC_CURVES:
        return key, (_EC_CURVES[key.curve.name],)
    return key, ("EdDSA",) if isinstance(key, ed25519.Ed25519PublicKey) else ()


def _load_keys(config: TokenConfig, section: str) -> Mapping[str, tuple[Any, ...]]:
    """The allowed algorithms, each with the keys to try in order."""
    found: dict[str, tuple[Any, ...]] = {}
    if config.hmac_secret:
        secrets = tuple(s.encode() for s in (config.hmac_secret, config.hmac_previous_secret) if s)
        for secret in secrets:
            try:
                HMACAlgorithm(HMACAlgorithm.SHA256).prepare_key(secret)
            except jwt.InvalidKeyError:
                raise ValueError(f"{section}.hmac_secret: looks like a PEM/SSH key") from None
        found.update(dict.fromkeys(("HS256", "HS384", "HS512"), secrets))
    elif config.hmac_previous_secret:
        raise ValueError(f"{section}.hmac_previous_secret: set without hmac_secret")
    for field, (first, kind) in _PUBLIC_KEYS.items():
        if pem := getattr(config, field):
            key, algorithms = _public_key(pem, f"{section}.{field}")
            if not algorithms or not algorithms[0].startswith(first):
                raise ValueError(f"{section}.{field}: not {kind} public key")
            found.update(dict.fromkeys(algorithms, (key,)))
    allowed = {alg: keys for alg, keys in found.items() if alg in config.algorithms}
    if found and not allowed:
        raise ValueError(f"{section}.algorithms: none of them has a configured key")
    if "HS256" in allowed and min(len(s) for s in allowed["HS256"]) < 32:
        _log.warning("%s: an HMAC secret is shorter than 32 bytes, weak for HS256", section)
    return MappingProxyType(allowed)


def _get(claims: Mapping[str, Any], name: str, kind: type[_T], default: _T) -> _T:
    value = claims.get(name, default)
    if not isinstance(value, kind):
        raise TokenInvalid(f"claim {name!r} has the wrong type")
    return value


def _present(obj: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in obj.items() if value is not None}


def _decode(
    token: str,
    config: TokenConfig,
    keys: Mapping[str, tuple[Any, ...]],
    jwks: JwksCache | None = None,
) -> dict[str, Any]:
    """Verify the signature and the registered claims; return the non-null claims."""
    try:
        header = _JWS.get_unverified_header(token)
    except (jwt.PyJWTError, ValueError, TypeError):
        raise TokenInvalid("malformed token") from None
    alg = header.get("alg")
    candidates: tuple[Any, ...] = keys.get(alg, ()) if isinstance(alg, str) else ()
    kid = header.get("kid")
    if jwks is not None and isinstance(kid, str) and (found := jwks.get(kid)) is not None:
        key, key_algorithms = found
        if alg in key_algorithms and alg in config.algorithms:
            candidates = (key,)
    if not isinstance(alg, str) or not candidates:
        known = isinstance(alg, str) and alg in TOKEN_ALGORITHMS
        raise TokenInvalid(f"algorithm {alg} not allowed" if known else "unsupported algorithm")
    for key in candidates:
        try:
            payload = _JWS.decode_complete(token, key, algorithms=[alg])["payload"]
            break
        except jwt.InvalidSignatureError:
            continue  # the previous HMAC secret may still match
        except (jwt.PyJWTError, ValueError, TypeError):
            raise TokenInvalid("malformed token") from None
    else:
        raise TokenInvalid("bad signature")
    try:
        claims = orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise TokenInvalid("claims are not JSON") from None
    if not isinstance(claims, dict):
        raise TokenInvalid("claims are not a JSON object")
    claims = _present(claims)
    for name in ("sub", "iss", "jti"):
        _get(claims, name, str, "")
    for name in ("exp", "nbf", "iat"):
        if name in claims and type(claims[name]) not in (int, float):
            raise TokenInvalid(f"claim {name!r} must be a number")
    aud = claims.get("aud", [])
    audiences = [aud] if isinstance(aud, str) else aud
    if not isinstance(audiences, list) or not all(isinstance(a, str) for a in audiences):
        raise TokenInvalid("claim 'aud' must be a string or a list of strings")
    if config.audience and config.audience not in audiences:
        raise TokenInvalid("audience mismatch")
    if config.issuer and claims.get("iss") != config.issuer:
        raise TokenInvalid("issuer mismatch")
    return claims


def _check_time(claims: Mapping[str, Any], leeway: float, now: float | None) -> None:
    now = time.time() if now is None else now
    if "exp" in claims and now >= claims["exp"] + leeway:
        raise TokenExpired("token expired")
    if "nbf" in claims and claims["nbf"] > now + leeway:
        raise TokenExpired("token not valid yet")


def _expire_at(claims: Mapping[str, Any]) -> int | None:
    if "expire_at" in claims:
        value = claims["expire_at"]
        if type(value) is not int:
            raise TokenInvalid("claim 'expire_at' must be an integer")
        return value if value > 0 else None  # 0 (Centrifugo: <= 0) = never expires
    return int(claims["exp"]) if "exp" in claims else None


def _raw(claims: Mapping[str, Any], name: str) -> bytes:
    """`name` as compact JSON bytes, or `b64<name>` (base64 of JSON) which wins when non-empty."""
    encoded = _get(claims, f"b64{name}", str, "")
    try:
        if encoded:
            return orjson.dumps(orjson.loads(base64.b64decode(encoded, validate=True)))
        return orjson.dumps(claims[name]) if name in claims else b""
    except (ValueError, TypeError):  # binascii.Error, JSONDecodeError, JSONEncodeError
        raise TokenInvalid(f"claim {name!r} is not valid JSON") from None


def _override(value: Any) -> ChannelOverride | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise TokenInvalid("claim 'override' must be an object")
    flags: dict[str, bool] = {}
    for name in _OVERRIDE_FLAGS:
        item = value.get(name)
        if item is not None:
            flag = item.get("value", False) if isinstance(item, dict) else None
            if not isinstance(flag, bool):
                raise TokenInvalid(f"override {name!r} must be {{'value': bool}}")
            flags[name] = flag
    return ChannelOverride(**flags)


def _server_sub(entry: Any) -> ServerSubscription:
    if not isinstance(entry, dict | None):
        raise TokenInvalid("claim 'subs' must map channels to objects")
    entry = _present(entry or {})
    return ServerSubscription(
        _raw(entry, "info"), _raw(entry, "data"), _override(entry.get("override"))
    )


def _subs(claims: Mapping[str, Any]) -> Mapping[str, ServerSubscription]:
    subs = _get(claims, "subs", dict, {})
    channels = _get(claims, "channels", list, [])
    if not all(isinstance(channel, str) for channel in channels):
        raise TokenInvalid("claim 'channels' must be a list of strings")
    if subs:  # like Centrifugo, an empty `subs` falls back to `channels`
        return MappingProxyType({channel: _server_sub(e) for channel, e in subs.items()})
    return MappingProxyType(dict.fromkeys(channels, ServerSubscription()))


def _jwks(config: TokenConfig, registry: dict[str, JwksCache]) -> JwksCache | None:
    if not config.jwks_url:
        return None
    cache = registry.get(config.jwks_url)
    if cache is None:
        cache = registry[config.jwks_url] = JwksCache(
            config.jwks_url,
            refresh_interval=config.jwks_refresh_interval,
            min_refresh_interval=config.jwks_min_refresh_interval,
            timeout=config.jwks_timeout,
        )
    return cache


class TokenVerifier:
    """Verifies connection tokens, and subscription tokens with their own keys if configured.

    With a JWKS endpoint configured, call `await prepare(token)` before `verify_*`: it loads the
    key set when needed (verification itself stays synchronous). `jwks_registry` lets a reload
    keep the caches of unchanged URLs.
    """

    def __init__(
        self,
        connect: TokenConfig,
        subscription: TokenConfig | None = None,
        jwks_registry: dict[str, JwksCache] | None = None,
    ) -> None:
        registry = {} if jwks_registry is None else jwks_registry
        self._enabled = connect.has_any_key
        self._connect = connect, _load_keys(connect, "token"), _jwks(connect, registry)
        self._subscribe = self._connect
        if subscription is not None and subscription.has_any_key:
            self._subscribe = (
                subscription,
                _load_keys(subscription, "subscription_token"),
                _jwks(subscription, registry),
            )

    async def prepare(self, token: str, *, subscription: bool = False) -> None:
        jwks = (self._subscribe if subscription else self._connect)[2]
        if jwks is None:
            return
        try:
            kid = _JWS.get_unverified_header(token).get("kid")
        except (jwt.PyJWTError, ValueError, TypeError):
            return  # verify_* reports the malformed token
        if isinstance(kid, str) and kid:
            await jwks.ensure(kid)

    @property
    def enabled(self) -> bool:
        return self._enabled

    def verify_connect(self, token: str, now: float | None = None) -> ConnectCredentials:
        claims = _decode(token, *self._connect)
        if "channel" in claims:
            raise TokenInvalid("connection token has a 'channel' claim")
        credentials = ConnectCredentials(
            user=claims.get("sub", ""),
            expire_at=_expire_at(claims),
            info=_raw(claims, "info"),
            subs=_subs(claims),
            meta=claims.get("meta"),
            issued_at=int(claims["iat"]) if "iat" in claims else None,
            token_id=claims.get("jti", ""),
        )
        _check_time(claims, self._connect[0].leeway, now)
        return credentials

    def verify_subscribe(self, token: str, now: float | None = None) -> SubscribeClaims:
        claims = _decode(token, *self._subscribe)
        channel = _get(claims, "channel", str, "")
        if not channel:
            raise TokenInvalid("subscription token without 'channel' claim")
        result = SubscribeClaims(
            user=claims.get("sub", ""),
            channel=channel,
            client=_get(claims, "client", str, ""),
            expire_at=_expire_at(claims),
            info=_raw(claims, "info"),
            data=_raw(claims, "data"),
            override=_override(claims.get("override")),
        )
        _check_time(claims, self._subscribe[0].leeway, now)
        return result


def mint_token(secret: str, claims: Mapping[str, Any], algorithm: str = "HS256") -> str:
    """Sign `claims` (dev, tests) with an HMAC secret or a PEM private key for RS*/ES*/EdDSA."""
    if algorithm not in TOKEN_ALGORITHMS:
        raise ValueError(f"unknown algorithm {algorithm!r}; allowed: {sorted(TOKEN_ALGORITHMS)}")
    try:
        key: Any = secret
        if not algorithm.startswith("HS"):
            key = load_pem_private_key(secret.encode(), password=None)
        return _JWS.encode(orjson.dumps(dict(claims)), key, algorithm)
    except (ValueError, TypeError, UnsupportedAlgorithm, jwt.PyJWTError) as exc:
        raise ValueError(f"cannot sign a {algorithm} token: {exc}") from None
