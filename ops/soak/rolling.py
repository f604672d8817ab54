"""The rolling deploy: a new release through ops/deploy.sh into the running deployment's prefix,
then every process restarted in turn under the supervisor while the clients stay connected.

deploy.sh installs it (`--no-start`: its own step 8 restarts `aether:*` at once, which is an
outage, not a rolling deploy); then, one process at a time, `supervisorctl restart` stops it
gracefully (SIGTERM: the process tells its clients to reconnect, and nginx sends them to the
other one) and starts the new code, and the next waits until this one answers /ready. The
record says how long each step took; what it did to delivery is the run's accounting (nothing
may be lost inside the history window) and the errors counted inside the fault's window.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import trio
from deployment import PROCESSES, Deployment
from release import deploy

__all__ = ["rolling_deploy"]

READY_WITHIN = 60.0


async def rolling_deploy(dep: Deployment, ctx: Any) -> dict[str, Any]:
    started = time.monotonic()
    release = len(dep.releases) + 1
    installed = await trio.to_thread.run_sync(lambda: deploy(dep.directory, release, PROCESSES))
    dep.releases.append(installed)
    record: dict[str, Any] = {"deploy": installed}
    if installed["exit"] != 0:
        return record | {"error": "ops/deploy.sh failed: no process restarted"}
    restarts = []
    for instance in range(1, PROCESSES + 1):
        begun = time.monotonic()
        old = await trio.to_thread.run_sync(dep.pid, instance)
        done = await trio.to_thread.run_sync(
            dep.supervisorctl, "restart", f"aether:aether-{instance}"
        )
        ready = await _ready(dep, instance)
        restarts.append({
            "instance": instance, "old_pid": old,
            "new_pid": await trio.to_thread.run_sync(dep.pid, instance),
            "supervisorctl": done.stdout.strip().replace("\n", "; "),
            "restart_s": round(time.monotonic() - begun, 2) if ready is not None else None,
        })  # fmt: skip
        if ready is None:
            record["error"] = f"process {instance} not ready within {READY_WITHIN:.0f} s"
            break
    return record | {"restarts": restarts, "total_s": round(time.monotonic() - started, 2)}


async def _ready(dep: Deployment, instance: int) -> float | None:
    start = trio.current_time()
    async with httpx.AsyncClient(timeout=2) as http:
        with trio.move_on_after(READY_WITHIN):
            while True:
                try:
                    if (await http.get(f"{dep.internal(instance)}/ready")).status_code == 200:
                        return trio.current_time() - start
                except httpx.HTTPError:
                    pass
                await trio.sleep(0.1)
    return None
