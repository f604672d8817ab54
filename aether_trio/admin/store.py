"""The SQLite database under `[admin] data_dir`: bans, token revocations and the audit log.

`Database` is plain synchronous sqlite3 (the CLI uses it directly to verify and tail the audit
log). The server reaches it only through `Store`, which runs each call in a worker thread
(`trio.to_thread.run_sync`) while holding a `trio.Lock`: one connection, opened with
`check_same_thread=False`, used by one thread at a time, so the event loop never waits on disk
and calls never interleave. Cancellation waits for a running call to finish (the default of
`run_sync`), so the lock is never released with a transaction half done. WAL journaling lets
`aether audit verify` read while the server writes.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import trio

from . import chain

__all__ = ["DB_NAME", "Database", "Store", "StoreError", "database_path"]

DB_NAME = "aether.sqlite3"
# Seconds a write waits for another process holding the database (then it is retried).
BUSY_TIMEOUT = 10.0
_P = ParamSpec("_P")
_T = TypeVar("_T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS bans (
    user TEXT PRIMARY KEY, expire_at REAL, reason TEXT NOT NULL, created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS revoked_tokens (
    jti TEXT PRIMARY KEY, expire_at REAL, created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS token_cutoffs (
    user TEXT PRIMARY KEY, before INTEGER NOT NULL, created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY, entry TEXT NOT NULL, hash TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS audit_head (
    id INTEGER PRIMARY KEY CHECK (id = 1), seq INTEGER NOT NULL, hash TEXT NOT NULL);
"""

StoreError = sqlite3.Error


def database_path(data_dir: str | Path) -> Path:
    return Path(data_dir) / DB_NAME


class Database:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    @classmethod
    def open(cls, path: Path, *, readonly: bool = False) -> Database:
        if readonly:
            if not path.is_file():
                raise FileNotFoundError(f"no database at {path}")
            conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
            return cls(conn)
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(
            path, timeout=BUSY_TIMEOUT, check_same_thread=False, isolation_level=None
        )
        conn.execute("PRAGMA journal_mode=WAL")
        conn.executescript(SCHEMA)
        return cls(conn)

    def close(self) -> None:
        self.conn.close()

    def _write(self, statements: list[tuple[str, tuple[Any, ...]]]) -> None:
        """Run statements in one transaction: all or nothing."""
        with self.conn:
            self.conn.execute("BEGIN IMMEDIATE")
            for sql, args in statements:
                self.conn.execute(sql, args)

    # --- bans, revocations, cut-offs ---

    def bans(self) -> list[tuple[str, float | None, str]]:
        return self.conn.execute("SELECT user, expire_at, reason FROM bans").fetchall()

    def put_ban(self, user: str, expire_at: float | None, reason: str, now: float) -> None:
        sql = "INSERT OR REPLACE INTO bans VALUES (?, ?, ?, ?)"
        self._write([(sql, (user, expire_at, reason, now))])

    def delete_ban(self, user: str) -> None:
        self._write([("DELETE FROM bans WHERE user = ?", (user,))])

    def revoked(self) -> list[tuple[str, float | None]]:
        return self.conn.execute("SELECT jti, expire_at FROM revoked_tokens").fetchall()

    def put_revoked(self, jti: str, expire_at: float | None, now: float) -> None:
        sql = "INSERT OR REPLACE INTO revoked_tokens VALUES (?, ?, ?)"
        self._write([(sql, (jti, expire_at, now))])

    def cutoffs(self) -> list[tuple[str, int]]:
        return self.conn.execute("SELECT user, before FROM token_cutoffs").fetchall()

    def put_cutoff(self, user: str, before: int, now: float) -> None:
        sql = "INSERT OR REPLACE INTO token_cutoffs VALUES (?, ?, ?)"
        self._write([(sql, (user, before, now))])

    def prune(self, now: float) -> None:
        """Forget bans and revocations that have expired."""
        self._write([
            ("DELETE FROM bans WHERE expire_at IS NOT NULL AND expire_at <= ?", (now,)),
            ("DELETE FROM revoked_tokens WHERE expire_at IS NOT NULL AND expire_at <= ?", (now,)),
        ])  # fmt: skip

    # --- audit log ---

    def audit_head(self) -> tuple[int, str] | None:
        row = self.conn.execute("SELECT seq, hash FROM audit_head WHERE id = 1").fetchone()
        return None if row is None else (row[0], row[1])

    def append_audit(self, drafts: list[dict[str, Any]]) -> tuple[int, str]:
        """Chain `drafts` (entries without `seq` and `prev`) onto the stored head and insert them
        with the new head, in one transaction; returns the new head. The head is read inside the
        write transaction, so writers in several processes still build one chain."""
        with self.conn:
            self.conn.execute("BEGIN IMMEDIATE")
            seq, prev = self.audit_head() or (0, chain.GENESIS)
            for draft in drafts:
                seq += 1
                text = chain.body(seq=seq, prev=prev, **draft)
                prev = chain.digest(text)
                self.conn.execute("INSERT INTO audit VALUES (?, ?, ?)", (seq, text.decode(), prev))
            self.conn.execute("INSERT OR REPLACE INTO audit_head VALUES (1, ?, ?)", (seq, prev))
        return seq, prev

    def audit_rows(self) -> Iterator[tuple[int, str, str]]:
        yield from self.conn.execute("SELECT seq, entry, hash FROM audit ORDER BY seq")

    def audit_tail(self, count: int) -> list[tuple[int, str, str]]:
        rows = self.conn.execute(
            "SELECT seq, entry, hash FROM audit ORDER BY seq DESC LIMIT ?", (count,)
        ).fetchall()
        return rows[::-1]


class Store:
    """`Database` for the event loop: every call in a worker thread, one at a time."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._lock = trio.Lock()

    @classmethod
    async def open(cls, data_dir: str | Path) -> Store:
        path = database_path(data_dir)
        return cls(await trio.to_thread.run_sync(Database.open, path))

    async def call(self, fn: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        async with self._lock:
            return await trio.to_thread.run_sync(lambda: fn(*args, **kwargs))

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            async with self._lock:
                await trio.to_thread.run_sync(self.db.close)
