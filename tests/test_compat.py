"""centrifuge-python's own integration suite (its repository's tests/test_client.py, vendored
unchanged in tests/compat/centrifuge_python) against Aether configured like the suite's
docker-compose.yml Centrifugo (tests/compat/aether.toml). The suite runs every case in JSON and
in Protobuf (and its pub/sub and recovery cases with and without fossil delta) as unittest
subtests; tests/compat/run_suite.py runs it with unittest, its own runner, and reports each
outcome. Every case must pass: a case that cannot would be listed in KNOWN with its reason,
and said in the README's compatibility table.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from collections import Counter
from pathlib import Path

from conftest import ADMIN_DATA_DIR, running_server

from aether_trio.config import parse_config

COMPAT = Path(__file__).parent / "compat"
# Cases of the suite that cannot pass against Aether, with why (none at present).
KNOWN: dict[str, str] = {}
# What the suite at its pinned version has: 62 tests, 110 outcomes counting subtests.
MIN_OUTCOMES = 110
SUITE_TIMEOUT = 600


def test_centrifuge_python_suite_passes_in_json_and_protobuf(tmp_path: Path) -> None:
    raw = tomllib.loads((COMPAT / "aether.toml").read_text())
    raw["admin"] = {"data_dir": ADMIN_DATA_DIR}
    raw["engine"] = {"persist_history": False}
    outcomes = tmp_path / "outcomes.jsonl"
    with running_server(parse_config(raw)) as srv:
        done = subprocess.run(
            [sys.executable, str(COMPAT / "run_suite.py"), str(outcomes)],
            env={**os.environ, "AETHER_URL": srv.url},
            capture_output=True, text=True, timeout=SUITE_TIMEOUT, check=False,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr[-5000:]
    records = [json.loads(line) for line in outcomes.read_text().splitlines()]
    failed = {
        f"{r['test']} {r['subtest']}": r["detail"] for r in records if r["outcome"] != "passed"
    }
    unexpected = {case: detail for case, detail in failed.items() if case not in KNOWN}
    assert not unexpected, json.dumps(unexpected, indent=1) + "\n" + done.stderr[-3000:]
    assert len(records) >= MIN_OUTCOMES
    encodings = Counter(
        r["subtest"]["use_protobuf"]
        for r in records
        if r["subtest"] and "use_protobuf" in r["subtest"] and r["outcome"] == "passed"
    )
    # Both encodings ran the server cases as often: 24 subtests each at the pinned version.
    assert encodings["True"] == encodings["False"] >= 24
