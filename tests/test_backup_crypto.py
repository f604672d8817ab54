"""The archive's encryption (aether_trio/backup/crypto.py), without I/O: round trips across
chunk boundaries, and every way a sealed stream can be damaged, each named."""

from __future__ import annotations

import io
import re

import pytest

from aether_trio.backup import crypto
from aether_trio.backup.errors import BackupConfigError, Tampered, Truncated, WrongKey

KEY = bytes(range(32))
HEADER = crypto.HEADER.size


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(crypto, "CHUNK", 64)


def seal(plain: bytes, backup_id: str = "b1", key: bytes = KEY, pieces: int = 7) -> bytes:
    out = io.BytesIO()
    enc = crypto.Encryptor(out, key, backup_id)
    for start in range(0, len(plain), pieces):
        enc.write(plain[start : start + pieces])
    enc.close()
    enc.close()  # twice: nothing more is written
    return out.getvalue()


def open_(sealed: bytes, backup_id: str = "b1", key: bytes = KEY) -> bytes:
    return crypto.Decryptor(io.BytesIO(sealed), key, backup_id).read()


@pytest.mark.parametrize("size", [0, 1, 63, 64, 65, 128, 129, 1000])
def test_round_trip_across_chunk_boundaries(size: int) -> None:
    plain = bytes(n % 251 for n in range(size))
    sealed = seal(plain)
    chunks = max(1, -(-size // 64))
    assert len(sealed) == HEADER + size + 16 * chunks
    assert open_(sealed) == plain


def test_every_flipped_byte_is_detected() -> None:
    sealed = seal(b"x" * 200)
    for index in range(len(sealed)):
        damaged = bytearray(sealed)
        damaged[index] ^= 0x80
        with pytest.raises((Tampered, WrongKey)):
            open_(bytes(damaged))


def test_a_cut_at_a_chunk_boundary_is_truncation_and_inside_a_chunk_is_damage() -> None:
    sealed = seal(b"y" * 200)  # chunks of 64 + 16 bytes: 3 full ones and one of 8 + 16
    with pytest.raises(Truncated, match=r"after chunk 1"):
        open_(sealed[: HEADER + 2 * 80])
    with pytest.raises(Tampered, match="chunk 1 fails authentication"):
        open_(sealed[: HEADER + 80 + 40])
    with pytest.raises(Truncated, match="inside chunk 0"):
        open_(sealed[: HEADER + 5])
    with pytest.raises(Truncated, match="inside its header"):
        open_(sealed[:5])


def test_chunks_cannot_be_reordered_or_moved_to_another_backup() -> None:
    sealed = seal(b"z" * 200)
    body = sealed[HEADER:]
    swapped = sealed[:HEADER] + body[80:160] + body[:80] + body[160:]
    with pytest.raises(Tampered, match="chunk 0"):
        open_(swapped)
    with pytest.raises(Tampered):
        open_(sealed, backup_id="b2")


def test_a_wrong_key_and_a_foreign_file_are_named() -> None:
    sealed = seal(b"secret")
    with pytest.raises(WrongKey, match="another key"):
        open_(sealed, key=bytes(32))
    with pytest.raises(Tampered, match="not an Aether backup"):
        open_(b"PK\x03\x04" + sealed[4:])


def test_key_files(tmp_path: pytest.TempPathFactory) -> None:
    from pathlib import Path

    base = Path(str(tmp_path))
    crypto.generate_key_file(base / "k")
    assert len(crypto.load_key(base / "k")) == 32
    with pytest.raises(FileExistsError):
        crypto.generate_key_file(base / "k")
    (base / "short").write_text("abcd\n")
    (base / "nothex").write_text("zz" * 32)
    for name, words in (("short", "64 hex digits"), ("nothex", "64 hex digits"),
                        ("absent", "cannot read")):  # fmt: skip
        with pytest.raises(BackupConfigError, match=words):
            crypto.load_key(base / name)
    with pytest.raises(BackupConfigError, match="key_file is not set"):
        crypto.load_key("")


# --- the [backup] section ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("section", "words"),
    [
        ({"schedule": "often"}, 'backup.schedule: expected "" or a duration'),
        ({"schedule": "0h"}, "backup.schedule"),
        ({"jitter": 1.5}, "jitter: expected a fraction 0..1"),
        ({"multipart_threshold": 1024}, "S3 parts are at least 5 MiB"),
        ({"prefix": "/abs"}, "expected a relative key prefix"),
        ({"prefix": "a/../b"}, "expected a relative key prefix"),
        ({"keep_last": -1}, "backup.keep_last"),
        ({"bucket": 3}, "backup.bucket: expected a string"),
    ],
)
def test_bad_backup_options_are_named(section: dict[str, object], words: str) -> None:
    from aether_trio.config import ConfigError, parse_config

    with pytest.raises(ConfigError, match=re.escape(words)):
        parse_config({"backup": section})


def test_backup_paths_are_relative_to_the_config_file_and_schedules_parse() -> None:
    from pathlib import Path

    from aether_trio.config import parse_config

    base = Path("/etc/aether")
    cfg = parse_config({"backup": {"key_file": "k", "credentials_file": "/abs/aws",
                                   "schedule": "90m"}}, base).backup  # fmt: skip
    assert (cfg.key_file, cfg.credentials_file, cfg.log_dir) == ("/etc/aether/k", "/abs/aws", "")
    assert cfg.interval == 5400.0
    assert parse_config({}).backup.interval == 0.0
    for text, seconds in (("30s", 30.0), ("1.5h", 5400.0), ("1d", 86400.0)):
        assert parse_config({"backup": {"schedule": text}}).backup.interval == seconds
