"""The benchmark harness (ops/bench, `just bench`) works: one run with tiny sizes (seconds) against
Aether and the peers, checked for shape and sanity only. Never a speed threshold: CI machines are
shared and noisy, and the numbers belong in ops/bench/RESULTS.md, not in a pass/fail.

The bench extra (websockets, python-socketio, uvicorn) is part of the dev extra, so a missing one
is an installation error and fails here rather than skipping. The Node.js Socket.IO peer joins
when node and npm exist (CI installs them for the JS SDK tests; `npm ci` is done by the harness).
The Go peer (go-centrifuge) joins when `go` exists (CI installs Debian's Go and centrifuge
packages): the harness builds it, and a build that fails then fails the run. Without `go` the
harness leaves the row out and says so (checked with a PATH that has no `go`).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "ops" / "bench" / "run.py"
BENCH_MODULES = ("websockets", "socketio", "uvicorn")
SCENARIOS = ("burst", "paced", "many_channels", "storm", "idle", "reconnect_storm")
AETHER_ONLY = ("many_channels", "reconnect_storm")


def servers() -> list[str]:
    names = ["aether", "websockets", "socketio-py"]
    if shutil.which("node") and shutil.which("npm"):
        names.append("socketio-node")
    if shutil.which("go"):
        names.append("go-centrifuge")
    return names


def check_bench_extra() -> None:
    missing = [name for name in BENCH_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        pytest.fail(
            f"the bench extra is not installed (missing {missing}): "
            ".venv/bin/pip install -e '.[dev]' (dev includes bench)",
            pytrace=False,
        )


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    check_bench_extra()
    out = tmp_path_factory.mktemp("bench")
    cmd = [sys.executable, str(RUN), "--smoke", "--out-dir", str(out), "--servers"]
    # A cold build of the Go peer takes ~30 s of the budget.
    done = subprocess.run(
        [*cmd, ",".join(servers())], capture_output=True, text=True, timeout=600, cwd=ROOT
    )
    logs = "\n".join(
        f"--- {p.name}\n{p.read_text(errors='replace')[-2000:]}"
        for p in sorted((out / "logs").glob("*.log"))
        if p.stat().st_size
    )
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}\n{logs}"
    doc: dict[str, Any] = json.loads((out / "results.json").read_text())
    doc["markdown"] = (out / "RESULTS.md").read_text()
    return doc


def rows(doc: dict[str, Any], scenario: str, server: str) -> list[dict[str, Any]]:
    found = [r for r in doc["results"] if r["scenario"] == scenario and r["server"] == server]
    assert len(found) == 1, (scenario, server)
    result = found[0]
    assert "error" not in result, result["error"]
    assert not result["server_status"]["died_during_run"], result["server_status"]
    assert result["rows"], result
    return list(result["rows"])


def ordered_latency(lat: dict[str, Any] | None) -> None:
    assert lat is not None
    assert lat["samples"] > 0
    assert 0 <= lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"]


def test_bench_extra_is_installed() -> None:
    check_bench_extra()


def test_every_scenario_ran_against_every_server(smoke: dict[str, Any]) -> None:
    ran = {(r["scenario"], r["server"]) for r in smoke["results"]}
    for scenario in SCENARIOS:
        for server in servers():
            if scenario in AETHER_ONLY and server != "aether":
                continue
            assert (scenario, server) in ran


@pytest.mark.parametrize("scenario", ["burst", "paced"])
def test_fanout_rows_are_sane(smoke: dict[str, Any], scenario: str) -> None:
    for server in servers():
        for row in rows(smoke, scenario, server):
            assert row["delivered"] == row["expected"] > 0, (server, row)
            assert row["deliveries_per_s"] > 0
            assert row["server_cpu_us_per_delivery"] is not None
            assert row["server_cpu_us_per_delivery"] >= 0
            assert row["loadgen_cpu_s"] >= 0
            ordered_latency(row["latency_ms"])
            assert not row["setup_failures"], row
            assert not row["server_closes"], row


def test_aether_publishes_through_the_api_when_it_answers(smoke: dict[str, Any]) -> None:
    publishers = [row["publisher"] for row in rows(smoke, "burst", "aether")]
    assert publishers[0] == "websocket"
    api_works = any("answered a publish" in note for note in smoke["notes"])
    assert publishers[1:] == (["http_api"] if api_works else [])


def test_many_channels(smoke: dict[str, Any]) -> None:
    own, shared = rows(smoke, "many_channels", "aether")
    assert own["phase"] == "own channels"
    assert shared["phase"] == "shared channels"
    assert own["subscriptions"] == own["connections"] * (1 + own["shared_channels"])
    for row in (own, shared):
        assert row["delivered"] == row["expected"] > 0
        ordered_latency(row["latency_ms"])


def test_connect_storm(smoke: dict[str, Any]) -> None:
    for server in servers():
        (row,) = rows(smoke, "storm", server)
        assert row["connected"] == row["connections"] > 0
        assert row["connects_per_s"] > 0
        assert row["jwt"] is (server in ("aether", "go-centrifuge"))
        ordered_latency(row["connect_latency_ms"])


def test_idle_memory(smoke: dict[str, Any]) -> None:
    for server in servers():
        (row,) = rows(smoke, "idle", server)
        assert row["connected"] == row["connections"] > 0
        assert row["rss_before_bytes"] > 0
        assert row["rss_after_bytes"] > 0
        # A tiny run may see RSS move either way: only its presence is checked.
        assert isinstance(row["rss_per_conn_bytes"], int)


def test_report_records_the_machine_and_ratios(smoke: dict[str, Any]) -> None:
    assert len(smoke["aether_code"]) == 12  # fingerprint of the source snapshot under test
    machine = smoke["machine"]
    assert machine["cpu_model"]
    assert machine["cores"] >= 1
    assert machine["python"]
    assert machine["python_packages"]["trio"]
    assert machine["python_packages"]["websockets"]
    peers = [s for s in servers() if s != "aether"]
    assert smoke["peers"] == peers
    ratio = next(r for r in smoke["ratios"] if r["metric"] == "deliveries_per_s")
    assert all(ratio[p] > 0 for p in peers)
    headings = ("## Fan-out burst", "## Connect storm", "## Idle memory", "## Reconnect storm",
                "relative to")  # fmt: skip
    for heading in headings:
        assert heading in smoke["markdown"]


def test_the_go_peer_runs_every_peer_scenario_when_go_is_installed(smoke: dict[str, Any]) -> None:
    if shutil.which("go") is None:
        assert "go-centrifuge" not in smoke["servers"]
        return
    assert "go-centrifuge" in smoke["servers"]
    assert smoke["go"].startswith("go version")
    assert not [note for note in smoke["notes"] if "go-centrifuge skipped" in note]
    assert (ROOT / "ops/bench/peers/go_centrifuge/go_centrifuge").is_file()
    for scenario in ("burst", "paced", "storm", "idle"):
        assert rows(smoke, scenario, "go-centrifuge")
    assert "| go-centrifuge (JWT HS256) |" in smoke["markdown"]


def test_without_go_the_go_row_is_left_out_loudly(tmp_path: Path) -> None:
    """A PATH without `go` (nor anything else: the harness runs Python by its absolute path,
    and the websockets peer is Python): the run passes, without the row, and says why."""
    no_tools = tmp_path / "bin"
    no_tools.mkdir()
    out = tmp_path / "out"
    cmd = [sys.executable, str(RUN), "--smoke", "--out-dir", str(out),
           "--servers", "websockets,go-centrifuge", "--scenarios", "storm"]  # fmt: skip
    done = subprocess.run(
        cmd, capture_output=True, text=True, timeout=120, cwd=ROOT, env={"PATH": str(no_tools)}
    )
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    assert "WARNING: the go-centrifuge row is left out: go not installed" in done.stderr
    doc = json.loads((out / "results.json").read_text())
    assert {r["server"] for r in doc["results"]} == {"websockets"}
    assert any(n.startswith("go-centrifuge skipped: go not installed") for n in doc["notes"])
    assert "go-centrifuge skipped: go not installed" in (out / "RESULTS.md").read_text()


def check_reconnect_storm(row: dict[str, Any]) -> None:
    """Every client dropped by the server (3011), back, recovered, and holding every
    publication once and in order; publications went on during the outage."""
    n = row["clients"]
    assert n > 0
    # Aether closes with 3011; a server short of time may close some sockets without the
    # close frame (the SDKs reconnect either way).
    assert sum(row["server_closes"].values()) == n
    assert set(row["server_closes"]) <= {"3011", "eof"}
    assert row["back"] == row["recovered"] == row["complete"] == n, row
    assert row["failed"] == row["not_recovered"] == row["gaps"] == row["duplicates"] == 0
    assert row["all_back"] is True
    assert 0 <= row["all_dropped_s"] <= row["all_back_s"]
    assert row["epochs"] == 1
    assert row["behind_top"] == {}
    assert row["publications_during_outage"] >= 1
    assert row["publisher_acked"] == row["publications"] == row["stream_top"]
    assert row["missed_per_client_max"] >= 1
    assert row["attempts"] >= n
    assert row["server_cpu_us_per_readmission"] is not None
    ordered_latency(row["outage_ms"])
    # The SDK's shortest backoff is the floor of every client's outage.
    assert row["outage_ms"]["p50"] >= 1000 * row["backoff_s"][0]


def test_reconnect_storm_recovers_every_client(smoke: dict[str, Any]) -> None:
    (row,) = rows(smoke, "reconnect_storm", "aether")
    check_reconnect_storm(row)


# --- the Redis rows (`just bench-redis`): a second run into the same directory ------------------


@pytest.fixture(scope="module")
def redis_smoke(smoke: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """`run.py --redis --smoke` (a private redis-server; one and two workers) into a directory
    that already holds the main run's results: only the Redis section may change."""
    out = tmp_path_factory.mktemp("bench-redis")
    main = {k: v for k, v in smoke.items() if k != "markdown"}
    (out / "results.json").write_text(json.dumps(main))
    cmd = [sys.executable, str(RUN), "--redis", "--smoke", "--no-api", "--out-dir", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    logs = "\n".join(
        f"--- {p.name}\n{p.read_text(errors='replace')[-2000:]}"
        for p in sorted((out / "logs").glob("*.log"))
        if p.stat().st_size
    )
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}\n{logs}"
    doc: dict[str, Any] = json.loads((out / "results.json").read_text())
    doc["markdown"] = (out / "RESULTS.md").read_text()
    return doc


