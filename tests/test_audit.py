"""The audit log: the hash chain (pure), `AuditLog` (recording, sampling, persisting), and the
live server writing it, checked from the outside with `aether audit verify` / `tail` (subprocess)
after editing the SQLite file by hand."""

from __future__ import annotations

import asyncio
import hashlib
import re
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import trio
from centrifuge import Client, ClientEventHandler, DisconnectedContext
from conftest import make_config, running_server

from aether_trio.admin import audit as audit_module
from aether_trio.admin import chain
from aether_trio.admin.audit import AuditLog
from aether_trio.admin.store import Database, Store, database_path

ADMIN_KEY = "admin-key-for-tests"


def admin_config(data_dir: Path, **admin: Any) -> dict[str, Any]:
    return {
        "api": {"keys": [{"name": "ops", "key": ADMIN_KEY, "roles": ["admin"]}]},
        "admin": {"data_dir": str(data_dir), **admin},
    }


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aether_trio", *args],
        capture_output=True, text=True, timeout=60, cwd=cwd,
    )  # fmt: skip


def rows(data_dir: Path) -> list[tuple[int, str, str]]:
    db = Database.open(database_path(data_dir), readonly=True)
    try:
        return list(db.audit_rows())
    finally:
        db.close()


def entries(data_dir: Path) -> list[dict[str, Any]]:
    return [orjson.loads(text) for _seq, text, _hash in rows(data_dir)]


def build_chain(count: int) -> list[tuple[int, str, str]]:
    out, prev = [], chain.GENESIS
    for seq in range(1, count + 1):
        text = chain.body(seq=seq, ts="2025-01-01T00:00:00.000Z", actor="key:ops",
                          action=f"admin.test{seq}", params={"n": seq}, result=None, ok=True,
                          prev=prev)  # fmt: skip
        prev = chain.digest(text)
        out.append((seq, text.decode(), prev))
    return out


# --- the chain, pure ---


def test_canonical_serialization_is_sorted_compact_utf8() -> None:
    value = {"b": 1, "a": {"y": 1.5, "x": "é", "z": [True, None]}}
    assert chain.canonical(value) == '{"a":{"x":"é","y":1.5,"z":[true,null]},"b":1}'.encode()


def test_entry_body_and_hash_follow_the_documented_format() -> None:
    text = chain.body(seq=1, ts="2025-01-01T00:00:00.000Z", actor="server", action="x",
                      params={}, result=None, ok=True, prev=chain.GENESIS)  # fmt: skip
    expected = (
        '{"action":"x","actor":"server","ok":true,"params":{},"prev":"' + "0" * 64 + '",'
        '"result":null,"seq":1,"ts":"2025-01-01T00:00:00.000Z"}'
    )
    assert text == expected.encode()
    assert chain.digest(text) == hashlib.sha256(expected.encode()).hexdigest()


def test_timestamp_is_rfc3339_utc_with_milliseconds() -> None:
    assert chain.timestamp(0.25) == "1970-01-01T00:00:00.250Z"


def test_verify_accepts_an_intact_chain() -> None:
    found = chain.verify(build_chain(5), (5, build_chain(5)[-1][2]))
    assert (found.entries, found.broken) == (5, None)
    assert found.head == build_chain(5)[-1][2]
    assert chain.verify([], None) == chain.Verification(0, chain.GENESIS, None)


def test_verify_names_an_edited_entry() -> None:
    log = build_chain(5)
    seq, text, digest = log[2]
    log[2] = (seq, text.replace('"n":3', '"n":4'), digest)
    broken = chain.verify(log, None).broken
    assert broken is not None
    assert broken.seq == 3
    assert "hash" in broken.problem


def test_verify_names_the_next_entry_when_an_edit_was_rehashed() -> None:
    log = build_chain(5)
    seq, text, _digest = log[1]
    text = text.replace('"n":2', '"n":7')
    log[1] = (seq, text, chain.digest(text.encode()))
    broken = chain.verify(log, None).broken
    assert broken is not None
    assert broken.seq == 3
    assert "prev" in broken.problem


