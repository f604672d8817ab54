"""Aether's Redis keys copied out and back (`aether backup`): DUMP/RESTORE by prefix.

Synchronous redis-py (the backup runs in a worker thread or a command-line process, never on
the event loop). What is copied: every key under `<prefix>.` except presence (`<prefix>.presence.`,
ephemeral: entries expire within a TTL, connections add themselves again). SCAN alone is not a
snapshot, but recovery needs only each stream to be consistent with itself: a channel's meta hash
(epoch, top offset) and its stream are read in one MULTI/EXEC, so the recorded position
(`epoch`, `top`) is exactly what the dumped stream holds, even while clients publish. Streams
changed after their MULTI are simply newer than the backup.

The records file is a sequence of `key length(4) | value length(4) | expire-at ms(8, -1: none) |
key | DUMP payload`. DUMP payloads carry Redis's RDB version and checksum: a server of the same or
a newer version RESTOREs them (RESTORE checks the checksum).
"""

from __future__ import annotations

import hashlib
import re
import struct
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

import attrs
import redis

__all__ = [
    "KeyspaceDump",
    "KeyspaceError",
    "bgsave",
    "dump_keyspace",
    "dump_value",
    "key_sha256",
    "live_keys",
    "ping",
    "read_records",
    "restore_keyspace",
    "stream_positions",
]

RECORD = struct.Struct(">IIq")
SAMPLES = 20
TIMEOUT = 10.0


class KeyspaceError(Exception):
    """Redis could not be read or written (the message names the address)."""


@attrs.frozen
class KeyspaceDump:
    keys: int
    # channel -> (epoch, top offset) as read together with the channel's stream
    streams: dict[str, tuple[str, int]]
    # key -> SHA-256 of its DUMP payload, for a few keys (the drill compares them)
    samples: dict[str, str]
    time_ms: int


def _client(address: str) -> redis.Redis:
    return redis.Redis.from_url(address, socket_timeout=TIMEOUT, socket_connect_timeout=TIMEOUT)


def _pattern(prefix: str) -> str:
    return re.sub(r"([*?\[\]\\])", r"\\\1", prefix) + ".*"


