"""JWT connection and subscription tokens with Centrifugo's claim set.

The errors and their hierarchy are in `auth_errors`, keys and signatures in `auth_jws`; this module
maps the verified claims. Claims are decoded with orjson and type-checked here, as Go's typed
structs do in Centrifugo; a JSON `null` claim counts as absent. Time checks run last, against a
caller-supplied `now`, so a token that is both malformed and expired is invalid, and expiry is
testable without sleeping. Raw JSON claims are re-serialized compactly.
"""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, TypeVar

import attrs
import orjson

from ..config import TokenConfig
from ..protocol.codec import compact
from .errors import TokenError, TokenExpired, TokenInvalid
from .jwks import JwksCache
from .jws import KeyTable, load_keys, mint_token, unverified_header, verify_signature

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

_T = TypeVar("_T")


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


_OVERRIDE_FLAGS = tuple(field.name for field in attrs.fields(ChannelOverride))


def _get(claims: Mapping[str, Any], name: str, kind: type[_T], default: _T) -> _T:
    value = claims.get(name, default)
    if not isinstance(value, kind):
        raise TokenInvalid(f"claim {name!r} has the wrong type")
    return value


def _present(obj: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in obj.items() if value is not None}


def _decode(
    token: str, config: TokenConfig, keys: KeyTable, jwks: JwksCache | None = None
) -> dict[str, Any]:
    """Verify the signature and the registered claims; return the non-null claims."""
    payload = verify_signature(token, config, keys, jwks)
    try:
        claims = orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise TokenInvalid("claims are not JSON") from None
    if not isinstance(claims, dict):
        raise TokenInvalid("claims are not a JSON object")
    claims = _present(claims)
    for name in ("sub", "iss", "jti", config.user_id_claim):
        _get(claims, name, str, "")
    for name in ("exp", "nbf", "iat"):
        if name in claims:
            _time_claim(claims, name, (int, float))
    aud = claims.get("aud", [])
    audiences = [aud] if isinstance(aud, str) else aud
    if not isinstance(audiences, list) or not all(isinstance(a, str) for a in audiences):
        raise TokenInvalid("claim 'aud' must be a string or a list of strings")
    if config.audience and config.audience not in audiences:
        raise TokenInvalid("audience mismatch")
    if config.issuer and claims.get("iss") != config.issuer:
        raise TokenInvalid("issuer mismatch")
    if config.audience_regex and not any(re.search(config.audience_regex, a) for a in audiences):
        raise TokenInvalid("audience mismatch")
    if config.issuer_regex and not re.search(config.issuer_regex, claims.get("iss", "")):
        raise TokenInvalid("issuer mismatch")
    return claims


# Latest and earliest times a claim may name, in seconds since 1970: the end of year 9999 (as
# Python's datetime and Go's time both can). A time beyond that is not a date but a crafted number:
# it would overflow the 64-bit integers of a reply (a `ttl`), so it is refused as invalid here.
MAX_TIME = 253_402_300_799


def _time_claim(claims: Mapping[str, Any], name: str, kinds: tuple[type, ...]) -> Any:
    value = claims[name]
    if type(value) not in kinds:
        noun = "an integer" if kinds == (int,) else "a number"
        raise TokenInvalid(f"claim {name!r} must be {noun}")
    if not -MAX_TIME <= value <= MAX_TIME:
        raise TokenInvalid(f"claim {name!r} is out of range")
    return value


def _check_time(claims: Mapping[str, Any], leeway: float, now: float | None) -> None:
    now = time.time() if now is None else now
    if "exp" in claims and now >= claims["exp"] + leeway:
        raise TokenExpired("token expired")
    if "nbf" in claims and claims["nbf"] > now + leeway:
        raise TokenExpired("token not valid yet")


def _expire_at(claims: Mapping[str, Any]) -> int | None:
    if "expire_at" in claims:
        value: int = _time_claim(claims, "expire_at", (int,))
        return value if value > 0 else None  # 0 (Centrifugo: <= 0) = never expires
    return int(claims["exp"]) if "exp" in claims else None


