"""Keys and signatures, the JWS half of `aether_trio.auth` (the claims in `tokens` are the other).

The keys are parsed once into a table `alg -> keys to try`, restricted to the configured allow-list
and to algorithms whose key is present (an ECDSA key serves only the ES* of its curve). The header's
`alg` picks the keys, so `none`, unknown algorithms and HS/RS confusion never reach a verifier.

HMAC tokens, the connect hot path, are verified here without PyJWT, which per token parses the
header twice and re-checks the secret (`prepare_key`, a DER parse included). The secrets are checked
by that same `prepare_key` once, at construction; per token the three segments are decoded once
with PyJWT's strictness (base64url alphabet, `=` padding only where it fits, zero trailing bits),
the header with orjson, and the signature is compared with each secret in turn (the previous one
still counts during a rotation). The same tokens are accepted and refused, with the same messages:
whatever this path cannot decide exactly goes to PyJWT whole, namely a token that is not a `str`, a
header orjson refuses (PyJWT's stdlib json also takes NaN, a BOM, UTF-16 and lone surrogates), and
a header with `crit` or a non-string value (numbers and nesting are where the two parsers differ).
tests/test_auth_jws.py runs both paths over generated and mutated tokens and compares them.

RS*/ES*/EdDSA and JWKS keys always go through PyJWT, via a private `PyJWS` whose HMAC/RSA algorithms
skip the per-token `InsecureKeyLengthWarning` (Centrifugo accepts short secrets; we log it once at
construction).
"""

from __future__ import annotations

import binascii
import functools
import hmac
import logging
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import jwt
import orjson
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_pem_public_key
from jwt.algorithms import ECAlgorithm, HMACAlgorithm, OKPAlgorithm, RSAAlgorithm

from ..config import TOKEN_ALGORITHMS, TokenConfig
from .errors import TokenInvalid
from .jwks import JwksCache

__all__ = ["KeyTable", "load_keys", "mint_token", "unverified_header", "verify_signature"]

# Operators configure logging for `aether_trio.auth`, the package (where this warning always lived).
_log = logging.getLogger("aether_trio.auth")

KeyTable = Mapping[str, tuple[Any, ...]]
"""alg -> the keys to try, in order (HMAC: the prepared secrets, current then previous)."""


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
_HMAC_DIGESTS = {"HS256": "sha256", "HS384": "sha384", "HS512": "sha512"}
_BASE64URL = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_MALFORMED = "malformed token"
# base64url -> standard base64 (for binascii), and each base64url character's 6-bit value.
_TO_STANDARD = bytes.maketrans(b"-_", b"+/")
_SIX_BITS = {character: value for value, character in enumerate(_BASE64URL)}

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


def _hmac_secret(secret: str, section: str) -> bytes:
    try:
        prepared: bytes = HMACAlgorithm(HMACAlgorithm.SHA256).prepare_key(secret.encode())
    except jwt.InvalidKeyError:
        raise ValueError(f"{section}.hmac_secret: looks like a PEM/SSH key") from None
    return prepared


def load_keys(config: TokenConfig, section: str) -> KeyTable:
    """The allowed algorithms, each with the keys to try in order."""
    found: dict[str, tuple[Any, ...]] = {}
    if config.hmac_secret:
        secrets = (config.hmac_secret, config.hmac_previous_secret)
        prepared = tuple(_hmac_secret(secret, section) for secret in secrets if secret)
        found.update(dict.fromkeys(("HS256", "HS384", "HS512"), prepared))
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


def _segment(data: bytes) -> bytes:
    """A base64url segment, refused exactly when `PyJWS._decode_base64url_segment` refuses it."""
    stripped = data.rstrip(b"=")
    padding = len(data) - len(stripped)
    tail = len(stripped) % 4
    if (
        padding > 2
        or (padding and len(data) % 4)
        or tail == 1
        or stripped.translate(None, _BASE64URL)  # what is left is outside the alphabet
    ):
        raise TokenInvalid(_MALFORMED)
    # PyJWT refuses a non-canonical encoding: the bits of the last character beyond the data
    # (4 of them after 2 characters, 2 after 3) must be zero.
    if tail and _SIX_BITS[stripped[-1]] & (0b1111 if tail == 2 else 0b11):
        raise TokenInvalid(_MALFORMED)
    return binascii.a2b_base64(stripped.translate(_TO_STANDARD) + b"=" * (-tail % 4))


