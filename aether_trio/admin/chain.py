"""The audit log's hash chain: canonical serialization, entry hashes and verification (pure).

An entry is a JSON object with exactly these members:

    seq     integer, 1 for the first entry, then +1 per entry (no gaps)
    ts      string, UTC time in RFC 3339 with milliseconds: "2025-05-01T12:00:00.123Z"
    actor   string, who did it: "key:<api key name>", "signal:SIGHUP", "client:<ip:port>", ...
    action  string, what was done: "admin.ban", "api.publish", "config.reload", "auth_failure", ...
    params  object, the request with secrets replaced by "[redacted]" and values over 1 KiB by
            {"omitted_bytes": n, "sha256": hex}
    result  any JSON value, the outcome
    ok      boolean, whether the action succeeded
    prev    string, the `hash` of entry seq-1 (64 "0"s for the first entry)

Canonical serialization: UTF-8 JSON without insignificant whitespace, members of every object
sorted by key (code point order), strings with only the escapes JSON requires (non-ASCII as raw
UTF-8), integers in decimal (64-bit), floats in the shortest form that reads back to the same
double -- exactly what `orjson.dumps(entry, option=orjson.OPT_SORT_KEYS)` writes.
`hash` = lowercase hex SHA-256 of those bytes. The store keeps each entry's canonical text and
its hash, plus a head row (last seq and hash) that is updated in the same transaction.

`verify` walks the entries in seq order and names the first that breaks the chain: a missing
seq (deleted entry), text that is not canonical JSON or disagrees with its seq (edited), a hash
that does not match the text (edited), a `prev` that does not match the previous hash (an earlier
entry edited and rehashed, or removed), or entries missing after the last one (truncated, seen
against the head row). An attacker who can rewrite the whole file can rebuild a valid chain:
record the head hash `aether audit verify` prints somewhere else to pin the history.
"""

from __future__ import annotations

import datetime
import hashlib
from collections.abc import Iterable, Mapping
from typing import Any

import attrs
import orjson

__all__ = [
    "GENESIS",
    "Broken",
    "Verification",
    "body",
    "canonical",
    "digest",
    "jsonable",
    "redact",
    "timestamp",
    "verify",
]

GENESIS = "0" * 64
REDACTED = "[redacted]"
MAX_VALUE_BYTES = 1024
# A parameter whose (lower-cased) name contains one of these is never written to the log.
SECRET_WORDS = ("token", "secret", "password", "authorization", "api_key", "apikey", "credential")
FIELDS = ("action", "actor", "ok", "params", "prev", "result", "seq", "ts")


def canonical(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def digest(text: bytes) -> str:
    return hashlib.sha256(text).hexdigest()


def timestamp(now: float) -> str:
    moment = datetime.datetime.fromtimestamp(now, datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def jsonable(value: Any) -> Any:
    """`value` as plain JSON data (what reading it back gives); unknown objects become strings."""
    try:
        return orjson.loads(orjson.dumps(value, default=str))
    except TypeError:  # an integer beyond 64 bits, a key that is not a string: look closer
        if isinstance(value, Mapping):
            return {str(key): jsonable(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [jsonable(item) for item in value]
        return str(value)


def redact(params: Mapping[str, Any]) -> dict[str, Any]:
    """Secrets replaced (at any depth), large top-level values replaced by their size and hash."""
    out: dict[str, Any] = {}
    for key, value in _without_secrets(jsonable(dict(params))).items():
        text = canonical(value)
        if len(text) > MAX_VALUE_BYTES:
            value = {"omitted_bytes": len(text), "sha256": digest(text)}
        out[key] = value
    return out


def _without_secrets(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            key: REDACTED if _secret(key) else _without_secrets(item) for key, item in value.items()
        }
    if isinstance(value, list):
        return [_without_secrets(item) for item in value]
    return value


def _secret(key: str) -> bool:
    lowered = key.lower()
    return any(word in lowered for word in SECRET_WORDS)


def body(
    *,
    seq: int,
    ts: str,
    actor: str,
    action: str,
    params: dict[str, Any],
    result: Any,
    ok: bool,
    prev: str,
) -> bytes:
    """The canonical text of an entry (`params` and `result` already JSON data)."""
    entry = {"seq": seq, "ts": ts, "actor": actor, "action": action, "params": params,
             "result": result, "ok": ok, "prev": prev}  # fmt: skip
    return canonical(entry)


@attrs.frozen
class Broken:
    seq: int
    problem: str


@attrs.frozen
class Verification:
    entries: int
    head: str  # hash of the last entry (GENESIS for an empty log)
    broken: Broken | None


def verify(rows: Iterable[tuple[int, str, str]], head: tuple[int, str] | None) -> Verification:
    """Check `(seq, text, hash)` rows in seq order against each other and the head row."""
    expected, prev, count = 1, GENESIS, 0
    for seq, text, stored_hash in rows:
        problem = _check(seq, expected, text, stored_hash, prev)
        if problem is not None:
            return Verification(count, prev, Broken(expected if seq > expected else seq, problem))
        expected, prev, count = seq + 1, stored_hash, count + 1
    if head is not None and head != (expected - 1, prev):
        last_seq, last_hash = head
        if last_seq >= expected:
            problem = f"entries {expected}..{last_seq} are missing (log truncated)"
        else:
            problem = f"the head row says seq {last_seq} with hash {last_hash[:12]}..."
        return Verification(count, prev, Broken(expected, problem))
    return Verification(count, prev, None)


def _check(seq: int, expected: int, text: str, stored_hash: str, prev: str) -> str | None:
    if seq != expected:
        if seq > expected:
            return f"entry {expected} is missing (the next one is {seq})"
        return f"entry {seq} is out of order"
    raw = text.encode()
    try:
        entry = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return "not valid JSON (edited)"
    if not isinstance(entry, dict) or tuple(sorted(entry)) != FIELDS:
        return "not an audit entry (edited)"
    if canonical(entry) != raw:
        return "not in canonical form (edited)"
    if entry["seq"] != seq:
        return f"its seq field says {entry['seq']!r} (edited)"
    if digest(raw) != stored_hash:
        return "its hash does not match its content (edited)"
    if entry["prev"] != prev:
        return f"prev does not match the hash of entry {seq - 1} (edited or removed before it)"
    return None
