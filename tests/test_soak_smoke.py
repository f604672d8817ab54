"""`just soak --smoke` as CI runs it: the whole harness (ops/soak/) against a real deployment (two
Aether processes over a private Redis, supervisord, nginx with TLS), with its faults (bad input, a
SIGKILLed worker, a Redis restart, slow consumers, an impaired network, a backup of every process
to a private S3 endpoint and its restore drill; centrifuge-python and centrifuge-js witnesses),
in under a minute or two.

It fails on any publication lost, duplicated or published twice inside the history window, and
checks that the report carries the eight metrics with the counts behind them. Latency and error
rate are reported, not asserted: they depend on the machine's load (the README's rule: speed is
measured, not asserted).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_smoke_soak_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "ops" / "soak" / "run.py"), "--smoke", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600, check=False, cwd=ROOT,
    )  # fmt: skip
    assert (tmp_path / "report.json").exists(), result.stdout + result.stderr[-5000:]
    report = json.loads((tmp_path / "report.json").read_text())
    accounting = report["accounting"]
    assert result.returncode == 0, (json.dumps(accounting, indent=1), result.stderr[-3000:])
    assert accounting["expected"] > 1000, accounting  # the run really delivered something
    assert accounting["lost"] == accounting["duplicates"] == accounting["double_published"] == 0
    assert accounting["witness"]["received"] > 0
    assert accounting["witness"]["lost"] == 0
    # The real npm centrifuge SDK clients (three through nginx, one straight to a process),
    # subscribed the whole run, lost nothing either.
    js = accounting["js_witnesses"]
    assert [c["path"] for c in js["clients"]] == ["nginx", "nginx", "nginx", "direct"], js
    for client in js["clients"]:
        assert client["received"] > 0, js
        assert client["lost"] == client["duplicates"] == client["double_published"] == 0, js
    metrics = {m["metric"]: m for m in report["metrics"]}
    assert len(metrics) == 8
    assert metrics["delivery"]["verdict"] == "PASS"
    assert metrics["recovery"]["verdict"] == "PASS", metrics["recovery"]
    # The backup + verify cycle: every process backed up to S3 and every backup's drill passed.
    assert metrics["backup success"]["verdict"] == "PASS", report["backups"]
    assert metrics["backup verification success"]["verdict"] == "PASS", report["backups"]
    assert [b["instance"] for b in report["backups"]] == [1, 2]
    assert all(b["drill"]["ok"] and b["drill"]["rto_seconds"] > 0 for b in report["backups"])
    # Every fault ran and healed.
    faults = {f["fault"]: f for f in report["faults"]}
    assert set(faults) == {"backup_cycle", "bad_input", "kill_worker", "restart_redis",
                           "slow_consumers", "impair_network"}  # fmt: skip
    assert faults["kill_worker"]["healed_after_s"] is not None, faults["kill_worker"]
    assert faults["restart_redis"]["healed_after_s"] is not None, faults["restart_redis"]
    # Slow consumers are cut off by the server (3008), the run undisturbed (zero loss above).
    # Slow consumers ran (how many the server cut off with 3008 is reported, not asserted: it
    # depends on how much the kernel buffers before Aether's outbox overflows; 3008 itself is
    # asserted in tests/test_hub.py and tests/test_hostile.py). Everyone else lost nothing (above).
    assert "error" not in faults["slow_consumers"], faults["slow_consumers"]
    # Bad input is refused with the protocol's codes, never a crash.
    outcomes = faults["bad_input"]["outcomes"]
    # The oversized message: the server closes with 1009 while the client is still sending the
    # rest of its 200 KB; under load the unread bytes can make the close a TCP reset that
    # overtakes the close frame (1006 on the client). Either way the connection was refused,
    # never served; 1009 itself is asserted without the race in the protocol tests.
    assert outcomes.pop("oversized") in ("closed 1009", "closed 1006"), outcomes
    assert outcomes == {"not json": "closed 3501", "bad token": "closed 3500",
                        "binary garbage": "closed 3506", "no connect first": "closed 3501"}, \
        outcomes  # fmt: skip
    for name in ("REPORT.md", "timeline.png"):
        assert (tmp_path / name).stat().st_size > 0