def test_a_redis_run_leaves_the_main_results_as_they_were(
    smoke: dict[str, Any], redis_smoke: dict[str, Any]
) -> None:
    for key in ("generated", "results", "ratios", "notes", "aether_code"):
        assert redis_smoke[key] == smoke[key]
    main_report = smoke["markdown"].rstrip("\n")
    assert redis_smoke["markdown"].startswith(main_report)
    assert "## Redis engine and workers" in redis_smoke["markdown"][len(main_report) :]


def test_redis_rows_count_every_process_and_redis(redis_smoke: dict[str, Any]) -> None:
    section = redis_smoke["redis"]
    assert "load average" in section["uptime_before"]
    assert section["redis_server"].startswith("Redis server")
    ran = {(r["scenario"], r["server"]) for r in section["results"]}
    for scenario in ("burst", "paced", "capacity", "storm", "reconnect_storm"):
        for server in ("aether", "aether-redis", "aether-redis-2w"):
            assert (scenario, server) in ran
    doc = {"results": section["results"]}
    for server in ("aether-redis", "aether-redis-2w"):
        for scenario in ("burst", "paced"):
            for row in rows(doc, scenario, server):
                assert row["delivered"] == row["expected"] > 0, (server, row)
                assert row["redis_cpu_us_per_delivery"] is not None
                assert not row["server_closes"], row
        (storm,) = rows(doc, "storm", server)
        assert storm["connected"] == storm["connections"] > 0
        assert storm["redis_cpu_us_per_connect"] is not None
    # No Redis CPU where there is no Redis.
    (paced,) = rows(doc, "paced", "aether")
    assert "redis_cpu_s" not in paced


