"""One backup as one object: a tar stream (manifest first, then every member), compressed with
zstd, sealed by `crypto.Encryptor`; and the way back, where nothing unauthenticated is unpacked.

The manifest (`manifest.json`) lists every member with its size and SHA-256 and describes the
state (audit head, Redis positions, ...); it travels inside the encrypted archive, so nothing about
the state or its secrets is readable without the key.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path
from typing import Any, BinaryIO

import orjson
import zstandard

from .crypto import Decryptor, Encryptor
from .errors import ArchiveError

__all__ = ["MANIFEST", "check_members", "file_sha256", "pack", "unpack"]

MANIFEST = "manifest.json"
FORMAT = 1
ZSTD_LEVEL = 10


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def describe_members(staging: Path) -> dict[str, dict[str, Any]]:
    """Every regular file under `staging` with its size and SHA-256, by relative path."""
    return {
        path.relative_to(staging).as_posix(): {"size": path.stat().st_size,
                                               "sha256": file_sha256(path)}
        for path in sorted(staging.rglob("*"))
        if path.is_file()
    }  # fmt: skip


def pack(
    staging: Path, manifest: dict[str, Any], out: BinaryIO, key: bytes, backup_id: str
) -> None:
    """Write the archive of `staging`'s files and `manifest` (its `members` filled in) to `out`."""
    manifest = {**manifest, "format": FORMAT, "members": describe_members(staging)}
    text = orjson.dumps(manifest, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)
    sealed = Encryptor(out, key, backup_id)
    compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
    with (
        compressor.stream_writer(sealed, closefd=False) as zfh,  # type: ignore[arg-type]
        tarfile.open(fileobj=zfh, mode="w|", format=tarfile.PAX_FORMAT) as tar,
    ):
        info = tarfile.TarInfo(MANIFEST)
        info.size = len(text)
        tar.addfile(info, io.BytesIO(text))
        for name in manifest["members"]:
            tar.add(staging / name, arcname=name, recursive=False)
    sealed.close()


def unpack(
    source: BinaryIO,
    key: bytes,
    backup_id: str,
    dest: Path,
) -> dict[str, Any]:
    """Authenticate, decrypt, decompress and extract into `dest`; returns the manifest. Crypto
    failures raise the `ArchiveError` subclasses of crypto.py (check "authenticate"), anything
    else unreadable a plain `ArchiveError` (check "unpack")."""
    opened = Decryptor(source, key, backup_id)
    try:
        with zstandard.ZstdDecompressor().stream_reader(opened, closefd=False) as zfh:  # type: ignore[arg-type]
            with tarfile.open(fileobj=zfh, mode="r|") as tar:
                for member in tar:
                    if not member.isfile():
                        raise ArchiveError(f"unexpected archive member {member.name!r}")
                    tar.extract(member, dest, filter="data")
            # The tar stream ends with zero blocks; read on to the authenticated end, so a cut
            # after the tar's last block is still seen.
            while zfh.read(1 << 16):
                pass
    except (tarfile.TarError, zstandard.ZstdError, OSError) as exc:
        raise ArchiveError(f"the archive cannot be unpacked: {exc}") from None
    try:
        manifest: dict[str, Any] = orjson.loads((dest / MANIFEST).read_bytes())
    except (OSError, orjson.JSONDecodeError):
        raise ArchiveError("the archive has no readable manifest") from None
    if manifest.get("format") != FORMAT or manifest.get("id") != backup_id:
        raise ArchiveError(f"the manifest is not of format {FORMAT} for backup {backup_id}")
    return manifest


def check_members(dest: Path, manifest: dict[str, Any]) -> list[str]:
    """Problems with the extracted members against the manifest (empty: all as recorded)."""
    problems = []
    found = describe_members(dest)
    found.pop(MANIFEST, None)
    for name, want in sorted(manifest["members"].items()):
        got = found.pop(name, None)
        if got is None:
            problems.append(f"{name}: missing")
        elif got != want:
            problems.append(
                f"{name}: SHA-256 {got['sha256'][:12]}... size {got['size']}, "
                f"manifest says {want['sha256'][:12]}... size {want['size']}"
            )
    problems += [f"{name}: not in the manifest" for name in sorted(found)]
    return problems