@functools.lru_cache(maxsize=64)  # the tokens of one issuer share their header segment
def _parsed_header(segment: bytes) -> dict[str, Any] | None:
    """The header segment parsed, or None when PyJWT has to judge it (see `_split`); not to be
    changed by the caller (it is shared)."""
    try:
        header = orjson.loads(_segment(segment))
    except orjson.JSONDecodeError:
        return None  # PyJWT's stdlib json may still read it (NaN, BOM, UTF-16, lone surrogates)
    if not isinstance(header, dict):
        raise TokenInvalid(_MALFORMED)
    # PyJWT validates `crit`, and the two parsers can differ on numbers and deep nesting.
    if "crit" in header or not all(type(value) is str for value in header.values()):
        return None
    return header


def _split(token: object) -> tuple[dict[str, Any], bytes, bytes, bytes] | None:
    """(header, signing input, payload, signature), or None when PyJWT has to judge the token.

    Raises `TokenInvalid` only where PyJWT's `get_unverified_header` certainly fails.
    """
    if not isinstance(token, str):
        return None
    try:
        raw = token.encode("ascii")  # every character PyJWT accepts is base64url or '.'
    except UnicodeEncodeError:
        raise TokenInvalid(_MALFORMED) from None
    parts = raw.split(b".")
    if len(parts) != 3:  # PyJWT: not enough segments, or a '.' in the payload segment
        raise TokenInvalid(_MALFORMED)
    header_segment, payload_segment, signature_segment = parts
    shared = _parsed_header(header_segment)
    if shared is None:
        return None
    signing_input = raw[: len(header_segment) + 1 + len(payload_segment)]
    return dict(shared), signing_input, _segment(payload_segment), _segment(signature_segment)


def _header(token: str, parts: tuple[dict[str, Any], bytes, bytes, bytes] | None) -> dict[str, Any]:
    if parts is not None:
        return parts[0]
    try:
        return _JWS.get_unverified_header(token)
    except (jwt.PyJWTError, ValueError, TypeError):
        raise TokenInvalid(_MALFORMED) from None


def unverified_header(token: str) -> dict[str, Any] | None:
    """The header of a well-formed token, its signature unchecked; None if malformed."""
    try:
        return _header(token, _split(token))
    except TokenInvalid:
        return None


def verify_signature(
    token: str, config: TokenConfig, keys: KeyTable, jwks: JwksCache | None = None
) -> bytes:
    """The payload of `token` once a key for its `alg` verifies the signature; not yet parsed."""
    parts = _split(token)
    header = _header(token, parts)
    alg = header.get("alg")
    candidates: tuple[Any, ...] = keys.get(alg, ()) if isinstance(alg, str) else ()
    from_jwks = False
    kid = header.get("kid")
    if jwks is not None and isinstance(kid, str) and (found := jwks.get(kid)) is not None:
        key, key_algorithms = found
        if alg in key_algorithms and alg in config.algorithms:
            candidates, from_jwks = (key,), True
    if not isinstance(alg, str) or not candidates:
        known = isinstance(alg, str) and alg in TOKEN_ALGORITHMS
        raise TokenInvalid(f"algorithm {alg} not allowed" if known else "unsupported algorithm")
    digest = _HMAC_DIGESTS.get(alg)
    # Only the configured secrets are raw bytes; a JWKS key (never `oct`) is PyJWT's to check.
    if parts is not None and digest is not None and not from_jwks:
        _, signing_input, payload, signature = parts
        for secret in candidates:
            if hmac.compare_digest(signature, hmac.digest(secret, signing_input, digest)):
                return payload
        raise TokenInvalid("bad signature")
    for key in candidates:
        try:
            verified: bytes = _JWS.decode_complete(token, key, algorithms=[alg])["payload"]
            return verified
        except jwt.InvalidSignatureError:
            continue  # the previous HMAC secret may still match
        except (jwt.PyJWTError, ValueError, TypeError):
            raise TokenInvalid(_MALFORMED) from None
    raise TokenInvalid("bad signature")


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