def test_verify_names_a_deleted_entry_and_a_truncated_tail() -> None:
    log = build_chain(5)
    broken = chain.verify(log[:1] + log[2:], None).broken
    assert broken is not None
    assert broken.seq == 2
    assert "missing" in broken.problem
    broken = chain.verify(log[1:], None).broken
    assert broken is not None
    assert broken.seq == 1
    broken = chain.verify(log[:3], (5, log[4][2])).broken
    assert broken is not None
    assert broken.seq == 4
    assert "truncated" in broken.problem


def test_verify_refuses_non_canonical_text_even_with_a_matching_hash() -> None:
    log = build_chain(2)
    seq, text, _ = log[1]
    spaced = text.replace(",", ", ")
    log[1] = (seq, spaced, chain.digest(spaced.encode()))
    broken = chain.verify(log, None).broken
    assert broken is not None
    assert broken.seq == 2
    assert "canonical" in broken.problem


def test_redact_removes_secrets_at_any_depth_and_shrinks_large_values() -> None:
    params = {"token": "eyJ.a.b", "user": "42", "nested": {"api_key": "k", "ok": [1]},
              "list": [{"Password": "x"}], "data": "x" * 5000}  # fmt: skip
    out = chain.redact(params)
    assert out["token"] == "[redacted]"
    assert out["nested"] == {"api_key": "[redacted]", "ok": [1]}
    assert out["list"] == [{"Password": "[redacted]"}]
    assert out["user"] == "42"
    assert out["data"]["omitted_bytes"] == 5002
    assert len(out["data"]["sha256"]) == 64


# --- AuditLog with a real store ---


async def test_record_flush_persists_a_verifiable_chain_across_reopen(tmp_path: Path) -> None:
    for round_ in range(2):  # the second log continues the chain the first one wrote
        store = await Store.open(tmp_path)
        audit = AuditLog(store, await store.call(store.db.audit_head))
        async with trio.open_nursery() as nursery:
            await nursery.start(audit.run)
            audit.record("api.publish", actor="key:pub", params={"channel": "a", "b64data": "x"})
            audit.record("admin.ban", actor="key:ops", params={"user": str(round_)}, ok=False)
            assert await audit.flush()
            nursery.cancel_scope.cancel()
        await store.aclose()
    found = entries(tmp_path)
    assert [e["seq"] for e in found] == [1, 2, 3, 4]
    assert found[0]["params"] == {"channel": "a", "b64data": "x"}
    assert found[1]["ok"] is False
    assert found[3]["params"] == {"user": "1"}
    assert chain.verify(rows(tmp_path), (4, rows(tmp_path)[-1][2])).broken is None


async def test_auth_failures_are_sampled_per_minute(tmp_path: Path) -> None:
    now = [1000.0]
    store = await Store.open(tmp_path)
    audit = AuditLog(store, None, auth_failures_per_minute=2, clock=lambda: now[0])
    async with trio.open_nursery() as nursery:
        await nursery.start(audit.run)
        for i in range(5):
            audit.auth_failure("api_key", actor=f"http:{i}", detail="unknown API key")
        assert audit.statistics().auth_failures_suppressed == 3
        now[0] += 61
        audit.auth_failure("api_key", actor="http:late", detail="unknown API key")
        await audit.flush()
        nursery.cancel_scope.cancel()
    await store.aclose()
    found = entries(tmp_path)
    assert [e["actor"] for e in found] == ["http:0", "http:1", "http:late"]
    assert [e["params"]["suppressed_before"] for e in found] == [0, 0, 3]
    assert all(e["action"] == "auth_failure" and e["ok"] is False for e in found)