def test_reconnect_storm_recovers_every_client_with_redis_and_workers(
    redis_smoke: dict[str, Any],
) -> None:
    doc = {"results": redis_smoke["redis"]["results"]}
    for server in ("aether", "aether-redis", "aether-redis-2w"):
        (row,) = rows(doc, "reconnect_storm", server)
        check_reconnect_storm(row)
        assert ("redis_cpu_us_per_readmission" in row) is (server != "aether")
    assert "### Reconnect storm" in redis_smoke["markdown"]


def test_capacity_rows_climb_until_a_stage_falls_behind(redis_smoke: dict[str, Any]) -> None:
    doc = {"results": redis_smoke["redis"]["results"]}
    for server in ("aether", "aether-redis", "aether-redis-2w"):
        stages = rows(doc, "capacity", server)
        rates = [row["target_deliveries_per_s"] for row in stages]
        assert rates == sorted(rates)
        assert rates[0] == 2000
        assert all(row["held"] for row in stages[:-1])  # it stops at the first that did not
        held = [row["target_deliveries_per_s"] for row in stages if row["held"]]
        assert {row["capacity_deliveries_per_s"] for row in stages} == {max(held, default=0)}


def test_the_redis_section_reports_the_targets(redis_smoke: dict[str, Any]) -> None:
    targets = redis_smoke["redis"]["targets"]
    assert [t["target"][:24] for t in targets] == [
        "2 workers' paced capacit", "2 workers' connects/s ≥ ", "CPU µs per delivery thro",
        "... the same with redis-", "CPU µs per delivery thro", "... the same with redis-",
    ]  # fmt: skip
    for target in targets:
        assert target["met"] in (True, False, None)
        if target["ratio"] is not None:
            assert target["ratio"] == round(target["value"] / target["reference"], 2)
    markdown = redis_smoke["markdown"]
    for heading in ("### Paced capacity", "### Connect storm", "### Targets (issue 11)"):
        assert heading in markdown
    assert "aether-redis-2w, 2 workers" in markdown