def key_sha256(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


def _names(conn: redis.Redis, prefix: str) -> Iterator[bytes]:
    skip = f"{prefix}.presence.".encode()
    for name in conn.scan_iter(match=_pattern(prefix), count=1000):
        if not name.startswith(skip):
            yield name


def _write(out: BinaryIO, key: bytes, payload: bytes, expire_at: int) -> None:
    out.write(RECORD.pack(len(key), len(payload), expire_at))
    out.write(key)
    out.write(payload)


def dump_keyspace(address: str, prefix: str, out: BinaryIO) -> KeyspaceDump:
    try:
        with _client(address) as conn:
            return _dump(conn, prefix, out)
    except redis.RedisError as exc:
        raise KeyspaceError(f"Redis at {address}: {exc}") from None


def _dump(conn: redis.Redis, prefix: str, out: BinaryIO) -> KeyspaceDump:
    meta_head = f"{prefix}.meta.".encode()
    stream_head = f"{prefix}.stream.".encode()
    names = sorted(set(_names(conn, prefix)))
    types: list[bytes] = []
    for start in range(0, len(names), 1000):
        pipe = conn.pipeline(transaction=False)
        for name in names[start : start + 1000]:
            pipe.type(name)
        types += pipe.execute()
    channels: set[bytes] = set()
    others: list[bytes] = []
    for name, kind in zip(names, types, strict=True):
        if kind == b"hash" and name.startswith(meta_head):
            channels.add(name[len(meta_head) :])
        elif kind == b"stream" and name.startswith(stream_head):
            channels.add(name[len(stream_head) :])
        else:
            others.append(name)
    count, now_ms = 0, 0
    streams: dict[str, tuple[str, int]] = {}
    samples: dict[str, str] = {}

    def keep(key: bytes, payload: bytes | None, pttl: int, now: int) -> None:
        nonlocal count
        if payload is None:  # gone since the scan (expired or deleted)
            return
        _write(out, key, payload, now + pttl if pttl >= 0 else -1)
        if count % max(1, len(names) // SAMPLES) == 0 and len(samples) < SAMPLES:
            samples[key.decode(errors="replace")] = key_sha256(payload)
        count += 1

    for channel in sorted(channels):
        meta, stream = meta_head + channel, stream_head + channel
        pipe = conn.pipeline(transaction=True)  # MULTI/EXEC: meta and stream at one instant
        for queue in (pipe.dump, pipe.pttl):
            queue(meta)
        for queue in (pipe.dump, pipe.pttl):
            queue(stream)
        pipe.hmget(meta, "e", "s")
        pipe.time()
        meta_dump, meta_ttl, stream_dump, stream_ttl, (epoch, top), (secs, micros) = pipe.execute()
        now_ms = secs * 1000 + micros // 1000
        keep(meta, meta_dump, meta_ttl, now_ms)
        keep(stream, stream_dump, stream_ttl, now_ms)
        if meta_dump is not None and epoch is not None:
            streams[channel.decode(errors="replace")] = (epoch.decode(), int(top or 0))
    for name in others:
        pipe = conn.pipeline(transaction=True)
        pipe.dump(name)
        pipe.pttl(name)
        pipe.time()
        payload, pttl, (secs, micros) = pipe.execute()
        now_ms = secs * 1000 + micros // 1000
        keep(name, payload, pttl, now_ms)
    if not now_ms:
        secs, micros = conn.time()
        now_ms = secs * 1000 + micros // 1000
    return KeyspaceDump(count, streams, samples, now_ms)


def read_records(source: BinaryIO) -> Iterator[tuple[bytes, bytes, int]]:
    """The records of a dump file; a cut record raises KeyspaceError."""
    while head := source.read(RECORD.size):
        if len(head) < RECORD.size:
            raise KeyspaceError("the Redis records end inside a record header")
        key_len, value_len, expire_at = RECORD.unpack(head)
        key, payload = source.read(key_len), source.read(value_len)
        if len(key) < key_len or len(payload) < value_len:
            raise KeyspaceError("the Redis records end inside a record")
        yield key, payload, expire_at


def restore_keyspace(
    address: str,
    records: Iterable[tuple[bytes, bytes, int]],
    *,
    replace: bool = False,
    keep_ttl: bool = True,
) -> int:
    """RESTORE every record; with `keep_ttl` a key expires when the original would have (one
    already past is not restored), else keys are restored without a TTL (the drill's scratch
    server: everything stays to be checked). Returns the number of keys restored."""
    restored = 0
    try:
        with _client(address) as conn:
            pipe = conn.pipeline(transaction=False)
            now_ms = _now_ms(conn)
            for key, payload, expire_at in records:
                if keep_ttl and 0 <= expire_at <= now_ms:
                    continue
                ttl = expire_at if keep_ttl and expire_at >= 0 else 0
                pipe.restore(key, ttl, payload, replace=replace, absttl=ttl > 0)
                restored += 1
                if len(pipe) >= 500:
                    pipe.execute()
            pipe.execute()
    except redis.RedisError as exc:
        raise KeyspaceError(f"Redis at {address}: {exc}") from None
    return restored


def _now_ms(conn: redis.Redis) -> int:
    secs, micros = conn.time()
    return int(secs * 1000 + micros // 1000)


def live_keys(address: str, prefix: str) -> int:
    """How many keys a restore would overwrite or mix with (presence not counted)."""
    try:
        with _client(address) as conn:
            return sum(1 for _ in _names(conn, prefix))
    except redis.RedisError as exc:
        raise KeyspaceError(f"Redis at {address}: {exc}") from None


def stream_positions(address: str, prefix: str) -> dict[str, tuple[str, int, int]]:
    """channel -> (epoch, top offset from the meta, offset of the stream's last entry or 0)."""
    meta_head = f"{prefix}.meta."
    found = {}
    try:
        with _client(address) as conn:
            for name in conn.scan_iter(match=_pattern(f"{prefix}.meta"), _type="hash"):
                channel = name.decode()[len(meta_head) :]
                epoch, top = conn.hmget(name, "e", "s")
                last = conn.xrevrange(f"{prefix}.stream.{channel}", count=1)
                last_offset = int(last[0][0].split(b"-")[0]) if last else 0
                found[channel] = ((epoch or b"").decode(), int(top or 0), last_offset)
            return found
    except redis.RedisError as exc:
        raise KeyspaceError(f"Redis at {address}: {exc}") from None


def dump_value(address: str, key: bytes) -> bytes | None:
    try:
        with _client(address) as conn:
            value: bytes | None = conn.dump(key)
            return value
    except redis.RedisError as exc:
        raise KeyspaceError(f"Redis at {address}: {exc}") from None


def ping(address: str) -> bool:
    """Whether a Redis answers at `address` (a scratch server coming up)."""
    try:
        with redis.Redis.from_url(address, socket_timeout=1, socket_connect_timeout=1) as conn:
            return bool(conn.ping())
    except redis.RedisError:
        return False


def bgsave(address: str, timeout: float = 300.0) -> Path:
    """Have Redis write its RDB file (BGSAVE: a fork's point-in-time snapshot of everything) and
    return where it is; a save already running is waited for and used instead. The path is on
    the Redis host: only useful when that is this host (Aether owns the Redis)."""
    try:
        with _client(address) as conn:
            try:
                conn.bgsave()
            except redis.ResponseError as exc:
                if "in progress" not in str(exc):
                    raise
            deadline = time.monotonic() + timeout
            # Polling: Redis announces the end of a background save to no one.
            while (info := conn.info("persistence"))["rdb_bgsave_in_progress"]:
                if time.monotonic() > deadline:
                    raise KeyspaceError(
                        f"Redis at {address}: BGSAVE still running after {timeout} s"
                    )
                time.sleep(0.05)
            if info["rdb_last_bgsave_status"] != "ok":
                raise KeyspaceError(f"Redis at {address}: BGSAVE failed (see the Redis log)")
            directory = str(conn.config_get("dir")["dir"])
            name = str(conn.config_get("dbfilename")["dbfilename"])
            return Path(directory) / name
    except redis.RedisError as exc:
        raise KeyspaceError(f"Redis at {address}: {exc}") from None
