"""TLS for the public WebSocket listener (`wss://` without a proxy in front).

`server_context` builds the `ssl.SSLContext` the listener serves with: TLS 1.2 at least, no TLS
compression (CRIME), OpenSSL's default cipher list for the rest, ALPN `http/1.1` (WebSocket runs
over HTTP/1.1). It first checks the two files with `cryptography`, so a mistake is reported as a
`TlsFileError` naming the option at fault (`tls_key_file: the key does not match the certificate
...`) instead of OpenSSL's "PEM lib", and an encrypted key is refused rather than making OpenSSL
prompt for a passphrase on the terminal.

`reload_certificate` loads new files into a running context (SIGHUP): connections made from then
on get the new certificate, established ones keep theirs.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_private_key,
)

__all__ = ["MINIMUM_VERSION", "TlsFileError", "check_files", "reload_certificate", "server_context"]

MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2


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


def _refuse_passphrase() -> bytes:
    # Never let OpenSSL prompt on the terminal; check_files already refused encrypted keys.
    raise TlsFileError("tls_key_file: the key is encrypted")


def _load(context: ssl.SSLContext, cert_file: str, key_file: str) -> None:
    check_files(cert_file, key_file)
    try:
        context.load_cert_chain(cert_file, key_file, password=_refuse_passphrase)
    except ssl.SSLError as exc:  # what cryptography accepted but OpenSSL does not
        raise TlsFileError(f"tls_cert_file: OpenSSL refused {cert_file}: {exc.reason}") from None


def server_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """The server-side context for the WebSocket listener, or `TlsFileError`."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = MINIMUM_VERSION
    context.options |= ssl.OP_NO_COMPRESSION
    context.set_alpn_protocols(["http/1.1"])
    _load(context, cert_file, key_file)
    return context


def reload_certificate(context: ssl.SSLContext, cert_file: str, key_file: str) -> None:
    """Serve new handshakes with the certificate and key now in the files (`TlsFileError` leaves
    the context as it was)."""
    _load(context, cert_file, key_file)
