"""The centrifuge-js witnesses: a few real npm `centrifuge` SDK clients in one Node process
(witness.mjs), subscribed to the hot channel through nginx for the whole run, reconnecting and
recovering with the SDK's own logic. Each one's publications are counted by offset and by the
publications' own ids in a `Ledger`, exactly as for the load clients and the Python witness.

The SDK comes from tests/js (the pinned `centrifuge` and `ws` of its package-lock.json), installed
with `npm ci` when missing, as tests/test_sdk_js.py does. Their publish-to-receive latency is
measured inside Node (its clock, not this harness's event loop), so it is a latency no lag of
the harness inflates: the report sets it beside the load clients' figure.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import attrs
import orjson
import trio
from clients import Ledger

__all__ = ["JsWitnesses", "ensure_sdk"]

ROOT = Path(__file__).resolve().parents[2]
JS_DIR = ROOT / "tests" / "js"
SCRIPT = Path(__file__).resolve().parent / "witness.mjs"


def ensure_sdk() -> str:
    """`node`'s path, after `npm ci` in tests/js if the SDK is not installed there."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        raise RuntimeError("the centrifuge-js witnesses need Node.js >= 20 and npm on PATH")
    if not all(
        (JS_DIR / "node_modules" / p / "package.json").is_file() for p in ("centrifuge", "ws")
    ):
        done = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=JS_DIR,
                              capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"npm ci in {JS_DIR} failed: {done.stdout}{done.stderr}")
    return node


@attrs.define
class JsWitnesses:
    channel: str
    count: int = 4  # the last one straight to process 1, the others through nginx
    ledgers: list[Ledger] = attrs.field(init=False)
    connected: list[bool] = attrs.field(init=False)
    events: list[str] = attrs.field(factory=list)
    latencies_ms: list[float] = attrs.field(factory=list)  # through nginx
    direct_latencies_ms: list[float] = attrs.field(factory=list)  # straight to a process
    # Second of the run a publication's line arrived -> [count, latency sum] (for the report's
    # split into fault windows and quiet time; the latency itself is Node's).
    timeline: dict[int, list[float]] = attrs.field(factory=dict)
    started: float = 0.0  # the run's clock origin (time.monotonic()), set by the run
    version: str = ""
    _process: trio.Process | None = None

    def __attrs_post_init__(self) -> None:
        self.ledgers = [Ledger(self.channel, ids=set()) for _ in range(self.count)]
        self.connected = [False] * self.count

    async def run(
        self, node: str, url: str, direct_url: str, tokens: list[str], cafile: str, *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:  # fmt: skip
        package = JS_DIR / "node_modules" / "centrifuge" / "package.json"
        self.version = json.loads(package.read_text())["version"]
        env = {**os.environ, "SOAK_URL": url, "SOAK_CHANNEL": self.channel,
               "SOAK_TOKENS": " ".join(tokens[: self.count]), "SOAK_JS_DIR": str(JS_DIR),
               "SOAK_DIRECT_URL": direct_url,
               "NODE_EXTRA_CA_CERTS": cafile}  # fmt: skip
        process = await trio.lowlevel.open_process(
            [node, str(SCRIPT)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env
        )
        self._process = process
        task_status.started()
        assert process.stdout is not None
        pending = b""
        try:
            async for chunk in process.stdout:
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if line:
                        self._line(orjson.loads(line))
        finally:
            with trio.move_on_after(5) as cleanup:
                cleanup.shield = True
                if process.returncode is None:
                    process.kill()
                await process.wait()

    def _line(self, event: dict[str, Any]) -> None:
        c, kind = event["c"], event["ev"]
        ledger = self.ledgers[c]
        if kind == "pub":
            ledger.apply(int(event["offset"]), {"i": event["id"]})
            if event.get("lat") is not None:
                direct = c == self.count - 1
                (self.direct_latencies_ms if direct else self.latencies_ms).append(event["lat"])
                if self.started:
                    row = self.timeline.setdefault(int(time.monotonic() - self.started), [0, 0.0])
                    row[0] += 1
                    row[1] += event["lat"]
        elif kind == "subscribed":
            ledger.stand(event["epoch"], int(event["offset"]))
            if event["wasRecovering"]:
                self.events.append(f"js{c} subscribed recovered={event['recovered']}")
        elif kind == "state":
            self.connected[c] = event["to"] == "connected"
            if event["to"] != "connected":
                self.events.append(f"js{c} {event['to']} {event.get('code')}")

    def behind(self, top: int) -> bool:
        return any(ledger.last < top for ledger in self.ledgers)

    async def stop(self) -> None:
        """Close Node's stdin: the witnesses disconnect and the process exits."""
        if self._process is not None and self._process.stdin is not None:
            await self._process.stdin.aclose()

    def summary(self, top: int) -> dict[str, Any]:
        return {
            "sdk": f"centrifuge-js {self.version} (npm, Node)",
            "clients": [
                {"path": "direct" if k == self.count - 1 else "nginx",
                 "received": len(ledger.received), "lost": ledger.missing(top),
                 "duplicates": ledger.duplicates, "out_of_order": ledger.out_of_order,
                 "double_published": ledger.double_published}
                for k, ledger in enumerate(self.ledgers)
            ],
            "latency_ms": _distribution(self.latencies_ms),
            "direct_latency_ms": _distribution(self.direct_latencies_ms),
            "events": self.events[:30],
        }  # fmt: skip


def _distribution(samples: list[float]) -> dict[str, Any]:
    ordered = sorted(samples)
    if not ordered:
        return {"samples": 0, "mean": None, "p50": None, "p99": None}
    return {
        "samples": len(ordered),
        "mean": round(sum(ordered) / len(ordered), 1),
        "p50": round(ordered[len(ordered) // 2], 1),
        "p99": round(ordered[int(len(ordered) * 0.99)], 1),
    }