async def test_record_never_raises_and_the_queue_is_bounded(tmp_path: Path) -> None:
    store = await Store.open(tmp_path)
    audit = AuditLog(store, None, max_pending=2)
    audit.record("a", actor="x", params={"n": 10**30})  # beyond 64 bits: kept as text
    audit.record("b", actor="x", params={"obj": object()})
    audit.record("c", actor="x")  # queue full: dropped before chaining
    stats = audit.statistics()
    assert (stats.pending, stats.dropped) == (2, 1)
    async with trio.open_nursery() as nursery:
        await nursery.start(audit.run)
        await audit.flush()
        nursery.cancel_scope.cancel()
    await store.aclose()
    found = entries(tmp_path)
    assert [e["action"] for e in found] == ["a", "b"]
    assert found[0]["params"] == {"n": str(10**30)}
    assert found[1]["params"]["obj"].startswith("<")
    assert chain.verify(rows(tmp_path), None).broken is None


# --- the live server and the CLI ---


class Events(ClientEventHandler):
    def __init__(self) -> None:
        self.disconnected: list[DisconnectedContext] = []
        self.changed = asyncio.Event()

    async def on_disconnected(self, ctx: DisconnectedContext) -> None:
        self.disconnected.append(ctx)
        self.changed.set()


async def _bad_token_connect(url: str) -> int:
    events = Events()
    client = Client(url, events=events, token="not-a-jwt", proxy=None)
    await client.connect()
    try:
        async with asyncio.timeout(5):
            await events.changed.wait()
        code: int = events.disconnected[0].code
        return code
    finally:
        await client.disconnect()
        current = asyncio.current_task()
        pending = [t for t in asyncio.all_tasks() if t is not current]
        if pending:  # let the SDK's tasks finish (no unclosed sockets)
            await asyncio.wait(pending, timeout=2.0)