def test_the_load_generators_counting_path_self_test() -> None:
    """`python ops/bench/engine.py`: every delivery counted once and every ping answered once,
    for each protocol adapter (the Go peer's protocol v1 included), however reads are cut."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "ops/bench/engine.py")],
        capture_output=True, text=True, timeout=120, cwd=ROOT / "ops/bench",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "ok centrifuge-v1" in done.stdout


def test_a_recovering_client_follows_an_unsubscribe_2500_like_the_sdk() -> None:
    """The reconnect storm's client (wire.Recovering): an unsubscribe push 2500 (the node's
    PUB/SUB session was rebuilt: publications may be missing) makes it subscribe again with
    `recover`, its epoch and offset, and the reply's publications fill its stream; another code
    does not."""
    spec = importlib.util.spec_from_file_location("bench_wire", ROOT / "ops/bench/wire.py")
    assert spec is not None
    assert spec.loader is not None
    wire: Any = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(wire)

    class Link:
        role = "stream"

        def __init__(self) -> None:
            self.stream = wire.Stream()
            self.sent: list[bytes] = []

        def send(self, data: bytes) -> None:
            self.sent.append(data)

    proto, conn = wire.Recovering(), Link()
    conn.stream.epoch, conn.stream.offset = "e1", 4
    push = b'{"push":{"channel":"recover:bench","unsubscribe":{"code":%d,"reason":"x"}}}'
    proto.on_publisher_data(conn, push % 2000)
    assert conn.sent == []
    proto.on_publisher_data(conn, push % 2500)
    (frame,) = conn.sent
    command = json.loads(_unmask(frame))
    assert command["subscribe"] == {
        "channel": "recover:bench", "recoverable": True, "recover": True, "epoch": "e1",
        "offset": 4,
    }  # fmt: skip
    publications = [{"offset": 5, "data": "a"}, {"offset": 6, "data": "b"}]
    answer = {"was_recovering": True, "recovered": True, "publications": publications}
    reply = {"id": command["id"], "subscribe": answer}
    proto.on_publisher_data(conn, json.dumps(reply).encode())
    stream = conn.stream
    assert (stream.offset, stream.recovered, stream.gaps, stream.resubscribes) == (6, True, 0, 1)


def _unmask(frame: bytes) -> bytes:
    """The payload of one masked client text frame (payload under 126 bytes or 16-bit length)."""
    length = frame[1] & 0x7F
    start = 2
    if length == 126:
        length, start = int.from_bytes(frame[2:4], "big"), 4
    mask, body = frame[start : start + 4], frame[start + 4 : start + 4 + length]
    return bytes(b ^ mask[i % 4] for i, b in enumerate(body))
