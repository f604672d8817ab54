"""TLS for the public WebSocket listener (`wss://` without a proxy in front).

`server_context` builds the `ssl.SSLContext` the listener serves with: TLS 1.2 at least, no TLS
compression (CRIME), OpenSSL's default cipher list for the rest, ALPN `http/1.1` (WebSocket runs
over HTTP/1.1). It first checks the two files (`config.pem.check_files`, the same check the config
loader runs), so a mistake is reported as a `TlsFileError` naming the option at fault
(`tls_key_file: the key does not match the certificate ...`) instead of OpenSSL's "PEM lib", and
an encrypted key is refused rather than making OpenSSL prompt for a passphrase on the terminal.

`reload_certificate` loads new files into a running context (SIGHUP): connections made from then
on get the new certificate, established ones keep theirs.
"""

from __future__ import annotations

import ssl

from ..config.pem import TlsFileError, check_files

__all__ = ["MINIMUM_VERSION", "TlsFileError", "reload_certificate", "server_context"]

MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2


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