def test_live_server_audits_commands_and_failures_and_cli_detects_tampering(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    with running_server(make_config(admin_config(data))) as srv:
        base = f"http://127.0.0.1:{srv.server.http_port}/api/admin/"
        headers = {"X-API-Key": ADMIN_KEY}
        assert httpx.post(base + "ban", json={"user": "7"}, headers=headers).status_code == 200
        assert httpx.post(base + "unban", json={"user": "7"}, headers=headers).status_code == 200
        bad = httpx.post(base + "ban", json={"user": 7, "api_token": "s3cret"}, headers=headers)
        assert bad.status_code == 400
        assert httpx.post(base + "node", headers={"X-API-Key": "wrong"}).status_code == 401
        assert asyncio.run(_bad_token_connect(srv.url)) == 3500
        # Read-only views are not audited.
        assert httpx.get(base + "node", headers=headers).status_code == 200
    found = entries(data)
    actions = [(e["action"], e["actor"].split(":")[0], e["ok"]) for e in found]
    assert actions == [
        ("server.start", "server", True),
        ("admin.ban", "key", True),
        ("admin.unban", "key", True),
        ("admin.ban", "key", False),
        ("auth_failure", "http", False),
        ("auth_failure", "client", False),  # the bad connection token, by client address
    ]
    assert found[3]["params"] == {"user": 7, "api_token": "[redacted]"}
    assert found[3]["result"] == {"error": "expected a string, got an integer", "field": "user"}
    assert found[-1]["params"]["kind"] == "connection_token"

    config = tmp_path / "config.toml"
    config.write_text(f'[admin]\ndata_dir = "{data}"\n')
    ok = cli("audit", "verify", "-c", str(config))
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith(f"audit log OK: {len(found)} entries, head ")
    tail = cli("audit", "tail", "-n", "2", "-c", str(config))
    assert tail.returncode == 0
    assert len(tail.stdout.splitlines()) == 2
    assert tail.stdout.splitlines()[0].startswith(f"#{len(found) - 1} ")
    as_json = cli("audit", "tail", "-n", "1", "--json", "-c", str(config))
    assert orjson.loads(as_json.stdout)["seq"] == len(found)

    # Edit entry 2 in the SQLite file by hand: the result no longer matches its hash.
    path = database_path(data)
    with sqlite3.connect(path) as conn:
        text = conn.execute("SELECT entry FROM audit WHERE seq = 2").fetchone()[0]
        conn.execute("UPDATE audit SET entry = ? WHERE seq = 2", (text.replace('"7"', '"8"'),))
    broken = cli("audit", "verify", "--data-dir", str(data))
    assert broken.returncode == 1
    assert broken.stdout.startswith("audit log BROKEN at entry 2: its hash does not match")
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE audit SET entry = ? WHERE seq = 2", (text,))
        conn.execute("DELETE FROM audit WHERE seq = 3")
    deleted = cli("audit", "verify", "--data-dir", str(data))
    assert deleted.returncode == 1
    assert deleted.stdout.startswith("audit log BROKEN at entry 3: entry 3 is missing")
    with sqlite3.connect(path) as conn:
        conn.execute("DELETE FROM audit WHERE seq >= 3")
    truncated = cli("audit", "verify", "--data-dir", str(data))
    assert truncated.returncode == 1
    assert "truncated" in truncated.stdout


def test_audit_cli_without_a_database_exits_2(tmp_path: Path) -> None:
    result = cli("audit", "verify", "--data-dir", str(tmp_path / "nothing"))
    assert result.returncode == 2
    assert "no database" in result.stderr


def test_auth_failure_sampling_can_be_off(tmp_path: Path) -> None:
    data = tmp_path / "data"
    config = admin_config(data, audit_auth_failures_per_minute=0)
    with running_server(make_config(config)) as srv:
        url = f"http://127.0.0.1:{srv.server.http_port}/api/admin/node"
        for _ in range(3):
            assert httpx.post(url).status_code == 401
        assert asyncio.run(_bad_token_connect(srv.url)) == 3500
    assert [e["action"] for e in entries(data)] == ["server.start"]


async def test_sighup_reload_is_audited(tmp_path: Path) -> None:
    config = tmp_path / "aether.toml"
    data = tmp_path / "data"
    config.write_text(
        f'[server]\nport = 0\n[http]\nport = 0\n[admin]\ndata_dir = "{data}"\n'
        '[token]\nhmac_secret = "test-secret-0123456789abcdef0123456789abcdef"\n'
    )
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "aether_trio", "serve", "-c", str(config)],
        stderr=subprocess.PIPE,
    )
    stderr = process.stderr
    assert stderr is not None
    log = ""

    async def wait_for(text: str) -> None:
        nonlocal log
        with trio.fail_after(10):
            while text not in log:
                chunk = await stderr.receive_some()
                assert chunk, f"server exited; log:\n{log}"
                log += chunk.decode()

    try:
        await wait_for("listening on ws://")
        process.send_signal(signal.SIGHUP)
        await wait_for("configuration reloaded")
    finally:
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(10):
            await process.wait()
    found = entries(data)
    assert [(e["action"], e["actor"], e["ok"]) for e in found] == [
        ("server.start", "server", True),
        ("config.reload", "signal:SIGHUP", True),
    ]
    assert found[1]["result"] == {"reloaded": True}


