"""The TLS files of `[server]`, checked when the config is loaded: readable, a PEM certificate
chain and the unencrypted PEM key of its leaf certificate (with `cryptography`; no TLS context is
built here, the transport builds it from the checked files).
"""

from __future__ import annotations

from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_private_key,
)

__all__ = ["TlsFileError", "check_files"]


class TlsFileError(ValueError):
    """A certificate or key file cannot be used; the message starts with the option's name."""


def _read(option: str, path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise TlsFileError(f"{option}: cannot read {path}: {exc.strerror}") from None


def check_files(cert_file: str, key_file: str) -> None:
    """Raise `TlsFileError` unless `cert_file` holds a PEM certificate (chain, leaf first) and
    `key_file` the unencrypted PEM private key of that leaf certificate."""
    cert_pem = _read("tls_cert_file", cert_file)
    key_pem = _read("tls_key_file", key_file)
    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
    except ValueError:
        raise TlsFileError(f"tls_cert_file: no PEM certificate in {cert_file}") from None
    try:
        key = load_pem_private_key(key_pem, password=None)
    except TypeError:
        raise TlsFileError(
            f"tls_key_file: the key in {key_file} is encrypted; give an unencrypted key "
            "(protect it with file permissions)"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise TlsFileError(f"tls_key_file: no PEM private key in {key_file}") from None
    spki = (Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    if key.public_key().public_bytes(*spki) != chain[0].public_key().public_bytes(*spki):
        raise TlsFileError(
            f"tls_key_file: the key in {key_file} does not match the certificate in {cert_file}"
        )
