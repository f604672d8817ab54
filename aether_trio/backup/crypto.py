"""Archive encryption: AES-256-GCM (the `cryptography` package) over a stream of chunks.

Theory of operation (the STREAM construction of Hoang, Reyhanitabar, Rogaway and Vizár): the
plaintext is cut into chunks of `CHUNK` bytes; chunk i is sealed with the nonce
`prefix(7) || i(4, big-endian) || last(1)` and the file header plus the backup's id as
associated data. So every chunk is authenticated on its own (a decryptor never hands out bytes
it has not checked), chunks cannot be reordered or swapped between archives (counter, header,
id), and a stream cut at a chunk boundary is detected too (the last chunk it has was not sealed
as the last). A file holds:

    header   MAGIC(8) | version(1) | key id(8) | nonce prefix(7)
    chunks   CHUNK + 16 bytes each, the last one shorter (at least the 16-byte tag)

The key id (the first 8 bytes of HMAC-SHA256(key, "aether-backup key id")) tells a wrong key
apart from a corrupted archive before any chunk is tried; it reveals nothing about the key.
The key file holds 32 random bytes as 64 hex digits (`aether backup keygen`).
"""

from __future__ import annotations

import hashlib
import hmac
import io
import os
import secrets
import struct
from pathlib import Path
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .errors import BackupConfigError, Tampered, Truncated, WrongKey

__all__ = ["CHUNK", "Decryptor", "Encryptor", "generate_key_file", "key_id", "load_key"]

MAGIC = b"AETHERBK"
VERSION = 1
CHUNK = 1 << 20
TAG = 16
HEADER = struct.Struct(">8sB8s7s")


def key_id(key: bytes) -> bytes:
    return hmac.new(key, b"aether-backup key id", hashlib.sha256).digest()[:8]


def load_key(path: str | Path) -> bytes:
    """The 32-byte key from a key file (64 hex digits; surrounding whitespace ignored)."""
    if not str(path):
        raise BackupConfigError("[backup] key_file is not set (create one: aether backup keygen)")
    try:
        text = Path(path).read_text().strip()
    except OSError as exc:
        raise BackupConfigError(f"[backup] key_file: cannot read {path}: {exc.strerror}") from None
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != 32:
        raise BackupConfigError(f"[backup] key_file: {path} must hold 64 hex digits (32 bytes)")
    return key


def generate_key_file(path: Path) -> None:
    """A new random key, readable by its owner only; an existing file is never replaced."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_bytes(32).hex() + "\n")


def _nonce(prefix: bytes, counter: int, last: bool) -> bytes:
    return prefix + struct.pack(">IB", counter, 1 if last else 0)


class Encryptor(io.RawIOBase):
    """A write-only file object: what is written goes out sealed, chunk by chunk, to `out`."""

    def __init__(self, out: BinaryIO, key: bytes, backup_id: str) -> None:
        self._out = out
        self._aead = AESGCM(key)
        self._prefix = secrets.token_bytes(7)
        header = HEADER.pack(MAGIC, VERSION, key_id(key), self._prefix)
        self._aad = header + backup_id.encode()
        self._buffer = bytearray()
        self._counter = 0
        out.write(header)

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self._buffer += data
        while len(self._buffer) > CHUNK:  # keep at least one byte: the last chunk is special
            self._seal(bytes(self._buffer[:CHUNK]), last=False)
            del self._buffer[:CHUNK]
        return len(data)

    def _seal(self, chunk: bytes, *, last: bool) -> None:
        nonce = _nonce(self._prefix, self._counter, last)
        self._out.write(self._aead.encrypt(nonce, chunk, self._aad))
        self._counter += 1

    def close(self) -> None:
        if not self.closed:
            self._seal(bytes(self._buffer), last=True)
            self._buffer.clear()
        super().close()


class Decryptor(io.RawIOBase):
    """A read-only file object over a sealed stream: only authenticated bytes come out."""

    def __init__(self, source: BinaryIO, key: bytes, backup_id: str) -> None:
        self._source = source
        header = source.read(HEADER.size)
        if len(header) < HEADER.size:
            raise Truncated("the archive ends inside its header (truncated or empty)")
        magic, version, their_id, self._prefix = HEADER.unpack(header)
        if magic != MAGIC or version != VERSION:
            raise Tampered("not an Aether backup archive (bad header)")
        if not hmac.compare_digest(their_id, key_id(key)):
            raise WrongKey(
                f"the archive was encrypted with another key (key id {their_id.hex()}, "
                f"this key_file's is {key_id(key).hex()})"
            )
        self._aead = AESGCM(key)
        self._aad = header + backup_id.encode()
        self._counter = 0
        self._pending = source.read(CHUNK + TAG)
        self._plain = b""
        self._done = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        while not self._plain and not self._done:
            self._next_chunk()
        n = min(len(buffer), len(self._plain))
        buffer[:n] = self._plain[:n]
        self._plain = self._plain[n:]
        return n

    def _next_chunk(self) -> None:
        sealed = self._pending
        if len(sealed) < TAG:
            raise Truncated(f"the archive ends early (inside chunk {self._counter})")
        self._pending = self._source.read(CHUNK + TAG) if len(sealed) == CHUNK + TAG else b""
        last = not self._pending
        try:
            plain = self._aead.decrypt(_nonce(self._prefix, self._counter, last), sealed, self._aad)
        except InvalidTag:
            if last:
                # Either this chunk was altered or the stream was cut after it: try it as a
                # middle chunk to tell which.
                try:
                    self._aead.decrypt(
                        _nonce(self._prefix, self._counter, False), sealed, self._aad
                    )
                except InvalidTag:
                    pass
                else:
                    raise Truncated(
                        f"the archive ends early (after chunk {self._counter})"
                    ) from None
            raise Tampered(
                f"chunk {self._counter} fails authentication (corrupted, altered or cut short)"
            ) from None
        self._counter += 1
        self._plain = plain
        self._done = last