def test_server_api_calls_that_change_state_are_audited(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with running_server(make_config(admin_config(data))) as srv:
        api = f"http://127.0.0.1:{srv.server.http_port}/api/"
        headers = {"X-API-Key": ADMIN_KEY}
        big = {"text": "x" * 5000}
        ok = httpx.post(api + "publish", json={"channel": "news", "data": big}, headers=headers)
        assert ok.json()["result"]["offset"] == 1
        refused = httpx.post(
            api + "publish", json={"channel": "nope:x", "data": 1}, headers=headers
        )
        assert refused.json()["error"]["code"] == 102
        assert httpx.post(api + "history", json={"channel": "news"}, headers=headers).is_success
        assert (
            httpx.post(api + "publish", json={}, headers={"X-API-Key": "wrong"}).status_code == 401
        )
    found = entries(data)
    actions = [(e["action"], e["ok"]) for e in found]
    assert actions == [
        ("server.start", True),
        ("api.publish", True),
        ("api.publish", False),  # reads (history) are not audited
        ("auth_failure", False),
    ]
    published = found[1]
    assert published["actor"] == "key:ops"
    assert published["result"]["offset"] == 1
    assert published["params"]["channel"] == "news"
    # The 5 KB payload is kept as its size and hash, not verbatim.
    assert set(published["params"]["options"]) == {"omitted_bytes", "sha256"}
    assert found[2]["result"] == {"error": 102}
    assert cli("audit", "verify", "--data-dir", str(data)).returncode == 0


# --- lossless under load and across a SIGKILL (issue 14, item 1) --------------------------------


async def test_append_waits_for_room_instead_of_dropping(tmp_path: Path) -> None:
    store = await Store.open(tmp_path)
    audit = AuditLog(store, None, max_pending=5)
    async with trio.open_nursery() as nursery:
        await nursery.start(audit.run)
        for n in range(200):
            await audit.append("api.publish", actor="key:pub", params={"n": n})
        assert await audit.flush()
        nursery.cancel_scope.cancel()
    await store.aclose()
    assert audit.statistics().dropped == 0
    assert [e["params"]["n"] for e in entries(tmp_path)] == list(range(200))
    assert chain.verify(rows(tmp_path), None).broken is None


def test_a_large_api_batch_is_audited_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Thousands of changes in one batch against a small audit queue: every one is in the log
    when the batch is answered (the queue used to overflow and drop the batch's last entries)."""
    monkeypatch.setattr(audit_module, "MAX_PENDING", 20)
    config = make_config(
        {**admin_config(tmp_path), "api": {"keys": [{"name": "ops", "key": ADMIN_KEY,
                                                     "roles": ["admin"]}],
                                           "max_batch_commands": 2000}}
    )  # fmt: skip
    with running_server(config) as srv:
        commands = [{"publish": {"channel": "news", "data": {"n": n}}} for n in range(2000)]
        response = httpx.post(
            f"http://127.0.0.1:{srv.server.http_port}/api/batch",
            json={"commands": commands}, headers={"X-API-Key": ADMIN_KEY}, timeout=60,
        )  # fmt: skip
        assert response.status_code == 200
        stats = srv.call(lambda: srv.server.node.audit)
        assert stats.statistics().dropped == 0  # type: ignore[attr-defined]
        published = [e for e in entries(tmp_path) if e["action"] == "api.publish"]
        assert [e["params"]["options"]["data"]["n"] for e in published] == list(range(2000))


async def test_a_sigkill_loses_no_acknowledged_entry(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    config = tmp_path / "aether.toml"
    config.write_text(
        f'[server]\nport = 0\n[http]\nport = 0\n[admin]\ndata_dir = "{data_dir}"\n'
        f'[[api.keys]]\nname = "ops"\nkey = "{ADMIN_KEY}"\nroles = ["admin"]\n'
    )
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "aether_trio", "serve", "-c", str(config)],
        stderr=subprocess.PIPE,
    )
    try:
        port = await _http_port_of(process)
        acknowledged = 0
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            headers = {"X-API-Key": ADMIN_KEY}
            for n in range(100):
                body = {"channel": "news", "data": {"n": n}}
                response = await http.post("/api/publish", json=body, headers=headers)
                assert response.status_code == 200
                acknowledged += 1
            batch = [{"publish": {"channel": "news", "data": {"n": n}}} for n in range(100, 600)]
            response = await http.post("/api/batch", json={"commands": batch}, headers=headers)
            assert response.status_code == 200
            acknowledged += len(batch)
        process.send_signal(signal.SIGKILL)  # right after the last answer: no shutdown at all
    finally:
        with trio.move_on_after(10):
            await process.wait()
        process.kill()
    published = [e for e in entries(data_dir) if e["action"] == "api.publish"]
    assert len(published) == acknowledged == 600
    assert chain.verify(rows(data_dir), None).broken is None


async def _http_port_of(process: trio.Process) -> int:
    assert process.stderr is not None
    log = ""
    with trio.fail_after(15):
        while True:
            found = re.search(r"internal HTTP listening on http://127\.0\.0\.1:(\d+)", log)
            if found:
                return int(found.group(1))
            chunk = await process.stderr.receive_some()
            if not chunk:
                raise AssertionError(f"server exited; log:\n{log}")
            log += chunk.decode()