def _raw(claims: Mapping[str, Any], name: str) -> bytes:
    """`name` as compact JSON bytes, or `b64<name>` (base64 of JSON) which wins when non-empty."""
    encoded = _get(claims, f"b64{name}", str, "")
    try:
        if encoded:
            return compact(orjson.dumps(orjson.loads(base64.b64decode(encoded, validate=True))))
        # Kept for the connection's (or subscription's) life: at its own size.
        return compact(orjson.dumps(claims[name])) if name in claims else b""
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


# How many verified connection tokens a verifier remembers (the oldest goes first), and the
# longest it remembers: about 2.5 MiB at most.
VERIFIED_TOKENS = 4096
VERIFIED_TOKEN_MAX_LENGTH = 640


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
        # Connection tokens whose signature and claims were verified, with the time claims
        # still to check at each use: a reconnect storm presents the same tokens again, and
        # verifying one costs more than the rest of the connect's Python. Keys belong to this
        # verifier (a reload makes a new one), so a rotated secret drops them all; tokens
        # verified with a JWKS key are not remembered (the key set may drop that key).
        self._verified: dict[str, tuple[Mapping[str, Any], ConnectCredentials]] = {}
        self._enabled = connect.has_any_key
        self._connect = connect, load_keys(connect, "token"), _jwks(connect, registry)
        self._subscribe = self._connect
        if subscription is not None and subscription.has_any_key:
            self._subscribe = (
                subscription,
                load_keys(subscription, "subscription_token"),
                _jwks(subscription, registry),
            )

    async def prepare(self, token: str, *, subscription: bool = False) -> None:
        jwks = (self._subscribe if subscription else self._connect)[2]
        if jwks is None:
            return
        header = unverified_header(token)
        kid = None if header is None else header.get("kid")  # verify_* reports a malformed token
        if isinstance(kid, str) and kid:
            await jwks.ensure(kid)

    @property
    def enabled(self) -> bool:
        return self._enabled

    def verify_connect(self, token: str, now: float | None = None) -> ConnectCredentials:
        verified = self._verified.get(token)
        if verified is None:
            verified = self._verify_connect(token)
            if self._connect[2] is None and len(token) <= VERIFIED_TOKEN_MAX_LENGTH:
                self._remember(token, verified)
        claims, credentials = verified
        # Every time: a remembered token expires like any other.
        _check_time(claims, self._connect[0].leeway, now)
        return credentials

    def _verify_connect(self, token: str) -> tuple[Mapping[str, Any], ConnectCredentials]:
        claims = _decode(token, *self._connect)
        if "channel" in claims:
            raise TokenInvalid("connection token has a 'channel' claim")
        credentials = ConnectCredentials(
            user=claims.get(self._connect[0].user_id_claim, ""),
            expire_at=_expire_at(claims),
            info=_raw(claims, "info"),
            subs=_subs(claims),
            meta=claims.get("meta"),
            issued_at=int(claims["iat"]) if "iat" in claims else None,
            token_id=claims.get("jti", ""),
        )
        return {k: claims[k] for k in ("exp", "nbf") if k in claims}, credentials

    def _remember(self, token: str, verified: tuple[Mapping[str, Any], ConnectCredentials]) -> None:
        remembered = self._verified
        if len(remembered) >= VERIFIED_TOKENS:
            del remembered[next(iter(remembered))]  # the oldest
        remembered[token] = verified

    def verify_subscribe(self, token: str, now: float | None = None) -> SubscribeClaims:
        claims = _decode(token, *self._subscribe)
        channel = _get(claims, "channel", str, "")
        if not channel:
            raise TokenInvalid("subscription token without 'channel' claim")
        result = SubscribeClaims(
            user=claims.get(self._subscribe[0].user_id_claim, ""),
            channel=channel,
            client=_get(claims, "client", str, ""),
            expire_at=_expire_at(claims),
            info=_raw(claims, "info"),
            data=_raw(claims, "data"),
            override=_override(claims.get("override")),
        )
        _check_time(claims, self._subscribe[0].leeway, now)
        return result
