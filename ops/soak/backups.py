"""The soak's backup + verify cycle: `aether backup create` of every process (its SQLite under
`[admin] data_dir`/N and the shared Redis keys under the engine's prefix), uploaded to a private
S3 API the harness owns (deployment.py: moto's server on loopback, as the backup tests start
it), then the drill, `aether backup verify`, on each new backup: a backup
counts as verified only when restoring it into scratch SQLite and a scratch redis-server passed
every check.

The commands are the operator's, run as processes against the live deployment while the clients
and publishers go on; what the seed measures is counted from their exit codes (backup success,
backup-verification success), and the drill's own record (`aether backup list --json`: each
check and its time, the RTO) goes into the report beside them. The server's `aether_backup_*`
metrics are scraped too; they count only the backups the server schedules itself
(`[backup] schedule`), which the soak leaves off, so they say so rather than anything of this
cycle.
"""

from __future__ import annotations

import re
import time
from typing import Any

import httpx
import orjson
import trio
from deployment import PROCESSES, Deployment

__all__ = ["backup_cycle", "server_backup_metrics"]

CREATED = re.compile(r"^backup (\S+): ")


async def _aether(dep: Deployment, *args: str) -> tuple[int, str, float]:
    """`aether ARGS`: its exit code, its output (stdout, else stderr's end) and its duration."""
    started = time.monotonic()
    result = await trio.to_thread.run_sync(lambda: dep.aether(*args, timeout=180))
    text = result.stdout.strip() or result.stderr.strip()[-400:]
    return result.returncode, text, round(time.monotonic() - started, 2)


async def backup_cycle(dep: Deployment, ctx: Any) -> dict[str, Any]:
    """Back up every process, then run the drill on each new backup; every attempt is counted
    in `ctx.backups` (the report's two backup metrics)."""
    config = str(dep.config)
    records: list[dict[str, Any]] = []
    for instance in range(1, PROCESSES + 1):
        where = ("-c", config, "--instance", str(instance))
        code, text, seconds = await _aether(dep, "backup", "create", *where)
        found = CREATED.match(text.splitlines()[-1] if text else "")
        record: dict[str, Any] = {"instance": instance, "created": code == 0,
                                  "create_s": seconds, "create_said": text[-300:]}  # fmt: skip
        if code == 0 and found:
            backup_id = found[1]
            record["id"] = backup_id
            code, text, seconds = await _aether(dep, "backup", "verify", *where, backup_id)
            record |= {"verified": code == 0, "verify_s": seconds,
                       "verify_said": text.splitlines()[-1][-300:] if text else ""}  # fmt: skip
        records.append(record)
        ctx.backups.append(record)
    drills = await _drill_records(dep, {r["id"] for r in records if "id" in r})
    for record in records:
        if "id" in record:
            record["drill"] = drills.get(record["id"])
    return {
        "backups": f"{sum(r['created'] for r in records)} of {len(records)} created",
        "verified": f"{sum(bool(r.get('verified')) for r in records)} of "
        f"{sum('verified' in r for r in records)} drills passed",
        "rto_s": [r["drill"]["rto_seconds"] for r in records if r.get("drill")],
        "took_s": round(sum(r["create_s"] + r.get("verify_s", 0.0) for r in records), 2),
    }


async def _drill_records(dep: Deployment, ids: set[str]) -> dict[str, Any]:
    """The drill's own record of each backup (stored beside the archive): each check with its
    time, and the RTO it measured."""
    code, text, _ = await _aether(dep, "backup", "list", "-c", str(dep.config), "--json")
    if code != 0:
        return {}
    out: dict[str, Any] = {}
    for row in orjson.loads(text) if text.startswith("[") else []:
        drill = row.get("drill")
        if row["id"] in ids and drill:
            out[row["id"]] = {
                "ok": drill.get("ok"),
                "rto_seconds": None
                if drill.get("rto_seconds") is None
                else round(drill["rto_seconds"], 3),
                "failed_check": drill.get("failed_check"),
                "checks_s": {c["name"]: round(c["seconds"], 3) for c in drill.get("checks", [])},
                "size": row.get("size"),
            }
    return out


async def server_backup_metrics(dep: Deployment) -> dict[int, dict[str, float]]:
    """Every process's `aether_backup_*` samples, from its /metrics."""
    found: dict[int, dict[str, float]] = {}
    async with httpx.AsyncClient(timeout=5) as http:
        for instance in range(1, PROCESSES + 1):
            try:
                text = (await http.get(f"{dep.internal(instance)}/metrics")).text
            except httpx.HTTPError:
                continue
            found[instance] = {
                name: float(value)
                for name, value in (line.rsplit(" ", 1) for line in text.splitlines()
                                    if line.startswith("aether_backup_"))
            }  # fmt: skip
    return found
